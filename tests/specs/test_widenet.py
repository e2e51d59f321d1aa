"""specs/widenet.arch (WideNet, "Go Wider Instead of Deeper", TOPOLOGIES.md 1.9) against a
hand-written plain-torch reference.

Reference computation. One attention (causal, RoPE, MHA) and one MoE FFN are shared by all
L layers; layer l owns only its two LayerNorms:
  x <- x + DropPath(Attn(LN1_l x));  x <- x + DropPath(MoE(LN2_l x))
then a final LayerNorm and the tied head. MoE over the N = B*T tokens of one call:
  p = softmax(x W_r^T) over E experts; each token's k most probable experts (argsort),
  gates = their p renormalised over the k; expert e takes at most
  C = ceil(capacity * N * k / E) assignments in training (no limit in eval: every
  token gets its k experts), handed out choice by choice (all first choices, token
  order, then all second choices, ...); a dropped assignment contributes nothing (no
  renormalisation);
  expert e(x) = W_out[e] gelu_erf(W_in[e] x);
  load-balance loss of the call: E * sum_e f_e P_e, f_e = share of tokens whose first
  choice is e, P_e = mean of p_e over the tokens.
The reference dispatches with explicit Python loops over choices and tokens.
"""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (LayerNorm, Attention, GeluMLP, WeightSource, load_exact, randomize_,
                  assert_close, n_params, tokens, check_train_step, take, ATTN_PAIRS,
                  gelu_erf, check_decode_matches_prefill)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "widenet.arch")

CFG = dict(d=32, depth=3, heads=4, hidden=48, experts=4, k=2)
CONFIGS = [
    CFG,
    dict(d=32, depth=2, heads=2, hidden=40, experts=3, k=1),
    dict(d=32, depth=3, heads=4, hidden=48, experts=4, k=2, capacity=0.5),   # many drops
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class RefMoE(nn.Module):
    def __init__(self, d, experts, hidden, k, capacity):
        super().__init__()
        self.E, self.k, self.capacity = experts, k, capacity
        self.gate = nn.Parameter(torch.empty(experts, d))
        self.fc1 = nn.Parameter(torch.empty(experts, hidden, d))
        self.fc2 = nn.Parameter(torch.empty(experts, d, hidden))
        self.dropped = 0          # assignments dropped in the last call

    def forward(self, x):
        """-> (output, load-balance loss of this call)"""
        B, T, D = x.shape
        xs = x.reshape(B * T, D)
        N, E, k = xs.shape[0], self.E, self.k
        p = torch.softmax(xs @ self.gate.T, dim=-1)                  # [N, E]
        choice = p.argsort(dim=-1, descending=True)[:, :k]          # [N, k]
        g = p.gather(-1, choice)
        g = g / g.sum(-1, keepdim=True)
        limit = math.ceil(self.capacity * N * k / E) if self.training else N
        load = [0] * E
        keep = torch.zeros(N, k)
        for j in range(k):
            for t in range(N):
                e = int(choice[t, j])
                if load[e] < limit:
                    load[e] += 1
                    keep[t, j] = 1.0
        self.dropped = int((keep == 0).sum())
        combine = torch.zeros(N, E).scatter_add(-1, choice, g * keep)   # [N, E]
        h = gelu_erf(torch.einsum("nd,ehd->neh", xs, self.fc1))
        y = torch.einsum("neh,edh->ned", h, self.fc2)                   # every expert, every token
        out = (combine.unsqueeze(-1) * y).sum(1)
        f = torch.zeros(E).scatter_add(0, choice[:, 0], torch.ones(N)) / N
        aux = E * (f * p.mean(0)).sum()
        return out.view(B, T, D), aux


class LayerNorms(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_attn, self.ln_ffn = LayerNorm(d), LayerNorm(d)


class RefWideNet(nn.Module):
    def __init__(self, vocab=256, d=64, depth=6, heads=4, hidden=128, experts=4, k=2,
                 capacity=1.25, drop=0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.shared_attn = Attention(d, heads)
        self.shared_moe = RefMoE(d, experts, hidden, k, capacity)
        self.norms = nn.ModuleList(LayerNorms(d) for _ in range(depth))
        self.final_norm = LayerNorm(d)

    def forward(self, toks):
        """-> (logits, [load-balance loss of each MoE application])"""
        x = self.embed(toks)
        aux = []
        for n in self.norms:
            x = x + self.shared_attn(n.ln_attn(x))
            y, a = self.shared_moe(n.ln_ffn(x))
            x = x + y
            aux.append(a)
        return self.final_norm(x) @ self.embed.weight.T, aux


class RefALBERT(nn.Module):
    """ALBERT-style shared block with per-layer LayerNorms: one attention and one GELU MLP
    applied L times."""

    def __init__(self, vocab=256, d=64, depth=6, heads=4, hidden=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.attn = Attention(d, heads)
        self.mlp = GeluMLP(d, hidden)
        self.norms = nn.ModuleList(LayerNorms(d) for _ in range(depth))
        self.final_norm = LayerNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for n in self.norms:
            x = x + self.attn(n.ln_attn(x))
            x = x + self.mlp(n.ln_ffn(x))
        return self.final_norm(x) @ self.embed.weight.T


def _common(w, src, depth):
    w["embed.weight"] = src["emb.weight"]
    w["final_norm.weight"], w["final_norm.bias"] = src["layernorm.weight"], src["layernorm.bias"]
    for i in range(depth):
        for ours, theirs in [("ln_attn", "layernorm"), ("ln_ffn", "layernorm_1")]:
            for p in ("weight", "bias"):
                w[f"norms.{i}.{ours}.{p}"] = src[f"layers.{i}.{theirs}.{p}"]


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {}
    _common(w, src, depth)
    take(w, src, ATTN_PAIRS, "shared_attn.", "attn.")
    take(w, src, [("gate", "router"), ("fc1", "w_in"), ("fc2", "w_out")], "shared_moe.", "ffn.")
    load_exact(ref, w, src)


def copy_albert(m, ref, depth):
    src = WeightSource(m)
    w = {}
    _common(w, src, depth)
    take(w, src, ATTN_PAIRS, "attn.", "attn.")
    src["ffn.router"]      # one expert: the router's softmax is 1 whatever its weight
    w["mlp.fc1.weight"] = src["ffn.w_in"][0]
    w["mlp.fc2.weight"] = src["ffn.w_out"][0]
    load_exact(ref, w, src)


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    with torch.no_grad():
        m.ffn.router.mul_(20.0)      # a decisive router: distinct, non-uniform choices
    ref = RefWideNet(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg, mode):
    """Train mode uses `capacity`, eval mode drops nothing (drop = 0, so no randomness
    either way)."""
    m, ref = make_pair(cfg)
    m.train(mode == "train")
    ref.train(mode == "train")
    x = tokens()
    with torch.no_grad():
        logits, aux = ref(x)
        assert_close(m(x), logits, f"widenet {cfg} ({mode})")
        assert_close(m.aux_loss(), torch.stack(aux).sum(), "aux loss", atol=1e-6)
    if cfg.get("capacity", 1.25) < 1 and mode == "train":
        assert ref.shared_moe.dropped > 0, "the capacity case dropped nothing"


def test_router_statistics_per_application():
    """The shared MoE keeps one load-balance term per application (depth of them), each
    equal to the reference's E * sum_e f_e P_e for that application; model.aux_loss() is
    their sum, and a new forward starts a new list."""
    cfg = CFG
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        for _ in range(2):
            m(x)
            assert len(m.ffn.aux) == cfg["depth"]
        _, aux = ref(x)
    for i, (got, want) in enumerate(zip(m.ffn.aux, aux)):
        assert_close(got, want, f"load-balance loss of application {i}", atol=1e-6)
    assert_close(m.aux_loss(), torch.stack(aux).sum(), "model.aux_loss()", atol=1e-6)
    assert len({round(a.item(), 6) for a in aux}) > 1, "every application gave the same loss"


@pytest.mark.parametrize("cfg", [CFG, dict(), dict(d=48, depth=5, heads=3, hidden=64, experts=8, k=1)],
                         ids=lambda c: ids(c) or "defaults")
def test_param_count_closed_form(cfg):
    """|Attn| + |MoE| + L * 2 * |LN| + embed + final LN, exactly: the shared blocks count once."""
    full = dict(dict(vocab=256, d=64, depth=6, heads=4, hidden=128, experts=4, k=2), **cfg)
    d, E, h, L = full["d"], full["experts"], full["hidden"], full["depth"]
    attn = 4 * d * d
    moe = E * d + 2 * E * h * d
    ln = 2 * d
    expected = attn + moe + L * 2 * ln + full["vocab"] * d + ln
    m = archc.build(SPEC, **cfg)
    assert n_params(m) == expected
    assert archc.cost(SPEC, seq=16, **cfg).params == expected
    assert n_params(RefWideNet(**full)) == expected
    # only the LayerNorms are per layer
    per_layer = [n for n, _ in m.named_parameters() if n.startswith("layers.")]
    assert len(per_layer) == 4 * L and all(".layernorm" in n for n in per_layer)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_expert_is_albert_with_per_layer_norms(mode):
    """experts = 1, k = 1, capacity 1.0 (C = N: nothing dropped): the MoE is one GELU MLP
    with gate 1, so WideNet is a shared attention + MLP block with per-layer LayerNorms."""
    cfg = dict(d=32, depth=3, heads=4, hidden=48, experts=1, k=1, capacity=1.0)
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=2)
    m.train(mode == "train")
    ref = RefALBERT(d=32, depth=3, heads=4, hidden=48)
    copy_albert(m, ref, cfg["depth"])
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"WideNet(1 expert) vs ALBERT-style reference ({mode})")
        assert_close(m.aux_loss(), torch.tensor(float(cfg["depth"])), "aux = 1 per application")


def test_drop_path_is_identity_in_eval():
    cfg = dict(CFG, drop=0.3)
    m, ref = make_pair(cfg)
    m.eval()
    ref.eval()
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x)[0], "drop=0.3 in eval vs the reference without drop path")
        m.train()
        torch.manual_seed(0)
        assert (m(x) - ref(x)[0]).abs().max() > 1e-3, "drop path did nothing in training"


def test_decode_matches_prefill():
    """Eval mode drops nothing, so the MoE is per-token: decoding equals the prefill
    whatever the chunking."""
    m, _ = make_pair(CFG)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    randomize_(m, seed=3)
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters()))


def test_aux_loss_gradient():
    """The load-balance loss is differentiable in the router and finite."""
    m, _ = make_pair(CFG)
    m.train()
    m(tokens())
    loss = m.aux_loss()
    loss.backward()
    g = m.ffn.router.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0
