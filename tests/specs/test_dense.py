"""specs/dense.arch (DRCT's residual dense group over tokens, TOPOLOGIES.md 2.5) against a
hand-written reference.

Reference computation, one group with input x (C = d, growth g, B blocks):
  block i reads the channel concatenation [x, y_0, ..., y_{i-1}] of width w_i = C + i*g;
  it is a pre-norm transformer layer at that width (LayerNorm; causal MHA with RoPE,
  heads = w_i // head_dim, head size w_i // heads; GELU MLP with hidden mlp_ratio * w_i;
  no biases in the linears):  z = u + MLP(LN(u)),  u = s + Attn(LN(s))
  y_i = LeakyReLU_0.2(W_i z) with W_i: w_i -> g (no bias) for i < B-1; y_{B-1} = W z: -> C
  group output = x + 0.2 * y_{B-1}
Groups are stacked; then a final LayerNorm and the tied head.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archc
from refs import (LayerNorm, QKVO, GeluMLP, causal_attention, WeightSource, load_exact,
                  randomize_, assert_close, n_params, tokens, check_train_step, take,
                  ATTN_PAIRS, check_decode_matches_prefill)

SPEC = "specs/dense.arch"

CFG = dict(d=32, growth=16, blocks=3, groups=2, head_dim=16, mlp_ratio=2)
CONFIGS = [CFG,
           dict(d=32, growth=8, blocks=3, groups=1, head_dim=16, mlp_ratio=1),  # width 40: 2 heads of 20
           dict(d=32, growth=32, blocks=2, groups=3, head_dim=32, mlp_ratio=2)]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class DenseLayer(nn.Module):
    def __init__(self, width, heads, hidden):
        super().__init__()
        self.ln1 = LayerNorm(width)
        self.attn = QKVO(width, heads)
        self.ln2 = LayerNorm(width)
        self.mlp = GeluMLP(width, hidden)

    def forward(self, s):
        u = s + self.attn.out(causal_attention(*self.attn.project(self.ln1(s))))
        return u + self.mlp(self.ln2(u))


class RDG(nn.Module):
    def __init__(self, d, growth, blocks, head_dim, mlp_ratio):
        super().__init__()
        widths = [d + i * growth for i in range(blocks)]
        self.layers = nn.ModuleList(DenseLayer(w, w // head_dim, mlp_ratio * w) for w in widths)
        self.compress = nn.ModuleList(nn.Linear(w, growth if i < blocks - 1 else d, bias=False)
                                      for i, w in enumerate(widths))
        self.seen_widths = []

    def forward(self, x):
        feats = [x]
        self.seen_widths = []
        for i, (layer, lin) in enumerate(zip(self.layers, self.compress)):
            s = torch.cat(feats, dim=-1)
            self.seen_widths.append(s.shape[-1])
            y = lin(layer(s))
            if i < len(self.layers) - 1:
                y = F.leaky_relu(y, negative_slope=0.2)
            feats.append(y)
        return x + 0.2 * feats[-1]


class RefDRCT(nn.Module):
    def __init__(self, vocab=256, d=64, growth=32, blocks=5, groups=2, head_dim=32, mlp_ratio=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.groups = nn.ModuleList(RDG(d, growth, blocks, head_dim, mlp_ratio) for _ in range(groups))
        self.final_norm = LayerNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for g in self.groups:
            x = g(x)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, cfg):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["layernorm.weight"],
         "final_norm.bias": src["layernorm.bias"]}
    for g in range(cfg["groups"]):
        for i in range(cfg["blocks"]):
            r, a = f"groups.{g}.layers.{i}.", f"body.{g}.dense.{i}.layer."
            take(w, src, [("ln1.weight", "layernorm.weight"), ("ln1.bias", "layernorm.bias"),
                          ("ln2.weight", "layernorm_1.weight"), ("ln2.bias", "layernorm_1.bias"),
                          ("mlp.fc1.weight", "mlp.up.weight"), ("mlp.fc2.weight", "mlp.down.weight")],
                 r, a)
            take(w, src, ATTN_PAIRS, r + "attn.", a + "attention.")
            w[f"groups.{g}.compress.{i}.weight"] = src[f"body.{g}.dense.{i}.linear.weight"]
    load_exact(ref, w, src)


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed, std=0.1)
    ref = RefDRCT(**cfg)
    copy_weights(m, ref, cfg)
    return m, ref


def closed_form_params(vocab=256, d=64, growth=32, blocks=5, groups=2, head_dim=32, mlp_ratio=2):
    group = 0
    for i in range(blocks):
        w = d + i * growth
        out = growth if i < blocks - 1 else d
        group += 4 * w              # two LayerNorms (weight + bias)
        group += 4 * w * w          # q, k, v, o (all heads together span the width)
        group += 2 * mlp_ratio * w * w
        group += w * out            # the compressing linear, no bias
    return vocab * d + groups * group + 2 * d


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"dense {cfg}")


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=ids)
def test_block_input_widths(cfg):
    """Block i of every group reads width d + i*growth (forward pre-hooks on archc's
    per-block layer modules), as the reference does."""
    m, ref = make_pair(cfg)
    seen = []
    hooks = [m.body[g].dense[i].layer.register_forward_pre_hook(
                 lambda mod, args, g=g, i=i: seen.append((g, i, args[0].shape[-1])))
             for g in range(cfg["groups"]) for i in range(cfg["blocks"])]
    with torch.no_grad():
        m(tokens())
        ref(tokens())
    for h in hooks:
        h.remove()
    expected = [(g, i, cfg["d"] + i * cfg["growth"]) for g in range(cfg["groups"]) for i in range(cfg["blocks"])]
    assert seen == expected
    for grp in ref.groups:
        assert grp.seen_widths == [cfg["d"] + i * cfg["growth"] for i in range(cfg["blocks"])]


def test_zero_last_linear_makes_group_identity():
    cfg = CFG
    m, _ = make_pair(cfg)
    with torch.no_grad():
        m.body[0].dense[cfg["blocks"] - 1].linear.weight.zero_()
    io = []
    hook = m.body[0].register_forward_hook(lambda mod, args, out: io.append((args[0], out)))
    with torch.no_grad():
        m(tokens())
    hook.remove()
    (x_in, x_out), = io
    assert torch.equal(x_in, x_out), "group 0 with a zero last linear is not the identity"
    # the other group still changes its input
    io2 = []
    hook = m.body[1].register_forward_hook(lambda mod, args, out: io2.append((args[0], out)))
    with torch.no_grad():
        m(tokens())
    hook.remove()
    assert (io2[0][0] - io2[0][1]).abs().max() > 1e-4


@pytest.mark.parametrize("cfg", CONFIGS + [dict()], ids=lambda c: ids(c) or "defaults")
def test_param_count_closed_form(cfg):
    assert n_params(archc.build(SPEC, **cfg)) == closed_form_params(**cfg) == n_params(RefDRCT(**cfg))


def test_decode_matches_prefill():
    m, _ = make_pair(CONFIGS[1])
    check_decode_matches_prefill(m, tokens(B=2, T=12))
    m, _ = make_pair(CFG)
    check_decode_matches_prefill(m, tokens(B=1, T=10))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    check_train_step(m, tokens())
