"""specs/satformer.arch (gated first-layer value residual, TOPOLOGIES.md 2.3) against a
hand-written reference.

Reference computation: pre-norm decoder (RMSNorm, RoPE, GQA, SwiGLU, tied head). Layer 0
keeps V_1 = its raw value heads (after the head split; values get no RoPE). Layer n >= 1:
h = RMSNorm(x), alpha = act(W_a h) in R^{B x T x H_kv} (W_a: d -> H_kv, no bias),
V'_n = V_n + alpha[..., None] * V_1, and causal attention over (K_n, V'_n).
"""

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, QKVO, SwiGLU, causal_attention, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, copy_renamed,
                  check_decode_matches_prefill, take_decoder_layer)

SPEC = "specs/satformer.arch"
BASE = "specs/transformer.arch"

CFG = dict(d=32, depth=4, heads=4, kv_heads=2, hidden=48)
CONFIGS = [CFG, dict(d=32, depth=3, heads=4, kv_heads=1, hidden=40),
           dict(d=32, depth=2, heads=2, kv_heads=2, hidden=40)]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())

ACTS = {
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "identity": lambda g: g,
    "softmax": lambda g: torch.softmax(g, dim=-1) * g.shape[-1],   # over KV heads, mean 1
}


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden, gated):
        super().__init__()
        self.attn_norm = RMSNorm(d)
        self.attn = QKVO(d, heads, kv_heads)
        if gated:
            self.w_alpha = nn.Linear(d, kv_heads, bias=False)
        self.ffn_norm = RMSNorm(d)
        self.ffn = SwiGLU(d, hidden)


class RefSATFormer(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, kv_heads=2, hidden=172, act="relu"):
        super().__init__()
        self.act = ACTS[act]
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, hidden, gated=i > 0)
                                    for i in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        v_first = None
        for i, blk in enumerate(self.blocks):
            h = blk.attn_norm(x)
            q, k, v = blk.attn.project(h)
            if i == 0:
                v_first = v                                            # [B, H_kv, T, dh]
            else:
                alpha = self.act(blk.w_alpha(h))                       # [B, T, H_kv]
                v = v + alpha.permute(0, 2, 1).unsqueeze(-1) * v_first
            x = x + blk.attn.out(causal_attention(q, k, v))
            x = x + blk.ffn(blk.ffn_norm(x))
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        r, a = f"blocks.{i}.", f"layers.{i}."
        take_decoder_layer(w, src, r, a)
        if i > 0:
            w[r + "w_alpha.weight"] = src[a + "gate.weight"]
    load_exact(ref, w, src)


def make_pair(cfg, act="relu", seed=1):
    m = archc.build(SPEC, **cfg, act=act)
    randomize_(m, seed=seed)
    with torch.no_grad():   # a stronger gate, so the V_1 path clearly matters
        for i in range(1, cfg["depth"]):
            m.layers[i].gate.weight.mul_(20.0)
    ref = RefSATFormer(**cfg, act=act)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


def from_baseline(name):
    # transformer.arch names -> satformer.arch names
    return name.replace(".attn.", ".attention.").replace(".mlp.", ".swiglu.")


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"satformer {cfg}")


@pytest.mark.parametrize("act", sorted(ACTS))
def test_matches_reference_every_gate(act):
    m, ref = make_pair(CFG, act=act)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"satformer act={act}")


def test_value_residual_matters():
    """Guard against a vacuous comparison: the gated V_1 term changes the output."""
    m, ref = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        before = m(x)
        for blk in ref.blocks[1:]:
            blk.w_alpha.weight.zero_()
        assert (before - ref(x)).abs().max() > 1e-3


@pytest.mark.parametrize("act", ["relu", "tanh", "identity"])
def test_closed_gate_is_baseline_transformer(act):
    """W_a = 0 with a gate that maps 0 to 0 is exactly transformer.arch."""
    cfg = CFG
    m, _ = make_pair(cfg, act=act)
    with torch.no_grad():
        for i in range(1, cfg["depth"]):
            m.layers[i].gate.weight.zero_()
    base = archc.build(BASE, **cfg)
    # every satformer parameter except the (zero) gates goes into the baseline
    copy_renamed(base, m, from_baseline, skip=[f"layers.{i}.gate.weight" for i in range(1, cfg["depth"])])
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), base(x), f"W_a = 0 ({act}) vs transformer.arch", atol=0.0 if act == "relu" else 1e-6)


@pytest.mark.parametrize("cfg", CONFIGS + [dict()], ids=lambda c: ids(c) or "defaults")
def test_extra_params(cfg):
    full = dict(dict(d=64, depth=4, heads=4, kv_heads=2, hidden=172), **cfg)
    extra = n_params(archc.build(SPEC, **cfg)) - n_params(archc.build(BASE, **cfg))
    assert extra == (full["depth"] - 1) * full["d"] * full["kv_heads"]


def test_cache_bytes_equal_baseline():
    for cfg in CONFIGS:
        a = archc.build(SPEC, **cfg).eval().new_cache(batch=2, max_len=16).nbytes
        b = archc.build(BASE, **cfg).eval().new_cache(batch=2, max_len=16).nbytes
        assert a == b


def test_cache_stores_mixed_values():
    """The cache slot of layer n >= 1 holds V'_n = V_n + alpha V_1 (checked against the
    reference's values, recomputed here)."""
    cfg = CFG
    m, ref = make_pair(cfg)
    x = tokens(B=1, T=6)
    cache = m.eval().new_cache(batch=1, max_len=6)
    with torch.no_grad():
        m(x, cache=cache)
        # reference V' of the last layer
        h = ref.embed(x)
        vals = []
        v_first = None
        for i, blk in enumerate(ref.blocks):
            hn = blk.attn_norm(h)
            q, k, v = blk.attn.project(hn)
            if i == 0:
                v_first = v
            else:
                v = v + ref.act(blk.w_alpha(hn)).permute(0, 2, 1).unsqueeze(-1) * v_first
            vals.append((k, v))
            h = h + blk.attn.out(causal_attention(q, k, v))
            h = h + blk.ffn(blk.ffn_norm(h))
    assert len(cache.k) == cfg["depth"]
    for i, (k, v) in enumerate(vals):
        assert_close(cache.k[i], k, f"cached K of layer {i}")
        assert_close(cache.v[i], v, f"cached V' of layer {i}")


@pytest.mark.parametrize("act", ["relu", "softmax"])
def test_decode_matches_prefill(act):
    m, _ = make_pair(CFG, act=act)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    randomize_(m, seed=3)   # relu gate: a non-zero W_a so the gate gets a gradient
    check_train_step(m, tokens())
