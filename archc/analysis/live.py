"""What of a spec the built module runs: its program after dead-code elimination.

The `dce` pass drops ops whose values nobody reads, and the weights only they used, before
any backend sees the program. Counts made from the elaborated IR (parameters, FLOPs, KV
bytes) would include that dead code and disagree with `module.parameters()`, so the
analyses read `live_program(program)` instead; and what dce drops that the spec named is
worth telling its author (`unused_values`: a value assigned and never read is usually a
mistake, such as a branch left out of a sum).
"""

from __future__ import annotations

from ..diagnostic import SpecWarning
from ..ir import Graph, Program, class_order
from ..passes.dce import dce

UNUSED = "W001"


def live_program(program: Program) -> Program:
    """The program as the backends get it after `dce` (train mode keeps train-time
    choices; an inference program resolves them first, as `dce` does)."""
    return dce(program)


def unused_values(program: Program, live: Program | None = None) -> list[SpecWarning]:
    """One warning per named value of the spec that no op reads (in source order of
    discovery, each statement once even if its block is specialized several times).
    Names starting with `_` are meant to be unused and are not reported."""
    live = live_program(program) if live is None else live
    out: list[SpecWarning] = []
    seen: set = set()
    for cls in class_order(program):
        kept = {o for _, node in _nodes(live.classes[cls].graph) for o in node.outs}
        read = {i for _, node in _nodes(program.classes[cls].graph) for i in node.inputs}
        for graph, node in _nodes(program.classes[cls].graph):
            for value in node.outs:
                name = graph.names.get(value)
                if value in kept or name is None or name.startswith("_"):
                    continue
                key = (node.span, name)
                if key in seen:
                    continue
                seen.add(key)
                out.append(_unused(name, node.span, value in read))
    return out


def _unused(name: str, span, read: bool) -> SpecWarning:
    what = "is read only by values that are never used" if read else "is never used"
    return SpecWarning(
        f"value `{name}` {what}", span,
        "the built module leaves it out and `cost` does not count it; remove it, use it, "
        f"or name it `_{name}` if it is meant", code=UNUSED)


def _nodes(graph: Graph):
    """(graph, node) for every node of a graph and of its region bodies."""
    for node in graph.nodes:
        yield graph, node
        if node.body is not None:
            yield from _nodes(node.body)
