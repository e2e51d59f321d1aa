"""specs/hyper.arch (manifold-constrained hyper-connections and Deep Delta Learning,
TOPOLOGIES.md 2.4) against a hand-written reference of the equations archc documents.

residual = "hyper", n streams X [B, T, n, d] (the embedding copied n times), per sublayer F:
  z = W_phi RMSNorm(vec X)                        (W_phi: n*d -> 2n + n^2, no bias)
  H_pre = sigmoid(a_pre z_pre + b_pre)            [n]
  H_post = 2 sigmoid(a_post z_post + b_post)      [n]
  H_res = Sinkhorn(a_res z_res + b_res)           [n, n]; Sinkhorn: M = exp(L - max L),
          20 times: divide rows by their sums, then columns by theirs
  X' = H_res X + H_post^T F(RMSNorm(H_pre X))
  output: the sum of the streams, RMSNorm, tied head.
residual = "delta" (d_v = 1): with h = RMSNorm(x) and f = F(h),
  k = f / max(|f|, 1e-6), beta = 2 sigmoid(w_b . h + b_b), v = w_v . x + b_v,
  x' = x + beta (v - k . x) k.
F is causal MHA with RoPE (H_kv = H) or SwiGLU, as in transformer.arch.
"""

import copy

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, QKVO, SwiGLU, causal_attention, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, take, copy_renamed,
                  check_decode_matches_prefill, take_decoder_layer)

SPEC = "specs/hyper.arch"
BASE = "specs/transformer.arch"

CFG = dict(d=32, depth=2, heads=4, hidden=48)
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


def sinkhorn_ref(logits, iters=20):
    m = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(dim=-1, keepdim=True)     # rows
        m = m / m.sum(dim=-2, keepdim=True)     # columns
    return m


class MHC(nn.Module):
    """Coefficients of one manifold-constrained hyper-connection."""

    def __init__(self, n, d):
        super().__init__()
        self.n = n
        self.norm = RMSNorm(n * d)
        self.phi = nn.Linear(n * d, 2 * n + n * n, bias=False)
        self.a_pre = nn.Parameter(torch.tensor(0.01))
        self.a_post = nn.Parameter(torch.tensor(0.01))
        self.a_res = nn.Parameter(torch.tensor(0.01))
        self.b_pre = nn.Parameter(torch.zeros(n))
        self.b_post = nn.Parameter(torch.zeros(n))
        self.b_res = nn.Parameter(torch.zeros(n, n))

    def forward(self, X):
        B, T, n, d = X.shape
        z = self.phi(self.norm(X.reshape(B, T, n * d)))
        h_pre = torch.sigmoid(self.a_pre * z[..., :n] + self.b_pre)
        h_post = 2 * torch.sigmoid(self.a_post * z[..., n:2 * n] + self.b_post)
        h_res = sinkhorn_ref(self.a_res * z[..., 2 * n:].reshape(B, T, n, n) + self.b_res)
        return h_pre, h_post, h_res


def hc_sublayer(mhc, X, f_of, record=None):
    h_pre, h_post, h_res = mhc(X)
    if record is not None:
        record.append(h_res)
    h = (h_pre.unsqueeze(-1) * X).sum(dim=2)                          # H_pre X: [B, T, d]
    f = f_of(h)
    mixed = torch.einsum("btij,btjd->btid", h_res, X)                 # H_res X
    return mixed + h_post.unsqueeze(-1) * f.unsqueeze(2)              # + H_post^T f


class Delta(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.beta_proj = nn.Linear(d, 1)
        self.value_proj = nn.Linear(d, 1)

    def forward(self, x, f, ctx):
        k = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        beta = 2 * torch.sigmoid(self.beta_proj(ctx))
        v = self.value_proj(x)
        return x + beta * (v - (k * x).sum(-1, keepdim=True)) * k


class Layer(nn.Module):
    def __init__(self, d, heads, hidden, n, residual):
        super().__init__()
        self.attn_norm = RMSNorm(d)
        self.attn = QKVO(d, heads)
        self.ffn_norm = RMSNorm(d)
        self.ffn = SwiGLU(d, hidden)
        if residual == "hyper":
            self.hc_attn, self.hc_ffn = MHC(n, d), MHC(n, d)
        else:
            self.delta_attn, self.delta_ffn = Delta(d), Delta(d)

    def attention(self, h):
        return self.attn.out(causal_attention(*self.attn.project(h)))


class RefHyper(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=172, n=4, residual="hyper"):
        super().__init__()
        self.n, self.residual = n, residual
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer(d, heads, hidden, n, residual) for _ in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks, record=None):
        x = self.embed(toks)
        if self.residual == "hyper":
            X = x.unsqueeze(2).expand(-1, -1, self.n, -1)               # n copies
            for L in self.layers:
                X = hc_sublayer(L.hc_attn, X, lambda h: L.attention(L.attn_norm(h)), record)
                X = hc_sublayer(L.hc_ffn, X, lambda h: L.ffn(L.ffn_norm(h)), record)
            x = X.sum(dim=2)
        else:
            for L in self.layers:
                h = L.attn_norm(x)
                x = L.delta_attn(x, L.attention(h), h)
                h = L.ffn_norm(x)
                x = L.delta_ffn(x, L.ffn(h), h)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, cfg):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(cfg["depth"]):
        r, a = f"layers.{i}.", f"layers.{i}."
        take_decoder_layer(w, src, r, a)
        if cfg.get("residual", "hyper") == "hyper":
            for ours, theirs in [("hc_attn.", "hyper_read."), ("hc_ffn.", "hyper_read_1.")]:
                take(w, src, [("norm.weight", "norm.weight"), ("phi.weight", "proj.weight"),
                              ("b_pre", "b_pre"), ("b_post", "b_post"), ("b_res", "b_res")],
                     r + ours, a + theirs)
                alpha = src[a + theirs + "alpha"]
                w[r + ours + "a_pre"], w[r + ours + "a_post"], w[r + ours + "a_res"] = alpha.unbind(0)
        else:
            for ours, theirs in [("delta_attn.", "delta."), ("delta_ffn.", "delta_1.")]:
                take(w, src, [("beta_proj.weight", "beta.weight"), ("beta_proj.bias", "beta.bias"),
                              ("value_proj.weight", "value.weight"), ("value_proj.bias", "value.bias")],
                     r + ours, a + theirs)
    load_exact(ref, w, src)


def hyper_modules(m):
    return [mod for name, mod in m.named_modules() if name.split(".")[-1].startswith("hyper_read")]


def delta_modules(m):
    return [mod for name, mod in m.named_modules() if name.split(".")[-1].startswith("delta")]


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for hc in hyper_modules(m):   # coefficients clearly away from uniform / identity
            hc.alpha.copy_(torch.tensor([1.0, 1.0, 0.5]) + 0.1 * torch.randn(3, generator=g))
            hc.b_pre.copy_(torch.randn(hc.b_pre.shape, generator=g))
            hc.b_post.copy_(torch.randn(hc.b_post.shape, generator=g))
            hc.b_res.copy_(0.8 * torch.randn(hc.b_res.shape, generator=g))
        for dl in delta_modules(m):   # beta spread over (0, 2), v clearly non-zero
            dl.beta.weight.mul_(20.0)
            dl.value.weight.mul_(10.0)
    ref = RefHyper(**cfg)
    copy_weights(m, ref, cfg)
    return m, ref


HYPER_CONFIGS = [dict(CFG, n=4), dict(CFG, n=2), dict(d=32, depth=1, heads=2, hidden=40, n=3),
                 dict(CFG, n=1)]
DELTA_CONFIGS = [dict(CFG, residual="delta"), dict(d=32, depth=3, heads=2, hidden=40, residual="delta")]


@pytest.mark.parametrize("cfg", HYPER_CONFIGS + DELTA_CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"hyper {cfg}")


def test_sinkhorn_reference_is_doubly_stochastic():
    g = torch.Generator().manual_seed(0)
    out = sinkhorn_ref(torch.randn(64, 4, 4, generator=g))
    assert (out.sum(-1) - 1).abs().max() < 1e-3 and (out.sum(-2) - 1).abs().max() < 1e-3


def check_doubly_stochastic(h_res, n, what):
    assert h_res.shape[-2:] == (n, n)
    assert (h_res >= 0).all()
    rows = (h_res.sum(-1) - 1).abs().max().item()
    cols = (h_res.sum(-2) - 1).abs().max().item()
    assert rows <= 1e-3 and cols <= 1e-3, f"{what}: row error {rows:.2e}, column error {cols:.2e}"


@pytest.mark.parametrize("randomized", [False, True], ids=["init", "randomized"])
def test_h_res_doubly_stochastic(randomized):
    """H_res captured from archc's HyperConnection outputs (forward hooks): rows and
    columns sum to 1 within 1e-3; and they equal the reference's H_res."""
    cfg = dict(CFG, n=4)
    if randomized:
        m, ref = make_pair(cfg)
    else:
        torch.manual_seed(0)
        m = archc.build(SPEC, **cfg)
        ref = RefHyper(**cfg)
        copy_weights(m, ref, cfg)
    n = cfg["n"]
    captured = []
    hooks = [hc.register_forward_hook(
                 lambda mod, args, out: captured.append(out[1][..., n:].unflatten(-1, (n, n))))
             for hc in hyper_modules(m)]
    theirs = []
    x = tokens()
    with torch.no_grad():
        m(x)
        ref(x, record=theirs)
    for h in hooks:
        h.remove()
    assert len(captured) == len(theirs) == 2 * cfg["depth"]
    for i, (a, b) in enumerate(zip(captured, theirs)):
        check_doubly_stochastic(a, n, f"archc H_res #{i}")
        check_doubly_stochastic(b, n, f"reference H_res #{i}")
        assert_close(a, b, f"H_res #{i}")
    if randomized:   # not a near-identity: the streams really mix
        assert max((a - torch.eye(n)).abs().max().item() for a in captured) > 0.1


def test_n1_unit_coefficients_is_plain_residual_transformer():
    """n = 1 with H_pre = H_post = H_res = 1 (b_pre = 30 so sigmoid rounds to 1 in float32,
    alpha = 0, b_post = 0 so 2 sigmoid(0) = 1; a 1x1 Sinkhorn is 1) is transformer.arch
    with H_kv = H. In float32 these coefficients are exactly 1, so the tolerance is only
    for summation order."""
    cfg = dict(CFG, n=1)
    m, _ = make_pair(cfg)
    with torch.no_grad():
        for hc in hyper_modules(m):
            hc.b_pre.fill_(30.0)
            hc.alpha.zero_()
            hc.b_post.zero_()
    base = archc.build(BASE, kv_heads=CFG["heads"], **CFG)
    hc_names = [n for n, _ in m.named_parameters() if ".hyper_read" in n]
    copy_renamed(base, m, lambda n: n.replace(".attn.", ".attention.").replace(".mlp.", ".swiglu."),
                 skip=hc_names)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), base(x), "n=1, unit coefficients vs transformer.arch")


def _run_with_delta_hooks(m, x):
    io = []
    hooks = [dl.register_forward_hook(lambda mod, args, out: io.append((args[0], out)))
             for dl in delta_modules(m)]
    with torch.no_grad():
        logits = m(x)
    for h in hooks:
        h.remove()
    return logits, io


def test_delta_beta_zero_is_identity():
    cfg = dict(CFG, residual="delta")
    m, ref = make_pair(cfg)
    with torch.no_grad():
        for dl in delta_modules(m):
            dl.beta.weight.zero_()
            dl.beta.bias.fill_(float("-inf"))
    x = tokens()
    logits, io = _run_with_delta_hooks(m, x)
    assert len(io) == 2 * cfg["depth"]
    for i, (a, b) in enumerate(io):
        assert torch.equal(a, b), f"delta #{i} with beta = 0 is not the identity"
    with torch.no_grad():
        expected = ref.final_norm(ref.embed(x)) @ ref.embed.weight.T
    assert_close(logits, expected, "beta = 0 everywhere: logits of the embedding alone")


def test_delta_beta_two_zero_value_preserves_norm():
    """beta = 2 (bias 40: sigmoid rounds to 1), v = 0: a Householder reflection of x."""
    cfg = dict(CFG, residual="delta")
    m, _ = make_pair(cfg)
    with torch.no_grad():
        for dl in delta_modules(m):
            dl.beta.weight.zero_()
            dl.beta.bias.fill_(40.0)
            dl.value.weight.zero_()
            dl.value.bias.zero_()
    for model, tol in [(m, 1e-5), (copy.deepcopy(m).double(), 1e-12)]:
        _, io = _run_with_delta_hooks(model, tokens())
        assert len(io) == 2 * cfg["depth"]
        for i, (a, b) in enumerate(io):
            na, nb = a.norm(dim=-1), b.norm(dim=-1)
            rel = ((na - nb).abs() / na).max().item()
            assert rel <= tol, f"delta #{i} ({a.dtype}): relative norm change {rel:.2e}"
            assert (a - b).abs().max() > 1e-3, f"delta #{i}: the reflection did nothing"


def test_param_count_closed_form():
    for cfg in HYPER_CONFIGS + DELTA_CONFIGS:
        d, L, hid, H = cfg["d"], cfg["depth"], cfg["hidden"], cfg["heads"]
        base = archc.build(BASE, **{k: cfg[k] for k in ("d", "depth", "heads", "hidden")}, kv_heads=H)
        if cfg.get("residual", "hyper") == "hyper":
            n = cfg["n"]
            per_hc = n * d + n * d * (2 * n + n * n) + 3 + 2 * n + n * n
            extra = L * 2 * per_hc
        else:
            extra = L * 2 * 2 * (d + 1)
        assert n_params(archc.build(SPEC, **cfg)) == n_params(base) + extra == n_params(RefHyper(**cfg))


@pytest.mark.parametrize("cfg", [dict(CFG, n=4), dict(CFG, residual="delta")], ids=ids)
def test_decode_matches_prefill(cfg):
    m, _ = make_pair(cfg)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


@pytest.mark.parametrize("cfg", [dict(CFG, n=4), dict(CFG, residual="delta")], ids=ids)
def test_train_step(cfg):
    torch.manual_seed(0)
    m = archc.build(SPEC, **cfg)
    check_train_step(m, tokens())
