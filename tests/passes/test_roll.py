"""roll: back-to-back applications of one shared instance become a loop region; the
inverse of unroll for loops that share their weights."""

from __future__ import annotations

import pytest
import torch

import archc
from archc.identity import program_hash
from archc.ir import walk
from passtest import UNROLL, build_program, check_golden, pipeline_without, run_pass, source

THREE_CALLS = """model m(d: int = 8)
block layer(x) {
  x = x + linear(rmsnorm(x), out=d)
  return x
}
let core = layer()
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
x = core(x)
x = core(x)
x = core(x)
return lm_head(x, tied=emb)
"""

WINDOW = """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
let core = linear(out=d)
let n = rmsnorm()
x = emb(tokens)
e = x
x = core(n(x) + e)
x = core(n(x) + e)
x = core(n(x) + e)
x = core(n(x) + e)
return lm_head(x, tied=emb)
"""

NOT_ROLLED = """model m(d: int = 8)
block inner(x) {
  let f = linear(out=d)
  x = f(x)
  x = f(x)
  return x
}
let emb = embed(vocab=16, dim=d)
let core = linear(out=d)
let a = linear(out=d)
let b = linear(out=d)
x = emb(tokens)
y = core(x)
z = core(y)
w = core(z)
v = b(a(w))
for i in 0..2 as layers {
  v = inner(v)
}
return lm_head(y + v, tied=emb)
"""

LOOPS = [
    # a shared block carried through a static loop, with the input re-injected
    """model m(d: int = 8)
block layer(x) {
  x = x + linear(rmsnorm(x), out=d)
  return x
}
let core = layer()
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
e = x
loop 3 {
  x = core(x + e)
}
return lm_head(x, tied=emb)
""",
    # two carried values, ops between shared modules
    """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
let f = linear(out=d)
let g = linear(out=d)
x = emb(tokens)
s = x
loop 4 {
  s = f(s) + x
  x = g(relu(x))
}
return lm_head(s + x, tied=emb)
""",
    # a window of two ops around one shared instance
    """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
let core = layernorm()
x = emb(tokens)
loop 5 {
  x = gelu(core(x))
}
return lm_head(x, tied=emb)
""",
]


def loops(program) -> list:
    return [n for b in program.classes.values() for n in walk(b.graph) if n.op == "loop"]


@pytest.mark.parametrize("case, text", [("three_calls", THREE_CALLS), ("window", WINDOW),
                                        ("not_rolled", NOT_ROLLED)])
def test_golden(case, text):
    check_golden("roll", case, run_pass("roll", archc.load(text).program))


def test_three_calls_become_a_loop():
    p = run_pass("roll", archc.load(THREE_CALLS).program)
    (loop,) = loops(p)
    assert loop.loop.kind == "loop" and loop.loop.count.value == 3
    code = source(archc.api.compile_program(archc.load(THREE_CALLS)))
    assert "for _ in range(3):\n            x = self.core(x)" in code  # the index is unused
    assert code.count("self.core(") == 1


def test_only_values_private_to_the_run_are_rolled():
    p = run_pass("roll", archc.load(NOT_ROLLED).program)
    # y is read after the run: only z = core(y), w = core(z) roll; a then b are different
    # weights; the two applications of `f` in `inner` roll inside its class
    counts = [n.loop.count.value for n in loops(p) if n.loop.kind == "loop"]
    assert sorted(counts) == [2, 2]
    assert [n.op for n in p.model.graph.nodes][:4] == ["embed", "linear", "loop", "linear"]


@pytest.mark.parametrize("text", LOOPS)
def test_roll_undoes_unroll(text):
    program = archc.load(text).program
    flat = run_pass("unroll", program, UNROLL)
    assert not loops(flat)
    back = run_pass("roll", flat)
    assert program_hash(back) == program_hash(program)


def test_a_for_over_shared_weights_comes_back_as_a_loop():
    text = LOOPS[2].replace("loop 5 {", "for i in 0..5 {")
    program = archc.load(text).program
    assert [n.loop.kind for n in loops(program)] == ["for"]
    flat = run_pass("unroll", program, UNROLL)
    back = run_pass("roll", flat)
    assert [(n.loop.kind, n.loop.count.value) for n in loops(back)] == [("loop", 5)]
    assert program_hash(back) == program_hash(archc.load(LOOPS[2]).program)


def test_nothing_rolls_when_unrolling_is_asked_for():
    program = archc.load(THREE_CALLS).program
    assert not loops(run_pass("roll", program, UNROLL))


@pytest.mark.parametrize("text", [THREE_CALLS, WINDOW, NOT_ROLLED])
def test_same_outputs_and_weights(text):
    m = archc.build(text).eval()
    flat = archc.load(text)
    ref = build_program(flat, pipeline_without(flat.program, "roll")).eval()
    assert list(m.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(m.state_dict())
    t = torch.randint(0, 16, (2, 5))
    with torch.no_grad():
        assert torch.equal(m(t), ref(t))


def test_a_run_binding_temporaries_rolls_before_a_loop():
    # locals bound in one loop body are released only inside that body, so a rolled run
    # that binds temporaries may be followed by another loop
    text = WINDOW.replace("return lm_head(x, tied=emb)",
                          "for i in 0..2 as layers {\n  x = core(x)\n}\n"
                          "return lm_head(x, tied=emb)")
    p = run_pass("roll", archc.load(text).program)
    assert [n.loop.kind for n in loops(p)] == ["loop", "for"]
    m = archc.build(text)
    assert m(torch.randint(0, 16, (1, 3))).shape == (1, 3, 16)


def test_a_rolled_attention_keeps_a_cache_slot_per_application():
    text = """model m(d: int = 16)
let emb = embed(vocab=16, dim=d)
let attn = attention(heads=2)
let n = rmsnorm()
x = emb(tokens)
x = x + attn(n(x))
x = x + attn(n(x))
x = x + attn(n(x))
return lm_head(x, tied=emb)
"""
    p = archc.api.compile_program(archc.load(text))
    assert [n.loop.count.value for n in loops(p)] == [3] and len(p.kv_layout) == 3
    m = archc.build(text).eval()
    flat = archc.load(text)
    ref = build_program(flat, pipeline_without(flat.program, "roll")).eval()
    ref.load_state_dict(m.state_dict())
    t = torch.randint(0, 16, (1, 6))
    caches = [m.new_cache(batch=1, max_len=8), ref.new_cache(batch=1, max_len=8)]
    assert caches[0].nbytes == caches[1].nbytes
    with torch.no_grad():
        a = torch.cat([m(t[:, :4], cache=caches[0]), m(t[:, 4:], cache=caches[0])], 1)
        b = torch.cat([ref(t[:, :4], cache=caches[1]), ref(t[:, 4:], cache=caches[1])], 1)
    assert torch.equal(a, b)
