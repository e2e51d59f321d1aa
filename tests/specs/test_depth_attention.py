"""specs/depth_attention.arch (Depth-Attention, TOPOLOGIES.md 2.1) against a hand-written
reference.

Reference computation, layer l, position t: q_bar = mean of the layer's post-RoPE query
heads within each GQA group ([B, H_kv, T, dh]); depth keys = post-RoPE K of layers
j = max(0, l - window) .. l at the same position (own layer last), depth values = their
raw V; alpha = softmax_j(q_bar . k_j / sqrt(dh)); v_tilde = sum_j alpha_j v_j. Then causal
sequence attention of the layer's q over (k_l, v_tilde); the cache stores v_tilde.
"""

import math

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, QKVO, SwiGLU, causal_attention, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, copy_renamed,
                  check_decode_matches_prefill, take_decoder_layer)

SPEC = "specs/depth_attention.arch"
BASE = "specs/transformer.arch"

CFG = dict(d=32, depth=4, heads=4, kv_heads=2, hidden=48)
CONFIGS = [dict(CFG, window=64), dict(CFG, window=1), dict(CFG, window=2),
           dict(d=32, depth=3, heads=4, kv_heads=1, hidden=40, window=8),
           dict(d=32, depth=3, heads=2, kv_heads=2, hidden=40, window=64)]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.attn_norm = RMSNorm(d)
        self.attn = QKVO(d, heads, kv_heads)
        self.ffn_norm = RMSNorm(d)
        self.ffn = SwiGLU(d, hidden)


def depth_mix(q, keys, values):
    """q [B, H, T, dh]; keys/values: lists over layers of [B, H_kv, T, dh]."""
    B, H, T, dh = q.shape
    Hkv = keys[0].shape[1]
    qbar = q.reshape(B, Hkv, H // Hkv, T, dh).mean(dim=2)        # group g = heads g*G..g*G+G-1
    logits = torch.stack([(qbar * k).sum(-1) for k in keys], dim=-1) / math.sqrt(dh)  # [B,Hkv,T,J]
    alpha = logits.softmax(dim=-1)
    return sum(alpha[..., j:j + 1] * v for j, v in enumerate(values))


class RefDepthAttention(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, kv_heads=2, hidden=172, window=64):
        super().__init__()
        self.window = window
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, hidden) for _ in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks, return_values=False):
        x = self.embed(toks)
        ks, vs, mixed = [], [], []
        for l, blk in enumerate(self.blocks):
            q, k, v = blk.attn.project(blk.attn_norm(x))
            ks.append(k)
            vs.append(v)                     # raw values, not earlier layers' mixed ones
            lo = max(0, l - self.window)
            v_tilde = depth_mix(q, ks[lo:l + 1], vs[lo:l + 1])
            mixed.append((k, v_tilde))
            x = x + blk.attn.out(causal_attention(q, k, v_tilde))
            x = x + blk.ffn(blk.ffn_norm(x))
        logits = self.final_norm(x) @ self.embed.weight.T
        return (logits, mixed) if return_values else logits


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        r, a = f"blocks.{i}.", f"layers.{i}."
        take_decoder_layer(w, src, r, a)
    load_exact(ref, w, src)


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    with torch.no_grad():   # larger q/k: depth (and sequence) softmaxes far from uniform
        for layer in m.layers:
            layer.attention.q.weight.mul_(6.0)
            layer.attention.k.weight.mul_(6.0)
    ref = RefDepthAttention(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"depth_attention {cfg}", )


def test_window_changes_output():
    """Guard against vacuous comparisons: window 1 and window 64 differ (depth 4)."""
    a, ref_a = make_pair(dict(CFG, window=1))
    ref_b = RefDepthAttention(**CFG, window=64)
    ref_b.load_state_dict(ref_a.state_dict())
    x = tokens()
    with torch.no_grad():
        assert (ref_a(x) - ref_b(x)).abs().max() > 1e-3


def test_window0_is_baseline_transformer():
    cfg = dict(CFG, window=0)
    m, ref = make_pair(cfg)
    base = archc.build(BASE, **CFG)
    copy_renamed(base, m, lambda n: n.replace(".attn.", ".attention.").replace(".mlp.", ".swiglu."))
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), base(x), "window=0 vs transformer.arch")
        assert_close(m(x), ref(x), "window=0 vs reference")


def test_params_and_cache_equal_baseline():
    for cfg in CONFIGS:
        base_cfg = {k: v for k, v in cfg.items() if k != "window"}
        m, b = archc.build(SPEC, **cfg), archc.build(BASE, **base_cfg)
        assert n_params(m) == n_params(b) == n_params(RefDepthAttention(**cfg))
        assert m.eval().new_cache(2, 16).nbytes == b.eval().new_cache(2, 16).nbytes


def test_cache_stores_mixed_values():
    cfg = dict(CFG, window=2)
    m, ref = make_pair(cfg)
    x = tokens(B=1, T=6)
    cache = m.eval().new_cache(batch=1, max_len=6)
    with torch.no_grad():
        m(x, cache=cache)
        _, mixed = ref(x, return_values=True)
    for i, (k, v_tilde) in enumerate(mixed):
        assert_close(cache.k[i], k, f"cached K of layer {i}")
        assert_close(cache.v[i], v_tilde, f"cached v_tilde of layer {i}")


@pytest.mark.parametrize("window", [64, 1])
def test_decode_matches_prefill(window):
    m, _ = make_pair(dict(CFG, window=window))
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    check_train_step(m, tokens())
