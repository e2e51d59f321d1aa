"""specs/wide_attention.arch (Wide Attention, TOPOLOGIES.md 2.12) and archc's `widen`
rewrite against hand-written plain-torch references.

Reference computation. Pre-norm decoder with LayerNorm (eps 1e-5, bias), causal RoPE
multi-head attention with its own head size (wq: d -> h*dh, wo: h*dh -> d, no biases),
GELU(erf) MLP without biases, final LayerNorm, tied head.
  deep: `depth` layers of total_heads/depth heads each
  wide: one layer of total_heads heads (what `widen` must turn the deep spec into)
The rewrite's invariants: the same total number of heads and head dim, the same number of
attention (q/k/v/o) parameters, depth 1.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (LayerNorm, GeluMLP, Attention, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, take, ATTN_PAIRS,
                  check_decode_matches_prefill)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "wide_attention.arch")
WIDEN = ("widen",)

CFG = dict(d=64, depth=4, total_heads=8, head_dim=16, hidden=64)
CONFIGS = [
    CFG,
    dict(d=32, depth=2, total_heads=4, head_dim=8, hidden=48),
    dict(d=32, depth=3, total_heads=6, head_dim=12, hidden=40),     # head_dim != d / heads
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class Block(nn.Module):
    def __init__(self, d, n_heads, head_dim, hidden):
        super().__init__()
        self.ln1 = LayerNorm(d)
        self.attn = Attention(d, n_heads, head_dim=head_dim)
        self.ln2 = LayerNorm(d)
        self.mlp = GeluMLP(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class RefStack(nn.Module):
    """`n_layers` blocks of `heads_per_layer` heads each."""

    def __init__(self, n_layers, heads_per_layer, vocab=256, d=64, head_dim=16, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads_per_layer, head_dim, hidden)
                                    for _ in range(n_layers))
        self.ln_f = LayerNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x) @ self.embed.weight.T


def deep_ref(cfg):
    return RefStack(cfg["depth"], cfg["total_heads"] // cfg["depth"], d=cfg["d"],
                    head_dim=cfg["head_dim"], hidden=cfg["hidden"])


def wide_ref(cfg):
    return RefStack(1, cfg["total_heads"], d=cfg["d"], head_dim=cfg["head_dim"],
                    hidden=cfg["hidden"])


def _block(w, src, r, a):
    for ours, theirs in [("ln1", "layernorm"), ("ln2", "layernorm_1")]:
        for p in ("weight", "bias"):
            w[f"{r}{ours}.{p}"] = src[f"{a}{theirs}.{p}"]
    take(w, src, ATTN_PAIRS, r + "attn.", a + "attention.")
    take(w, src, [("fc1.weight", "up.weight"), ("fc2.weight", "down.weight")], r + "mlp.", a + "mlp.")


def copy_weights(m, ref, layer_prefixes):
    """layer_prefixes: the archc module paths of the layers, in order ("layers.0.", ... for
    the deep model; "layers." for the widened one, whose single layer keeps the label)."""
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "ln_f.weight": src["layernorm.weight"],
         "ln_f.bias": src["layernorm.bias"]}
    for i, a in enumerate(layer_prefixes):
        _block(w, src, f"blocks.{i}.", a)
    load_exact(ref, w, src)


def make_deep(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    ref = deep_ref(cfg)
    copy_weights(m, ref, [f"layers.{i}." for i in range(cfg["depth"])])
    return m, ref


def make_wide(cfg, seed=1):
    m = archc.build(SPEC, rewrites=WIDEN, **cfg)
    randomize_(m, seed=seed)
    ref = wide_ref(cfg)
    copy_weights(m, ref, ["layers."])
    return m, ref


def attention_params(m):
    return sum(p.numel() for n, p in m.named_parameters()
               if ".attention." in n and n.split(".")[-2] in ("q", "k", "v", "o"))


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_deep_matches_reference(cfg):
    m, ref = make_deep(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"wide_attention (deep) {cfg}")
    assert n_params(m) == n_params(ref)


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_widened_matches_one_layer_reference(cfg):
    m, ref = make_wide(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"wide_attention --rewrite widen {cfg}")
    assert n_params(m) == n_params(ref)


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_widen_keeps_heads_head_dim_and_attention_params(cfg):
    deep = archc.build(SPEC, **cfg).eval()
    wide = archc.build(SPEC, rewrites=WIDEN, **cfg).eval()
    H, dh, L, d = cfg["total_heads"], cfg["head_dim"], cfg["depth"], cfg["d"]
    # the attention parameter count stays, and is what the head budget says
    assert attention_params(deep) == attention_params(wide) == 4 * d * H * dh
    # the heads: per-layer (heads, head_dim) from the KV cache layout and the projections
    deep_cache = deep.new_cache(batch=1, max_len=4)
    wide_cache = wide.new_cache(batch=1, max_len=4)
    assert [tuple(k.shape[1:2] + k.shape[3:]) for k in deep_cache.k] == [(H // L, dh)] * L
    assert [tuple(k.shape[1:2] + k.shape[3:]) for k in wide_cache.k] == [(H, dh)]
    assert deep_cache.nbytes == wide_cache.nbytes
    for layer in deep.layers:
        assert tuple(layer.attention.q.weight.shape) == (H // L * dh, d)
    assert tuple(wide.layers.attention.q.weight.shape) == (H * dh, d)
    assert tuple(wide.layers.attention.o.weight.shape) == (d, H * dh)
    # depth 1: one layer's worth of LayerNorms and MLP remain
    assert n_params(wide) == n_params(deep) - (L - 1) * (4 * d + 2 * d * cfg["hidden"])


def test_widen_source_has_one_layer_of_all_heads():
    src = archc.compile_source(SPEC, rewrites=WIDEN, **CFG)
    assert f"rt.split_heads(q, {CFG['total_heads']})" in src
    assert f"rt.split_heads(q, {CFG['total_heads'] // CFG['depth']})" not in src


def test_widened_equals_heads_of_every_layer_in_parallel():
    """Structural check of the rewrite: giving the wide layer the deep layers' q/k/v rows
    and o columns side by side makes its attention the sum of the deep layers' attentions
    applied to the same input (checked in the reference, fed with the archc wide model's
    output for the same weights)."""
    cfg = CFG
    m_deep, ref_deep = make_deep(cfg)
    m_wide, ref_wide = make_wide(cfg)
    with torch.no_grad():
        for role in ("q", "k", "v"):
            getattr(m_wide.layers.attention, role).weight.copy_(
                torch.cat([getattr(l.attention, role).weight for l in m_deep.layers], 0))
        m_wide.layers.attention.o.weight.copy_(
            torch.cat([l.attention.o.weight for l in m_deep.layers], 1))
        m_wide.layers.mlp.down.weight.zero_()       # isolate the attention sublayer
        x = tokens()
        blk = ref_wide.blocks[0]
        h = blk.ln1(ref_wide.embed(x))
        summed = ref_wide.embed(x) + sum(b.attn(h) for b in ref_deep.blocks)
        want = ref_wide.ln_f(summed) @ ref_wide.embed.weight.T
        assert_close(m_wide(x), want, "wide attention = sum of the deep layers' attentions")


@pytest.mark.parametrize("rewrites", [(), WIDEN], ids=["deep", "widened"])
def test_decode_matches_prefill(rewrites):
    m = archc.build(SPEC, rewrites=rewrites, **CFG)
    randomize_(m, seed=2)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


@pytest.mark.parametrize("rewrites", [(), WIDEN], ids=["deep", "widened"])
def test_train_step(rewrites):
    torch.manual_seed(0)
    m = archc.build(SPEC, rewrites=rewrites, **CFG)
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters()))
