"""share: shared and tied weights are listed in Program.weight_groups and checked."""

from __future__ import annotations

import pytest

import archc
from archc.api import compile_program
from archc.errors import ArchcError
from archc.ir import Ref, walk
from passtest import check_golden, run_pass

GROUPS = """model m(d: int = 8, r: int = 2 in 1..=4 runtime)
block layer(x) {
  let n = rmsnorm()
  x = x + linear(n(x), out=d)
  x = n(x)
  return x
}
let emb = embed(vocab=16, dim=d)
let core = layer()
let gate = linear(out=d)
x = emb(tokens)
for i in 0..2 as layers {
  x = layer(x)
}
loop r max 4 {
  x = core(x) * sigmoid(gate(x))
}
x = core(x)
return lm_head(x, tied=emb)
"""

NONE = """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
for i in 0..3 as layers {
  x = x + linear(rmsnorm(x), out=d)
}
return lm_head(rmsnorm(x), vocab=16)
"""


def groups(program) -> list[str]:
    return [str(g) for g in program.weight_groups]


def test_golden():
    check_golden("share", "groups", run_pass("share", archc.load(GROUPS).program))


def test_shared_tied_and_distinct():
    p = run_pass("share", archc.load(GROUPS).program)
    assert groups(p) == [
        "shared Layer.n: rmsnorm(8) <- rmsnorm :4, rmsnorm :5",
        "tied M.emb: embed(16x8) <- embed :11, tied_linear :19",
        "shared M.core: Layer <- Layer :16 x r, Layer :18",
        "shared M.gate: linear(8->8) <- linear :16 x r",
    ]  # layers[0] and layers[1] are distinct weights: no group


def test_nothing_shared_nothing_listed():
    assert run_pass("share", archc.load(NONE).program).weight_groups == ()


def test_the_pipeline_records_groups_of_the_specs():
    huginn = compile_program(archc.load("specs/huginn.arch"))
    assert [(g.kind, str(g.ref)) for g in huginn.weight_groups] == [
        ("tied", "emb"), ("shared", "core_block"), ("shared", "ln_f")]
    sgt = compile_program(archc.load("specs/sgt.arch"))
    # the looped heads read their layer's attention projections
    tied = [g for g in sgt.weight_groups if g.cls == "Layer" and g.kind == "tied"]
    assert [str(g.ref) for g in tied] == ["attn"]
    assert any(u.startswith("head_loop") for u in tied[0].uses)
    relaxed = compile_program(archc.load("specs/relaxed_recursive.arch"))
    assert [str(g.ref) for g in relaxed.weight_groups if g.kind == "shared"] == [
        "shared[0]", "shared[1]"]


def test_the_graph_is_unchanged():
    program = archc.load(GROUPS).program
    p = run_pass("share", program)
    before = [n for b in program.classes.values() for n in walk(b.graph)]
    after = [n for b in p.classes.values() for n in walk(b.graph)]
    assert before == after


def _retie(program, target: str):
    """The program with its tied head pointed at another embedding (a broken IR)."""
    root = program.model
    for node in root.graph.nodes:
        if node.op == "tied_linear":
            key = next(k for k, d in root.graph.g.nodes(data=True) if d["node"] is node)
            root.graph.g.nodes[key]["node"] = node.model_copy(
                update={"ref": Ref(path=((target, None),))})
    return program


def test_a_tie_that_does_not_fit_is_a_compiler_error():
    text = ("model m()\nlet a = embed(vocab=16, dim=8)\nlet b = embed(vocab=16, dim=4)\n"
            "x = a(tokens)\ny = b(tokens)\nreturn lm_head(x, tied=a)\n")
    program = _retie(archc.load(text).program, "b")
    with pytest.raises(ArchcError) as err:
        run_pass("share", program)
    assert err.value.code == "A900" and "embedding of 16 x 4" in str(err.value)


def test_a_shared_use_with_another_shape_is_a_compiler_error():
    text = ("model m()\nlet emb = embed(vocab=16, dim=8)\nlet n = rmsnorm()\n"
            "x = emb(tokens)\ny = linear(x, out=4)\nz = rmsnorm(y)\n"
            "return lm_head(n(x) + n(x), tied=emb)\n")
    program = archc.load(text).program
    root = program.model
    # point the rmsnorm of y (width 4) at `n` (built for width 8)
    for key, data in root.graph.g.nodes(data=True):
        node = data["node"]
        if node.op == "rmsnorm" and node.inputs[0] != root.graph.nodes[0].outs[0]:
            data["node"] = node.model_copy(update={"ref": Ref(path=(("n", None),))})
    with pytest.raises(ArchcError) as err:
        run_pass("share", program)
    assert err.value.code == "A900"
