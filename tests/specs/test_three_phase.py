"""specs/three_phase.arch (Three-Phase Transformer, TOPOLOGIES.md 2.6) against a
hand-written plain-torch reference.

Reference computation. The width is d = N*c + dc: N phase channels of c dims (channel i =
dims [i*c, (i+1)*c)), then a dc block.
  PhaseNorm(x): RMS-normalise each channel by its own statistics (mean of squares over its
    c dims, eps 1e-6) and the dc block by its own; then one gain per dim.
  horn: x_p += r(p) * e_dc with r(p) = 1/(p+1) (p the absolute position) and e_dc the unit
    vector that is 1/sqrt(dc) on each dc dim and 0 on every channel.
  Block: u = x + Attn(PhaseNorm(x))   (GQA, RoPE on head_dim, heads independent of d)
         u = R(theta_l) u               R: channel i's dims pair into planes (i*c+2j,
                                        i*c+2j+1), each turned by theta_l + 2*pi*i/N;
                                        the dc dims stay
         x' = u + SwiGLU(PhaseNorm(u))
  Head: PhaseNorm, tied embedding.
The reference builds R as an explicit d x d matrix (block-diagonal 2x2 Givens blocks).
"""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (SwiGLU, Attention, WeightSource, load_exact, randomize_, assert_close,
                  n_params, tokens, check_train_step, take, SWIGLU_PAIRS, copy_renamed,
                  check_decode_matches_prefill, capture, decode)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "three_phase.arch")
BASE = str(ROOT / "specs" / "transformer.arch")

CFG = dict(phases=3, c=20, dc=4, depth=2, heads=6, kv_heads=3, head_dim=16, hidden=48)
CONFIGS = [
    CFG,                                                                     # the spec's shape
    dict(phases=2, c=16, dc=2, depth=2, heads=4, kv_heads=2, head_dim=8, hidden=40),
    dict(phases=4, c=8, dc=0, depth=2, heads=4, kv_heads=4, head_dim=8, hidden=40),   # no dc
    dict(phases=3, c=20, dc=4, depth=1, heads=3, kv_heads=3, head_dim=16, hidden=40,
         use_horn=False),                                                   # dc block, no horn
]
ids = lambda c: "-".join(f"{k}{v}" for k, v in c.items())


class PhaseNorm(nn.Module):
    def __init__(self, phases, c, dc, eps=1e-6):
        super().__init__()
        self.phases, self.c, self.dc, self.eps = phases, c, dc, eps
        self.gain = nn.Parameter(torch.ones(phases * c + dc))

    def _rms(self, part):
        return part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        c = self.c
        pieces = [self._rms(x[..., i * c:(i + 1) * c]) for i in range(self.phases)]
        if self.dc:
            pieces.append(self._rms(x[..., self.phases * c:]))
        return torch.cat(pieces, dim=-1) * self.gain


def rotation_matrix(theta, phases, c, dc):
    """The block's orthogonal map as a d x d matrix (acting as u -> R u)."""
    d = phases * c + dc
    R = torch.zeros(d, d, dtype=theta.dtype)
    for i in range(phases):
        angle = theta + 2 * math.pi * i / phases
        cs, sn = torch.cos(angle), torch.sin(angle)
        for j in range(c // 2):
            p, q = i * c + 2 * j, i * c + 2 * j + 1
            R[p, p], R[p, q] = cs, -sn
            R[q, p], R[q, q] = sn, cs
    for j in range(phases * c, d):
        R[j, j] = 1.0
    return R


class Block3PT(nn.Module):
    def __init__(self, phases, c, dc, heads, kv_heads, head_dim, hidden):
        super().__init__()
        self.shape = (phases, c, dc)
        d = phases * c + dc
        self.attn_norm = PhaseNorm(phases, c, dc)
        self.attn = Attention(d, heads, kv_heads, head_dim)
        self.theta = nn.Parameter(torch.zeros(()))
        self.ffn_norm = PhaseNorm(phases, c, dc)
        self.ffn = SwiGLU(d, hidden)

    def forward(self, x):
        u = x + self.attn(self.attn_norm(x))
        u = u @ rotation_matrix(self.theta, *self.shape).T
        return u + self.ffn(self.ffn_norm(u))


def horn_vector(T, phases, c, dc, start=0):
    """[T, d]: r(p) e_dc for p = start .. start+T-1."""
    e = torch.zeros(phases * c + dc)
    e[phases * c:] = 1.0 / math.sqrt(dc)
    r = 1.0 / (torch.arange(start, start + T, dtype=torch.float32) + 1.0)
    return r[:, None] * e[None, :]


class Ref3PT(nn.Module):
    def __init__(self, vocab=256, phases=3, c=20, dc=4, depth=4, heads=6, kv_heads=3,
                 head_dim=16, hidden=172, use_horn=True):
        super().__init__()
        self.shape = (phases, c, dc)
        self.use_horn = use_horn and dc > 0
        self.embed = nn.Embedding(vocab, phases * c + dc)
        self.blocks = nn.ModuleList(Block3PT(phases, c, dc, heads, kv_heads, head_dim, hidden)
                                    for _ in range(depth))
        self.final_norm = PhaseNorm(phases, c, dc)

    def forward(self, toks):
        x = self.embed(toks)
        if self.use_horn:
            x = x + horn_vector(toks.shape[1], *self.shape)
        for blk in self.blocks:
            x = blk(x)
        return self.final_norm(x) @ self.embed.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"embed.weight": src["emb.weight"], "final_norm.gain": src["partition_norm.weight"]}
    for i in range(depth):
        r, a = f"blocks.{i}.", f"layers.{i}."
        w[r + "attn_norm.gain"] = src[a + "partition_norm.weight"]
        w[r + "ffn_norm.gain"] = src[a + "partition_norm_1.weight"]
        w[r + "theta"] = src[a + "rotate.theta"]
        take(w, src, [("wq.weight", "q.weight"), ("wk.weight", "k.weight"),
                      ("wv.weight", "v.weight"), ("wo.weight", "o.weight")],
             r + "attn.", a + "attention.")
        take(w, src, SWIGLU_PAIRS, r + "ffn.", a + "swiglu.")
    load_exact(ref, w, src)


@torch.no_grad()
def random_thetas_(m, depth, seed):
    """randomize_ leaves theta near its init 0; turn each block by a sizeable angle."""
    g = torch.Generator().manual_seed(seed)
    for i in range(depth):
        m.layers[i].rotate.theta.copy_((torch.rand((), generator=g) * 2 - 1) * math.pi)


def make_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    random_thetas_(m, cfg["depth"], seed)
    ref = Ref3PT(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


@pytest.mark.parametrize("cfg", CONFIGS, ids=ids)
def test_matches_reference(cfg):
    m, ref = make_pair(cfg)
    x = tokens()
    with torch.no_grad():
        assert_close(m(x), ref(x), f"three_phase {cfg}")
    assert n_params(m) == n_params(ref)


def test_rotation_matters():
    """Guard against a vacuous comparison: a different theta changes the output."""
    m, ref = make_pair(CFG)
    x = tokens()
    with torch.no_grad():
        before = ref(x)
        ref.blocks[0].theta.add_(0.5)
        assert (before - ref(x)).abs().max() > 1e-3


def test_reference_rotation_is_orthogonal():
    R = rotation_matrix(torch.tensor(0.37), 3, 20, 4)
    assert_close(R @ R.T, torch.eye(64), "R R^T")


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=ids)
def test_rotation_preserves_norms(cfg):
    """||rotate(u)|| = ||u|| per token (and per channel; the dc dims are untouched), on the
    tensors archc's rotation actually sees in a forward pass."""
    m, _ = make_pair(cfg)
    phases, c, dc = cfg["phases"], cfg["c"], cfg["dc"]
    ins, outs, hooks = [], [], []
    for layer in m.layers:
        hooks += [capture(layer.rotate, ins, "input"), capture(layer.rotate, outs)]
    with torch.no_grad():
        m(tokens())
    for h in hooks:
        h.remove()
    assert len(ins) == len(outs) == cfg["depth"]
    for u, v in zip(ins, outs):
        assert (u - v).abs().max() > 1e-3, "the rotation did nothing"
        scale = u.norm(dim=-1).max().item()
        assert_close(v.norm(dim=-1), u.norm(dim=-1), "per-token norm", atol=1e-6 * max(scale, 1.0))
        for i in range(phases):
            sl = slice(i * c, (i + 1) * c)
            assert_close(v[..., sl].norm(dim=-1), u[..., sl].norm(dim=-1), f"channel {i} norm",
                         atol=1e-6 * max(scale, 1.0))
        if dc:
            assert torch.equal(v[..., phases * c:], u[..., phases * c:]), "dc dims changed"


def test_theta_starts_at_zero():
    m = archc.build(SPEC, **CFG)
    for layer in m.layers:
        assert layer.rotate.theta.item() == 0.0


def from_baseline(name):
    """transformer.arch parameter name -> three_phase.arch parameter name."""
    if name == "rmsnorm.weight":
        return "partition_norm.weight"
    return (name.replace(".rmsnorm_1.", ".partition_norm_1.").replace(".rmsnorm.", ".partition_norm.")
            .replace(".attn.", ".attention.").replace(".mlp.", ".swiglu."))


def test_one_phase_no_dc_no_horn_is_rope_baseline():
    """phases = 1, dc = 0, use_horn = false and theta = 0 (its init) is exactly
    transformer.arch (pre-norm RMSNorm/RoPE/SwiGLU/GQA, tied head): with head_dim = d / heads
    the shapes match one for one."""
    depth = 2
    m = archc.build(SPEC, phases=1, c=64, dc=0, depth=depth, heads=4, kv_heads=2, head_dim=16,
                    hidden=48, use_horn=False)
    randomize_(m, seed=4)
    with torch.no_grad():
        for layer in m.layers:
            layer.rotate.theta.zero_()
    base = archc.build(BASE, d=64, depth=depth, heads=4, kv_heads=2, hidden=48)
    copy_renamed(base, m, from_baseline, skip=[f"layers.{i}.rotate.theta" for i in range(depth)])
    assert n_params(m) == n_params(base) + depth
    x = tokens()
    with torch.no_grad():
        out = m(x)
        assert_close(out, base(x), "3PT(N=1, theta=0, no dc/horn) vs transformer.arch")
        # and the same model with a non-zero theta is not the baseline
        m.layers[0].rotate.theta.fill_(0.3)
        assert (m(x) - out).abs().max() > 1e-3


def test_horn_is_orthogonal_to_every_channel():
    """The horn adds r(p) e_dc: zero on every channel (so zero inner product with each),
    r(p)/sqrt(dc) on each dc dim; checked on the input of the first layer, for a prefill and
    for decoding from a cache (absolute positions continue)."""
    cfg = CFG
    m, _ = make_pair(cfg)
    phases, c, dc = cfg["phases"], cfg["c"], cfg["dc"]
    n = phases * c
    seen = []
    hook = capture(m.layers[0], seen, "input")
    x = tokens(B=2, T=8)
    with torch.no_grad():
        m(x)
        decode(m.eval(), x, [5, 3])
    hook.remove()
    emb = m.emb.weight.detach()[x]
    for got, start, sl in [(seen[0], 0, slice(0, 8)), (seen[1], 0, slice(0, 5)),
                           (seen[2], 5, slice(5, 8))]:
        inj = got - emb[:, sl]
        assert torch.equal(inj[..., :n], torch.zeros_like(inj[..., :n])), "horn touched a channel"
        for i in range(phases):
            basis = torch.eye(n + dc)[i * c:(i + 1) * c]           # channel i's unit vectors
            assert (inj @ basis.T).abs().max() == 0
        assert_close(inj, horn_vector(sl.stop - sl.start, phases, c, dc, start).expand_as(inj),
                     f"horn injection from position {start}", atol=1e-6)
        assert_close(inj.norm(dim=-1), (1.0 / torch.arange(start + 1, sl.stop + 1)).expand(2, -1),
                     "|injection| = r(p)", atol=1e-6)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 2), (4, 4), (2, 1)])
def test_heads_not_aligned_with_phases_rejected(heads, kv_heads):
    with pytest.raises(archc.ArchcError, match="partitions"):
        archc.build(SPEC, phases=3, c=20, dc=4, depth=1, heads=heads, kv_heads=kv_heads,
                    head_dim=16, hidden=40)


@pytest.mark.parametrize("heads,kv_heads", [(6, 3), (3, 3), (12, 6)])
def test_aligned_heads_accepted(heads, kv_heads):
    archc.build(SPEC, phases=3, c=20, dc=4, depth=1, heads=heads, kv_heads=kv_heads,
                head_dim=16, hidden=40)


def test_decode_matches_prefill():
    m, _ = make_pair(CFG)
    check_decode_matches_prefill(m, tokens(B=2, T=12))


def test_train_step():
    torch.manual_seed(0)
    m = archc.build(SPEC, **CFG)
    randomize_(m, seed=3)
    changed = check_train_step(m, tokens())
    assert {f"layers.{i}.rotate.theta" for i in range(CFG["depth"])} <= changed
