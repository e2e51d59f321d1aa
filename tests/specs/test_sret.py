"""specs/sret.arch against a hand-written Sliced Recursive Transformer (Shen et al. 2022),
language-model variant with full causal attention (group count G = 1):
for each unique block r: twice { x = Block_r(x); x = NLL_{r,j}(x) }, where
Block_r(x): x = c1*x + c2*Attn(LN x); x = c3*x + c4*MLP(LN x)   (c's shared by both applications)
NLL_{r,j}(x) = c1'*x + c2'*MLP'(LN' x)                          (own weights per application)."""

import pytest
import torch
from torch import nn

import archc
from refs import (LayerNorm, Attention, GeluMLP, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step)

SPEC = "specs/sret.arch"
CONFIGS = [
    dict(d=32, heads=4, unique=2, hidden=64, nll_hidden=32),
    dict(d=32, heads=2, unique=3, hidden=48, nll_hidden=64),
]
IDS = ["u2", "u3"]
LOOPS = 2   # every unique block is applied twice (fixed in the spec)


class Coefficient(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.c * x


class RecursiveBlock(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.norm1, self.attn = LayerNorm(d), Attention(d, heads)
        self.norm2, self.mlp = LayerNorm(d), GeluMLP(d, hidden)
        self.coef_skip1, self.coef_attn = Coefficient(), Coefficient()
        self.coef_skip2, self.coef_mlp = Coefficient(), Coefficient()

    def forward(self, x):
        x = self.coef_skip1(x) + self.coef_attn(self.attn(self.norm1(x)))
        x = self.coef_skip2(x) + self.coef_mlp(self.mlp(self.norm2(x)))
        return x


class NonLinearProjection(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.norm, self.mlp = LayerNorm(d), GeluMLP(d, hidden)
        self.coef_skip, self.coef_mlp = Coefficient(), Coefficient()

    def forward(self, x):
        return self.coef_skip(x) + self.coef_mlp(self.mlp(self.norm(x)))


class RefSReT(nn.Module):
    def __init__(self, vocab=256, d=64, heads=4, unique=2, hidden=128, nll_hidden=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(RecursiveBlock(d, heads, hidden) for _ in range(unique))
        self.nlls = nn.ModuleList(NonLinearProjection(d, nll_hidden) for _ in range(unique * LOOPS))
        self.norm = LayerNorm(d)

    def forward(self, tokens):
        x = self.embed(tokens)
        for r, block in enumerate(self.blocks):
            for j in range(LOOPS):
                x = block(x)
                x = self.nlls[r * LOOPS + j](x)
        return self.norm(x) @ self.embed.weight.T


def copy_weights(m, ref, unique):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"],
         "norm.weight": src["layernorm.weight"], "norm.bias": src["layernorm.bias"]}
    for r in range(unique):
        o, a = f"blocks.{r}.", f"blocks.{r}."
        for ours, theirs in [("norm1", "layernorm"), ("norm2", "layernorm_1")]:
            w[o + ours + ".weight"] = src[a + theirs + ".weight"]
            w[o + ours + ".bias"] = src[a + theirs + ".bias"]
        for ours, theirs in [("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")]:
            w[o + f"attn.{ours}.weight"] = src[a + f"attn.{theirs}.weight"]
        w[o + "mlp.fc1.weight"] = src[a + "ffn.up.weight"]
        w[o + "mlp.fc2.weight"] = src[a + "ffn.down.weight"]
        # x = scalar(x) + scalar_1(attn(..)); x = scalar_2(x) + scalar_3(ffn(..))
        for ours, theirs in [("coef_skip1", "scalar"), ("coef_attn", "scalar_1"),
                             ("coef_skip2", "scalar_2"), ("coef_mlp", "scalar_3")]:
            w[o + f"{ours}.c"] = src[a + f"{theirs}.value"]
        for j in range(LOOPS):
            o, a = f"nlls.{r * LOOPS + j}.", f"stages.{r}.nlls.{j}."
            w[o + "norm.weight"] = src[a + "layernorm.weight"]
            w[o + "norm.bias"] = src[a + "layernorm.bias"]
            w[o + "mlp.fc1.weight"] = src[a + "mlp.up.weight"]
            w[o + "mlp.fc2.weight"] = src[a + "mlp.down.weight"]
            w[o + "coef_skip.c"] = src[a + "scalar.value"]
            w[o + "coef_mlp.c"] = src[a + "scalar_1.value"]
    load_exact(ref, w, src)


def block_params(d, hidden):
    return 4 * d * d + 2 * d * hidden + 2 * (2 * d) + 4          # attn, mlp, 2 LN, 4 scalars


def nll_params(d, nll_hidden):
    return 2 * d * nll_hidden + 2 * d + 2                        # mlp, LN, 2 scalars


def unique_param_formula(vocab=256, d=64, heads=4, unique=2, hidden=128, nll_hidden=64):
    """embedding + each unique block once + every NLL (unique * 2 of them) + final LN."""
    return vocab * d + unique * block_params(d, hidden) + unique * LOOPS * nll_params(d, nll_hidden) + 2 * d


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_reference(cfg):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=1)
    ref = RefSReT(**cfg)
    copy_weights(m, ref, cfg["unique"])
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"sret {cfg}")


@pytest.mark.parametrize("cfg", CONFIGS + [dict()], ids=IDS + ["defaults"])
def test_unique_params(cfg):
    m = archc.build(SPEC, **cfg)
    expected = unique_param_formula(**cfg)
    assert n_params(m) == expected, \
        f"{cfg}: archc has {n_params(m)} unique parameters, formula (blocks once + every NLL) {expected}"
    full = {**dict(d=64, unique=2, hidden=128, nll_hidden=64), **cfg}
    assert len(m.blocks) == full["unique"], f"{len(m.blocks)} block modules, expected {full['unique']}"
    for u in range(full["unique"]):
        got = n_params(m.blocks[u])
        assert got == block_params(full["d"], full["hidden"]), f"block {u}: {got} parameters"
        for j in range(LOOPS):
            got = n_params(m.stages[u].nlls[j])
            assert got == nll_params(full["d"], full["nll_hidden"]), f"NLL ({u},{j}): {got} parameters"


def test_application_schedule():
    """Each unique block runs twice (same module), each NLL once, in the order
    B_0, NLL_00, B_0, NLL_01, B_1, NLL_10, B_1, NLL_11."""
    cfg = CONFIGS[0]
    m = archc.build(SPEC, **cfg)
    calls = []
    for u in range(cfg["unique"]):
        m.blocks[u].register_forward_hook(lambda mod, i, o, u=u: calls.append(("B", u)))
        for j in range(LOOPS):
            m.stages[u].nlls[j].register_forward_hook(lambda mod, i, o, u=u, j=j: calls.append(("N", u, j)))
    with torch.no_grad():
        m(tokens())
    expected = [c for u in range(cfg["unique"]) for j in range(LOOPS) for c in (("B", u), ("N", u, j))]
    assert calls == expected, f"application order {calls} != {expected}"


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CONFIGS[0])
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters())), \
        f"unchanged: {sorted(set(n for n, _ in m.named_parameters()) - changed)}"
