"""specs/sigma_reparam.arch (sigma-Reparam, TOPOLOGIES.md 2.10) against a hand-written
reference.

Reference computation. Pre-norm decoder (LayerNorm, causal MHA with RoPE and no biases,
GELU MLP with biases, final LayerNorm, tied head) in which every linear of the layers
(q, k, v, o, fc1, fc2) uses W_hat = gamma / sigma(W) * W:
  each training forward: v = W u / |W u|, u <- W^T v / |W^T v| (no gradient, u kept);
  sigma = v'^T W u with v' = W u / |W u| for the current u (constants; the gradient
  reaches W and gamma); eval: no step.
gamma starts at sigma(W_init) and u at W_init's top right-singular vector, so a fresh
layer is the plain linear. The embedding / tied head is a plain weight.
"""

from pathlib import Path

import torch
from torch import nn

import archc
from refs import (LayerNorm, SigmaLinearRef, WeightSource, load_exact, randomize_,
                  assert_close, assert_close_rel, n_params, tokens, check_train_step,
                  check_decode_matches_prefill, heads, unheads, rope_tables, apply_rope,
                  causal_attention, gelu_erf)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "sigma_reparam.arch")

CFG = dict(d=32, depth=2, heads=4, hidden=40)
SIGMA = [("attn.wq", "attention.q"), ("attn.wk", "attention.k"), ("attn.wv", "attention.v"),
         ("attn.wo", "attention.o"), ("fc1", "mlp.up"), ("fc2", "mlp.down")]


class SigmaAttention(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.wq, self.wk = SigmaLinearRef(d, d), SigmaLinearRef(d, d)
        self.wv, self.wo = SigmaLinearRef(d, d), SigmaLinearRef(d, d)

    def forward(self, x):
        cos, sin = rope_tables(x.shape[1], self.head_dim)
        q = apply_rope(heads(self.wq(x), self.n_heads), cos, sin)
        k = apply_rope(heads(self.wk(x), self.n_heads), cos, sin)
        v = heads(self.wv(x), self.n_heads)
        return self.wo(unheads(causal_attention(q, k, v)))


class RefSigmaLayer(nn.Module):
    def __init__(self, d, n_heads, hidden):
        super().__init__()
        self.ln1, self.attn = LayerNorm(d), SigmaAttention(d, n_heads)
        self.ln2 = LayerNorm(d)
        self.fc1, self.fc2 = SigmaLinearRef(d, hidden, bias=True), SigmaLinearRef(hidden, d, bias=True)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(gelu_erf(self.fc1(self.ln2(x))))


class RefSigma(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=172):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(RefSigmaLayer(d, heads, hidden) for _ in range(depth))
        self.final_norm = LayerNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, cfg):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["layernorm.weight"],
         "final_norm.bias": src["layernorm.bias"]}
    for i in range(cfg["depth"]):
        r, a = f"layers.{i}.", f"layers.{i}."
        for ours, theirs in (("ln1", "layernorm"), ("ln2", "layernorm_1")):
            for p in ("weight", "bias"):
                w[f"{r}{ours}.{p}"] = src[f"{a}{theirs}.{p}"]
        for ours, theirs in SIGMA:
            w[f"{r}{ours}.weight"] = src[f"{a}{theirs}.weight"]
            w[f"{r}{ours}.gamma"] = src[f"{a}{theirs}.gamma"]
            if ours.startswith("fc"):
                w[f"{r}{ours}.bias"] = src[f"{a}{theirs}.bias"]
    load_exact(ref, w, src)
    with torch.no_grad():
        for i in range(cfg["depth"]):
            for ours, theirs in SIGMA:
                ref.layers[i].get_submodule(ours).u.copy_(m.layers[i].get_submodule(theirs).u)


def sigma_pairs(m, ref, cfg):
    for i in range(cfg["depth"]):
        for ours, theirs in SIGMA:
            yield f"layers.{i}.{theirs}", m.layers[i].get_submodule(theirs), \
                ref.layers[i].get_submodule(ours)


_SPECS = {}


def build(cfg=CFG):
    key = tuple(sorted(cfg.items()))
    if key not in _SPECS:
        _SPECS[key] = archc.load(SPEC, **cfg)
    return archc.build(_SPECS[key])


def make_pair(cfg=CFG, seed=1):
    torch.manual_seed(seed)     # u starts from the SVD of the (then overwritten) init weight
    m = build(cfg)
    randomize_(m, seed=seed, std=0.1)
    ref = RefSigma(**cfg)
    copy_weights(m, ref, cfg)
    return m, ref


def test_matches_reference_training():
    """Three training forwards: outputs and the power-iteration vectors u agree."""
    m, ref = make_pair()
    m.train(), ref.train()
    for seed in (11, 12, 13):
        x = tokens(T=10, seed=seed)
        with torch.no_grad():
            assert_close(m(x), ref(x), f"sigma_reparam train forward (seed {seed})")
        for name, theirs, ours in sigma_pairs(m, ref, CFG):
            assert_close(theirs.u, ours.u, f"{name}.u after a training forward", atol=1e-6)


def test_matches_reference_eval_and_u_stays():
    m, ref = make_pair()
    m.eval(), ref.eval()
    before = {n: b.clone() for n, b in m.named_buffers() if n.endswith(".u")}
    assert len(before) == 6 * CFG["depth"]
    x = tokens(T=10)
    with torch.no_grad():
        assert_close(m(x), ref(x), "sigma_reparam eval")
    for n, b in m.named_buffers():
        if n.endswith(".u"):
            assert torch.equal(b, before[n]), f"{n} moved in eval"


def test_gradient_matches_reference():
    """sigma's gradient path (through W, with u and v' constants) as in the reference."""
    m, ref = make_pair()
    m.train(), ref.train()
    x = tokens(T=8)
    m(x).square().mean().backward()
    ref(x).square().mean().backward()
    for name, theirs, ours in sigma_pairs(m, ref, CFG):
        assert_close(theirs.weight.grad, ours.weight.grad, f"{name}.weight grad", atol=1e-6)
        assert_close(theirs.gamma.grad, ours.gamma.grad, f"{name}.gamma grad", atol=1e-6)


def test_at_init_layer_is_the_plain_linear():
    """Fresh build: gamma = sigma(W_init) = ||W_init||_2, and every sigma layer computes
    x W^T + b (1e-6 of the output scale) in training and eval; the whole model equals the same model with
    plain linears."""
    torch.manual_seed(0)
    m = build()
    ref = RefSigma(**CFG)
    copy_weights(m, ref, CFG)
    x = torch.randn(2, 6, 40)
    for name, layer, _ in sigma_pairs(m, ref, CFG):
        w = layer.weight.detach()
        spec2 = torch.linalg.matrix_norm(w, ord=2)
        assert abs(layer.gamma.item() - spec2.item()) <= 1e-6 * spec2.item(), f"{name}.gamma"
        xin = x[..., :w.shape[1]]
        plain = xin @ w.t() + (layer.bias.detach() if layer.bias is not None else 0)
        with torch.no_grad():
            for mode in (True, False):
                layer.train(mode)
                assert_close_rel(layer(xin), plain, f"{name} at init (training={mode})",
                                 rtol=1e-6)
    # whole model vs plain linears with the same W
    for mod in ref.modules():
        if isinstance(mod, SigmaLinearRef):
            mod.effective_weight = lambda mod=mod: mod.weight
    toks = tokens(T=10)
    m.eval()
    with torch.no_grad():
        assert_close(m(toks), ref(toks), "fresh sigma model vs plain-linear model", atol=1e-5)


def test_reparam_matters():
    """Guard: after randomizing, W_hat != W, so the comparisons see gamma / sigma."""
    m, ref = make_pair()
    ref.eval()
    layer = ref.layers[0].fc1
    assert (layer.effective_weight() - layer.weight).abs().max() > 1e-3


def test_fold_equals_unfolded_eval():
    """archc.reparam bakes W_hat (with u as trained) into plain linears: identical eval
    outputs; no gamma/u left; fc2 (no norm before it) holds exactly W_hat."""
    m, ref = make_pair()
    m.train(), ref.train()
    with torch.no_grad():
        for seed in (21, 22):
            x = tokens(T=10, seed=seed)
            m(x), ref(x)
    m.eval(), ref.eval()
    f = archc.reparam(m)
    x = tokens(T=10)
    with torch.no_grad():
        assert_close_rel(f(x), m(x), "folded vs unfolded (eval)")
        assert_close(m(x), ref(x), "eval after training forwards vs reference")
    names = dict(f.named_parameters())
    assert not any("gamma" in n for n in names)
    assert not any(n.endswith(".u") for n, _ in f.named_buffers())
    with torch.no_grad():
        for i in range(CFG["depth"]):
            for ours, theirs in (("fc2", "mlp.down"), ("attn.wo", "attention.o")):
                assert_close(names[f"layers.{i}.{theirs}.weight"],
                             ref.layers[i].get_submodule(ours).effective_weight(),
                             f"folded {theirs} weight vs W_hat", atol=1e-6)
    # gammas go (6 per layer), both LN affines (2d each) fold away; q, k, v gain biases (fc1 had one)
    d = CFG["d"]
    assert n_params(m) - n_params(f) == CFG["depth"] * (6 + 2 * 2 * d - 3 * d)


def test_power_iteration_converges_to_the_spectral_norm():
    """After 100 training forwards, ||W_hat||_2 = |gamma| (u has converged to the top
    right-singular vector of the randomized W). Before them it is not (u is stale)."""
    m, ref = make_pair(seed=3)
    m.train()

    def gaps():
        out = []
        with torch.no_grad():
            for name, layer, _ in sigma_pairs(m, ref, CFG):
                was = layer.training
                layer.eval()
                w_hat = layer.gamma / (_sigma(layer)) * layer.weight
                layer.train(was)
                norm = torch.linalg.matrix_norm(w_hat, ord=2).item()
                out.append(abs(norm - abs(layer.gamma.item())) / abs(layer.gamma.item()))
        return out

    before = gaps()
    assert max(before) > 1e-2, f"u already converged before the forwards? {before}"
    with torch.no_grad():
        for _ in range(100):
            m(tokens(B=1, T=2))
    after = gaps()
    assert max(after) < 1e-3, f"||W_hat||_2 vs |gamma| relative gaps: {after}"


def _sigma(layer):
    """sigma as the reference computes it (eval: no step) from the module's W and u."""
    w, u = layer.weight, layer.u
    v = w @ u
    v = v / v.norm()
    return v @ w @ u


def test_decode_matches_prefill():
    m, _ = make_pair()
    check_decode_matches_prefill(m, tokens(B=2, T=12))
    check_decode_matches_prefill(archc.reparam(m), tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m, _ = make_pair(seed=4)
    changed = check_train_step(m, tokens())
    assert sum(n.endswith("gamma") for n in changed) == 6 * CFG["depth"]
