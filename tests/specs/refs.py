"""Hand-written reference building blocks for the per-spec tests.

Plain torch only: nothing here imports archc or archc.runtime. Every reference model in
tests/specs/ is assembled from these pieces (or written out in its own test file), gets its
own natural parameter names, and receives the archc module's weights through an explicit
name map (see `WeightSource` / `load_exact`).

Math conventions (the ones archc documents):
  RMSNorm   x * rsqrt(mean(x^2) + 1e-6) * w
  LayerNorm (x - mean) / sqrt(var + 1e-5) * w + b      (biased variance)
  RoPE      rotate-half: q*cos + rotate_half(q)*sin, tables cat([freqs, freqs]), theta 1e4
  attention causal softmax(q k^T / sqrt(dh)) v; GQA: query head h reads kv head h // (H/H_kv)
  SwiGLU    down(silu(gate x) * up x)
  MLP       down(gelu_erf(up x))
  ALiBi     logits - slope_h * (t - s), slope_h = 2^(-8(h+1)/H) for H a power of two
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATOL = 1e-5


# ---------------------------------------------------------------------------- norms

class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LayerNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


# ---------------------------------------------------------------------------- RoPE

def rope_tables(seq_len: int, head_dim: int, theta: float = 10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    pos = torch.arange(seq_len, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq[None, :]            # [T, dh/2]
    angles = torch.cat([freqs, freqs], dim=-1)          # [T, dh]
    return angles.cos(), angles.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """x: [B, H, T, dh]"""
    return x * cos + rotate_half(x) * sin


# ---------------------------------------------------------------------------- attention

def causal_attention(q, k, v):
    """q: [B, H, T, dh]; k, v: [B, H_kv, T, dh]. Explicit causal softmax with GQA."""
    H, Hkv = q.shape[1], k.shape[1]
    assert H % Hkv == 0
    group = H // Hkv
    # query head h uses kv head h // group
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def heads(x, n):
    """[B, T, n*dh] -> [B, n, T, dh]"""
    B, T, D = x.shape
    return x.reshape(B, T, n, D // n).permute(0, 2, 1, 3)


def unheads(x):
    """[B, n, T, dh] -> [B, T, n*dh]"""
    B, n, T, dh = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, T, n * dh)


class Attention(nn.Module):
    """Multi-head / grouped-query causal self-attention with RoPE (Llama names): wq d -> H*dh,
    wk/wv d -> H_kv*dh, wo H*dh -> d. The head size dh is d / H unless given; `bias` puts a
    bias on every projection (ViT-style)."""

    def __init__(self, d: int, n_heads: int, n_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim or d // n_heads
        self.wq = nn.Linear(d, n_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(n_heads * self.head_dim, d, bias=bias)

    def forward(self, x):
        T = x.shape[1]
        cos, sin = rope_tables(T, self.head_dim)
        q = apply_rope(heads(self.wq(x), self.n_heads), cos, sin)
        k = apply_rope(heads(self.wk(x), self.n_kv_heads), cos, sin)
        v = heads(self.wv(x), self.n_kv_heads)
        return self.wo(unheads(causal_attention(q, k, v)))


# ---------------------------------------------------------------------------- MLPs

class SwiGLU(nn.Module):
    """Llama FFN: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class GeluMLP(nn.Module):
    """ViT FFN: fc2(gelu(fc1 x)), exact erf GELU, no biases."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.fc2(gelu_erf(self.fc1(x)))


# ---------------------------------------------------------------------------- weights

@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give every parameter random values so no zero/one init can hide a bug.

    A parameter whose default init is a constant c (norm weights, residual scalars,
    LayerScale gammas, gate biases, zero-init LoRA B / q-k biases) becomes c + N(0, std^2)
    per element, so it stays in a sensible range but is no longer uniform; every other
    parameter becomes N(0, std^2).
    """
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g) * std
        flat = p.detach().flatten()
        if flat.numel() > 0 and bool((flat == flat[0]).all()):
            p.copy_(flat[0] + noise)
        else:
            p.copy_(noise)


class WeightSource:
    """Wraps the archc module's parameters; records which names were read so that
    `load_exact` can check that the map used every archc parameter exactly once."""

    def __init__(self, model: nn.Module):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.used: list[str] = []

    def __getitem__(self, name: str) -> torch.Tensor:
        assert name in self.params, f"archc module has no parameter {name!r}; " \
                                    f"it has {sorted(self.params)}"
        self.used.append(name)
        return self.params[name]


@torch.no_grad()
def load_exact(ref: nn.Module, tensors: dict[str, torch.Tensor], src: WeightSource) -> None:
    """Copy `tensors` (reference name -> value) into `ref`; every reference parameter must
    be assigned and every archc parameter must have been read from `src`."""
    ref_params = dict(ref.named_parameters())
    missing = sorted(set(ref_params) - set(tensors))
    extra = sorted(set(tensors) - set(ref_params))
    assert not missing, f"reference parameters not assigned: {missing}"
    assert not extra, f"assigned names the reference does not have: {extra}"
    unused = sorted(set(src.params) - set(src.used))
    assert not unused, f"archc parameters the map never read: {unused}"
    for name, value in tensors.items():
        p = ref_params[name]
        assert p.shape == value.shape, f"{name}: reference {tuple(p.shape)} vs archc {tuple(value.shape)}"
        p.copy_(value)


def n_params(model: nn.Module) -> int:
    """Unique parameter count (nn.Module.parameters() already de-duplicates shared ones)."""
    return sum(p.numel() for p in model.parameters())


def assert_close(actual, expected, what: str, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{what}: max abs difference {err:.3e} > {atol:g}"


def tokens(B: int = 2, T: int = 12, vocab: int = 256, seed: int = 1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def check_train_step(model: nn.Module, toks: torch.Tensor, lr: float = 1e-2, **fwd_kwargs) -> set[str]:
    """One AdamW step on next-token cross-entropy: finite loss, every parameter gets a
    finite gradient, every parameter with a non-zero gradient moves, and something moves.
    Returns the names of the parameters that changed."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits = model(toks, **fwd_kwargs)
    assert logits.shape == (*toks.shape, logits.shape[-1]), f"bad logits shape {tuple(logits.shape)}"
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
    assert torch.isfinite(loss), f"loss is not finite: {loss.item()}"
    opt.zero_grad()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters that received no gradient: {no_grad}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    opt.step()
    stuck = [n for n, p in model.named_parameters()
             if p.grad.abs().max() > 0 and torch.equal(p.detach(), before[n])]
    assert not stuck, f"parameters with a non-zero gradient did not change: {stuck}"
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "the optimizer step changed no parameter"
    return changed


# ---------------------------------------------------------------------------- cross-layer specs
# Pieces used by the tests of the cross-layer specs (stochastic_kv, satformer,
# depth_attention, recurrent_transformer, dense, hyper). Still plain torch only.

class QKVO(nn.Module):
    """Bias-free attention projections with the per-head tensors exposed, for references
    that need to reach inside attention (share K/V, add to V, mix V across layers)."""

    def __init__(self, d: int, n_heads: int, n_kv_heads: int | None = None):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = d // n_heads
        self.wq = nn.Linear(d, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, d, bias=False)

    def project(self, x, rope: bool = True):
        """x [B, T, d] -> q [B, H, T, dh], k, v [B, H_kv, T, dh]; RoPE on q and k only."""
        q = heads(self.wq(x), self.n_heads)
        k = heads(self.wk(x), self.n_kv_heads)
        v = heads(self.wv(x), self.n_kv_heads)
        if rope:
            cos, sin = rope_tables(x.shape[1], self.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def out(self, a):
        """[B, H, T, dh] -> [B, T, d]"""
        return self.wo(unheads(a))


def alibi_slopes_pow2(n_heads: int) -> torch.Tensor:
    """Press et al.'s ALiBi slopes for a power-of-two head count: 2^(-8(h+1)/H)."""
    assert n_heads & (n_heads - 1) == 0, "only power-of-two head counts here"
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


def take(w: dict, src: "WeightSource", pairs, ours: str = "", theirs: str = "") -> None:
    """w[ours + a] = src[theirs + b] for each (a, b) in pairs."""
    for a, b in pairs:
        w[ours + a] = src[theirs + b]


ATTN_PAIRS = [("wq.weight", "q.weight"), ("wk.weight", "k.weight"),
              ("wv.weight", "v.weight"), ("wo.weight", "o.weight")]
SWIGLU_PAIRS = [("w1.weight", "gate.weight"), ("w3.weight", "up.weight"),
                ("w2.weight", "down.weight")]



def take_decoder_layer(w: dict, src: "WeightSource", ours: str, theirs: str,
                       ffn: bool = True) -> None:
    """The weights of one baseline pre-norm decoder layer (attn_norm, attn, ffn_norm, ffn
    here; rmsnorm, attention, rmsnorm_1, swiglu in archc)."""
    w[ours + "attn_norm.weight"] = src[theirs + "rmsnorm.weight"]
    w[ours + "ffn_norm.weight"] = src[theirs + "rmsnorm_1.weight"]
    take(w, src, ATTN_PAIRS, ours + "attn.", theirs + "attention.")
    if ffn:
        take(w, src, SWIGLU_PAIRS, ours + "ffn.", theirs + "swiglu.")

@torch.no_grad()
def copy_renamed(dst: nn.Module, src: nn.Module, rename, skip=()) -> None:
    """Give archc module `dst` the parameters of archc module `src`: dst name ->
    src[rename(dst name)]. Every parameter of both must be used exactly once, except the
    source parameters named in `skip` (ones the destination has no counterpart for)."""
    sp = {n: p for n, p in src.named_parameters() if n not in set(skip)}
    assert len(sp) + len(set(skip)) == len(dict(src.named_parameters())), "skip names unknown parameters"
    used = []
    for name, p in dst.named_parameters():
        other = rename(name)
        assert other in sp, f"{name} -> {other}: not a parameter of the source"
        assert p.shape == sp[other].shape, f"{name}: {tuple(p.shape)} vs {tuple(sp[other].shape)}"
        p.copy_(sp[other])
        used.append(other)
    assert sorted(used) == sorted(sp), f"source parameters not copied: {sorted(set(sp) - set(used))}"


@torch.no_grad()
def decode(model: nn.Module, toks: torch.Tensor, chunks=None) -> torch.Tensor:
    """Incremental decoding through one KV cache: feed `toks` in pieces of the given sizes
    (default: one token at a time) and return the concatenated logits."""
    T = toks.shape[1]
    chunks = list(chunks) if chunks is not None else [1] * T
    assert sum(chunks) == T
    cache = model.new_cache(batch=toks.shape[0], max_len=T)
    outs, at = [], 0
    for n in chunks:
        outs.append(model(toks[:, at:at + n], cache=cache))
        at += n
    return torch.cat(outs, dim=1)


@torch.no_grad()
def check_decode_matches_prefill(model: nn.Module, toks: torch.Tensor, atol: float = ATOL,
                                 atol64: float = 1e-10, chunked=(5, 1, 2)) -> None:
    """Eval mode: token-by-token decoding and a chunked prefill (`chunked`, then the rest)
    equal the full-sequence forward, within `atol` in float32 and `atol64` in float64
    (a float64 copy of the module: there only rounding differences remain, so a real
    mismatch cannot hide below the float32 tolerance)."""
    import copy

    model.eval()
    T = toks.shape[1]
    rest = T - sum(chunked)
    assert rest > 0
    for m, tol, what in [(model, atol, "float32"), (copy.deepcopy(model).double(), atol64, "float64")]:
        full = m(toks)
        assert full.dtype == (torch.float32 if what == "float32" else torch.float64)
        assert_close(decode(m, toks), full, f"{what}: token-by-token decode vs prefill", tol)
        assert_close(decode(m, toks, list(chunked) + [rest]), full,
                     f"{what}: chunked prefill {list(chunked) + [rest]} vs prefill", tol)


# ---------------------------------------------------------------------------- width / routing specs
# Pieces used by the tests of three_phase, mohd, widenet, wide_attention, lazy_topk.
# Still plain torch only.

@torch.no_grad()
def identity_plus_noise_(model: nn.Module, suffix: str, seed: int = 0, std: float = 0.05) -> list[str]:
    """Square parameters whose name ends with `suffix` and that start as the identity
    (MoHD's group fusion) become I + N(0, std^2) per element. `randomize_` sees them as
    non-constant and would make them pure noise; call this after it. Returns the names."""
    g = torch.Generator().manual_seed(seed)
    done = []
    for name, p in model.named_parameters():
        if name.endswith(suffix):
            assert p.dim() == 2 and p.shape[0] == p.shape[1], f"{name}: not square"
            p.copy_(torch.eye(p.shape[0]) + torch.randn(p.shape, generator=g) * std)
            done.append(name)
    assert done, f"no parameter ends with {suffix!r}"
    return done


def capture(module: nn.Module, store: list, what: str = "output"):
    """Register a hook appending the module's first input ("input") or its output
    ("output") to `store`; returns the handle (call .remove())."""
    if what == "input":
        return module.register_forward_pre_hook(lambda mod, args: store.append(args[0].detach().clone()))
    return module.register_forward_hook(
        lambda mod, args, out: store.append(tuple(o.detach().clone() for o in out)
                                            if isinstance(out, tuple) else out.detach().clone()))


# ---------------------------------------------------------------------------- reparameterization specs
# Pieces used by the tests of reparam_vit, slab, sigma_reparam and dsformer (TOPOLOGIES.md
# 2.8-2.11). Still plain torch only: the equations are written out here, none of archc's
# runtime modules is used.

def ramp_value(step: int, start: int, end: int) -> float:
    """ramp(start, end) of a training step: 0 before start, 1 from end, linear between."""
    return min(max((step - start) / (end - start), 0.0), 1.0)


class BiasMLP(nn.Module):
    """fc2(gelu_erf(fc1 x)) with biases."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(gelu_erf(self.fc1(x)))


class TokenBN(nn.Module):
    """BatchNorm over the width with every token of the batch as a sample, written out.
    Training: normalise by the batch mean and biased variance over all B*T tokens, and move
    running_mean/running_var (the unbiased variance) by `momentum`. Eval: running stats."""

    def __init__(self, d: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        if self.training:
            n = flat.shape[0]
            mean = flat.mean(0)
            var = (flat - mean).pow(2).mean(0)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class RepBNRef(nn.Module):
    """SLAB's RepBN(x) = BN(x) + alpha * x (alpha a learnable scalar)."""

    def __init__(self, d: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(()))
        self.bn = TokenBN(d, eps, momentum)

    def forward(self, x):
        return self.bn(x) + self.alpha * x


def _unit(v):
    return v / v.norm().clamp_min(1e-12)


class SigmaLinearRef(nn.Module):
    """sigma-Reparam linear: y = x (gamma / sigma W)^T + b. Each training forward first
    takes one power-iteration step on the kept vector u (v = W u / |W u|, u <- W^T v /
    |W^T v|, no gradient); then sigma = v'^T W u with v' = W u / |W u| for the current u
    (v' and u constants, the gradient reaches W). Eval: no step."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_out, d_in))
        self.gamma = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.register_buffer("u", torch.zeros(d_in))

    def sigma(self):
        w = self.weight
        if self.training:
            with torch.no_grad():
                v = _unit(w.detach() @ self.u)
                self.u.copy_(_unit(w.detach().t() @ v))
        u = self.u.clone()
        v = _unit(w.detach() @ u)
        return v @ (w @ u)

    def effective_weight(self):
        return self.gamma / self.sigma() * self.weight

    def forward(self, x):
        y = x @ self.effective_weight().t()
        return y + self.bias if self.bias is not None else y


def top_n_per_column(s: torch.Tensor, n: int) -> torch.Tensor:
    """0/1 mask of each column's n largest-magnitude entries (by sorting; ties impossible
    with random values)."""
    thresh = s.abs().sort(dim=0, descending=True).values[n - 1:n]    # [1, in]
    return (s.abs() >= thresh).to(s.dtype)


class DSLinearRef(nn.Module):
    """DSFormer's W = D S: D [out, rank] dense, S [rank, in] the top-n-per-column projection
    of a dense shadow; straight-through: S_eff = S + (P(S) - S).detach()."""

    def __init__(self, d_in: int, d_out: int, rank: int, nnz: int, bias: bool = False):
        super().__init__()
        self.nnz = nnz
        self.dense = nn.Parameter(torch.zeros(d_out, rank))
        self.shadow = nn.Parameter(torch.zeros(rank, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def effective_sparse(self):
        s = self.shadow
        return s + (s * top_n_per_column(s.detach(), self.nnz) - s).detach()

    def forward(self, x):
        y = (x @ self.effective_sparse().t()) @ self.dense.t()
        return y + self.bias if self.bias is not None else y


def causal_linear_attention_quadratic(q, k, v, eps: float = 1e-6):
    """The explicit quadratic form of causal (kernelised) linear attention on already
    feature-mapped q, k [B, H, T, dh]: A = q k^T with the future masked to 0, O = A v /
    (row-sum(A) + eps)."""
    T = q.shape[2]
    a = (q @ k.transpose(-1, -2)) * torch.ones(T, T).tril()
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


def causal_depthwise_conv(v, weight, bias):
    """Per channel c of v [B, H, T, dh] (the same kernel for every head):
    out[t] = bias[c] + sum_j weight[c, 0, j] * v[t - (K-1) + j], zero before position 0."""
    K = weight.shape[-1]
    T = v.shape[2]
    out = bias.view(1, 1, 1, -1).expand_as(v).clone()
    for j in range(K):
        shift = K - 1 - j
        if shift >= T:
            continue
        past = torch.zeros_like(v)
        past[:, :, shift:] = v[:, :, :T - shift]
        out = out + weight[:, 0, j] * past
    return out


@torch.no_grad()
def randomize_bn_stats_(model: nn.Module, seed: int = 0) -> int:
    """Random running statistics for every BatchNorm-like module (running_mean ~ N(0, 0.3^2),
    running_var ~ U(0.5, 2)); returns how many modules it touched."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.3)
            n += 1
        elif name.endswith("running_var"):
            b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=g))
    return n


def assert_close_rel(actual, expected, what: str, rtol: float = 1e-5) -> None:
    """Max abs difference within rtol times the expected output's max magnitude."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * max(scale, 1e-30), \
        f"{what}: max abs difference {err:.3e} > {rtol:g} x output scale {scale:.3e}"
