"""specs/reparam_vit.arch (structural reparameterization of ViT depth, TOPOLOGIES.md 2.8)
against a hand-written reference.

Reference computation (decoder form of the spec). Pre-norm layer with m = `branches`
parallel branches per sublayer, each with its own LayerNorm:
  join = ramp(join_start, join_end) of the training step in training, 1 in eval
  attention: inp_0 = x, inp_b = (1 - join) * y_{b-1} + join * x;  y_b = MHSA_b(LN_b(inp_b))
             x = x + sum_b y_b
  FFN:       the same chain with y_b = fc2_b(gelu(fc1_b(LN_b(inp_b))))
MHSA_b: causal, RoPE, `heads` heads of `head_dim`, biases on q/k/v/o. Head: final
LayerNorm, tied embedding. At join = 1 every branch reads x, and the model folds exactly
into one attention with m*heads heads and one FFN of width m*hidden (LN affines folded into
the first linears): archc.reparam(model) must produce that single path with equal outputs.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from archc.api import compile_program
from archc.ir import walk
from refs import (LayerNorm, Attention, BiasMLP, WeightSource, load_exact, randomize_,
                  assert_close, assert_close_rel, n_params, tokens, check_train_step,
                  check_decode_matches_prefill, capture, ramp_value)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "reparam_vit.arch")

CFG = dict(d=32, depth=2, branches=3, heads=2, head_dim=8, hidden=24, join_start=10,
           join_end=50)
CFG2 = dict(d=32, depth=1, branches=2, heads=3, head_dim=8, hidden=40, join_start=0,
            join_end=1000)


class RefLayer(nn.Module):
    def __init__(self, d, branches, heads, head_dim, hidden):
        super().__init__()
        self.attn_norms = nn.ModuleList(LayerNorm(d) for _ in range(branches))
        self.attns = nn.ModuleList(Attention(d, heads, head_dim=head_dim, bias=True) for _ in range(branches))
        self.ffn_norms = nn.ModuleList(LayerNorm(d) for _ in range(branches))
        self.ffns = nn.ModuleList(BiasMLP(d, hidden) for _ in range(branches))

    @staticmethod
    def chain(x, norms, fns, join):
        ys = []
        for b, (norm, fn) in enumerate(zip(norms, fns)):
            inp = x if b == 0 else (1 - join) * ys[-1] + join * x
            ys.append(fn(norm(inp)))
        total = ys[0]
        for y in ys[1:]:
            total = total + y
        return total

    def forward(self, x, join):
        x = x + self.chain(x, self.attn_norms, self.attns, join)
        return x + self.chain(x, self.ffn_norms, self.ffns, join)


class RefReparamViT(nn.Module):
    def __init__(self, vocab=256, d=64, depth=3, branches=2, heads=2, head_dim=16, hidden=96,
                 join_start=0, join_end=1000):
        super().__init__()
        self.join_start, self.join_end = join_start, join_end
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(RefLayer(d, branches, heads, head_dim, hidden)
                                    for _ in range(depth))
        self.final_norm = LayerNorm(d)

    def join(self, step):
        return ramp_value(step, self.join_start, self.join_end) if self.training else 1.0

    def forward(self, toks, step=0, join=None):
        join = self.join(step) if join is None else join
        x = self.embed(toks)
        for layer in self.layers:
            x = layer(x, join)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, cfg):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["layernorm.weight"],
         "final_norm.bias": src["layernorm.bias"]}
    for i in range(cfg["depth"]):
        for b in range(cfg["branches"]):
            r, a = f"layers.{i}.", f"layers.{i}.attn.{b}."
            for p in ("weight", "bias"):
                w[f"{r}attn_norms.{b}.{p}"] = src[a + "layernorm." + p]
                for ours, theirs in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")):
                    w[f"{r}attns.{b}.{ours}.{p}"] = src[f"{a}attention.{theirs}.{p}"]
            f = f"layers.{i}.ffn.{b}."
            for p in ("weight", "bias"):
                w[f"{r}ffn_norms.{b}.{p}"] = src[f + "layernorm." + p]
                w[f"{r}ffns.{b}.fc1.{p}"] = src[f + "mlp.up." + p]
                w[f"{r}ffns.{b}.fc2.{p}"] = src[f + "mlp.down." + p]
    load_exact(ref, w, src)


_BUILT = {}


def make_pair(cfg=CFG, seed=1):
    key = tuple(sorted(cfg.items()))
    if key not in _BUILT:
        _BUILT[key] = archc.load(SPEC, **cfg)
    m = archc.build(_BUILT[key])
    randomize_(m, seed=seed, std=0.1)
    ref = RefReparamViT(**cfg)
    copy_weights(m, ref, cfg)
    return m, ref


@pytest.mark.parametrize("step", [0, 10, 30, 49, 50, 80])
def test_matches_reference_training(step):
    """Training forward at steps before, on and after the join ramp (join 0, 0.5, ~1, 1)."""
    m, ref = make_pair()
    m.train(), ref.train()
    m.set_step(step)
    x = tokens(T=10)
    with torch.no_grad():
        assert_close(m(x), ref(x, step=step), f"reparam_vit train step={step}")


@pytest.mark.parametrize("cfg", [CFG, CFG2], ids=["b3", "b2"])
def test_matches_reference_eval(cfg):
    """Eval: join = 1 (every branch reads x) whatever the step."""
    m, ref = make_pair(cfg)
    m.eval(), ref.eval()
    x = tokens(T=10)
    with torch.no_grad():
        for step in (0, cfg["join_start"] + 1):
            m.set_step(step)
            assert_close(m(x), ref(x, step=step), f"reparam_vit eval step={step}")


def test_join_matters():
    """Guard: the sequential chain (join 0) and the joined form (join 1) differ."""
    m, ref = make_pair()
    ref.train()
    x = tokens(T=10)
    with torch.no_grad():
        assert (ref(x, join=0.0) - ref(x, join=1.0)).abs().max() > 1e-3
        assert (ref(x, join=0.0) - ref(x, join=0.5)).abs().max() > 1e-4


def test_step0_branches_form_a_sequential_chain():
    """At step 0 in training, branch b's LayerNorm reads exactly branch b-1's output (not
    x), in both sublayers of every layer."""
    m, ref = make_pair()
    m.train()
    m.set_step(0)
    outs, ins, hooks = {}, {}, []
    for i in range(CFG["depth"]):
        for kind, proj in (("attn", "attention.o"), ("ffn", "mlp.down")):
            for b in range(CFG["branches"]):
                branch = getattr(m.layers[i], kind)[b]
                outs[i, kind, b], ins[i, kind, b] = [], []
                hooks.append(capture(branch.get_submodule(proj), outs[i, kind, b], "output"))
                hooks.append(capture(branch.layernorm, ins[i, kind, b], "input"))
    x = tokens(T=10)
    with torch.no_grad():
        out = m(x)
    for h in hooks:
        h.remove()
    for (i, kind, b), got in ins.items():
        if b > 0:
            assert_close(got[0], outs[i, kind, b - 1][0], f"layer {i} {kind} branch {b} input",
                         atol=0.0)
    with torch.no_grad():
        assert_close(out, ref.train()(x, join=0.0), "step 0 vs sequential reference")


def _ops(program):
    return [n.op for b in program.classes.values() for n in walk(b.graph)]


@pytest.mark.parametrize("how", ["eval", "train_after_join"])
def test_folded_equals_branched(how):
    """With the join finished (eval, or training at step >= join_end) the folded model
    equals the branched one, and the reference at join = 1."""
    m, ref = make_pair()
    folded = archc.reparam(m)
    assert not folded.training
    x = tokens(T=10)
    if how == "eval":
        m.eval()
        m.set_step(3)
    else:
        m.train()
        m.set_step(CFG["join_end"] + 7)
    with torch.no_grad():
        branched = m(x)
        assert_close_rel(folded(x), branched, f"folded vs branched ({how})")
        assert_close(branched, ref.eval()(x), f"branched ({how}) vs joined reference")


def test_folded_structure():
    """One attention with branches*heads heads and one FFN with branches*hidden units per
    layer; branch LayerNorms lose their affine; the final norm (before the tied head) keeps
    it; fewer parameters, by exactly the folded affines and the merged output biases."""
    cfg = CFG
    m, _ = make_pair(cfg)
    f = archc.reparam(m)
    B, H, dh, d, hid = cfg["branches"], cfg["heads"], cfg["head_dim"], cfg["d"], cfg["hidden"]
    fp = dict(f.named_parameters())
    for i in range(cfg["depth"]):
        a = f"layers.{i}.attn.0.attention."
        for p in "qkv":
            assert fp[a + p + ".weight"].shape == (B * H * dh, d)
            assert fp[a + p + ".bias"].shape == (B * H * dh,)
        assert fp[a + "o.weight"].shape == (d, B * H * dh)
        assert fp[f"layers.{i}.ffn.0.mlp.up.weight"].shape == (B * hid, d)
        assert fp[f"layers.{i}.ffn.0.mlp.down.weight"].shape == (d, B * hid)
        for b in range(1, B):
            assert not any(n.startswith(f"layers.{i}.attn.{b}.") or
                           n.startswith(f"layers.{i}.ffn.{b}.") for n in fp)
    assert not any("layers." in n and "layernorm" in n for n in fp)
    assert "layernorm.weight" in fp and "layernorm.bias" in fp      # tied head: not folded
    per_layer = 2 * B * 2 * d + 2 * (B - 1) * d
    assert n_params(m) - n_params(f) == cfg["depth"] * per_layer
    assert n_params(f) <= n_params(m)
    # the cache of the folded model: one slot per layer with all the heads
    cache = f.new_cache(batch=1, max_len=4)
    assert [k.shape[1] for k in cache.k] == [B * H] * cfg["depth"]
    # the infer program: one attend per layer instead of one per branch
    spec = archc.load(SPEC, **cfg)
    train_ops, infer_ops = _ops(compile_program(spec, "train")), _ops(compile_program(spec, "infer"))
    assert train_ops.count("attend") == B * infer_ops.count("attend")
    # (ops are counted per class: the Layer class once, plus the model's final norm)
    assert train_ops.count("layernorm") == 1 + 2 * B
    assert infer_ops.count("layernorm") == 1 + 2          # one shared n(x) per sublayer


def test_decode_matches_prefill():
    m, _ = make_pair()
    check_decode_matches_prefill(m, tokens(B=2, T=12))
    check_decode_matches_prefill(archc.reparam(m), tokens(B=2, T=12))


@pytest.mark.parametrize("step", [0, 30])
def test_train_step(step):
    torch.manual_seed(0)
    m, _ = make_pair(seed=4)
    m.set_step(step)
    check_train_step(m, tokens())
