"""specs/huginn.arch against a hand-written recurrent-depth LM in the layout of the Huginn
reference (`raven_modeling_minimal.py`): fused Wqkv with a per-head q/k bias, fused SwiGLU
up-projection, sandwich blocks, prelude -> r x (adapter [s; e] -> core) -> coda, the same
final norm used twice, tied head, random truncated-normal initial state."""

import math

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, WeightSource, load_exact, randomize_, assert_close, n_params,
                  tokens, check_train_step, rope_tables, rotate_half)

SPEC = "specs/huginn.arch"
CFG = dict(d=32, heads=4, hidden=48, prelude=2, core=2, coda=1)


class CausalSelfAttention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, d // n_head
        self.Wqkv = nn.Linear(d, 3 * d, bias=False)
        self.qk_bias = nn.Parameter(torch.zeros(2, 1, n_head, self.head_dim))
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = self.Wqkv(x).view(B, T, 3 * self.n_head, self.head_dim).chunk(3, dim=2)
        q = q + self.qk_bias[0]                      # [B, T, H, dh] + [1, H, dh]
        k = k + self.qk_bias[1]
        cos, sin = rope_tables(T, self.head_dim)
        cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, dh]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)
        return self.proj(y)


class GatedMLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc = nn.Linear(d, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(nn.functional.silu(gate) * up)


class SandwichBlock(nn.Module):
    def __init__(self, d, n_head, hidden):
        super().__init__()
        self.norm_1, self.norm_2 = RMSNorm(d), RMSNorm(d)
        self.norm_3, self.norm_4 = RMSNorm(d), RMSNorm(d)
        self.attn = CausalSelfAttention(d, n_head)
        self.mlp = GatedMLP(d, hidden)

    def forward(self, x):
        x = self.norm_2(self.attn(self.norm_1(x)) + x)
        x = self.norm_4(self.mlp(self.norm_3(x)) + x)
        return x


class RefHuginn(nn.Module):
    def __init__(self, vocab=256, d=64, heads=4, hidden=128, prelude=2, core=4, coda=2):
        super().__init__()
        self.d = d
        blocks = lambda n: nn.ModuleList(SandwichBlock(d, heads, hidden) for _ in range(n))
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d),
            prelude=blocks(prelude),
            adapter=nn.Linear(2 * d, d, bias=False),
            core_block=blocks(core),
            coda=blocks(coda),
            ln_f=RMSNorm(d),
        ))
        self.emb_scale = math.sqrt(d)
        self.init_std = math.sqrt(2 / (5 * d))

    def initialize_state(self, e):
        """s_0 ~ TruncNormal(0, std^2) on [-3 std, 3 std], times the embedding scale.
        Drawn by inverse-CDF sampling (one uniform per element: the classic
        torch.nn.init.trunc_normal_ algorithm, the one the Huginn reference ran with)."""
        s = self.init_std
        cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
        u = torch.empty_like(e).uniform_(2 * cdf(-3.0) - 1, 2 * cdf(3.0) - 1)
        x = (torch.erfinv(u) * s * math.sqrt(2.0)).clamp(-3 * s, 3 * s)
        return self.emb_scale * x

    def forward(self, tokens, r, state=None):
        t = self.transformer
        e = t.wte(tokens) * self.emb_scale
        for block in t.prelude:
            e = block(e)
        x = self.initialize_state(e) if state is None else state
        for _ in range(r):
            x = t.adapter(torch.cat([x, e], dim=-1))
            for block in t.core_block:
                x = block(x)
        x = t.ln_f(x)
        for block in t.coda:
            x = block(x)
        x = t.ln_f(x)
        return x @ t.wte.weight.T


def copy_weights(m, ref, prelude, core, coda):
    src = WeightSource(m)
    w = {"transformer.wte.weight": src["emb.weight"],
         "transformer.ln_f.weight": src["ln_f.weight"],
         "transformer.adapter.weight": src["core_block.adapter.weight"]}

    def block(ours, theirs):
        for i in (1, 2, 3, 4):
            w[f"{ours}.norm_{i}.weight"] = src[f"{theirs}.norm_{i}.weight"]
        w[f"{ours}.attn.Wqkv.weight"] = torch.cat(
            [src[f"{theirs}.attn.{p}.weight"] for p in ("q", "k", "v")], dim=0)
        qb = src[f"{theirs}.attn.q_bias.bias"]      # archc: [H, 1, dh], added to [B, H, T, dh]
        kb = src[f"{theirs}.attn.k_bias.bias"]
        w[f"{ours}.attn.qk_bias"] = torch.stack([qb[:, 0], kb[:, 0]])[:, None]  # [2, 1, H, dh]
        w[f"{ours}.attn.proj.weight"] = src[f"{theirs}.attn.o.weight"]
        w[f"{ours}.mlp.fc.weight"] = torch.cat(
            [src[f"{theirs}.mlp.gate.weight"], src[f"{theirs}.mlp.up.weight"]], dim=0)
        w[f"{ours}.mlp.proj.weight"] = src[f"{theirs}.mlp.down.weight"]

    for i in range(prelude):
        block(f"transformer.prelude.{i}", f"prelude.{i}")
    for i in range(core):
        block(f"transformer.core_block.{i}", f"core_block.blocks.{i}")
    for i in range(coda):
        block(f"transformer.coda.{i}", f"coda.{i}")
    load_exact(ref, w, src)


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    ref = RefHuginn(**cfg)
    copy_weights(m, ref, cfg["prelude"], cfg["core"], cfg["coda"])
    return m, ref


def run_capturing_state(m, x, r):
    """Run archc's model and capture the initial state s_0 it drew (the first input of
    the looped core block), so the comparison does not depend on the sampling algorithm."""
    seen = []
    h = m.core_block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        out = m(x, r=r)
    finally:
        h.remove()
    assert len(seen) == r, f"core block ran {len(seen)} times for r={r}"
    return out, seen[0]


@pytest.mark.parametrize("r", [1, 3, 16])
def test_matches_reference(r):
    """Given archc's own s_0, the whole deterministic computation must match."""
    m, ref = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        out, s0 = run_capturing_state(m, x, r)
        expected = ref(x, r=r, state=s0)
    assert_close(out, expected, f"huginn r={r}")


def test_matches_reference_default_shape():
    cfg = dict(d=64, heads=4, hidden=128, prelude=2, core=4, coda=2)
    m, ref = make_pair(cfg, seed=3)
    x = tokens(B=1, T=8)
    with torch.no_grad():
        out, s0 = run_capturing_state(m, x, 2)
        expected = ref(x, r=2, state=s0)
    assert_close(out, expected, "huginn default widths, r=2")


def test_seeded_end_to_end():
    """Seeding both the same gives the same draw and the same logits."""
    m, ref = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        torch.manual_seed(7)
        out = m(x, r=3)
        torch.manual_seed(7)
        expected = ref(x, r=3)
    assert_close(out, expected, "huginn, seeded draw in both, r=3")


def test_initial_state_distribution():
    """s_0 ~ sqrt(d) * TruncNormal(0, sigma^2, +-3 sigma), sigma = sqrt(2/(5d)), fresh per
    call, reproducible under a seed, independent of the input values."""
    d = 64
    m = archc.build(SPEC, d=d, heads=4, hidden=64, prelude=1, core=1, coda=1)
    x = tokens(B=4, T=64)
    with torch.no_grad():
        torch.manual_seed(3)
        _, s0 = run_capturing_state(m, x, 1)
        torch.manual_seed(3)
        _, s0_again = run_capturing_state(m, x, 1)
        _, s0_next = run_capturing_state(m, x, 1)
    sigma = math.sqrt(2 / (5 * d))
    bound = 3 * sigma * math.sqrt(d)
    assert s0.shape == (4, 64, d)
    assert torch.equal(s0, s0_again), "the draw is not reproducible under torch.manual_seed"
    assert not torch.equal(s0, s0_next), "two calls drew the same state"
    assert s0.abs().max() <= bound * (1 + 1e-6), f"|s_0| = {s0.abs().max():.4f} > 3 sigma sqrt(d) = {bound:.4f}"
    # std of N(0,1) truncated at +-3: sqrt(1 - 6 phi(3) / (Phi(3) - Phi(-3))) = 0.98658
    expected_std = 0.98658 * sigma * math.sqrt(d)
    assert abs(s0.mean().item()) < 0.03 * expected_std, f"mean {s0.mean():.4f}"
    assert abs(s0.std().item() / expected_std - 1) < 0.03, \
        f"std {s0.std():.4f} vs truncated-normal std {expected_std:.4f}"
    assert s0.abs().max() > 0.9 * bound, "no draw near the truncation point: not a 3-sigma truncation"


def test_params_independent_of_r():
    counts = {r: n_params(archc.build(SPEC, **CFG, r=r)) for r in (2, 8)}
    assert counts[2] == counts[8], f"parameter count depends on r: {counts}"
    assert counts[2] == n_params(RefHuginn(**CFG)), \
        f"archc has {counts[2]} parameters, the reference {n_params(RefHuginn(**CFG))}"
    m = archc.build(SPEC, **CFG, r=2)
    names2 = [n for n, _ in m.named_parameters()]
    names8 = [n for n, _ in archc.build(SPEC, **CFG, r=8).named_parameters()]
    assert names2 == names8, "parameter names depend on r"


def test_runtime_r_dial():
    m, _ = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        torch.manual_seed(5)
        out16 = m(x, r=16)
        assert out16.shape == (2, 12, 256) and torch.isfinite(out16).all(), "r=16 output bad"
        torch.manual_seed(5)
        o1 = m(x, r=1)
        torch.manual_seed(5)
        o3 = m(x, r=3)
    diff = (o1 - o3).abs().max().item()
    assert diff > 1e-3, f"outputs with r=1 and r=3 are (nearly) identical: max diff {diff:.2e}"


def test_seeded_state_is_the_only_randomness():
    """Same seed -> same output; a different seed -> different initial state -> different output."""
    m, _ = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        torch.manual_seed(1)
        a = m(x, r=2)
        torch.manual_seed(1)
        b = m(x, r=2)
        torch.manual_seed(2)
        c = m(x, r=2)
    assert torch.equal(a, b), "same seed gave different outputs"
    assert (a - c).abs().max() > 1e-4, "the initial state does not depend on the RNG"


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    changed = check_train_step(m, tokens(), r=3)
    assert len(changed) == len(list(m.parameters())), \
        f"unchanged: {sorted(set(n for n, _ in m.named_parameters()) - changed)}"
