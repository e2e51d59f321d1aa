"""specs/lazy_topk.arch (Lazy Neuron activation sparsity, TOPOLOGIES.md 2.13) against a
hand-written plain-torch reference.

Reference computation. Pre-norm decoder with LayerNorm (eps 1e-5, bias), causal RoPE MHA,
and the MLP  MLP(x) = W2 TopK_k(ReLU(W1 x + b1)) + b2,  where TopK_k keeps each token's
k largest hidden activations and zeroes the rest (the reference ranks them with argsort);
final LayerNorm, tied head. With k = hidden it is the dense ReLU MLP.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (LayerNorm, Attention, WeightSource, load_exact, randomize_, assert_close,
                  n_params, tokens, check_train_step, take, ATTN_PAIRS,
                  check_decode_matches_prefill, capture)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "lazy_topk.arch")

CFG = dict(d=32, depth=2, heads=4, hidden=64, k=8)
CONFIGS = [
    CFG,
    dict(d=32, depth=2, heads=2, hidden=48, k=1),
    dict(d=64, depth=1, heads=4, hidden=96, k=40),
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


def keep_top(h, k):
    """Zero all but each row's k largest entries."""
    if k is None:
        return h
    rank = h.argsort(dim=-1, descending=True).argsort(dim=-1)   # 0 = largest
    return torch.where(rank < k, h, torch.zeros_like(h))


class Block(nn.Module):
    def __init__(self, d, heads, hidden, k):
        super().__init__()
        self.k = k
        self.norm1 = LayerNorm(d)
        self.attn = Attention(d, heads)
        self.norm2 = LayerNorm(d)
        self.fc_in = nn.Linear(d, hidden)
        self.fc_out = nn.Linear(hidden, d)

    def hidden(self, x):
        """x after attention -> the sparse hidden activation."""
        return keep_top(torch.relu(self.fc_in(self.norm2(x))), self.k)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc_out(self.hidden(x))


class RefLazy(nn.Module):
    """k=None: the dense ReLU MLP model."""

    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=256, k=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, hidden, k) for _ in range(depth))
        self.norm_f = LayerNorm(d)

    def forward(self, toks, hiddens=None):
        x = self.embed(toks)
        for blk in self.blocks:
            x = x + blk.attn(blk.norm1(x))
            h = blk.hidden(x)
            if hiddens is not None:
                hiddens.append(h)
            x = x + blk.fc_out(h)
        return self.norm_f(x) @ self.embed.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "norm_f.weight": src["layernorm.weight"],
         "norm_f.bias": src["layernorm.bias"]}
    for i in range(depth):
        r, a = f"blocks.{i}.", f"layers.{i}."
        for ours, theirs in [("norm1", "layernorm"), ("norm2", "layernorm_1"),
                             ("fc_in", "linear"), ("fc_out", "linear_1")]:
            for p in ("weight", "bias"):
                w[f"{r}{ours}.{p}"] = src[f"{a}{theirs}.{p}"]
        take(w, src, ATTN_PAIRS, r + "attn.", a + "attention.")
    load_exact(ref, w, src)


def make_pair(cfg, seed=1, ref_k="same"):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed, std=0.1)
    ref = RefLazy(**dict(cfg, k=cfg["k"] if ref_k == "same" else ref_k))
    copy_weights(m, ref, cfg["depth"])
    return m, ref


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"lazy_topk {cfg}")
    assert n_params(m) == n_params(ref)


def test_sparsity_matters():
    """Guard against a vacuous comparison: the dense reference gives other logits."""
    m, _ = make_pair(CFG)
    dense = RefLazy(**dict(CFG, k=None))
    copy_weights(m, dense, CFG["depth"])
    x = tokens()
    with torch.no_grad():
        assert (m(x) - dense(x)).abs().max() > 1e-3


@pytest.mark.parametrize("hidden", [48, 64])
def test_k_equal_hidden_is_dense_relu_mlp(hidden):
    cfg = dict(d=32, depth=2, heads=4, hidden=hidden, k=hidden)
    m, dense = make_pair(cfg, ref_k=None)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), dense(x), f"k = hidden = {hidden} vs the dense ReLU MLP model")


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_at_most_k_nonzeros_per_token(cfg):
    """The hidden activation archc feeds to W2 (captured by a hook) has at most k non-zeros
    per token, and they are exactly the k largest of ReLU(W1 x + b1) (both captured; the
    reference's recomputation agrees)."""
    m, ref = make_pair(cfg)
    fed, pre = [], []
    hooks = []
    for layer in m.layers:
        hooks += [capture(layer.linear_1, fed, "input"), capture(layer.linear, pre)]
    x = tokens()
    ref_h = []
    with torch.no_grad():
        m(x)
        ref(x, hiddens=ref_h)
    for h in hooks:
        h.remove()
    k = cfg["k"]
    assert len(fed) == len(pre) == cfg["depth"]
    for i, (h, z) in enumerate(zip(fed, pre)):
        nnz = (h != 0).sum(-1)
        positive = (torch.relu(z) > 0).sum(-1)
        assert (nnz <= k).all(), f"layer {i}: a token has {nnz.max().item()} > k={k} non-zeros"
        assert torch.equal(nnz, torch.minimum(positive, torch.full_like(positive, k))), \
            f"layer {i}: not min(k, #positive) non-zeros"
        assert (positive > k).any(), f"layer {i}: the top-k never had to drop anything"
        assert torch.equal(h, keep_top(torch.relu(z), k)), f"layer {i}: not the k largest"
        assert_close(h, ref_h[i], f"layer {i}: hidden activation vs reference")


def test_decode_matches_prefill():
    m, _ = make_pair(CFG)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters()))
