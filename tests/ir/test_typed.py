"""Typed structure in the IR: a loop node carries its `Loop` (with a `Halt` of named
fields), a call node its `Call`, and backend annotations live in `Node.meta`, which
equality, hashing, CSE and the architecture hash do not see."""

from __future__ import annotations

import pydantic
import pytest

import archc
from archc.errors import ArchcError
from archc.identity import program_hash
from archc.ir import (Call, Count, Graph, Halt, Loop, Node, TensorType, annotate, map_graph,
                      walk)
from archc.passes import DEFAULTS, PASSES, PassOptions
from archc.verify import verify

HALTING = """model m(d: int = 8, r: int = 4 in 1..=8 runtime)
let emb = embed(vocab=16, dim=d)
let c = linear(out=d)
x = emb(tokens)
loop i in r max 8 until converged(x, tol=0.5, per="token") { x = x + c(x) }
return lm_head(x, tied=emb)
"""

FOR_SHARED = """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
let core = layernorm()
x = emb(tokens)
for i in 0..5 {
  x = gelu(core(x))
}
return lm_head(x, tied=emb)
"""

STACK = """model m(d: int = 8)
block layer(x) {
  x = x + attention(rmsnorm(x), heads=2)
  x = x + linear(gelu(rmsnorm(x)), out=d)
  return x
}
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
for i in 0..3 as layers {
  x = layer(x)
}
return lm_head(x, tied=emb)
"""

TWIN_GELU = """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
a = gelu(x)
b = gelu(x)
return lm_head(a * b, tied=emb)
"""

_LOOP_KEYS = {"kind", "var", "count", "label", "halt"}


def run_pass(name: str, program, options: PassOptions = DEFAULTS):
    step = next(p for p in PASSES if p.name == name)
    return verify(step.run(program, options), name)


def loops(program) -> list[Node]:
    return [n for b in program.classes.values() for n in walk(b.graph) if n.op == "loop"]


def test_a_loop_carries_its_typed_loop_and_no_attributes():
    (node,) = loops(archc.load(HALTING).program)
    loop = node.loop
    assert isinstance(loop, Loop) and loop.kind == "loop" and loop.var == "i"
    assert loop.count.param == "r" and loop.count.value == 4 and loop.count.max == 8
    assert loop.label == "loop"
    assert loop.halt == Halt(state=0, tol=0.5, per="token")
    assert not _LOOP_KEYS & {k for k, _ in node.attrs}
    assert node.attr("count") is None  # no shim: the facts are read from node.loop


def test_a_halt_has_named_fields():
    halt = Halt(state=1, tol=1e-3, per="sequence")
    assert (halt.state, halt.tol, halt.per) == (1, 1e-3, "sequence")
    with pytest.raises(pydantic.ValidationError):
        Halt(state=0, tol=1e-3, per="batch")  # only "token" or "sequence"
    with pytest.raises(TypeError):
        Halt(0, 1e-3, "token")  # no positional tuple


def test_a_call_carries_its_typed_call():
    program = archc.load(STACK).program
    (node,) = loops(program)
    (call,) = [n for n in node.body.nodes if n.op == "call"]
    assert isinstance(call.call, Call) and call.call.cls in program.classes
    assert call.call.iteration is None and "cls" not in {k for k, _ in call.attrs}
    assert node.loop.kind == "for" and node.loop.label == "layers"


def test_the_typed_loop_survives_unroll_roll_and_canonicalize():
    program = archc.load(FOR_SHARED).program
    (before,) = loops(program)
    assert before.loop == Loop(kind="for", var="i", count=Count(value=5), label="layers")
    flat = run_pass("unroll", program, PassOptions(unroll=True))
    assert not loops(flat)
    (back,) = loops(run_pass("roll", flat))
    assert back.loop == Loop(kind="loop", var="i", count=Count(value=5), label="loop")
    (canon,) = loops(run_pass("canonicalize", program))
    assert canon.loop == before.loop
    halting = archc.load(HALTING).program
    (kept,) = loops(run_pass("unroll", halting, PassOptions(unroll=True)))  # stays rolled
    assert kept.loop == loops(halting)[0].loop


def test_meta_is_not_part_of_equality_or_hash():
    t = TensorType(shape=("B", "T", 8))
    node = Node(op="gelu", outs=("%2",), types=(t,), inputs=("%1",))
    marked = annotate(node, fusion=3)
    assert marked.annotation("fusion") == 3 and node.annotation("fusion") is None
    assert marked.attrs == () and marked == node and hash(marked) == hash(node)
    assert len({node, marked}) == 1
    assert Node(op="gelu", outs=("%3",), types=(t,), inputs=("%1",)) != node


def _annotate_first(program, op: str, **meta):
    done = []

    def mark(node: Node) -> Node:
        if node.op == op and not done:
            done.append(node)
            return annotate(node, **meta)
        return node

    model = program.model
    graph = map_graph(model.graph, mark)
    classes = dict(program.classes)
    classes[program.root] = model.model_copy(update={"graph": graph})
    return program.model_copy(update={"classes": classes})


def test_cse_merges_nodes_that_differ_only_in_meta():
    program = _annotate_first(archc.load(TWIN_GELU).program, "gelu", fusion=7)
    gelus = [n for n in program.model.graph.nodes if n.op == "gelu"]
    assert [g.annotation("fusion") for g in gelus] == [7, None]
    (kept,) = [n for n in run_pass("canonicalize", program).model.graph.nodes
               if n.op == "gelu"]
    assert kept.annotation("fusion") == 7  # the first is kept, with its annotations


def test_meta_does_not_change_the_architecture_hash():
    program = archc.load(TWIN_GELU).program
    assert program_hash(_annotate_first(program, "gelu", fusion=1)) == program_hash(program)


def test_backend_passes_annotate_meta_not_attrs():
    program = archc.api.compile_program(archc.load(STACK))
    nodes = [n for b in program.classes.values() for n in walk(b.graph)]
    assert any(n.annotation("slot") is not None for n in nodes)
    assert any(n.annotation("fusion") is not None for n in nodes)
    assert not any(k in ("slot", "fusion") for n in nodes for k, _ in n.attrs)


def _replace_first(program, pick, update: dict):
    """The program with the first node `pick` accepts in any class changed by `update`."""
    done = []

    def change(node: Node) -> Node:
        if pick(node) and not done:
            done.append(node)
            return node.model_copy(update=update)
        return node

    classes = {cls: b.model_copy(update={"graph": map_graph(b.graph, change)})
               for cls, b in program.classes.items()}
    assert done, "no node to change"
    return program.model_copy(update={"classes": classes})


@pytest.mark.parametrize("text, pick, update, message", [
    (STACK, lambda n: n.op == "loop", {"loop": None}, "loop node without its Loop"),
    (STACK, lambda n: n.op == "call", {"call": None}, "call node without its Call"),
    (STACK, lambda n: n.op == "rmsnorm",
     {"loop": Loop(kind="for", var="i", count=Count(value=2), label="x")}, "carries a Loop"),
    (STACK, lambda n: n.op == "linear", {"call": Call(cls="Layer")}, "carries a Call"),
    (STACK, lambda n: n.op == "gelu", {"body": Graph()}, "gelu has a region body"),
    (HALTING, lambda n: n.op == "loop",
     {"loop": Loop(kind="loop", var="i", count=Count(value=2), label="loop",
                   halt=Halt(state=3, tol=0.1, per="token"))}, "halts on carried value 3"),
])
def test_the_verifier_checks_the_closed_node_kinds(text, pick, update, message):
    program = archc.load(text).program
    verify(program)
    with pytest.raises(ArchcError) as err:
        verify(_replace_first(program, pick, update))
    assert err.value.code == "A900" and message in str(err.value)
