"""specs/dsformer.arch (DSFormer: dense x semi-structured-sparse factorised FFN weights,
TOPOLOGIES.md 2.11) against a hand-written reference.

Reference computation. Pre-norm decoder (RMSNorm, causal MHA with RoPE, no biases, final
RMSNorm, tied head) whose FFN is
  x = x + DS2(gelu(DS1(RMSNorm(x))))
with DS(x) = x S^T D^T + b: D [out, rank] dense; S [rank, in] the projection of a dense
shadow that keeps each column's `nnz` largest-magnitude entries (zeros elsewhere). The
gradient passes straight through the projection to the whole shadow:
S_eff = S + (P(S) - S).detach().
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, Attention, DSLinearRef, WeightSource, load_exact, randomize_,
                  assert_close, assert_close_rel, n_params, tokens, check_train_step,
                  check_decode_matches_prefill, gelu_erf, top_n_per_column, take_decoder_layer)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "dsformer.arch")

CFG = dict(d=32, depth=2, heads=4, hidden=40, rank=8, nnz=3)
DS = [("ds1", "ds_linear"), ("ds2", "ds_linear_1")]


class RefDSLayer(nn.Module):
    def __init__(self, d, n_heads, hidden, rank, nnz):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(d), Attention(d, n_heads)
        self.ffn_norm = RMSNorm(d)
        self.ds1 = DSLinearRef(d, hidden, rank, nnz, bias=True)
        self.ds2 = DSLinearRef(hidden, d, rank, nnz, bias=True)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.ds2(gelu_erf(self.ds1(self.ffn_norm(x))))


class RefDSFormer(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=172, rank=32, nnz=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(RefDSLayer(d, heads, hidden, rank, nnz) for _ in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, cfg):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(cfg["depth"]):
        r, a = f"layers.{i}.", f"layers.{i}."
        take_decoder_layer(w, src, r, a, ffn=False)
        for ours, theirs in DS:
            w[f"{r}{ours}.dense"] = src[f"{a}{theirs}.dense"]
            w[f"{r}{ours}.shadow"] = src[f"{a}{theirs}.sparse"]
            w[f"{r}{ours}.bias"] = src[f"{a}{theirs}.bias"]
    load_exact(ref, w, src)


_SPECS = {}


def make_pair(cfg=CFG, seed=1):
    key = tuple(sorted(cfg.items()))
    if key not in _SPECS:
        _SPECS[key] = archc.load(SPEC, **cfg)
    m = archc.build(_SPECS[key])
    randomize_(m, seed=seed, std=0.1)
    ref = RefDSFormer(**cfg)
    copy_weights(m, ref, cfg)
    return m, ref


def ds_modules(m, cfg=CFG):
    for i in range(cfg["depth"]):
        for _, theirs in DS:
            yield f"layers.{i}.{theirs}", m.layers[i].get_submodule(theirs)


@pytest.mark.parametrize("training", [True, False])
def test_matches_reference(training):
    m, ref = make_pair()
    m.train(training), ref.train(training)
    x = tokens(T=10)
    with torch.no_grad():
        assert_close(m(x), ref(x), f"dsformer (training={training})")


def test_sparsity_matters():
    """Guard: the projection drops something, so the reference's top-n is exercised."""
    _, ref = make_pair()
    s = ref.layers[0].ds1.shadow
    assert (ref.layers[0].ds1.effective_sparse() - s).abs().max() > 1e-2


def test_sparsity_constraint_holds_exactly():
    """Every column of the effective S keeps exactly its nnz largest-magnitude shadow
    entries (the module's sparse_factor()), and so does the folded sparse factor."""
    cfg = CFG
    m, _ = make_pair()
    m.eval()
    f = archc.reparam(m)
    fp = dict(f.named_parameters())
    for name, mod in ds_modules(m):
        with torch.no_grad():
            s_eff = mod.sparse_factor()
            shadow = mod.sparse.detach()
        nz = (s_eff != 0).sum(0)
        assert int(nz.max()) <= cfg["nnz"] and bool((nz == cfg["nnz"]).all()), f"{name}: {nz}"
        assert torch.equal(s_eff, shadow * top_n_per_column(shadow, cfg["nnz"])), name
        folded = fp[name + ".sparse.weight"]
        assert folded.shape == (cfg["rank"], shadow.shape[1])
        fnz = (folded != 0).sum(0)
        assert int(fnz.max()) <= cfg["nnz"], f"folded {name}: {fnz}"
        # the zero pattern is the projection's (a norm gain may scale kept columns)
        assert torch.equal(folded != 0, s_eff != 0), f"folded {name}: pattern"
        assert fp[name + ".dense.weight"].shape == (mod.dense.shape[0], cfg["rank"])


def test_straight_through_gradient_reaches_the_whole_shadow():
    """Gradients of the dense shadow equal the reference's straight-through ones (the
    gradient w.r.t. the effective S) and are non-zero at every entry, also the ones the
    projection zeroed."""
    m, ref = make_pair()
    x = tokens(T=10)
    m(x).square().mean().backward()
    ref(x).square().mean().backward()
    for i in range(CFG["depth"]):
        for ours, theirs in DS:
            g = m.layers[i].get_submodule(theirs).sparse.grad
            rs = ref.layers[i].get_submodule(ours)
            assert_close(g, rs.shadow.grad, f"layer {i} {theirs} shadow grad", atol=1e-6)
            assert_close(m.layers[i].get_submodule(theirs).dense.grad, rs.dense.grad,
                         f"layer {i} {theirs} dense grad", atol=1e-6)
            dropped = top_n_per_column(rs.shadow.detach(), CFG["nnz"]) == 0
            assert dropped.any()
            assert bool((g != 0).all()), f"layer {i} {theirs}: zero shadow gradients"
            assert bool((g[dropped] != 0).all())


def test_unique_params():
    """Training form: out*rank + rank*in (+ out bias) per ds_linear, no other weights."""
    cfg = CFG
    m, ref = make_pair()
    sizes = {"ds_linear": (cfg["d"], cfg["hidden"]), "ds_linear_1": (cfg["hidden"], cfg["d"])}
    for name, mod in ds_modules(m):
        d_in, d_out = sizes[name.split(".")[-1]]
        assert n_params(mod) == d_out * cfg["rank"] + cfg["rank"] * d_in + d_out, name
        assert {n for n, _ in mod.named_parameters()} == {"dense", "sparse", "bias"}
    assert n_params(m) == n_params(ref)
    # deployed: D dense plus nnz(S) = in * nnz non-zeros in S
    f = archc.reparam(m.eval())
    fp = dict(f.named_parameters())
    for name, _ in ds_modules(m):
        d_in, _ = sizes[name.split(".")[-1]]
        assert int((fp[name + ".sparse.weight"] != 0).sum()) == d_in * cfg["nnz"]


def test_folded_equals_unfolded_eval():
    m, _ = make_pair()
    m.eval()
    f = archc.reparam(m)
    x = tokens(T=10)
    with torch.no_grad():
        assert_close_rel(f(x), m(x), "folded vs unfolded (eval)")
    assert n_params(f) < n_params(m)  # the FFN and attention norm gains folded away


def test_decode_matches_prefill():
    m, _ = make_pair()
    check_decode_matches_prefill(m, tokens(B=2, T=12))
    check_decode_matches_prefill(archc.reparam(m.eval()), tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m, _ = make_pair(seed=4)
    changed = check_train_step(m, tokens())
    assert sum(n.endswith(".sparse") for n in changed) == 2 * CFG["depth"]
