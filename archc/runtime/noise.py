"""init_state's noise: a truncated normal drawn per absolute position from a counter
hash, so decoding with a cache draws what the prefill of the whole sequence drew."""

from __future__ import annotations

import math

import torch

from .inits import trunc_normal_like


# Counter-based noise: a hash of (seed, absolute position, element) instead of a stream of
# draws, so a position's noise does not depend on what else shares its call.
_U32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # < 2^27: a 32-bit value times it stays below 2^59, exact in int64
_GOLDEN = 0x9E3779B9


def _mix32(x):
    """A 32-bit integer hash (Mueller's: xorshift, multiply, twice) of values in
    [0, 2^32); exact int64 arithmetic, on Python ints and int64 tensors alike."""
    x = ((x >> 16) ^ x) * _MIX & _U32
    x = ((x >> 16) ^ x) * _MIX & _U32
    return (x >> 16) ^ x


def _seed_key(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        from ..errors import ArchcError

        raise ArchcError(f"seed={seed!r}: the seed of init_state's noise is an int",
                         hint="e.g. m(tokens, seed=0)", code="A062")
    return _mix32(_mix32(seed & _U32) ^ ((seed >> 32) & _U32))


def counter_uniform(seed: int, positions: torch.Tensor, n: int) -> torch.Tensor:
    """[T, n] uniforms in (0, 1), element (t, j) a function of (seed, positions[t], j) only:
    (k + 0.5) / 2^23 for k the top 23 bits of a 32-bit hash (exact in float32)."""
    key = _seed_key(seed)
    row = _mix32(_mix32(positions.to(torch.int64) & _U32) ^ key)
    col = _mix32((torch.arange(n, device=positions.device) * _GOLDEN + key) & _U32)
    bits = _mix32(row[:, None] ^ col[None, :])
    return (bits >> 9).to(torch.float32).add_(0.5).mul_(1.0 / (1 << 23))


def state_noise(x: torch.Tensor, std: float, scale: float = 1.0, seed: int | None = None,
                start: int = 0, training: bool = False) -> torch.Tensor:
    """init_state(init="trunc_normal"): N(0, std^2) cut at 3 std, times scale, shaped like x.

    In eval, or with a seed, the noise at absolute position p (start + index along the
    positions of x, [B, T, ...] or [B, H, T, dh]) is a function of (seed, p) alone, the
    same in every batch row: two identical calls agree, and decoding with a cache draws
    what the prefill drew. Eval's default seed is 0. In training without a seed every call
    draws fresh noise from torch's RNG (a random state per step, as Huginn trains).
    Inverse-CDF sampling of the truncated normal, as trunc_normal_like.
    """
    if seed is None and training:
        return trunc_normal_like(x, std, scale)
    axis = 2 if x.dim() == 4 else 1
    moved = x.movedim(axis, 1)[0]  # [T, ...] of one batch row
    t = moved.shape[0]
    positions = torch.arange(start, start + t, device=x.device)
    u = counter_uniform(0 if seed is None else seed, positions, moved[0].numel())
    lo = 0.5 * (1.0 + math.erf(-3.0 / math.sqrt(2.0)))
    hi = 0.5 * (1.0 + math.erf(3.0 / math.sqrt(2.0)))
    z = torch.erfinv(u.mul_(2.0 * (hi - lo)).add_(2.0 * lo - 1.0))  # u -> (2 lo-1, 2 hi-1)
    z = z.mul_(math.sqrt(2.0)).clamp_(-3.0, 3.0).mul_(std * scale)
    out = z.to(x.dtype).view(moved.shape)
    return out.movedim(0, axis - 1).unsqueeze(0).expand_as(x).contiguous()
