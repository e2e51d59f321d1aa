"""specs/raptor.arch against a hand-written block-recurrent decoder (Raptor):
k = 2 tied pre-norm blocks applied over contiguous phases, f = B_2^{n2} o B_1^{n1}."""

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, Attention, SwiGLU, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step)

SPEC = "specs/raptor.arch"
BASE = dict(d=32, heads=4, hidden=48)
PHASES = [(3, 5), (1, 1), (2, 4), (4, 1)]


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.attention_norm, self.attention = RMSNorm(d), Attention(d, heads)
        self.ffn_norm, self.feed_forward = RMSNorm(d), SwiGLU(d, hidden)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class RefRaptor(nn.Module):
    def __init__(self, vocab=256, d=64, heads=4, hidden=172, n1=3, n2=5):
        super().__init__()
        self.schedule = [(0, n1), (1, n2)]          # (block id, repeats)
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, hidden) for _ in range(2))
        self.norm = RMSNorm(d)

    def forward(self, tokens, taps=None):
        a = self.embed(tokens)
        for block_id, repeats in self.schedule:
            for _ in range(repeats):
                a = self.blocks[block_id](a)
                if taps is not None:
                    taps.append(a)
        return self.norm(a) @ self.embed.weight.T


def copy_weights(m, ref):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "norm.weight": src["rmsnorm.weight"]}
    for b in range(2):
        o, a = f"blocks.{b}.", f"blocks.{b}."
        w[o + "attention_norm.weight"] = src[a + "rmsnorm.weight"]
        w[o + "ffn_norm.weight"] = src[a + "rmsnorm_1.weight"]
        for ours, theirs in [("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")]:
            w[o + f"attention.{ours}.weight"] = src[a + f"attn.{theirs}.weight"]
        for ours, theirs in [("w1", "gate"), ("w3", "up"), ("w2", "down")]:
            w[o + f"feed_forward.{ours}.weight"] = src[a + f"ffn.{theirs}.weight"]
    load_exact(ref, w, src)


def block_params(d, hidden):
    return 4 * d * d + 3 * d * hidden + 2 * d


@pytest.mark.parametrize("n1,n2", PHASES)
def test_matches_reference(n1, n2):
    cfg = dict(BASE, n1=n1, n2=n2)
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=1)
    ref = RefRaptor(**cfg)
    copy_weights(m, ref)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"raptor n1={n1} n2={n2}")


@pytest.mark.parametrize("n1,n2", PHASES)
def test_unique_params_are_k_blocks(n1, n2):
    cfg = dict(BASE, n1=n1, n2=n2)
    m = archc.build(SPEC, **cfg)
    d, hidden = BASE["d"], BASE["hidden"]
    expected = 2 * block_params(d, hidden) + 256 * d + d
    assert n_params(m) == expected, f"{cfg}: {n_params(m)} parameters, expected k=2 blocks + embed + norm = {expected}"


@pytest.mark.parametrize("n1,n2", PHASES)
def test_block_applications(n1, n2):
    """Total block applications = n1 + n2 (= L of the teacher); block 0 runs first, n1
    times in a row, then block 1 n2 times; every application's activation is observable
    and equals the reference's per-iteration activation."""
    cfg = dict(BASE, n1=n1, n2=n2)
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=3)
    ref = RefRaptor(**cfg)
    copy_weights(m, ref)
    calls, acts = [], []
    def hook(b):
        def record(mod, inp, out):
            calls.append(b)
            acts.append(out.detach().clone())
        return record

    for b, block in enumerate(m.blocks):
        block.register_forward_hook(hook(b))
    taps = []
    x = tokens()
    with torch.no_grad():
        m(x)
        ref(x, taps=taps)
    assert len(calls) == n1 + n2, f"{len(calls)} block applications, expected n1 + n2 = {n1 + n2}"
    assert calls == [0] * n1 + [1] * n2, f"phase schedule {calls}"
    assert len(taps) == len(acts)
    for i, (a, t) in enumerate(zip(acts, taps)):
        assert_close(a, t, f"activation after application {i}")


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **BASE)
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters())), \
        f"unchanged: {sorted(set(n for n, _ in m.named_parameters()) - changed)}"
