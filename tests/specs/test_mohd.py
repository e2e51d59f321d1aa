"""specs/mohd.arch (Mixture of Hidden-Dimensions, TOPOLOGIES.md 2.7) against a hand-written
plain-torch reference.

Reference computation. The width D is G groups of s = D/G contiguous dims; groups
0..S-1 are shared (always active), groups S..G-1 are routed. Per sublayer and token:
  p = softmax(W_r x)                     over the G-S routed groups (x: the residual stream)
  chosen = the k routed groups with the largest p
  mask_g  = 1 for shared and chosen groups, else 0
  wt_g    = 1 (shared); p_g if weighted else 1 (chosen); 0 (other); all times G / (S + k)
  x <- x + wt * Fuse(f(RMSNorm(x) * mask))      Fuse(y)_g = sum_h M[g, h] y_h (M: G x G)
with f the causal RoPE attention, then the SwiGLU FFN; tied head over a final RMSNorm.
The reference picks the top k by sorting (argsort), not with topk.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, Attention, SwiGLU, WeightSource, load_exact, randomize_, assert_close,
                  n_params, tokens, check_train_step, take, ATTN_PAIRS, SWIGLU_PAIRS, copy_renamed,
                  check_decode_matches_prefill, identity_plus_noise_, capture, take_decoder_layer)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "mohd.arch")
BASE = str(ROOT / "specs" / "transformer.arch")

CFG = dict(d=64, depth=2, heads=4, hidden=48, groups=8, shared=2, k=3)
CONFIGS = [
    CFG,
    dict(CFG, weighted=False),
    dict(d=32, depth=2, heads=2, hidden=40, groups=4, shared=0, k=1),        # no shared group
    dict(d=32, depth=1, heads=4, hidden=40, groups=8, shared=5, k=2, weighted=False),
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class WidthRouterRef(nn.Module):
    def __init__(self, d, groups, shared, k, weighted):
        super().__init__()
        self.groups, self.shared, self.k, self.weighted = groups, shared, k, weighted
        self.proj = nn.Linear(d, groups - shared, bias=False)

    def forward(self, x):
        """-> per-group mask and write-back weight, each [B, T, G]."""
        p = torch.softmax(self.proj(x), dim=-1)
        top = p.argsort(dim=-1, descending=True)[..., :self.k]
        chosen = torch.zeros_like(p).scatter(-1, top, 1.0)
        ones = torch.ones(*x.shape[:-1], self.shared)
        mask = torch.cat([ones, chosen], dim=-1)
        routed = chosen * p if self.weighted else chosen
        weight = torch.cat([ones, routed], dim=-1) * (self.groups / (self.shared + self.k))
        return mask, weight


def per_dim(g, d):
    """[..., G] -> [..., D]: each group's value on its s = D/G contiguous dims."""
    G = g.shape[-1]
    return g.unsqueeze(-1).expand(*g.shape, d // G).reshape(*g.shape[:-1], d)


class Fusion(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.M = nn.Parameter(torch.eye(groups))

    def forward(self, y):
        G = self.M.shape[0]
        Y = y.reshape(*y.shape[:-1], G, y.shape[-1] // G)
        return (self.M @ Y).reshape(y.shape)


class RoutedSublayer(nn.Module):
    def __init__(self, d, groups, shared, k, weighted, f):
        super().__init__()
        self.router = WidthRouterRef(d, groups, shared, k, weighted)
        self.norm = RMSNorm(d)
        self.f = f
        self.fuse = Fusion(groups)

    def forward(self, x):
        mask, weight = self.router(x)
        d = x.shape[-1]
        return x + per_dim(weight, d) * self.fuse(self.f(self.norm(x) * per_dim(mask, d)))


class MoHDBlock(nn.Module):
    def __init__(self, d, heads, hidden, groups, shared, k, weighted):
        super().__init__()
        self.attn_part = RoutedSublayer(d, groups, shared, k, weighted, Attention(d, heads))
        self.ffn_part = RoutedSublayer(d, groups, shared, k, weighted, SwiGLU(d, hidden))

    def forward(self, x):
        return self.ffn_part(self.attn_part(x))


class RefMoHD(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=172, groups=8, shared=2, k=3,
                 weighted=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(MoHDBlock(d, heads, hidden, groups, shared, k, weighted)
                                    for _ in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for blk in self.blocks:
            x = blk(x)
        return self.final_norm(x) @ self.embed.weight.T


class DenseBlock(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(d), Attention(d, heads)
        self.ffn_norm, self.ffn = RMSNorm(d), SwiGLU(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class RefDense(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=172):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(DenseBlock(d, heads, hidden) for _ in range(depth))
        self.final_norm = RMSNorm(d)

    def forward(self, toks):
        x = self.embed(toks)
        for blk in self.blocks:
            x = blk(x)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        a = f"layers.{i}."
        for part, suffix, pairs, name in [("attn_part", "", ATTN_PAIRS, "attention"),
                                          ("ffn_part", "_1", SWIGLU_PAIRS, "swiglu")]:
            r = f"blocks.{i}.{part}."
            w[r + "router.proj.weight"] = src[a + f"width_route{suffix}.router.weight"]
            w[r + "norm.weight"] = src[a + f"rmsnorm{suffix}.weight"]
            w[r + "fuse.M"] = src[a + f"group_fuse{suffix}.mix"]
            take(w, src, pairs, r + "f.", a + name + ".")
    load_exact(ref, w, src)


def copy_dense(m, ref, depth):
    """Every weight but the routers and the (identity) fusions."""
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        a, r = f"layers.{i}.", f"blocks.{i}."
        take_decoder_layer(w, src, r, a)
        for s in ("", "_1"):
            assert torch.equal(src[a + f"group_fuse{s}.mix"], torch.eye(m.layers[i].group_fuse.mix.shape[0]))
            src[a + f"width_route{s}.router.weight"]   # routes nothing away: unused
    load_exact(ref, w, src)


def make_archc(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    identity_plus_noise_(m, ".mix", seed=seed, std=0.2)
    with torch.no_grad():   # sharper routers, so the routed probabilities differ clearly
        for layer in m.layers:
            layer.width_route.router.weight.mul_(10.0)
            layer.width_route_1.router.weight.mul_(10.0)
    return m


def make_pair(cfg, seed=1):
    m = make_archc(cfg, seed)
    ref = RefMoHD(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"mohd {cfg}")
    assert n_params(m) == n_params(ref)


def test_routing_and_fusion_matter():
    """Guard against a vacuous comparison: the fusion matrix and the router both change
    the output."""
    m, ref = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        before = ref(x)
        ref.blocks[0].attn_part.fuse.M.copy_(torch.eye(CFG["groups"]))
        assert (before - ref(x)).abs().max() > 1e-3
        m, ref = make_pair(CFG)
        ref.blocks[0].ffn_part.router.proj.weight.mul_(-1.0)
        assert (before - ref(x)).abs().max() > 1e-3


def test_fusion_starts_as_identity():
    m = archc.build(SPEC, **CFG)
    for layer in m.layers:
        for fuse in (layer.group_fuse, layer.group_fuse_1):
            assert torch.equal(fuse.mix.detach(), torch.eye(CFG["groups"]))


@pytest.mark.parametrize("groups,shared", [(8, 2), (4, 0)])
def test_all_groups_active_unweighted_is_dense_transformer(groups, shared):
    """k = groups - shared, weighted = false and the fusion at its identity init: every dim
    is active with weight G/(S+k) = 1, so the model is the dense pre-norm transformer with
    the same weights (checked against a hand-written dense decoder and transformer.arch)."""
    depth, d, heads, hidden = 2, 64, 4, 48
    m = archc.build(SPEC, d=d, depth=depth, heads=heads, hidden=hidden, groups=groups,
                    shared=shared, k=groups - shared, weighted=False)
    randomize_(m, seed=5)
    with torch.no_grad():
        for layer in m.layers:
            layer.group_fuse.mix.copy_(torch.eye(groups))
            layer.group_fuse_1.mix.copy_(torch.eye(groups))
            layer.width_route.router.weight.mul_(10.0)
            layer.width_route_1.router.weight.mul_(10.0)
    dense = RefDense(d=d, depth=depth, heads=heads, hidden=hidden)
    copy_dense(m, dense, depth)
    base = archc.build(BASE, d=d, depth=depth, heads=heads, kv_heads=heads, hidden=hidden)
    skip = [f"layers.{i}.{n}" for i in range(depth) for n in
            ("width_route.router.weight", "width_route_1.router.weight", "group_fuse.mix",
             "group_fuse_1.mix")]
    copy_renamed(base, m, lambda n: n.replace(".attn.", ".attention.").replace(".mlp.", ".swiglu."),
                 skip=skip)
    x = tokens()
    with torch.no_grad():
        out = m(x)
        assert_close(out, dense(x), "MoHD(all active, unweighted) vs dense reference")
        assert_close(out, base(x), "MoHD(all active, unweighted) vs transformer.arch")


def _trace(m):
    """Hooks giving, per layer, the residual before/after each sublayer and archc's
    (mask, weight) for it."""
    rec = {"x": [], "route": []}
    hooks = []
    for layer in m.layers:
        for r in (layer.width_route, layer.width_route_1):
            hooks += [capture(r, rec["x"], "input"), capture(r, rec["route"])]
        hooks.append(capture(layer, rec["x"]))
    return rec, hooks


@pytest.mark.parametrize("cfg", [CFG, CONFIGS[2]], ids=ids)
def test_inactive_dims_unchanged(cfg):
    """Per token, each sublayer leaves the dims of the groups the router did not choose
    exactly as they were, and changes the active ones. The router's choice is recomputed
    by the reference router (copied weights) from the sublayer's input."""
    m, ref = make_pair(cfg)
    rec, hooks = _trace(m)
    with torch.no_grad():
        m(tokens())
    for h in hooks:
        h.remove()
    d, G, S, k = cfg["d"], cfg["groups"], cfg["shared"], cfg["k"]
    xs = rec["x"]                    # per layer: x0 (route in), x1 (route_1 in), x2 (layer out)
    assert len(xs) == 3 * cfg["depth"] and len(rec["route"]) == 2 * cfg["depth"]
    some_inactive = False
    for i in range(cfg["depth"]):
        x0, x1, x2 = xs[3 * i], xs[3 * i + 1], xs[3 * i + 2]
        parts = [ref.blocks[i].attn_part, ref.blocks[i].ffn_part]
        for j, (before, after) in enumerate([(x0, x1), (x1, x2)]):
            mask_m, _ = rec["route"][2 * i + j]
            with torch.no_grad():
                mask_g, _ = parts[j].router(before)
            mask = per_dim(mask_g, d)
            assert torch.equal(mask_m, mask), f"layer {i} sublayer {j}: archc's routing differs"
            assert (mask_g.sum(-1) == S + k).all()
            assert (mask_g[..., :S] == 1).all(), "a shared group was inactive"
            inactive = mask == 0
            some_inactive |= bool(inactive.any())
            assert torch.equal(after[inactive], before[inactive]), \
                f"layer {i} sublayer {j}: an inactive dim changed"
            assert ((after - before).abs() > 0)[~inactive].float().mean() > 0.99, \
                f"layer {i} sublayer {j}: active dims did not change"
    assert some_inactive


def test_active_width_fraction():
    """The sublayers see (S + k)/G of the width per token: that fraction of every token's
    dims is active in the masked input."""
    for G, S, k in [(8, 2, 3), (8, 2, 1), (8, 0, 8), (4, 1, 2)]:
        router = WidthRouterRef(64, G, S, k, True)
        mask, _ = router(torch.randn(2, 5, 64))
        frac = per_dim(mask, 64).mean(-1)
        assert torch.allclose(frac, torch.full_like(frac, (S + k) / G))


def test_active_flops_proportional_in_cost():
    """archc.cost: the sublayers' projection FLOPs should scale with (S + k)/G."""
    d, depth, heads, hidden, G, S = 64, 2, 4, 48, 8, 2
    flops = {k: archc.cost(SPEC, seq=16, d=d, depth=depth, heads=heads, hidden=hidden,
                           groups=G, shared=S, k=k).flops_per_token for k in (1, 6)}
    if flops[1] == flops[6]:
        pytest.skip("archc.cost prices MoHD's sublayers at the full width (the runtime masks "
                    "the input and runs dense matmuls), so active FLOPs do not follow (S+k)/G")
    dense = 2 * (4 * d * d + 3 * d * hidden)        # per layer: q k v o + gate up down
    assert flops[6] - flops[1] == depth * dense * (6 - 1) // G


def test_decode_matches_prefill():
    m = make_archc(CFG)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    randomize_(m, seed=3)
    identity_plus_noise_(m, ".mix", seed=3)
    changed = check_train_step(m, tokens())
    assert len(changed) == len(list(m.parameters())), "every parameter (routers too) should move"
