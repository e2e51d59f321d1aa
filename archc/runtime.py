"""Small modules and functions that generated code imports as `rt`.

Generated modules use plain torch where torch has the piece (nn.Linear, nn.RMSNorm,
F.scaled_dot_product_attention); what is here is what torch lacks: rotary tables shared by
all layers, LoRA with zero-init B, LayerScale, learnable scalars, halting for loops.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def split_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n*dh] -> [B, n, T, dh]"""
    b, t, d = x.shape
    return x.view(b, t, n, d // n).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, n, T, dh] -> [B, T, n*dh]"""
    b, n, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, n * dh)


class Rotary(nn.Module):
    """cos/sin tables for RoPE (rotate-half convention), computed once per forward and
    shared by every attention with this head dim. Not saved in the state dict."""

    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 4096):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        cos, sin = self._table(max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _table(self, n: int):
        t = torch.arange(n, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, length: int, start: int = 0):
        end = start + length
        if end > self.cos.shape[0]:
            cos, sin = self._table(end)
            return cos[start:end], sin[start:end]
        return self.cos[start:end], self.sin[start:end]


def apply_rope(x: torch.Tensor, table) -> torch.Tensor:
    """x: [B, H, T, dh]; table: (cos, sin) each [T, dh]."""
    cos, sin = table
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def linear(d_in: int, d_out: int, bias: bool = True, bias_init: float | None = None) -> nn.Linear:
    """nn.Linear whose bias starts at a constant (a gate's identity bias)."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    if bias and bias_init is not None:
        nn.init.constant_(layer.bias, bias_init)
    return layer


class LoRA(nn.Module):
    """Low-rank update B(A x) * scale; B starts at zero so the adapted model starts equal
    to the shared one."""

    def __init__(self, d_in: int, d_out: int, rank: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t() * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.A.shape[0]}, scale={self.scale}"


class LayerScale(nn.Module):
    """Per-channel scale, initialised small (CaiT)."""

    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Scalar(nn.Module):
    """One learnable multiplier (SReT's residual coefficients)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value


class Bias(nn.Module):
    """A learnable additive term, zero at init (Huginn's per-head q/k bias)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def trunc_normal_like(x: torch.Tensor, std: float, scale: float = 1.0) -> torch.Tensor:
    """A fresh random state shaped like x: N(0, std^2) cut at 3 std, times scale.

    Inverse-CDF sampling (one uniform draw per element): exact, and free of the
    data-dependent rejection loop that keeps torch.nn.init.trunc_normal_ out of
    torch.compile(fullgraph=True).
    """
    lo = 0.5 * (1.0 + math.erf(-3.0 / math.sqrt(2.0)))
    hi = 0.5 * (1.0 + math.erf(3.0 / math.sqrt(2.0)))
    u = torch.empty_like(x).uniform_(2.0 * lo - 1.0, 2.0 * hi - 1.0)
    out = torch.erfinv(u) * (std * math.sqrt(2.0))
    out = out.clamp(-3.0 * std, 3.0 * std)
    return out * scale if scale != 1.0 else out


def check_count(value: int, maximum: int, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name}={value!r}: a run-time loop count must be an int in "
                         f"0..={maximum} (its declared max)")
    return value


class Halting:
    """Early exit for a loop: positions (tokens, or whole sequences) whose state stopped
    moving keep their state; the loop ends when none is still moving."""

    def __init__(self, state: torch.Tensor, tol: float, per: str):
        self.tol = tol
        self.per = per
        shape = state.shape[:-1] + (1,) if per == "token" else state.shape[:1] + (1, 1)
        self.active = torch.ones(shape, dtype=torch.bool, device=state.device)

    def update(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        new = torch.where(self.active, new, old)
        if self.per == "token":
            delta = (new - old).norm(dim=-1, keepdim=True)
            size = new.norm(dim=-1, keepdim=True)
        else:
            delta = (new - old).flatten(1).norm(dim=1).view(-1, 1, 1)
            size = new.flatten(1).norm(dim=1).view(-1, 1, 1)
        self.active = self.active & (delta > self.tol * size)
        return new

    def done(self) -> bool:
        return not bool(self.active.any())
