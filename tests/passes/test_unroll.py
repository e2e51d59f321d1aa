"""unroll: static loops become straight-line code with literal indices, only when asked,
computing what the loops did with the same weights."""

from __future__ import annotations

import pytest
import torch

import archc
from archc.api import compile_program
from archc.ir import walk
from passtest import UNROLL, build_program, check_golden, run_both, run_pass, source

STACK = """model m(d: int = 8)
block layer(x, width: int) {
  x = x + linear(relu(linear(x, out=width)), out=d)
  return x
}
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
for i in 0..3 as layers {
  x = layer(x, width=8)
}
return lm_head(x, tied=emb)
"""

SHARED_LOOP = """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
let core = linear(out=d)
x = emb(tokens)
e = x
loop i in 3 {
  x = core(x + e)
  x = scale(x, 1 / (i + 1))
}
return lm_head(x, tied=emb)
"""

NESTED = """model m(d: int = 8)
block layer(x) {
  x = x + linear(rmsnorm(x), out=d)
  return x
}
let emb = embed(vocab=16, dim=d)
let shared[2] = layer()
x = emb(tokens)
loop j in 2 as recursion {
  for b in 0..2 {
    x = shared[b](x) with lora(rank=2)
  }
}
return lm_head(x, tied=emb)
"""


def unrolled(text: str, **params):
    """The unroll pass alone, asked to unroll."""
    return run_pass("unroll", archc.load(text, **params).program, UNROLL)


def loops(program) -> list:
    return [n for b in program.classes.values() for n in walk(b.graph) if n.op == "loop"]


@pytest.mark.parametrize("case, text", [("stack", STACK), ("shared_loop", SHARED_LOOP),
                                        ("nested", NESTED)])
def test_golden(case, text):
    p = unrolled(text)
    assert not loops(p)
    check_golden("unroll", case, p)


def test_off_by_default():
    p = compile_program(archc.load(STACK))
    assert len(loops(p)) == 1
    assert run_pass("unroll", archc.load(STACK).program) is not None
    assert "for layer in self.layers:" in source(p)


def test_refs_get_literal_indices_and_shared_weights_stay_shared():
    p = unrolled(STACK)
    calls = [str(n.ref) for n in p.model.graph.nodes if n.op == "call"]
    assert calls == ["layers[0]", "layers[1]", "layers[2]"]
    p = unrolled(SHARED_LOOP)
    assert [str(n.ref) for n in p.model.graph.nodes if n.op == "linear"] == ["core"] * 3
    # the loop index in the scale becomes the literal of each iteration
    assert [n.attr("by") for n in p.model.graph.nodes if n.op == "scale"] == [
        ("bin", "/", ("num", 1), ("bin", "+", ("num", k), ("num", 1))) for k in range(3)]


def test_per_iteration_adapters_get_their_iteration():
    p = unrolled(NESTED)
    calls = [(str(n.ref), n.call.iteration) for n in p.model.graph.nodes if n.op == "call"]
    assert calls == [("shared[0]", "0"), ("shared[1]", "0"), ("shared[0]", "1"),
                     ("shared[1]", "1")]
    assert "self.shared[1](x, 1)" in source(compile_program(archc.load(NESTED), unroll=True))


def test_run_time_counts_stay_rolled():
    p = compile_program(archc.load("specs/huginn.arch"), unroll=True)
    kinds = [n.loop.kind for n in loops(p)]
    assert kinds == ["loop"]  # the `loop r` (run-time count); prelude, core, coda unrolled


@pytest.mark.parametrize("spec", [STACK, SHARED_LOOP, NESTED, "specs/transformer.arch",
                                  "specs/relaxed_recursive.arch", "specs/huginn.arch"])
def test_same_outputs_and_weights(spec):
    rolled = archc.build(spec).eval()
    flat = archc.load(spec)
    m = build_program(flat, compile_program(flat, unroll=True))
    m.eval()
    assert list(m.state_dict()) == list(rolled.state_dict())
    a, b = run_both(rolled, m, vocab=16, length=7)  # huginn draws its initial state
    assert torch.equal(b, a)


def test_decoding_with_a_cache_matches():
    spec = archc.load("specs/transformer.arch", depth=3)
    rolled = archc.build(spec).eval()
    flat = archc.load("specs/transformer.arch", depth=3)
    m = build_program(flat, compile_program(flat, unroll=True))
    m.load_state_dict(rolled.state_dict())
    m.eval()
    t = torch.randint(0, 256, (1, 6))
    cache = m.new_cache(batch=1, max_len=8)
    assert cache.nbytes == rolled.new_cache(batch=1, max_len=8).nbytes
    with torch.no_grad():
        first = m(t[:, :4], cache=cache)
        last = m(t[:, 4:], cache=cache)
        full = rolled(t)
    torch.testing.assert_close(torch.cat([first, last], 1), full, rtol=1e-5, atol=1e-5)
