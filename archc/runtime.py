"""Small modules and functions that generated code imports as `rt`.

Generated modules use plain torch where torch has the piece (nn.Linear, nn.RMSNorm,
F.scaled_dot_product_attention); what is here is what torch lacks: rotary tables shared by
all layers, LoRA with zero-init B, LayerScale, learnable scalars, halting for loops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _count_cpu_attention() -> None:
    """torch.utils.flop_counter has no formula for the fused attention kernel used on CPU,
    so FlopCounterMode reports attention as free there. Count it like the GPU kernels:
    q k^T and the weighted sum of v, in full (a causal mask does not halve the count)."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    for packet, backward in ((aten._scaled_dot_product_flash_attention_for_cpu, False),
                             (aten._scaled_dot_product_flash_attention_for_cpu_backward, True)):
        if packet in flop_counter.flop_registry:
            continue

        def formula(query, key, value, *args, out_shape=None, _backward=backward, **kwargs):
            if _backward:  # (grad_out, query, key, value, ...)
                query, key, value = key, value, args[0]
            b, h, s_q, d_q = query
            s_k, d_v = key[-2], value[-1]
            flops = 2 * b * h * s_q * s_k * (d_q + d_v)
            return 2 * flops if _backward else flops

        flop_counter.register_flop_formula(packet, get_raw=False)(formula)


try:
    _count_cpu_attention()
except (AttributeError, RuntimeError):  # an older torch without these ops: nothing to add
    pass


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
    return x * cos + rotated * sin


def linear(d_in: int, d_out: int, bias: bool = True, bias_init: float | None = None) -> nn.Linear:
    """nn.Linear whose bias starts at a constant (a gate's identity bias)."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    if bias and bias_init is not None:
        nn.init.constant_(layer.bias, bias_init)
    return layer


def init_(module: nn.Module, **inits) -> nn.Module:
    """Start a freshly built module's parameters where its spec says (archc/init.py):
    `weight=("normal", 0.02)`, `("trunc_normal", std)`, `"xavier"`, `"zeros"` or
    `("const", v)`, drawn in the order given from torch's generator, so
    `torch.manual_seed(s)` before building gives the same weights. A module whose other
    state derives from its weights (SigmaLinear's gamma) recomputes it. Returns the module."""
    with torch.no_grad():
        for name, how in inits.items():
            _init_param(module.get_parameter(name), how)
    after = getattr(module, "after_init", None)
    if after is not None:
        after()
    return module


def _init_param(p: torch.Tensor, how) -> None:
    kind, *args = (how,) if isinstance(how, str) else how
    if kind == "normal":
        p.normal_(0.0, args[0])
    elif kind == "trunc_normal":
        p.copy_(trunc_normal_like(p, args[0]))
    elif kind == "zeros":
        p.zero_()
    elif kind == "const":
        p.fill_(args[0])
    elif kind == "xavier":
        for matrix in p.view(-1, *p.shape[-2:]) if p.dim() > 2 else (p,):
            nn.init.xavier_uniform_(matrix)  # per expert matrix, not across experts
    else:
        raise ValueError(f"unknown init {how!r}")


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
        from .errors import ArchcError

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


def check_count(value: int, maximum: int, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name}={value!r}: a run-time loop count must be an int in "
                         f"0..={maximum} (its declared max)")
    return value


def check_tokens(tokens, model: str) -> None:
    """A model's input is token ids: an integer tensor [batch, seq]. Checks dtype and rank
    only, so it costs nothing per call (torch.compile turns it into guards)."""
    expects = f"{model} expects tokens as an integer tensor [batch, seq]"
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{expects}, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
        got = f"{str(tokens.dtype).removeprefix('torch.')} {list(tokens.shape)}"
        error = ValueError if tokens.dtype in (torch.int64, torch.int32) else TypeError
        raise error(f"{expects}, got {got}")


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

    def done(self, cache: "KVCache | None" = None) -> bool:
        """Whether the loop may stop: once no position moves, unless the loop fills a KV
        cache. Then it runs every iteration, so a halted position's later slots hold the
        keys and values of its frozen state (what a loop that kept computing stores) and
        decoding reads the same slots as the prefill of the whole sequence."""
        return cache is None and not bool(self.active.any())


# ----------------------------------------------------------------------------- attention


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (geometric; interleaved for a head count that is not a
    power of two), as in Press et al."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = power_of_two(heads)
    else:
        closest = 2 ** math.floor(math.log2(heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][:heads - closest]
    return torch.tensor(slopes)


def attend(q, k, v, causal: bool = True, alibi: bool = False):
    """Softmax attention of q [B, H, T, dh] over k, v [B, H_kv, S, dh] (S >= T: with a KV
    cache the queries are the last T positions). GQA when H_kv < H."""
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if alibi:
        pos_q = torch.arange(s - t, s, device=q.device)
        pos_k = torch.arange(s, device=q.device)
        dist = (pos_q[:, None] - pos_k[None, :]).to(q.dtype)
        bias = -alibi_slopes(q.shape[1]).to(q.device, q.dtype)[:, None, None] * dist
        if causal:
            bias = bias.masked_fill(dist < 0, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
    if not causal or t == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def select_kv(training: bool, p: float, infer: str, own, other):
    """Stochastic KV routing: in training read the other layer's keys and values with
    probability p (one draw per call), else this layer's own; in eval follow `infer`."""
    if not training:
        return other if infer == "shared" else own
    use_other = torch.rand((), device=own[0].device) < p
    return (torch.where(use_other, other[0], own[0]), torch.where(use_other, other[1], own[1]))


def depth_mix(q, ks: list, vs: list):
    """Depth-Attention: each position's query (averaged over its GQA group) attends over
    the keys of the listed layers at the same position and mixes their values."""
    b, h, t, dh = q.shape
    hkv = ks[0].shape[1]
    qbar = q.view(b, hkv, h // hkv, t, dh).mean(2)
    keys = torch.stack(ks, dim=-2)
    values = torch.stack(vs, dim=-2)
    logits = (qbar.unsqueeze(-2) * keys).sum(-1) / math.sqrt(dh)
    alpha = torch.softmax(logits, dim=-1)
    return (alpha.unsqueeze(-1) * values).sum(-2)


def gate_heads(g: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H, T, 1], to weight per-head tensors."""
    return g.transpose(1, 2).unsqueeze(-1)


def softmax_scaled(g: torch.Tensor) -> torch.Tensor:
    """softmax over the units, times their number (mean 1)."""
    return torch.softmax(g, dim=-1) * g.shape[-1]


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values for incremental decoding: one [B, H_kv, max_len, dh] buffer pair
    per slot of the model's kv plan. `model(tokens, cache=cache)` appends."""

    def __init__(self, layout, batch: int, max_len: int, dtype=torch.float32, device=None):
        self.layout = [tuple(x) for x in layout]
        self.batch = batch
        self.max_len = max_len
        self.pos = 0
        self.params: dict[str, int] | None = None  # the run-time params it was filled with
        self.k = [torch.zeros(batch, h, max_len, dh, dtype=dtype, device=device)
                  for h, dh in self.layout]
        self.v = [torch.zeros(batch, h, max_len, dh, dtype=dtype, device=device)
                  for h, dh in self.layout]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(self, slot: int, k: torch.Tensor, v: torch.Tensor):
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions, max_len={self.max_len}")
        if k.shape[0] != self.batch:
            raise ValueError(f"KV cache made for batch {self.batch}, got {k.shape[0]}")
        self.k[slot][:, :, self.pos:end] = k
        self.v[slot][:, :, self.pos:end] = v
        return self.k[slot][:, :, :end], self.v[slot][:, :, :end]

    def write(self, slot: int, at: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values at positions at.. (layers that fill their cache themselves)."""
        end = at + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions, max_len={self.max_len}")
        self.k[slot][:, :, at:end] = k
        self.v[slot][:, :, at:end] = v

    def read(self, slot: int, end: int):
        return self.k[slot][:, :, :end], self.v[slot][:, :, :end]

    def keep_params(self, params: dict[str, int]) -> None:
        """Record the run-time params (loop counts) of the first call; refuse other values
        later. The cached keys and values belong to those counts: a bigger count would read
        slots never filled, a smaller one mix states of two depths (layers after the loop
        cached keys of the deeper state)."""
        if self.pos == 0 or self.params is None:
            self.params = dict(params)
            return
        from .errors import ArchcError

        for name, value in params.items():
            was = self.params.get(name, value)
            if value != was:
                raise ArchcError(
                    f"run-time param {name}={value}, but this KV cache was filled with "
                    f"{name}={was}: its keys and values belong to that count",
                    hint=f"decode with {name}={was}, or start over with cache.reset() "
                         "or a new cache", code="A061")

    def reset(self) -> None:
        self.pos = 0
        self.params = None


def kv_cache(cache: "KVCache | None", slot: int, k, v):
    """Append this step's keys/values to a slot and return all of them (no cache: as is)."""
    if cache is None:
        return k, v
    return cache.update(slot, k, v)


def cache_params(cache: "KVCache | None", params: dict[str, int]) -> None:
    """Every call with a cache passes its run-time params (see KVCache.keep_params)."""
    if cache is not None:
        cache.keep_params(params)


def refuse_cache(message: str, where: tuple | None, hint: str, code: str = "A060"):
    """new_cache of a model that cannot decode incrementally: an archc error at the spec
    line that rules it out (see archc/passes/kvplan.py, decode_blockers)."""
    from .errors import ArchcError, Span

    raise ArchcError(message, Span(*where) if where else None, hint, code)


def cache_start(cache: "KVCache | None") -> int:
    return 0 if cache is None else cache.pos


def cache_advance(cache: "KVCache | None", n: int) -> None:
    if cache is not None:
        cache.pos += n


# ----------------------------------------------------------------------------- own-output KV


def recurrent_scan(layer, x: torch.Tensor, cache: "KVCache | None", slot: int,
                   alibi: bool = False, mode: str = "tiled", chunk: int = 16) -> torch.Tensor:
    """Run a layer whose keys/values at earlier positions come from its own output
    (the Recurrent Transformer). Positions run in order; position t attends over the keys
    of outputs 0..t-1 (and any cached ones) plus its own input's key on the diagonal.

    The layer gives three pieces: `queries(x) -> (q, k_diag, v_diag, *saved)` over all
    positions, `finish(x_t, a_t, *saved_t) -> out_t` for one position, and
    `keys(out_t) -> (k_t, v_t)`. `mode="naive"` attends over all earlier keys at every
    step. `mode="tiled"` is the exact tiled prefill: keys are grouped in chunks; when
    chunk c completes, chunks [c+1-L, c] (L = lowbit(c+1)) are added to the queries of
    chunks [c+1, c+L] as one dense block with online softmax, so every query meets every
    earlier complete chunk exactly once (a Fenwick decomposition); the few keys of its
    own, unfinished chunk it attends directly.
    """
    q, k_diag, v_diag, *saved = layer.queries(x)
    b, h, t_len, dh = q.shape
    past = cache.pos if cache is not None else 0
    if cache is not None:
        past_k, past_v = cache.read(slot, past)
    else:
        past_k = q.new_zeros(b, h, 0, dh)
        past_v = q.new_zeros(b, h, 0, dh)
    scale = 1.0 / math.sqrt(dh)
    slopes = alibi_slopes(h).to(q.device, q.dtype).view(1, h, 1, 1) if alibi else None
    diag_logits = (q * k_diag).sum(-1, keepdim=True) * scale
    own_k: list[torch.Tensor] = []
    own_v: list[torch.Tensor] = []
    outs = []
    if mode == "tiled" and not torch.is_grad_enabled():
        return _tiled_scan_inference(layer, x, q, k_diag, v_diag, saved, cache, slot, past,
                                     past_k, past_v, scale, slopes, chunk)
    acc = None
    if mode == "tiled":
        acc = _OnlineSoftmax(q, scale, slopes, past)
        if past:
            acc.add(0, t_len, past_k, past_v, 0)
    for t in range(t_len):
        qt = q[:, :, t:t + 1]
        if mode == "tiled":
            first = (t // chunk) * chunk  # keys of this position's unfinished chunk
            a_t = acc.finish(t, diag_logits[:, :, t:t + 1], v_diag[:, :, t:t + 1],
                             own_k[first:t], own_v[first:t], past + first)
        else:
            keys = torch.cat([past_k] + own_k + [k_diag[:, :, t:t + 1]], dim=2)
            values = torch.cat([past_v] + own_v + [v_diag[:, :, t:t + 1]], dim=2)
            logits = (qt @ keys.transpose(-1, -2)) * scale
            if slopes is not None:
                dist = torch.arange(past + t, -1, -1, device=q.device, dtype=q.dtype)
                logits = logits - slopes * dist
            a_t = torch.softmax(logits, dim=-1) @ values
        out_t = layer.finish(x[:, t:t + 1], a_t, *[s_[:, t:t + 1] if s_.dim() == 3
                                                   else s_[:, :, t:t + 1] for s_ in saved])
        k_t, v_t = layer.keys(out_t)
        own_k.append(k_t)
        own_v.append(v_t)
        if cache is not None:
            cache.write(slot, past + t, k_t, v_t)
        outs.append(out_t)
        if mode == "tiled" and (t + 1) % chunk == 0:
            c = (t + 1) // chunk - 1
            span = (c + 1) & -(c + 1)
            lo, hi = (c + 1) * chunk, min((c + 1 + span) * chunk, t_len)
            if lo < hi:
                start = (c + 1 - span) * chunk
                acc.add(lo, hi, torch.cat(own_k[start:t + 1], dim=2),
                        torch.cat(own_v[start:t + 1], dim=2), past + start)
    return torch.cat(outs, dim=1)


def _tiled_scan_inference(layer, x, q, k_diag, v_diag, saved, cache, slot, past, past_k,
                          past_v, scale, slopes, chunk):
    """The tiled scan without autograd: accumulators and the layer's own keys live in
    preallocated tensors updated in place. Each query's accumulator starts with its
    diagonal; a new key is pushed to the rest of its chunk at once, and completed chunks
    reach later chunks in Fenwick blocks, so step t only reads its finished accumulator."""
    b, h, t_len, dh = q.shape
    acc = _InPlaceSoftmax(q, (q * k_diag).sum(-1, keepdim=True) * scale, v_diag, scale,
                          slopes, past)
    if past:
        acc.add(0, t_len, past_k, past_v, 0)
    keys = q.new_empty(b, h, t_len, dh)
    values = q.new_empty(b, h, t_len, dh)
    outs = []
    for t in range(t_len):
        out_t = layer.finish(x[:, t:t + 1], acc.output(t),
                             *[s_[:, t:t + 1] if s_.dim() == 3 else s_[:, :, t:t + 1]
                               for s_ in saved])
        k_t, v_t = layer.keys(out_t)
        keys[:, :, t:t + 1] = k_t
        values[:, :, t:t + 1] = v_t
        if cache is not None:
            cache.write(slot, past + t, k_t, v_t)
        outs.append(out_t)
        end = min((t // chunk + 1) * chunk, t_len)  # the rest of this chunk
        if t + 1 < end:
            acc.push(t + 1, end, k_t, v_t)
        if (t + 1) % chunk == 0:
            c = (t + 1) // chunk - 1
            span = (c + 1) & -(c + 1)
            lo, hi = (c + 1) * chunk, min((c + 1 + span) * chunk, t_len)
            if lo < hi:
                first = (c + 1 - span) * chunk
                acc.add(lo, hi, keys[:, :, first:t + 1], values[:, :, first:t + 1],
                        past + first)
    return torch.cat(outs, dim=1)


class _InPlaceSoftmax:
    """Online-softmax accumulators for all queries, updated in place (no autograd)."""

    def __init__(self, q, diag_logits, diag_values, scale, slopes, past):
        self.q, self.scale, self.slopes, self.past = q, scale, slopes, past
        self.m = diag_logits.clone()
        self.l = torch.ones_like(diag_logits)
        self.o = diag_values.clone()
        self.ramp = None  # ALiBi bias for distances 1, 2, ...

    def add(self, lo: int, hi: int, keys, values, key_start: int) -> None:
        logits = (self.q[:, :, lo:hi] @ keys.transpose(-1, -2)) * self.scale
        if self.slopes is not None:
            pos_q = torch.arange(self.past + lo, self.past + hi, device=logits.device)
            pos_k = torch.arange(key_start, key_start + keys.shape[2], device=logits.device)
            logits = logits - self.slopes * (pos_q[:, None] - pos_k[None, :]).to(logits.dtype)
        m, l, o = self.m[:, :, lo:hi], self.l[:, :, lo:hi], self.o[:, :, lo:hi]
        m_new = torch.maximum(m, logits.amax(-1, keepdim=True))
        keep = torch.exp(m - m_new)
        p = torch.exp(logits - m_new)
        l.mul_(keep).add_(p.sum(-1, keepdim=True))
        o.mul_(keep).add_(p @ values)
        m.copy_(m_new)

    def push(self, lo: int, hi: int, k, v) -> None:
        """One key (at position lo - 1) to queries lo..hi-1: distances 1, 2, ..."""
        logits = (self.q[:, :, lo:hi] @ k.transpose(-1, -2)) * self.scale
        if self.slopes is not None:
            if self.ramp is None or self.ramp.shape[2] < hi - lo:
                n = max(hi - lo, 64)
                dist = torch.arange(1, n + 1, device=logits.device, dtype=logits.dtype)
                self.ramp = self.slopes * dist.view(1, 1, n, 1)
            logits = logits - self.ramp[:, :, :hi - lo]
        m, l, o = self.m[:, :, lo:hi], self.l[:, :, lo:hi], self.o[:, :, lo:hi]
        m_new = torch.maximum(m, logits)
        keep = torch.exp(m - m_new)
        p = torch.exp(logits - m_new)
        l.mul_(keep).add_(p)
        o.mul_(keep).add_(p @ v)  # an outer product; as a matmul it counts like the rest
        m.copy_(m_new)

    def output(self, t: int):
        return self.o[:, :, t:t + 1] / self.l[:, :, t:t + 1]


class _OnlineSoftmax:
    """Running max, normaliser and unnormalised output per query, so blocks of keys can
    arrive in any order and the result is exactly softmax attention. Kept per position
    (lists, no in-place writes) so autograd sees each block once: O(block) per update."""

    def __init__(self, q, scale, slopes, past):
        b, h, t, dh = q.shape
        self.q, self.scale, self.slopes, self.past = q, scale, slopes, past
        self.m = [q.new_full((b, h, 1, 1), float("-inf"))] * t
        self.l = [q.new_zeros(b, h, 1, 1)] * t
        self.o = [q.new_zeros(b, h, 1, dh)] * t

    def add(self, lo: int, hi: int, keys, values, key_start: int) -> None:
        """Queries lo..hi-1 (local) attend to keys at positions key_start.. (all earlier)."""
        logits = (self.q[:, :, lo:hi] @ keys.transpose(-1, -2)) * self.scale
        if self.slopes is not None:
            pos_q = torch.arange(self.past + lo, self.past + hi, device=logits.device)
            pos_k = torch.arange(key_start, key_start + keys.shape[2], device=logits.device)
            logits = logits - self.slopes * (pos_q[:, None] - pos_k[None, :]).to(logits.dtype)
        m_old = torch.cat(self.m[lo:hi], dim=2)
        m_new = torch.maximum(m_old, logits.amax(-1, keepdim=True))
        p = torch.exp(logits - m_new)
        keep = torch.exp(m_old - m_new)
        l_new = torch.cat(self.l[lo:hi], dim=2) * keep + p.sum(-1, keepdim=True)
        o_new = torch.cat(self.o[lo:hi], dim=2) * keep + p @ values
        self.m[lo:hi] = m_new.split(1, dim=2)
        self.l[lo:hi] = l_new.split(1, dim=2)
        self.o[lo:hi] = o_new.split(1, dim=2)

    def finish(self, t: int, diag_logit, diag_value, recent_k: list, recent_v: list,
               recent_start: int):
        """Query t's output: what the blocks gave it, the keys of its unfinished chunk
        (`recent`, at positions recent_start..), and its own diagonal key."""
        logits = diag_logit
        values = diag_value
        if recent_k:
            keys = torch.cat(recent_k, dim=2)
            rec = (self.q[:, :, t:t + 1] @ keys.transpose(-1, -2)) * self.scale
            if self.slopes is not None:
                pos = torch.arange(recent_start, recent_start + keys.shape[2],
                                   device=rec.device)
                rec = rec - self.slopes * (self.past + t - pos).to(rec.dtype)
            logits = torch.cat([rec, diag_logit], dim=-1)
            values = torch.cat(recent_v + [diag_value], dim=2)
        m_old, l_old, o_old = self.m[t], self.l[t], self.o[t]
        m = torch.maximum(m_old, logits.amax(-1, keepdim=True))
        keep = torch.exp(m_old - m)
        p = torch.exp(logits - m)
        return (o_old * keep + p @ values) / (l_old * keep + p.sum(-1, keepdim=True))


# ----------------------------------------------------------------------------- residual streams


def sinkhorn(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """A doubly stochastic matrix from exp(logits) by alternating row/column normalisation
    (over the last two dims)."""
    m = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(-1, keepdim=True)
        m = m / m.sum(-2, keepdim=True)
    return m


class HyperConnection(nn.Module):
    """Manifold-constrained hyper-connection coefficients (mHC) for one sublayer.

    From the n residual streams X [B, T, n*d]: x = RMSNorm(vec X); per token,
    H_pre = sigmoid(a_pre * x W_pre + b_pre), H_post = 2 sigmoid(a_post * x W_post +
    b_post), H_res = Sinkhorn(exp(a_res * x W_res + b_res)). Returns the sublayer input
    h = H_pre X and the packed coefficients for `hyper_write`. The static biases start at
    a plain residual: H_res = I (b_res -8 off the diagonal), H_post = 1, H_pre = 1/2.
    """

    def __init__(self, n: int, dim: int, alpha: float = 0.01, iters: int = 20):
        super().__init__()
        self.n, self.iters = n, iters
        self.norm = nn.RMSNorm(n * dim, eps=1e-6)
        self.proj = nn.Linear(n * dim, 2 * n + n * n, bias=False)
        self.alpha = nn.Parameter(torch.full((3,), float(alpha)))
        self.b_pre = nn.Parameter(torch.zeros(n))
        self.b_post = nn.Parameter(torch.zeros(n))
        self.b_res = nn.Parameter(torch.full((n, n), -8.0).fill_diagonal_(0.0))

    def forward(self, streams: torch.Tensor):
        b, t, nd = streams.shape
        n = self.n
        x = self.proj(self.norm(streams))
        pre = torch.sigmoid(self.alpha[0] * x[..., :n] + self.b_pre)
        post = 2 * torch.sigmoid(self.alpha[1] * x[..., n:2 * n] + self.b_post)
        res = sinkhorn(self.alpha[2] * x[..., 2 * n:].view(b, t, n, n) + self.b_res, self.iters)
        xs = streams.view(b, t, n, nd // n)
        h = (pre.unsqueeze(-1) * xs).sum(2)
        return h, torch.cat([post, res.flatten(2)], dim=-1)


def hyper_write(streams: torch.Tensor, coeffs: torch.Tensor, f: torch.Tensor, n: int):
    """X' = H_res X + H_post^T f: mix the streams, add the sublayer output to each."""
    b, t, nd = streams.shape
    post = coeffs[..., :n]
    res = coeffs[..., n:].view(b, t, n, n)
    xs = streams.view(b, t, n, nd // n)
    mixed = res @ xs + post.unsqueeze(-1) * f.unsqueeze(2)
    return mixed.reshape(b, t, nd)


def expand_streams(x: torch.Tensor, n: int) -> torch.Tensor:
    """n copies of the residual stream, side by side: [B, T, n*d]."""
    return x.repeat(1, 1, n)


def merge_streams(streams: torch.Tensor, n: int) -> torch.Tensor:
    b, t, nd = streams.shape
    return streams.view(b, t, n, nd // n).sum(2)


class DeltaResidual(nn.Module):
    """Deep Delta Learning's rank-1 residual (d_v = 1): x + beta * (v - k.x) * k with
    k = f / |f| (the sublayer output's direction), beta = 2 sigmoid(w . ctx + b) in [0, 2]
    (0 keeps x, 1 replaces its k-component, 2 reflects it), v = w_v . x + b_v."""

    def __init__(self, dim: int, beta_init: float = 1.0):
        super().__init__()
        self.beta = nn.Linear(dim, 1)
        self.value = nn.Linear(dim, 1)
        p = min(max(beta_init / 2.0, 1e-6), 1 - 1e-6)
        nn.init.constant_(self.beta.bias, math.log(p) - math.log(1 - p))

    def forward(self, x: torch.Tensor, f: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        k = F.normalize(f, dim=-1, eps=1e-6)
        beta = 2 * torch.sigmoid(self.beta(ctx))
        v = self.value(x)
        return x + beta * (v - (k * x).sum(-1, keepdim=True)) * k


# ----------------------------------------------------------------------------- head loops


class HeadLoop(nn.Module):
    """A few heads of an attention run again on a new input (SGT); the other heads keep
    their output. Which heads: the `count` heads with the highest attention entropy, measured
    on the loop's input the first time the loop runs (the growth event), then kept as state
    (buffers `heads`, `chosen`, saved in the state dict). Only the looped heads' rows of
    W_q/W_k/W_v and columns of W_o are used, so the extra work is count/heads of the layer's
    attention."""

    def __init__(self, count: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.count, self.n_heads, self.kv_heads, self.head_dim = count, heads, kv_heads, head_dim
        self.register_buffer("heads", torch.arange(count))
        self.register_buffer("chosen", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"count={self.count}, heads={self.n_heads}, kv_heads={self.kv_heads}"

    @torch.no_grad()
    def choose(self, h: torch.Tensor, attn: nn.Module, rope) -> None:
        q = split_heads(attn.q(h), self.n_heads)
        k = split_heads(attn.k(h), self.kv_heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        k = k.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
        t = q.shape[2]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        p = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean(dim=(0, 2))
        top = entropy.topk(self.count).indices.sort().values
        self.heads.copy_(top)
        self.chosen.fill_(True)

    def forward(self, h, a, o, attn: nn.Module, rope=None, cache=None, slot: int = 0):
        if not bool(self.chosen):
            self.choose(h, attn, rope)
        sel = self.heads
        dh = self.head_dim
        span = torch.arange(dh, device=h.device)
        rows = (sel[:, None] * dh + span).flatten()
        kv_rows = ((sel // (self.n_heads // self.kv_heads))[:, None] * dh + span).flatten()

        def project(layer, idx):
            bias = layer.bias[idx] if layer.bias is not None else None
            return split_heads(F.linear(h, layer.weight[idx], bias), self.count)

        q, k, v = project(attn.q, rows), project(attn.k, kv_rows), project(attn.v, kv_rows)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        k, v = kv_cache(cache, slot, k, v)  # the looped heads' own keys when decoding
        out = attend(q, k, v)
        change = merge_heads(out - o.index_select(1, sel))
        a = a + F.linear(change, attn.o.weight[:, rows])
        return a, o.index_copy(1, sel, out)


# ----------------------------------------------------------------------------- partitions


def topk_keep(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each token's k largest activations, zero the rest."""
    if k >= x.shape[-1]:
        return x
    values, index = x.topk(k, dim=-1)
    return torch.zeros_like(x).scatter(-1, index, values)


class PartitionNorm(nn.Module):
    """RMSNorm with statistics per partition: the width is `parts` equal channels plus
    `dc` trailing dims (normalised as one more group); one learnable gain per dim."""

    def __init__(self, dim: int, parts: int, dc: int = 0, eps: float = 1e-6):
        super().__init__()
        self.parts, self.dc, self.eps = parts, dc, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        main = x[..., :d - self.dc].unflatten(-1, (self.parts, -1))
        main = main * torch.rsqrt(main.pow(2).mean(-1, keepdim=True) + self.eps)
        out = [main.flatten(-2)]
        if self.dc:
            rest = x[..., d - self.dc:]
            out.append(rest * torch.rsqrt(rest.pow(2).mean(-1, keepdim=True) + self.eps))
        return torch.cat(out, dim=-1) * self.weight if self.dc else out[0] * self.weight


class PhaseRotation(nn.Module):
    """3PT's Givens rotation: partition i's dims pair into planes, each rotated by
    theta + 2*pi*i/parts; theta is learnable (starts at 0). Orthogonal, so norms keep."""

    def __init__(self, dim: int, parts: int, dc: int = 0):
        super().__init__()
        self.parts, self.dc = parts, dc
        self.theta = nn.Parameter(torch.zeros(()))
        self.register_buffer("offsets", 2 * math.pi * torch.arange(parts) / parts,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        main = x[..., :d - self.dc].unflatten(-1, (self.parts, -1, 2))
        angle = (self.theta + self.offsets).view(self.parts, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = main[..., 0], main[..., 1]
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-3)
        return torch.cat([rotated, x[..., d - self.dc:]], dim=-1) if self.dc else rotated


def horn(x: torch.Tensor, dc: int, start: int = 0) -> torch.Tensor:
    """Add r(p) = 1/(p + 1) for absolute position p along the unit direction of the last
    `dc` dims (3PT's DC channel, outside every partition)."""
    t = x.shape[1]
    r = 1.0 / (torch.arange(start, start + t, device=x.device, dtype=x.dtype) + 1.0)
    direction = torch.full((dc,), dc ** -0.5, device=x.device, dtype=x.dtype)
    pad = x.new_zeros(x.shape[-1] - dc)
    return x + r.view(1, t, 1) * torch.cat([pad, direction])


# ----------------------------------------------------------------------------- routing


class MoE(nn.Module):
    """Top-k mixture of experts with capacity (token dropping) and a load-balance loss.

    Each token goes to its k most probable experts, weighted by its router probabilities
    renormalised over those k. In training expert e takes at most ceil(capacity * N * k / E)
    of the N tokens: first choices claim places before second choices, earlier tokens
    before later ones; the rest are dropped for that expert. In eval nothing is dropped
    (as inference engines route): a token's output must not depend on how many tokens
    share its call, or cached decoding would differ from the prefill. Every call appends
    its load-balance loss E * sum_e f_e * P_e (f_e: share of first choices, P_e: mean
    router probability) to `self.aux`, so a shared MoE applied L times contributes L
    terms to model.aux_loss().
    """

    def __init__(self, dim: int, experts: int, hidden: int, k: int = 2,
                 capacity: float = 1.25, act: str = "gelu", noise: float = 0.0):
        super().__init__()
        self.experts, self.k, self.act = experts, k, act
        self.capacity, self.noise = capacity, noise
        self.router = nn.Parameter(torch.empty(experts, dim))
        self.w_in = nn.Parameter(torch.empty(experts, hidden, dim))
        self.w_out = nn.Parameter(torch.empty(experts, dim, hidden))
        for w in (self.router, self.w_in, self.w_out):
            nn.init.normal_(w, std=w.shape[-1] ** -0.5)
        self.aux: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        n, e = b * t, self.experts
        flat = x.reshape(n, d)
        logits = flat @ self.router.t()
        if self.training and self.noise:
            logits = logits + self.noise * torch.randn_like(logits)
        probs = torch.softmax(logits, dim=-1)
        gate, index = probs.topk(self.k, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        cap = math.ceil(self.capacity * n * self.k / e) if self.training else n
        onehot = F.one_hot(index, e)                                  # [n, k, e]
        order = onehot.transpose(0, 1).reshape(self.k * n, e)          # choices first
        place = ((order.cumsum(0) - 1) * order).sum(-1).view(self.k, n).t()
        keep = place < cap
        share = onehot[:, 0].to(probs.dtype).mean(0)
        self.aux.append(e * (share * probs.mean(0)).sum())
        out = torch.zeros_like(flat)
        act = getattr(F, self.act)
        for i in range(e):
            token, slot = ((index == i) & keep).nonzero(as_tuple=True)
            h = act(flat[token] @ self.w_in[i].t()) @ self.w_out[i].t()
            out = out.index_add(0, token, h * gate[token, slot].unsqueeze(-1))
        return out.view(b, t, d)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's whole branch with probability p in training."""
    if not training or p == 0.0:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device,
                       dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


def clear_aux(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, MoE):
            m.aux = []


def aux_loss(model: nn.Module) -> torch.Tensor:
    terms = [t for m in model.modules() if isinstance(m, MoE) for t in m.aux]
    return torch.stack(terms).sum() if terms else torch.zeros(())


class WidthRouter(nn.Module):
    """MoHD's routed width: `groups` groups of the width, `shared` always active, the top-k
    of the rest per token by a router. Returns the input mask (1 on active dims) and the
    write-back weights (router weight on routed groups if `weighted`, times D / D_active
    if `scaling`; 0 on inactive dims, which the sublayer then leaves unchanged)."""

    def __init__(self, dim: int, groups: int, shared: int, k: int, weighted: bool = True,
                 scaling: bool = True):
        super().__init__()
        self.groups, self.shared, self.k = groups, shared, k
        self.weighted, self.scaling = weighted, scaling
        self.router = nn.Linear(dim, groups - shared, bias=False)

    def forward(self, x: torch.Tensor):
        b, t, d = x.shape
        probs = torch.softmax(self.router(x), dim=-1)
        top, index = probs.topk(self.k, dim=-1)
        routed_mask = torch.zeros_like(probs).scatter(-1, index, 1.0)
        routed_weight = torch.zeros_like(probs).scatter(-1, index, top)
        shared = x.new_ones(b, t, self.shared)
        mask = torch.cat([shared, routed_mask], dim=-1)
        weight = torch.cat([shared, routed_weight if self.weighted else routed_mask], dim=-1)
        if self.scaling:
            weight = weight * (self.groups / (self.shared + self.k))
        size = d // self.groups
        return mask.repeat_interleave(size, -1), weight.repeat_interleave(size, -1)


class GroupFusion(nn.Module):
    """A learnable mixing of a tensor's `groups` width groups (starts as the identity)."""

    def __init__(self, groups: int):
        super().__init__()
        self.mix = nn.Parameter(torch.eye(groups))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        g = self.mix.shape[0]
        parts = y.unflatten(-1, (g, -1))
        return torch.einsum("gh,...hd->...gd", self.mix, parts).flatten(-2)


# ----------------------------------------------------------------------------- reparameterizable


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the width with every token of the batch as a sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


class RepBN(nn.Module):
    """SLAB's RepBN(x) = BatchNorm(x) + alpha * x (alpha learnable, starts at 1)."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(()))
        self.bn = nn.BatchNorm1d(dim, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).view_as(x) + self.alpha * x


class SigmaLinear(nn.Module):
    """sigma-Reparam (Zhai et al.): W_hat = gamma / sigma(W) * W. sigma comes from one
    power-iteration step per training forward on a persistent vector u (no step in eval);
    gamma starts at sigma(W_init) so W_hat starts at W_init."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.register_buffer("u", torch.empty(d_in))
        self.gamma = nn.Parameter(torch.empty(()))
        self.after_init()

    def after_init(self) -> None:
        """u and gamma from the current W: gamma = sigma(W) so W_hat = W (rt.init_ calls
        this again after it sets W)."""
        with torch.no_grad():
            _, s, vh = torch.linalg.svd(self.weight, full_matrices=False)
            self.u.copy_(vh[0])
            self.gamma.copy_(s[0])

    def sigma(self) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                v = F.normalize(self.weight @ self.u, dim=0)
                self.u.copy_(F.normalize(self.weight.t() @ v, dim=0))
        v = F.normalize(self.weight @ self.u, dim=0).detach()
        return v @ self.weight @ self.u

    def effective_weight(self) -> torch.Tensor:
        return self.gamma / self.sigma() * self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class _TopNColumns(torch.autograd.Function):
    """Keep each column's n largest-magnitude entries; gradients pass straight through."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, n: int) -> torch.Tensor:
        index = s.abs().topk(n, dim=0).indices
        return torch.zeros_like(s).scatter(0, index, s.gather(0, index))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class DSLinear(nn.Module):
    """DSFormer's factorised linear W = D S: D dense [out, rank]; S [rank, in] with `nnz`
    non-zeros per column, the top-nnz projection of a dense shadow (straight-through)."""

    def __init__(self, d_in: int, d_out: int, rank: int, nnz: int, bias: bool = False):
        super().__init__()
        self.nnz = nnz
        self.dense = nn.Parameter(torch.empty(d_out, rank))
        self.sparse = nn.Parameter(torch.empty(rank, d_in))
        nn.init.normal_(self.dense, std=rank ** -0.5)
        nn.init.normal_(self.sparse, std=(d_in * nnz / rank) ** -0.5)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def sparse_factor(self) -> torch.Tensor:
        return _TopNColumns.apply(self.sparse, self.nnz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.sparse_factor()), self.dense, self.bias)


class CausalDepthwiseConv(nn.Module):
    """A depthwise 1-D convolution over positions that sees only the past, per head."""

    def __init__(self, channels: int, kernel: int = 5):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = v.shape
        x = v.permute(0, 1, 3, 2).reshape(b * h, dh, t)
        x = F.conv1d(F.pad(x, (self.kernel - 1, 0)), self.weight, self.bias, groups=dh)
        return x.view(b, h, dh, t).permute(0, 1, 3, 2)


def linear_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention: q_t (sum_{s<=t} k_s v_s^T) / (q_t . sum_{s<=t} k_s + 1e-6)."""
    kv = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(2)
    num = torch.einsum("bhtd,bhtde->bhte", q, kv)
    den = (q * k.cumsum(2)).sum(-1, keepdim=True) + 1e-6
    return num / den


# Set to a list by a test to collect (where, IR type, run-time type) of every value of a
# module generated with `generate(program, check_shapes=True)`; None (the default) and
# ordinary builds record nothing.
TYPE_LOG: list | None = None


def check_types(where: tuple, types: tuple, *values) -> None:
    """Record each value's run-time dtype and shape next to the type the IR gave it."""
    if TYPE_LOG is None:
        return
    for w, t, v in zip(where, types, values):
        if isinstance(v, torch.Tensor):
            kind = "long" if v.dtype == torch.long else "float"
            TYPE_LOG.append((w, t, kind, tuple(v.shape)))
        else:
            TYPE_LOG.append((w, t, type(v).__name__, None))
