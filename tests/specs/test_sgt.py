"""specs/sgt.arch (Sparse Growing Transformer, TOPOLOGIES.md 1.1) against a hand-written
plain-torch reference of SGT as archc implements it.

The reference: a pre-norm decoder (RMSNorm eps 1e-6, rotate-half RoPE theta 1e4, SwiGLU,
tied head). Layer l has onset s_l = start + (depth-1-l)*every. Its attention output is
a = W_o concat_h(o_h), o_h = causal attention of head h on norm(x). From step s_l on, `loops`
times: z = norm(x + a) (the same `norm` module); for the looped head set S, o_h for h in S
is recomputed as causal attention of head h with q/k/v from z (same weights), and
a <- a + W_o[:, cols(S)] (o_S_new - o_S_old); the other heads keep o. Then x = x + a and
x = x + SwiGLU(RMSNorm(x)). S holds the `loop_heads` heads with the highest mean attention
entropy -sum_j p_ij log p_ij (mean over batch and query positions), measured on z at the
layer's first run past its onset (the growth event), then kept.

The reference tracks growth events itself: `RefSGT.choose_heads=True` makes it pick S
with its own entropy computation; with `False` it is handed archc's choice
(`layer.looped.heads`) right after the growth event and keeps it from then on.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import archc
from refs import (RMSNorm, QKVO, SwiGLU, WeightSource, load_exact, randomize_, assert_close,
                  n_params, tokens, check_train_step, causal_attention, decode,
                  copy_renamed, take, ATTN_PAIRS, SWIGLU_PAIRS)

ROOT = Path(__file__).resolve().parents[2]
SPEC = str(ROOT / "specs" / "sgt.arch")
TRANSFORMER = str(ROOT / "specs" / "transformer.arch")

CONFIGS = [
    # one looped head of four, one loop, layers growing 10 steps apart
    dict(d=32, depth=3, heads=4, hidden=48, loop_heads=1, loops=1, start=10, every=10),
    # two of eight heads, looped twice
    dict(d=64, depth=2, heads=8, hidden=64, loop_heads=2, loops=2, start=3, every=4),
    # three of four heads, three loops, all layers grow at the same step
    dict(d=32, depth=2, heads=4, hidden=40, loop_heads=3, loops=3, start=5, every=0),
]


def cfg_id(c):
    return "-".join(f"{k}{v}" for k, v in c.items())


def onsets(cfg):
    return [cfg["start"] + (cfg["depth"] - 1 - i) * cfg["every"] for i in range(cfg["depth"])]


def probe_steps(cfg):
    """Steps before any onset, at and between onsets, and past all of them."""
    on = sorted(set(onsets(cfg)))
    steps = [0, on[0] - 1]
    for s in on:
        steps += [s, s + 1]
    steps += [on[-1] + 50, 0, on[-1] + 7]   # back before every onset, then grown again
    return steps


# ---------------------------------------------------------------------------- reference

def head_entropy(q, k):
    """Mean attention entropy per head: q, k [B, H, T, dh] -> [H]. Causal softmax; masked
    entries have p = 0 and contribute 0 (0 log 0 = 0)."""
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    p = scores.softmax(-1)
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))),
                        torch.zeros_like(p))
    return (-plogp.sum(-1)).mean(dim=(0, 2))


class RefSGTLayer(nn.Module):
    def __init__(self, d, heads, hidden, loop_heads, loops, onset):
        super().__init__()
        self.attention_norm = RMSNorm(d)
        self.attention = QKVO(d, heads)
        self.ffn_norm = RMSNorm(d)
        self.feed_forward = SwiGLU(d, hidden)
        self.n_heads, self.loop_heads, self.loops, self.onset = heads, loop_heads, loops, onset
        self.looped: list[int] | None = None       # S, sorted; None until the growth event
        self.entropy: torch.Tensor | None = None   # per-head entropy at the growth event

    def forward(self, x, step, choose_heads):
        qkvo = self.attention
        o = causal_attention(*qkvo.project(self.attention_norm(x)))      # [B, H, T, dh]
        a = qkvo.out(o)
        if step >= self.onset:
            for _ in range(self.loops):
                z = self.attention_norm(x + a)
                q, k, v = qkvo.project(z)
                if self.looped is None:
                    assert choose_heads, "growth event without a head set handed in"
                    self.entropy = head_entropy(q, k).detach()
                    top = self.entropy.topk(self.loop_heads).indices
                    self.looped = sorted(top.tolist())
                S = self.looped
                o_new = causal_attention(q[:, S], k[:, S], v[:, S])           # [B, |S|, T, dh]
                change = torch.zeros_like(o)
                change[:, S] = o_new - o[:, S]
                a = a + qkvo.out(change)      # = a + W_o[:, cols(S)] (o_S_new - o_S_old)
                o = o.clone()
                o[:, S] = o_new
        x = x + a
        return x + self.feed_forward(self.ffn_norm(x))


class RefSGT(nn.Module):
    def __init__(self, vocab=256, d=64, depth=4, heads=4, hidden=172, loop_heads=1, loops=1,
                 start=100, every=100):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            RefSGTLayer(d, heads, hidden, loop_heads, loops, start + (depth - 1 - i) * every)
            for i in range(depth))
        self.norm = RMSNorm(d)
        self.choose_heads = True

    def forward(self, tokens, step):
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, step, self.choose_heads)
        return self.norm(h) @ self.tok_embeddings.weight.T


def copy_weights(m, ref, depth):
    src = WeightSource(m)
    w = {"tok_embeddings.weight": src["emb.weight"], "norm.weight": src["rmsnorm.weight"]}
    for i in range(depth):
        a, r = f"layers.{i}.", f"layers.{i}."
        w[r + "attention_norm.weight"] = src[a + "norm.weight"]
        w[r + "ffn_norm.weight"] = src[a + "rmsnorm.weight"]
        take(w, src, ATTN_PAIRS, r + "attention.", a + "attn.")
        take(w, src, SWIGLU_PAIRS, r + "feed_forward.", a + "swiglu.")
    load_exact(ref, w, src)


def build_pair(cfg, seed=1):
    m = archc.build(SPEC, **cfg)
    randomize_(m, seed=seed)
    with torch.no_grad():               # sharper attention, so head entropies spread out
        for layer in m.layers:
            layer.attn.q.weight.mul_(4.0)
            layer.attn.k.weight.mul_(4.0)
    ref = RefSGT(**cfg)
    copy_weights(m, ref, cfg["depth"])
    return m, ref


def archc_heads(m, i):
    return sorted(m.layers[i].looped.heads.tolist())


# ---------------------------------------------------------------------------- (a) vs reference

@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_matches_reference_across_growth(cfg):
    """archc and the reference on the same token batches at the same steps. The forced
    reference receives archc's head set once, right after archc's growth event, and keeps
    it; the choosing reference picks its own heads by entropy."""
    m, forced = build_pair(cfg)
    _, chooser = build_pair(cfg)
    forced.choose_heads = False
    grown_at = {}
    for n, step in enumerate(probe_steps(cfg)):
        x = tokens(B=3, T=11, seed=100 + n)        # a different batch at each step
        m.set_step(step)
        with torch.no_grad():
            y = m(x)
            for i, layer in enumerate(m.layers):
                chosen = bool(layer.looped.chosen)
                if i not in grown_at:
                    assert chosen == (step >= layer.onset), \
                        f"layer {i}: chosen={chosen} at step {step}, onset {layer.onset}"
                    if chosen:
                        grown_at[i] = (step, archc_heads(m, i))
                        forced.layers[i].looped = archc_heads(m, i)
                else:
                    assert chosen and archc_heads(m, i) == grown_at[i][1], \
                        f"layer {i}: head set changed after its growth event at step {grown_at[i][0]}"
            assert_close(y, forced(x, step), f"step {step}: archc vs reference given archc's heads")
            y_choose = chooser(x, step)
        for i in grown_at:
            ent = chooser.layers[i].entropy
            srt = ent.sort(descending=True).values
            k = cfg["loop_heads"]
            if k < cfg["heads"]:
                assert srt[k - 1] - srt[k] > 1e-4, f"layer {i}: entropy near-tie {srt.tolist()}"
            assert chooser.layers[i].looped == grown_at[i][1], \
                f"layer {i}: reference entropy picks {chooser.layers[i].looped}, " \
                f"archc chose {grown_at[i][1]} (entropies {ent.tolist()})"
        assert_close(y, y_choose, f"step {step}: archc vs reference choosing its own heads")
    assert sorted(grown_at) == list(range(cfg["depth"])), "not every layer grew"
    # deepest first: onsets never increase with depth
    order = [grown_at[i][0] for i in range(cfg["depth"])]
    assert order == sorted(order, reverse=True), f"growth steps by layer {order}"


def test_looping_changes_the_output():
    """Past an onset the looped heads really change the computation (guards against a
    reference and a module that both ignore the loop)."""
    cfg = CONFIGS[0]
    m, _ = build_pair(cfg)
    x = tokens()
    with torch.no_grad():
        m.set_step(0)
        before = m(x)
        m.set_step(cfg["start"])
        after = m(x)
    assert (before - after).abs().max() > 1e-3


def test_each_loop_counts():
    """loops=2 differs from loops=1 (the second iteration reruns the heads on the updated a)."""
    base = dict(d=32, depth=1, heads=4, hidden=32, loop_heads=2, start=0, every=0)
    outs = []
    for loops in (1, 2):
        m, ref = build_pair(dict(base, loops=loops), seed=3)
        x = tokens()
        with torch.no_grad():
            y = m(x)
            assert_close(y, ref(x, 0), f"loops={loops}")
        outs.append(y)
    assert (outs[0] - outs[1]).abs().max() > 1e-4


# ---------------------------------------------------------------------------- (b) invariants

def transformer_twin(m, cfg):
    """specs/transformer.arch with kv_heads = heads and the SGT module's weights."""
    t = archc.build(TRANSFORMER, vocab=256, d=cfg["d"], depth=cfg["depth"], heads=cfg["heads"],
                    kv_heads=cfg["heads"], hidden=cfg["hidden"])

    def rename(name):
        return (name.replace(".rmsnorm_1.", ".@ffn.").replace(".rmsnorm.", ".norm.")
                .replace(".@ffn.", ".rmsnorm.").replace(".mlp.", ".swiglu."))
    copy_renamed(t, m, rename)
    return t


@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_before_onset_equals_plain_transformer_bitwise(cfg):
    m, _ = build_pair(cfg)
    t = transformer_twin(m, cfg)
    x = tokens(B=2, T=13)
    on = onsets(cfg)
    with torch.no_grad():
        for step in (0, min(on) - 1):
            m.set_step(step)
            assert torch.equal(m(x), t(x)), f"step {step}: not bit-for-bit the transformer"
        # between onsets: the layers that have not grown yet (the shallow ones, as growth
        # goes deepest first) still compute exactly the transformer's layers
        for step in sorted(set(on)):
            m.set_step(step)
            outs = {}
            hooks = [l.register_forward_hook(lambda mod, inp, out, i=i, k=k: outs.__setitem__((k, i), out))
                     for k, model in (("sgt", m), ("tf", t)) for i, l in enumerate(model.layers)]
            try:
                m(x)
                t(x)
            finally:
                for h in hooks:
                    h.remove()
            for i in range(cfg["depth"]):
                if step < on[i]:
                    assert torch.equal(outs[("sgt", i)], outs[("tf", i)]), \
                        f"step {step}: ungrown layer {i} differs from the transformer"
                else:
                    assert not torch.equal(outs[("sgt", i)], outs[("tf", i)])


def closed_form_params(vocab=256, d=64, depth=4, heads=4, hidden=172, **_):
    return vocab * d + depth * (4 * d * d + 3 * d * hidden + 2 * d) + d


def test_param_count_independent_of_schedule():
    base = dict(d=32, depth=3, heads=8, hidden=48)
    expected = closed_form_params(**base)
    tf = archc.build(TRANSFORMER, d=32, depth=3, heads=8, kv_heads=8, hidden=48)
    assert n_params(tf) == expected
    names = None
    for sched in [dict(), dict(loop_heads=1), dict(loop_heads=4, loops=3),
                  dict(start=0, every=0), dict(start=7, every=5, loops=2)]:
        m = archc.build(SPEC, **base, **sched)
        x = tokens()
        for step in (0, 5, 10, 1000):
            m.set_step(step)
            with torch.no_grad():
                m(x)
            assert n_params(m) == expected, f"{sched} step {step}: {n_params(m)} != {expected}"
            now = [(n, tuple(p.shape)) for n, p in m.named_parameters()]
            names = names or now
            assert now == names, f"{sched} step {step}: parameter names/shapes changed"
    assert n_params(RefSGT(**base)) == expected


def test_chosen_heads_survive_state_dict():
    """Save after the growth events, load into a fresh build: same heads, same outputs, and
    no re-choice (the saved heads are forced to the lowest-entropy ones on the new batch,
    so a re-choice would pick different heads)."""
    cfg = dict(d=32, depth=2, heads=4, hidden=40, loop_heads=1, loops=1, start=4, every=3)
    m, ref = build_pair(cfg, seed=5)
    past = max(onsets(cfg)) + 1
    m.set_step(past)
    x_grow, x_new = tokens(seed=1), tokens(seed=2)
    with torch.no_grad():
        m(x_grow)                             # the growth events, on another batch
    # the lowest-entropy heads on the new batch, layer by layer (a layer's input depends on
    # the heads forced on the layers below it)
    forced = {}
    ref.choose_heads = True
    for i in range(cfg["depth"]):
        for j, layer in enumerate(ref.layers):
            layer.looped = forced.get(j)
        with torch.no_grad():
            ref(x_new, past)
        ent = ref.layers[i].entropy
        forced[i] = sorted(ent.argsort()[:cfg["loop_heads"]].tolist())
        assert forced[i] != ref.layers[i].looped, "a re-choice would not be detected"
        m.layers[i].looped.heads.copy_(torch.tensor(forced[i]))
    with torch.no_grad():
        y = m(x_new)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    sd = torch.load(io.BytesIO(buf.getvalue()))
    assert any(k.endswith("looped.heads") for k in sd) and any(k.endswith("looped.chosen") for k in sd)

    fresh = archc.build(SPEC, **cfg)
    fresh.load_state_dict(sd)
    fresh.set_step(past)
    with torch.no_grad():
        y2 = fresh(x_new)
    for i, layer in enumerate(fresh.layers):
        assert bool(layer.looped.chosen)
        assert archc_heads(fresh, i) == forced[i], f"layer {i}: re-chose heads after loading"
    assert torch.equal(y, y2)
    # and the reference with those heads agrees
    ref2 = RefSGT(**cfg)
    copy_weights(fresh, ref2, cfg["depth"])
    ref2.choose_heads = False
    for i in forced:
        ref2.layers[i].looped = forced[i]
    with torch.no_grad():
        assert_close(y2, ref2(x_new, past), "loaded module vs reference with the saved heads")


def test_info_unique_params_independent_of_step(capsys):
    """`archc info --set step=N`: the unique count is the built module's at every step."""
    from archc.cli import main

    def info(step):
        assert main(["info", SPEC, "--set", f"step={step}"]) == 0
        out = capsys.readouterr().out
        rows = {line.split()[0]: line.split() for line in out.splitlines()
                if line.startswith(("layers", "total"))}
        return int(rows["total"][1].replace(",", "")), int(rows["total"][2].replace(",", ""))

    built = n_params(archc.build(SPEC))
    results = {step: info(step) for step in (0, 99, 100, 250, 400, 10_000)}
    assert {u for u, _ in results.values()} == {built}
    # applied counts grow with the number of grown layers (the loop reapplies `norm`)
    applied = [results[s][1] for s in (0, 99, 100, 250, 400, 10_000)]
    assert applied[0] == applied[1] < applied[2] < applied[3] < applied[4] == applied[5]


def test_info_reports_the_extra_flops_of_a_step(capsys):
    """`archc info --set step=N` prints what the schedules add over step 0: the looped
    heads' FLOPs of the layers grown by step N (defaults: seq 2048, onsets 400..100)."""
    import re
    from archc.cli import main

    for step, grown in [(250, 2), (10_000, 4)]:
        assert main(["info", SPEC, "--set", f"step={step}"]) == 0
        out = capsys.readouterr().out
        seq = int(re.search(r"FLOPs per token at seq (\d+)", out).group(1))
        extra = int(re.search(r"at step \d+: \+([\d,]+) over step 0", out).group(1).replace(",", ""))
        assert extra == grown * 1 * per_head_flops(64, 4, seq), out


def test_applied_params_count_looped_head_slices():
    cfg = dict(d=64, depth=4, heads=4, loop_heads=1, loops=1, start=100, every=100)
    dh = cfg["d"] // cfg["heads"]
    base = archc.cost(SPEC, seq=16, step=0, **cfg).params_applied
    for grown, step in [(1, 100), (2, 200), (4, 10_000)]:
        got = archc.cost(SPEC, seq=16, step=step, **cfg).params_applied - base
        per_layer = cfg["d"] + 4 * cfg["loop_heads"] * dh * cfg["d"]
        assert got == grown * cfg["loops"] * per_layer, f"step {step}: +{got} applied"


def per_head_flops(d, heads, seq):
    """Forward matmul FLOPs (2 per multiply-add) of rerunning one head once, per token:
    its q, k, v rows, its attention over `seq` keys (in full, as archc.cost counts it) and
    its W_o columns."""
    dh = d // heads
    return 3 * 2 * d * dh + 2 * seq * (dh + dh) + 2 * dh * d


def test_cost_extra_flops_follow_topology():
    """TOPOLOGIES 1.1 (c): extra FLOPs = sum_l n_l |S_l| (per-head cost)."""
    cfg = dict(d=64, depth=4, heads=8, hidden=96, loop_heads=2, loops=3, start=10, every=5)
    seq = 32
    base = archc.cost(SPEC, seq=seq, step=0, **cfg).flops_per_token
    on = onsets(cfg)
    for step in (9, 10, 14, 15, 20, 25, 1000):
        c = archc.cost(SPEC, seq=seq, step=step, **cfg)
        n_l = [cfg["loops"] * (step >= s) for s in on]
        expected = sum(n * cfg["loop_heads"] for n in n_l) * per_head_flops(cfg["d"], cfg["heads"], seq)
        assert c.flops_per_token - base == expected, f"step {step}"
        assert c.params == n_params(archc.build(SPEC, **cfg))


def test_cost_extra_flops_below_three_percent_over_a_growing_run():
    """|S|/H = 1/8 at a realistic width (d=1024, 16 heads, 2 looped, 24 layers, seq 1024).
    Fully grown, the extra is exactly |S|/H of the attention sublayers' FLOPs (q/k/v/o and
    the attention itself), about 4.8% of the whole forward here: above 3%. The paper's
    1-3% is extra *training* FLOPs, and layers grow one by one over training: with onsets
    spread evenly over the run (deepest at its start, shallowest at its end) the extra
    FLOPs averaged over the run stay below 3%."""
    cfg = dict(vocab=32000, d=1024, depth=24, heads=16, hidden=2816, loop_heads=2, loops=1)
    seq, every = 1024, 1000
    run = dict(start=0, every=every)
    S_over_H = cfg["loop_heads"] / cfg["heads"]
    base = archc.cost(SPEC, seq=seq, step=-1, **cfg, **run).flops_per_token
    full = archc.cost(SPEC, seq=seq, step=10**9, **cfg, **run).flops_per_token
    d, dh = cfg["d"], cfg["d"] // cfg["heads"]
    attn_sublayer = 4 * 2 * d * d + 2 * cfg["heads"] * seq * 2 * dh
    assert full - base == cfg["depth"] * S_over_H * attn_sublayer
    assert 0.03 < (full - base) / base < 0.06
    # a run of depth*every steps; layer l grows at (depth-1-l)*every: the number of grown
    # layers is k+1 during [k*every, (k+1)*every)
    total = 0
    for k in range(cfg["depth"]):
        c = archc.cost(SPEC, seq=seq, step=k * every, **cfg, **run).flops_per_token
        assert c - base == (k + 1) * S_over_H * attn_sublayer
        total += (c - base) * every
    mean_extra = total / (cfg["depth"] * every) / base
    assert mean_extra < 0.03, f"mean extra FLOPs {mean_extra:.2%} of the baseline"


# ---------------------------------------------------------------------------- (c) training

def test_train_step_across_growth_event():
    cfg = dict(d=32, depth=2, heads=4, hidden=40, loop_heads=1, loops=2, start=3, every=2)
    torch.manual_seed(0)
    m = archc.build(SPEC, **cfg)
    x = tokens(B=2, T=12)
    for step in range(0, max(onsets(cfg)) + 2):
        m.set_step(step)
        grown_before = [bool(l.looped.chosen) for l in m.layers]
        changed = check_train_step(m, x, lr=1e-3)
        assert len(changed) == len(list(m.parameters())), f"step {step}: some parameters did not move"
        grown = [bool(l.looped.chosen) for l in m.layers]
        assert grown == [step >= s for s in onsets(cfg)]
        for i, (b, a) in enumerate(zip(grown_before, grown)):
            assert a == b or step == onsets(cfg)[i]


def test_gradients_match_reference_after_growth():
    cfg = dict(d=32, depth=2, heads=4, hidden=40, loop_heads=2, loops=2, start=0, every=1)
    m, ref = build_pair(cfg, seed=7)
    ref.choose_heads = True
    x = tokens(B=2, T=10)
    step = 1
    m.set_step(step)

    def loss(logits):
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           x[:, 1:].reshape(-1))
    la, lr_ = loss(m(x)), loss(ref(x, step))
    for i in range(cfg["depth"]):
        assert archc_heads(m, i) == ref.layers[i].looped
    assert_close(la, lr_, "loss")
    la.backward()
    lr_.backward()
    rp = dict(ref.named_parameters())
    names = {"emb.weight": "tok_embeddings.weight", "rmsnorm.weight": "norm.weight"}
    for i in range(cfg["depth"]):
        a, r = f"layers.{i}.", f"layers.{i}."
        names[a + "norm.weight"] = r + "attention_norm.weight"
        names[a + "rmsnorm.weight"] = r + "ffn_norm.weight"
        for ours, theirs in ATTN_PAIRS:
            names[a + "attn." + theirs] = r + "attention." + ours
        for ours, theirs in SWIGLU_PAIRS:
            names[a + "swiglu." + theirs] = r + "feed_forward." + ours
    assert set(names) == {n for n, _ in m.named_parameters()}
    for n, p in m.named_parameters():
        assert torch.isfinite(p.grad).all()
        assert_close(p.grad, rp[names[n]].grad, f"grad {n}", atol=1e-5)


# ---------------------------------------------------------------------------- decoding

def test_decode_matches_prefill_after_growth():
    cfg = dict(d=16, depth=1, heads=2, hidden=16, loop_heads=1, loops=1, start=0, every=0)
    m, _ = build_pair(cfg)
    m.eval()
    x = tokens(B=1, T=6)
    with torch.no_grad():
        full = m(x)
        assert_close(decode(m, x), full, "token-by-token decode vs prefill")


def test_decode_matches_prefill_before_onset():
    cfg = dict(d=16, depth=2, heads=2, hidden=16, loop_heads=1, loops=1, start=5, every=1)
    m, _ = build_pair(cfg)
    m.eval()
    x = tokens(B=2, T=6)
    with torch.no_grad():
        assert_close(decode(m, x), m(x), "token-by-token decode vs prefill")
    assert not any(bool(l.looped.chosen) for l in m.layers)
