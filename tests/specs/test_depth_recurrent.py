"""specs/depth_recurrent.arch against a hand-written depth-recurrent Transformer
("Thinking Deeper, Not Longer"): h_0 = Emb(x); T times:
    f = Block(h),  Block(h) = h + g1*Attn(LN h), then + g2*MLP(LN .)   (LayerScale g1, g2)
    g = sigmoid(W_g [h; f] + b_g);  h = g*h + (1-g)*f                  (identity-biased gate)
logits = LN(h_T) @ Emb^T."""

import pytest
import torch
from torch import nn

import archc
from refs import (LayerNorm, Attention, GeluMLP, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step)

SPEC = "specs/depth_recurrent.arch"
CFG = dict(d=32, heads=4, hidden=64)


class LayerScaleBlock(nn.Module):
    def __init__(self, d, heads, hidden, ls_init=0.1):
        super().__init__()
        self.norm1, self.attn = LayerNorm(d), Attention(d, heads)
        self.norm2, self.mlp = LayerNorm(d), GeluMLP(d, hidden)
        self.gamma1 = nn.Parameter(torch.full((d,), ls_init))
        self.gamma2 = nn.Parameter(torch.full((d,), ls_init))

    def forward(self, h):
        h = h + self.gamma1 * self.attn(self.norm1(h))
        return h + self.gamma2 * self.mlp(self.norm2(h))


class RefDepthRecurrent(nn.Module):
    def __init__(self, vocab=256, d=64, heads=4, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.block = LayerScaleBlock(d, heads, hidden)
        self.gate_proj = nn.Linear(2 * d, d, bias=True)
        self.norm = LayerNorm(d)

    def head(self, h):
        return self.norm(h) @ self.embed.weight.T

    def forward(self, tokens, T):
        h = self.embed(tokens)
        for _ in range(T):
            f = self.block(h)
            g = torch.sigmoid(self.gate_proj(torch.cat([h, f], dim=-1)))
            h = g * h + (1 - g) * f
        return self.head(h)


def copy_weights(m, ref):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"],
         "norm.weight": src["layernorm.weight"], "norm.bias": src["layernorm.bias"],
         "gate_proj.weight": src["gate.gate.weight"], "gate_proj.bias": src["gate.gate.bias"]}
    for ours, theirs in [("norm1", "layernorm"), ("norm2", "layernorm_1")]:
        w[f"block.{ours}.weight"] = src[f"block.{theirs}.weight"]
        w[f"block.{ours}.bias"] = src[f"block.{theirs}.bias"]
    for ours, theirs in [("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")]:
        w[f"block.attn.{ours}.weight"] = src[f"block.attn.{theirs}.weight"]
    w["block.mlp.fc1.weight"] = src["block.ffn.up.weight"]
    w["block.mlp.fc2.weight"] = src["block.ffn.down.weight"]
    w["block.gamma1"] = src["block.layerscale.gamma"]
    w["block.gamma2"] = src["block.layerscale_1.gamma"]
    load_exact(ref, w, src)


def make_pair(gate_bias=None, seed=1):
    m = archc.build(SPEC, **CFG)
    randomize_(m, seed=seed)
    with torch.no_grad():
        b = m.gate.gate.bias
        if gate_bias is None:   # spread the gate over (0, 1) so both terms of the mix count
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(seed)))
        else:
            b.fill_(gate_bias)
    ref = RefDepthRecurrent(**CFG)
    copy_weights(m, ref)
    return m, ref


@pytest.mark.parametrize("T", [1, 3, 8])
def test_matches_reference(T):
    m, ref = make_pair()
    x = tokens()
    with torch.no_grad():
        assert_close(m(x, T=T), ref(x, T=T), f"depth_recurrent T={T}")


def test_closed_gate_is_identity():
    """b_g -> +inf: g = 1, the state never moves, logits = head(embedding)."""
    m, ref = make_pair(gate_bias=1e4)
    x = tokens()
    with torch.no_grad():
        expected = ref.head(ref.embed(x))
        for T in (1, 5):
            assert_close(m(x, T=T), expected, f"closed gate, T={T}")
    # sanity: with an ordinary bias the loop does change the output
    m2, _ = make_pair(gate_bias=0.0)
    with torch.no_grad():
        diff = (m2(x, T=5) - expected).abs().max().item()
    assert diff > 1e-3, f"open gate leaves the output at head(embedding) (max diff {diff:.2e})"


def test_open_gate_T1_is_one_layer_transformer():
    """b_g -> -inf and T = 1: h = Block(h_0), a 1-layer LayerScale transformer."""
    m, ref = make_pair(gate_bias=-1e4)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x, T=1), ref.head(ref.block(ref.embed(x))), "open gate, T=1")


def test_params_independent_of_T():
    counts = {T: n_params(archc.build(SPEC, **CFG, T=T)) for T in (2, 16)}
    assert counts[2] == counts[16], f"parameter count depends on T: {counts}"
    assert counts[2] == n_params(RefDepthRecurrent(**CFG)), "parameter count differs from the reference"


def test_default_gate_bias_and_layerscale():
    m = archc.build(SPEC, **CFG, gate_bias=3.0, ls_init=0.2)
    assert torch.all(m.gate.gate.bias == 3.0), "gate bias should start at gate_bias"
    for name in ("layerscale", "layerscale_1"):
        g = getattr(m.block, name).gamma
        assert torch.allclose(g, torch.full_like(g, 0.2)), f"{name} should start at ls_init"


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    changed = check_train_step(m, tokens(), T=3)
    assert len(changed) == len(list(m.parameters())), \
        f"unchanged: {sorted(set(n for n, _ in m.named_parameters()) - changed)}"
