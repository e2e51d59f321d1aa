"""Run-time semantics that used to give silently wrong answers (issue 8, item 3).

Each test checks the compiled module against an independent expectation: incremental
decoding against the prefill of the whole sequence (token by token and in chunks), the
MoE's routing against the documented rule written out in plain torch, or a documented
error where a combination cannot be decoded incrementally.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import archc
from archc import ArchcError
from archc import runtime as rt

ATOL = 1e-5


def build(text: str, seed: int = 0, std: float = 0.3, **params):
    """A module with every parameter N(0, std^2), in eval mode."""
    m = archc.build(text, **params)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return m.eval()


def tokens(b=2, t=10, vocab=32, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode(m, toks, chunks=None, **kw):
    """Feed `toks` through one cache in pieces (default: one token at a time)."""
    t = toks.shape[1]
    chunks = list(chunks) if chunks is not None else [1] * t
    assert sum(chunks) == t
    cache = m.new_cache(batch=toks.shape[0], max_len=t)
    outs, at = [], 0
    for n in chunks:
        outs.append(m(toks[:, at:at + n], cache=cache, **kw))
        at += n
    return torch.cat(outs, dim=1)


def assert_close(got, want, what, atol=ATOL):
    assert got.shape == want.shape, f"{what}: {tuple(got.shape)} vs {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    assert err <= atol, f"{what}: max abs difference {err:.3e} > {atol}"


@torch.no_grad()
def check_decode_equals_prefill(m, toks, chunks=(3, 1, 4), double=False, **kw):
    """Token by token, and in `chunks` then the rest, equal the whole-sequence forward
    (and, with `double`, in a float64 copy within 1e-10: only rounding remains there)."""
    chunks = list(chunks) + [toks.shape[1] - sum(chunks)]
    models = [(m, ATOL)] + ([(copy.deepcopy(m).double(), 1e-10)] if double else [])
    for model, atol in models:
        full = model(toks, **kw)
        assert_close(decode(model, toks, **kw), full, "token-by-token decode vs prefill", atol)
        assert_close(decode(model, toks, chunks, **kw), full,
                     f"chunks {list(chunks)} vs prefill", atol)


# ----------------------------------------------------------------------------- halting + cache

HALT = """model halt(d: int = 16, vocab: int = 32, r: int = 6 in 1..=8 runtime)
block layer(x) {
  x = attention(rmsnorm(x), heads=2)
  return x
}
CORE
x = embed(tokens, vocab=vocab, dim=d)
loop i in r max 8 until converged(x, tol=TOL, per=PER) { x = x + scale(BODY, by=1 / (1 + i * i)) }
return lm_head(rmsnorm(x), vocab=vocab)
"""


def halting_spec(tol, per="token", body="core(x)"):
    core = "let core = layer()" if body == "core(x)" else "# an instance per iteration"
    return (HALT.replace("TOL", repr(tol)).replace("PER", f'"{per}"').replace("BODY", body)
            .replace("CORE", core))


def halting_model(spec):
    """Embedding rows of norms 0.1..10: tokens move by different relative amounts, so
    they halt at different iterations."""
    m = build(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = m.embed.weight
        w.mul_(torch.logspace(-1, 1, w.shape[0])[torch.randperm(w.shape[0], generator=g)][:, None])
    return m


def iterations_active(m, toks):
    """How many positions are still moving after each iteration of the prefill."""
    seen = []
    update = rt.Halting.update

    def spy(self, old, new):
        out = update(self, old, new)
        seen.append(int(self.active.sum()))
        return out

    rt.Halting.update = spy
    try:
        with torch.no_grad():
            m(toks)
    finally:
        rt.Halting.update = update
    return seen


@pytest.mark.parametrize("tol", [0.05, 0.1])
@pytest.mark.parametrize("body", ["core(x)", "layer(x)"], ids=["shared", "per-iteration"])
def test_per_token_halting_decodes_like_the_prefill(tol, body):
    """Positions halt at different iterations and decode steps halt before `r`: a halted
    position's later iterations still get keys and values (those of its frozen state, as
    a full forward that kept computing stores them), so decoding equals the prefill."""
    m = halting_model(halting_spec(tol, body=body))
    toks = tokens()
    active = iterations_active(m, toks)
    steps = [len(iterations_active(m, toks[:, t:t + 1])) for t in range(toks.shape[1])]
    assert min(steps) < 6, f"some decode steps should halt before r=6: {steps}"
    assert len(set(active)) > 2, f"positions should halt at different iterations: {active}"
    check_decode_equals_prefill(m, toks, double=True)


def test_per_token_halting_is_unchanged_without_a_cache():
    """The fill rule only adds work when a cache is filled: without one the loop still
    stops once every position halted, and its output is that of a loop that never
    stops early (halted states are frozen)."""
    m = halting_model(halting_spec(0.2))
    toks = tokens()
    with torch.no_grad():
        fast = m(toks)
        cache = m.new_cache(batch=2, max_len=toks.shape[1])
        filled = m(toks, cache=cache)
    assert torch.equal(fast, filled)


def test_per_sequence_halting_refuses_a_cache():
    """Halting per sequence decides on every position at once, later ones included: a
    decoded token would change the outputs of earlier ones, so no cache for it."""
    m = halting_model(halting_spec(0.2, per="sequence"))
    toks = tokens()
    with torch.no_grad():
        assert torch.equal(m(toks), m(toks))  # the full forward is fine
    with pytest.raises(ArchcError) as e:
        m.new_cache(batch=2, max_len=10)
    err = e.value
    assert 'per="sequence"' in err.message and "incremental" in err.message
    assert err.span is not None and err.span.line == 8, err.span
    assert err.hint and "token" in err.hint
    assert "<spec>:8:" in str(err)


# ----------------------------------------------------------------------------- non-causal attention

NONCAUSAL = """model bidir(d: int = 16, vocab: int = 32)
block layer(x) {
  x = x + attention(rmsnorm(x), heads=2, causal=false)
  return x
}
x = embed(tokens, vocab=vocab, dim=d)
x = x + attention(rmsnorm(x), heads=2)
x = layer(x)
return lm_head(rmsnorm(x), vocab=vocab)
"""


def test_non_causal_attention_refuses_a_cache():
    """A non-causal attention reads later positions; a cache cannot give it those, so
    new_cache is an archc error at the attention, not a silently different decode."""
    m = build(NONCAUSAL)
    toks = tokens()
    with torch.no_grad():
        out = m(toks)
        first = m(toks[:, :1])
    assert not torch.allclose(out[:, :1], first, atol=1e-3), "the attention is not bidirectional"
    with pytest.raises(ArchcError) as e:
        m.new_cache(batch=2, max_len=10)
    err = e.value
    assert "causal=false" in err.message and "attention" in err.message
    assert err.span is not None and err.span.line == 3 and err.span.col == 11, err.span
    assert err.code.startswith("A")
    rendered = str(err)
    assert "<spec>:3:11" in rendered and "^" in rendered and "causal=false" in rendered


def test_causal_attention_still_gets_a_cache():
    m = build(NONCAUSAL.replace(", causal=false", ""))
    check_decode_equals_prefill(m, tokens())


# ----------------------------------------------------------------------------- run-time loop counts

LOOPED = """model looped(d: int = 16, vocab: int = 32, r: int = 4 in 1..=8 runtime)
block layer(x) {
  x = x + attention(rmsnorm(x), heads=2)
  x = x + swiglu(rmsnorm(x), hidden=32)
  return x
}
let core = layer()
x = embed(tokens, vocab=vocab, dim=d)
loop r max 8 { x = core(x) }
x = x + attention(rmsnorm(x), heads=2)
return lm_head(rmsnorm(x), vocab=vocab)
"""


@pytest.mark.parametrize("first, then", [(4, 8), (8, 4)], ids=["bigger", "smaller"])
def test_a_cache_keeps_the_loop_count_it_was_filled_with(first, then):
    """Changing r mid-decode reads slots never filled (bigger r) or mixes states of two
    depths (smaller r: the layer after the loop cached keys of the r=8 state): an error
    that names the param and both counts."""
    m = build(LOOPED, std=0.2)
    toks = tokens()
    with torch.no_grad():
        cache = m.new_cache(batch=2, max_len=10)
        m(toks[:, :6], r=first, cache=cache)
        with pytest.raises(ArchcError) as e:
            m(toks[:, 6:7], r=then, cache=cache)
    text = str(e.value)
    assert f"r={then}" in text and f"r={first}" in text, text
    assert cache.pos == 6, "the refused call must not advance the cache"


SCHEDULED = """model grown(d: int = 16, vocab: int = 32, step: int = 0 runtime)
x = embed(tokens, vocab=vocab, dim=d)
loop after(5) max 1 { x = x + attention(rmsnorm(x), heads=2) }
return lm_head(rmsnorm(x), vocab=vocab)
"""


def test_a_cache_keeps_the_training_step_it_was_filled_with():
    """A schedule's loop count moves with the step: set_step mid-decode is refused too."""
    m = build(SCHEDULED)
    toks = tokens()
    with torch.no_grad():
        cache = m.new_cache(batch=2, max_len=10)
        m(toks[:, :4], cache=cache)
        m.set_step(10)
        with pytest.raises(ArchcError) as e:
            m(toks[:, 4:5], cache=cache)
    assert "step=10" in str(e.value) and "step=0" in str(e.value)
    check_decode_equals_prefill(m, toks)


def test_the_same_count_decodes_and_a_reset_cache_takes_a_new_one():
    m = build(LOOPED, std=0.2)
    toks = tokens()
    for r in (2, 7):
        check_decode_equals_prefill(m, toks, r=r)
    with torch.no_grad():
        cache = m.new_cache(batch=2, max_len=10)
        m(toks, r=3, cache=cache)
        cache.reset()
        assert_close(m(toks, r=5, cache=cache), m(toks, r=5), "after reset, r=5")


# ----------------------------------------------------------------------------- MoE in eval

MOE = """model routed(d: int = 16, vocab: int = 32)
x = embed(tokens, vocab=vocab, dim=d)
x = x + attention(rmsnorm(x), heads=2)
x = x + moe(rmsnorm(x), experts=8, k=1, hidden=32, capacity=0.5)
return lm_head(rmsnorm(x), vocab=vocab)
"""


def moe_of(m):
    (moe,) = [x for x in m.modules() if isinstance(x, rt.MoE)]
    return moe


def test_moe_eval_does_not_depend_on_tokens_per_call():
    """In eval every token goes to its top-k experts whatever else shares the call, so
    the prefill equals per-token cached decoding and a sequence alone equals it batched."""
    m = build(MOE, std=0.5)
    toks = tokens(b=1, t=12)
    with torch.no_grad():
        moe_of(m).router.mul_(10.0)  # a decisive router: several tokens per expert
        check_decode_equals_prefill(m, toks)
        pair = torch.cat([toks, tokens(b=1, t=12, seed=7)])
        assert_close(m(pair)[:1], m(toks), "a sequence alone vs in a batch of two")


def dropped_by_rule(x, router, capacity, experts):
    """The documented training rule for k=1, written out: expert e keeps the first
    ceil(capacity * N / E) tokens (in token order) that chose it; the rest are dropped."""
    choice = (x @ router.t()).argmax(-1).tolist()
    cap = math.ceil(capacity * len(choice) / experts)
    load = [0] * experts
    dropped = []
    for n, e in enumerate(choice):
        load[e] += 1
        if load[e] > cap:
            dropped.append(n)
    return dropped


def test_moe_training_still_applies_capacity():
    m = build(MOE, std=0.5)
    moe = moe_of(m)
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        moe.router.mul_(10.0)
        want = dropped_by_rule(x, moe.router, 0.5, 8)
        assert want, "the case must drop tokens"
        moe.train()
        zero = (moe(x[None])[0].abs().sum(-1) == 0).nonzero().flatten().tolist()
        moe.eval()
        kept = (moe(x[None])[0].abs().sum(-1) == 0).nonzero().flatten().tolist()
    assert zero == want, f"training dropped {zero}, the capacity rule drops {want}"
    assert kept == [], f"eval dropped tokens {kept}"


def test_moe_cost_is_what_eval_runs():
    """archc.cost prices every token at its k experts: exactly what eval computes, even
    where training's capacity drops assignments (and so measures less)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = dict(d=32, depth=2, heads=4, hidden=48, experts=8, k=1, capacity=0.5)
    m = build("specs/widenet.arch", std=0.5, **cfg)
    toks = tokens(t=8, vocab=256)
    measured = {}
    for mode in ("eval", "train"):
        m.train(mode == "train")
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
                FlopCounterMode(display=False) as counter:
            m(toks)
        measured[mode] = counter.get_total_flops()
    priced = archc.cost("specs/widenet.arch", seq=8, batch=2, **cfg).flops
    assert measured["eval"] == priced, (measured, priced)
    assert measured["train"] < priced, "the training case should drop assignments"


def test_eval_capacity_is_an_error_that_says_why():
    with pytest.raises(ArchcError) as e:
        archc.build(MOE.replace("capacity=0.5", "capacity=0.5, eval_capacity=2.0"))
    assert "eval_capacity" in e.value.message and e.value.span.line == 4
    assert "training" in e.value.hint


# ----------------------------------------------------------------------------- init_state noise

NOISY = """model noisy(d: int = 16, vocab: int = 32, r: int = 3 in 1..=4 runtime)
block layer(s, e) {
  s = linear(concat(s, e), out=d)
  s = s + attention(rmsnorm(s), heads=2)
  return s
}
let core = layer()
e = embed(tokens, vocab=vocab, dim=d)
s = init_state(e, init="trunc_normal", std=0.5, scale=2.0)
loop r max 4 { s = core(s, e) }
return lm_head(rmsnorm(s), vocab=vocab)
"""


def test_init_state_noise_is_reproducible_in_eval():
    m = build(NOISY)
    toks = tokens()
    with torch.no_grad():
        a, b = m(toks), m(toks)
        assert torch.equal(a, b), "two identical eval calls differ"
        assert torch.equal(m(toks, seed=0), a), "the default eval seed is 0"
        c = m(toks, seed=1)
    assert (a - c).abs().max() > 1e-3, "a different seed must draw a different state"


def test_init_state_decode_equals_prefill():
    m = build(NOISY)
    check_decode_equals_prefill(m, tokens(), double=True)
    check_decode_equals_prefill(m, tokens(), seed=5)


def initial_state(m, toks, **kw):
    seen = []
    hook = m.core.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            m(toks, **kw)
    finally:
        hook.remove()
    return seen[0]


def test_init_state_noise_is_keyed_by_absolute_position():
    """The same position draws the same state whatever the batch row, the length of the
    call or where the call starts; the draw is a truncated normal of the given std."""
    m = build(NOISY, r=1)
    toks = tokens(b=3, t=64)
    s = initial_state(m, toks, seed=3)
    assert torch.equal(s[0], s[2]), "batch rows drew different states"
    assert torch.equal(initial_state(m, toks[:, :9], seed=3), s[:, :9])
    std, bound = 0.5 * 2.0, 3 * 0.5 * 2.0
    flat = s[0]
    assert flat.abs().max() <= bound * (1 + 1e-6)
    assert flat.abs().max() > 0.9 * bound, "no draw near the truncation point"
    assert abs(flat.mean().item()) < 0.05 * std
    # std of N(0, 1) truncated at +-3 is 0.98658
    assert abs(flat.std().item() / (0.98658 * std) - 1) < 0.05, flat.std()
    assert len({round(v, 6) for v in flat.flatten().tolist()}) > 0.99 * flat.numel()


def test_init_state_noise_in_training_is_fresh_unless_seeded():
    m = build(NOISY).train()
    toks = tokens()
    with torch.no_grad():
        assert not torch.equal(m(toks), m(toks)), "training draws a fresh state per step"
        assert torch.equal(m(toks, seed=4), m(toks, seed=4))


def test_huginn_decodes_like_its_prefill():
    """The spec library's recurrent-depth LM: random initial state, attention in the
    loop and after it, run-time r."""
    cfg = dict(d=32, heads=4, hidden=48, prelude=1, core=2, coda=1)
    m = build("specs/huginn.arch", std=0.1, **cfg)
    toks = tokens(t=8, vocab=256)
    check_decode_equals_prefill(m, toks, chunks=(3, 1, 2), r=3)
