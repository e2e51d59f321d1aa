"""fuse: maximal chains of elementwise ops and row reductions get a fusion region id; the
graph and the generated torch code are otherwise unchanged."""

from __future__ import annotations

import glob

import pytest

import archc
from archc.api import compile_program
from archc.ir import walk
from archc.passes.fuse import fusible
from passtest import check_golden, pipeline_without, run_pass, source

CHAINS = """model m(d: int = 8)
block layer(x) {
  x = rmsnorm(x + linear(x, out=d))
  g = sigmoid(linear(x, out=d))
  h = gelu(linear(x, out=d)) * g
  x = x + scale(linear(h, out=d), 0.5)
  return x
}
let emb = embed(vocab=16, dim=d)
x = emb(tokens)
for i in 0..2 as layers {
  x = layer(x)
}
y = relu(x)
return lm_head(rmsnorm(y + x), tied=emb)
"""

SPECS = sorted(glob.glob("specs/*.arch"))


def regions(program) -> dict[int, list]:
    out: dict[int, list] = {}
    for block in program.classes.values():
        for node in walk(block.graph):
            if node.annotation("fusion") is not None:
                out.setdefault(node.annotation("fusion"), []).append(node)
    return out


def test_golden():
    check_golden("fuse", "chains", run_pass("fuse", archc.load(CHAINS).program))


def test_chains_of_the_golden_spec():
    p = run_pass("fuse", archc.load(CHAINS).program)
    ops = [[n.op for n in nodes] for nodes in regions(p).values()]
    # add + norm; the gate's product and the scaled residual; relu feeding the final add
    # and norm (x is read twice, so `y + x` starts after relu only through y)
    assert ops == [["add", "rmsnorm"], ["gelu", "mul"], ["scale", "add"],
                   ["relu", "add", "rmsnorm"]]


def _check_regions(program) -> None:
    for block in program.classes.values():
        graphs = [block.graph] + [n.body for n in walk(block.graph) if n.body is not None]
        for graph in graphs:
            users: dict[str, int] = {}
            for node in graph.nodes:
                for v in set(node.inputs):
                    users[v] = users.get(v, 0) + 1
            chains: dict[int, list] = {}
            for node in graph.nodes:
                if node.annotation("fusion") is not None:
                    chains.setdefault(node.annotation("fusion"), []).append(node)
            members = {id(n) for c in chains.values() for n in c}
            for chain in chains.values():
                assert len(chain) >= 2 and all(fusible(n) for n in chain)
                for prev, node in zip(chain, chain[1:]):
                    v = prev.outs[0]
                    assert v in node.inputs and users[v] == 1 and v not in graph.outputs
                # maximal: the tail's value does not feed a fusible node it could extend
                tail = chain[-1].outs[0]
                if users.get(tail) == 1 and tail not in graph.outputs:
                    nxt = next(n for n in graph.nodes if tail in n.inputs)
                    assert not fusible(nxt) or id(nxt) in members
            # nor could a lone fusible node join a chain's head
            for chain in chains.values():
                head = chain[0]
                for v in head.inputs:
                    src = next((n for n in graph.nodes if v in n.outs), None)
                    if src is not None and fusible(src) and users[v] == 1 \
                            and v not in graph.outputs:
                        assert id(src) in members


@pytest.mark.parametrize("spec", SPECS)
def test_regions_are_maximal_chains(spec):
    _check_regions(compile_program(archc.load(spec)))


@pytest.mark.parametrize("spec", SPECS)
def test_generated_code_is_unchanged(spec):
    loaded = archc.load(spec)
    assert source(compile_program(loaded)) == source(pipeline_without(loaded.program, "fuse"))


def test_region_ids_are_unique_across_the_program():
    p = compile_program(archc.load("specs/transformer.arch"))
    found = regions(p)
    assert sorted(found) == list(range(len(found)))
    assert [n.op for n in found[0]] == ["silu", "mul"]
