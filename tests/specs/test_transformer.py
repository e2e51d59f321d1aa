"""specs/transformer.arch against a hand-written pre-norm Llama-style decoder
(RMSNorm, RoPE, SwiGLU, GQA, tied LM head)."""

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, Attention, SwiGLU, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step)

SPEC = "specs/transformer.arch"

CONFIGS = [
    dict(d=32, depth=2, heads=4, kv_heads=2, hidden=48),   # GQA, 2 query heads per kv head
    dict(d=64, depth=1, heads=4, kv_heads=4, hidden=96),   # plain MHA
    dict(d=32, depth=3, heads=4, kv_heads=1, hidden=40),   # MQA
]


class TransformerBlock(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.attention_norm = RMSNorm(d)
        self.attention = Attention(d, heads, kv_heads)
        self.ffn_norm = RMSNorm(d)
        self.feed_forward = SwiGLU(d, hidden)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class RefTransformer(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, kv_heads=2, hidden=172):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(TransformerBlock(d, heads, kv_heads, hidden) for _ in range(depth))
        self.norm = RMSNorm(d)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h) @ self.tok_embeddings.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"tok_embeddings.weight": src["emb.weight"], "norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        a, r = f"layers.{i}.", f"layers.{i}."
        w[r + "attention_norm.weight"] = src[a + "rmsnorm.weight"]
        w[r + "ffn_norm.weight"] = src[a + "rmsnorm_1.weight"]
        for ours, theirs in [("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")]:
            w[r + f"attention.{ours}.weight"] = src[a + f"attn.{theirs}.weight"]
        for ours, theirs in [("w1", "gate"), ("w3", "up"), ("w2", "down")]:
            w[r + f"feed_forward.{ours}.weight"] = src[a + f"mlp.{theirs}.weight"]
    load_exact(ref, w, src)


def closed_form_params(vocab=256, d=64, depth=4, heads=4, kv_heads=2, hidden=172):
    dh = d // heads
    attn = d * d + 2 * d * kv_heads * dh + d * d
    ffn = 3 * d * hidden
    block = attn + ffn + 2 * d
    return vocab * d + depth * block + d


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_matches_reference(cfg):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=1)
    ref = RefTransformer(**cfg)
    copy_weights(m, ref, cfg["depth"])
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"transformer {cfg}")


@pytest.mark.parametrize("cfg", CONFIGS + [dict(), dict(d=128, depth=7, heads=8, kv_heads=2, hidden=300)],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "defaults")
def test_param_count_closed_form(cfg):
    m = archc.build(SPEC, **cfg)
    expected = closed_form_params(**cfg)
    assert n_params(m) == expected, f"{cfg}: archc has {n_params(m)} parameters, formula says {expected}"
    assert n_params(m) == n_params(RefTransformer(**cfg))


def test_causal():
    """Changing a later token must not change earlier logits."""
    cfg = CONFIGS[0]
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=2)
    x = tokens()
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 256
    with torch.no_grad():
        a, b = m(x), m(y)
    assert_close(a[:, :7], b[:, :7], "logits before the edited position")
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4, "edited tokens did not change their own logits"


def test_train_step():
    cfg = CONFIGS[0]
    torch.manual_seed(0)
    m = archc.build(SPEC, **cfg)
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters())), "every parameter should move after one step"
