"""specs/stochastic_kv.arch (R-CLA, TOPOLOGIES.md 2.2) against a hand-written reference.

Reference computation: pre-norm decoder (RMSNorm, RoPE, GQA, SwiGLU, tied head). Layer 0
attends with its own K/V. Layer i >= 1 attends either with its own K/V or with the K/V
that layer i-1 actually attended with (post-RoPE; after layer i-1's own choice), as a
list `share[i]` says. Training draws share[i] = rand() < p once per layer and forward, in
layer order; eval uses CLA-2 (odd layers share, even layers own).
"""

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, QKVO, SwiGLU, causal_attention, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, copy_renamed,
                  check_decode_matches_prefill, take_decoder_layer)

SPEC = "specs/stochastic_kv.arch"
BASE = "specs/transformer.arch"

CFG = dict(d=32, depth=4, heads=4, kv_heads=2, hidden=48)
CONFIGS = [CFG, dict(d=32, depth=5, heads=4, kv_heads=1, hidden=40),
           dict(d=32, depth=3, heads=2, kv_heads=2, hidden=40)]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        self.attn_norm = RMSNorm(d)
        self.attn = QKVO(d, heads, kv_heads)
        self.ffn_norm = RMSNorm(d)
        self.ffn = SwiGLU(d, hidden)


class RefRCLA(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, kv_heads=2, hidden=172):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, hidden) for _ in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks, share):
        """share[i] (i >= 1): layer i attends with layer i-1's effective K/V."""
        assert len(share) == len(self.blocks) and not share[0]
        x = self.embed(toks)
        prev_kv = None
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.attn.project(blk.attn_norm(x))
            if share[i]:
                k, v = prev_kv
            prev_kv = (k, v)
            x = x + blk.attn.out(causal_attention(q, k, v))
            x = x + blk.ffn(blk.ffn_norm(x))
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        r, a = f"blocks.{i}.", f"layers.{i}."
        take_decoder_layer(w, src, r, a)
    load_exact(ref, w, src)


def make_pair(cfg, seed=1, **extra):
    m = archc.build(SPEC, **cfg, **extra)
    randomize_(m, seed=seed)
    ref = RefRCLA(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


def cla2(depth):
    return [i % 2 == 1 for i in range(depth)]


def predicted_draws(seed, depth, p):
    """The choices a train-mode forward makes after torch.manual_seed(seed): one
    torch.rand(()) per layer >= 1, in layer order."""
    torch.manual_seed(seed)
    return [False] + [bool(torch.rand(()) < p) for _ in range(1, depth)]


def from_baseline(name):
    # transformer.arch names -> stochastic_kv.arch names
    return name.replace(".attn.", ".attention.").replace(".mlp.", ".swiglu.")


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_eval_matches_reference_cla2(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m.eval()(x), ref(x, cla2(cfg["depth"])), f"eval (CLA-2) {cfg}")


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=ids)
def test_train_draws_match_reference(cfg):
    """Train mode, p = 0.5: replaying the RNG gives the choices; the forward must equal the
    reference with exactly those choices, for seeds that cover both branches per layer."""
    m, ref = make_pair(cfg, p=0.5)
    m.train()
    x = tokens()
    seen = set()
    for seed in range(8):
        share = predicted_draws(seed, cfg["depth"], 0.5)
        seen.update((i, s) for i, s in enumerate(share) if i)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = m(x)
        assert_close(out, ref(x, share), f"train seed {seed} share={share}")
    assert seen == {(i, s) for i in range(1, cfg["depth"]) for s in (False, True)}, \
        "seeds did not exercise both choices in every layer"


def test_one_draw_per_layer_per_forward():
    """A train-mode forward consumes exactly depth-1 scalar draws of the global RNG."""
    cfg = CFG
    m, _ = make_pair(cfg, p=0.5)
    m.train()
    torch.manual_seed(3)
    with torch.no_grad():
        m(tokens())
    after = torch.rand(())
    torch.manual_seed(3)
    for _ in range(cfg["depth"] - 1):
        torch.rand(())
    assert torch.equal(after, torch.rand(()))


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=ids)
def test_p0_train_is_baseline_transformer(cfg):
    m, ref = make_pair(cfg, p=0.0)
    base = archc.build(BASE, **cfg)
    copy_renamed(base, m, from_baseline)
    x = tokens()
    m.train()
    base.train()
    with torch.no_grad():
        for seed in range(3):
            torch.manual_seed(seed)
            out = m(x)
            assert_close(out, base(x), "p=0 train vs transformer.arch")
            assert_close(out, ref(x, [False] * cfg["depth"]), "p=0 train vs reference (never share)")


def test_p1_train_always_shares():
    """p = 1: every layer >= 1 reads its predecessor's effective K/V, so all layers attend
    with layer 0's K/V."""
    cfg = CFG
    m, ref = make_pair(cfg, p=1.0)
    x = tokens()
    m.train()
    with torch.no_grad():
        out = m(x)
        assert_close(out, ref(x, [False] + [True] * (cfg["depth"] - 1)), "p=1 train")
        # and this is different from the eval map (layer 2 owns its K/V there)
        assert (out - m.eval()(x)).abs().max() > 1e-4


def test_train_with_inference_map_draws_equals_eval():
    """For a seed whose draws happen to be the CLA-2 map (layers 1, 3 share; 2 own), the
    train-mode forward equals the eval forward."""
    cfg = CFG
    m, ref = make_pair(cfg, p=0.5)
    x = tokens()
    seed = next(s for s in range(1000) if predicted_draws(s, cfg["depth"], 0.5) == cla2(cfg["depth"]))
    with torch.no_grad():
        expected = m.eval()(x)
        m.train()
        torch.manual_seed(seed)
        assert_close(m(x), expected, f"train (seed {seed}, draws = CLA-2) vs eval")
        assert_close(expected, ref(x, cla2(cfg["depth"])), "eval vs reference")


@pytest.mark.parametrize("depth", [4, 5])
def test_cache_bytes(depth):
    """CLA-2 keeps a cache for the even layers only: exactly half of transformer.arch's for
    even depth, (L - L//2) / L of it in general."""
    cfg = dict(CFG, depth=depth)
    L = 16
    ours = archc.build(SPEC, **cfg).eval().new_cache(batch=1, max_len=L).nbytes
    base = archc.build(BASE, **cfg).eval().new_cache(batch=1, max_len=L).nbytes
    assert base == depth * 2 * L * cfg["kv_heads"] * (cfg["d"] // cfg["heads"]) * 4
    assert ours * depth == base * (depth - depth // 2)
    if depth % 2 == 0:
        assert 2 * ours == base


def test_param_count_equals_baseline():
    """Training keeps every layer's K/V projections: same parameters as transformer.arch."""
    for cfg in CONFIGS:
        assert n_params(archc.build(SPEC, **cfg)) == n_params(archc.build(BASE, **cfg))
        assert n_params(archc.build(SPEC, **cfg)) == n_params(RefRCLA(**cfg))


def test_infer_build_drops_dead_kv_and_matches_eval():
    """mode="infer" drops the K/V projections of the sharing layers (and folds the norm
    gains into the linears that read them); archc.reparam fills it from the train build's
    weights, and it equals the eval forward (and the CLA-2 reference)."""
    cfg = CFG
    m, ref = make_pair(cfg)
    inf = archc.reparam(m)
    dead = {f"layers.{i}.attention.{p}.weight" for i in range(1, cfg["depth"], 2) for p in "kv"}
    assert dead <= set(m.state_dict()) - set(inf.state_dict())
    assert not dead & set(inf.state_dict())
    x = tokens()
    with torch.no_grad():
        assert_close(inf(x), m.eval()(x), "infer build vs eval")
        assert_close(inf(x), ref(x, cla2(cfg["depth"])), "infer build vs reference")
    assert inf.new_cache(1, 16).nbytes == m.new_cache(1, 16).nbytes
    check_decode_matches_prefill(inf, tokens(B=2, T=12))


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=ids)
def test_decode_matches_prefill(cfg):
    m, _ = make_pair(cfg)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    check_train_step(m, tokens())
