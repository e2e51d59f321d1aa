"""unroll: splice static loop regions into straight-line code, when asked.

Loops stay rolled by default: a `for` over a stack reads best as a Python loop over its
ModuleList, and `torch.compile` unrolls a static loop by itself, so unrolling buys eager
PyTorch nothing. There is no automatic threshold either (even a 2-iteration loop reads
better rolled); unrolling is a policy the caller sets with `PassOptions.unroll` (for a
backend that wants straight-line graphs, or to inspect one iteration's ops at their own
depth).

Which regions: every `for` region, and every `loop` region whose count is static and that
has no halting rule (a run-time count or an early exit needs the loop at run time).
Nested regions unroll too, innermost first.

Invariant: the straight-line code computes what the loop did, with the same weights.
Iteration k is the body with its inputs bound to the values the loop fed it (the carried
values of iteration k - 1, then the captures) and the loop variable replaced by k
everywhere it appears: module refs (`layers[i]` -> `layers[2]`; a `loop`'s shared
modules keep their unindexed refs, so they stay one module), run-time scalar trees (`by`
of a scale, counts of nested loops), a per-iteration adapter's `iteration` argument and
refs held in attributes. Iteration 0 keeps the body's value ids; later iterations get
fresh ones; values keep their spec names.
"""

from __future__ import annotations


from ..graph_ops import substitute
from ..ir import Graph, Node, Program, next_value_id
from .pipeline import DEFAULTS, Pass, PassOptions


def _unrollable(node: Node) -> bool:
    if node.op != "loop":
        return False
    if node.loop.kind == "for":
        return True
    return node.loop.count.expr is None and node.loop.halt is None


def _rename(node: Node, mapping: dict[str, str]) -> Node:
    """A node with its inputs and outputs renamed (bodies are closed: left as they are)."""
    return node.model_copy(update={
        "inputs": tuple(mapping.get(v, v) for v in node.inputs),
        "outs": tuple(mapping.get(v, v) for v in node.outs)})


# ----------------------------------------------------------------------------- splicing


class _Unroller:
    def __init__(self, first_id: int):
        self.next_id = first_id

    def fresh(self) -> str:
        self.next_id += 1
        return f"%{self.next_id - 1}"

    def renumber(self, graph: Graph) -> Graph:
        """A copy of a region body whose own values (inputs, outputs of its nodes, inner
        bodies) have fresh ids, so each spliced iteration's regions are distinct."""
        mapping = {vid: self.fresh() for vid, _ in graph.inputs}
        out = Graph([(mapping[vid], t) for vid, t in graph.inputs])
        for node in graph.nodes:
            mapping.update((o, self.fresh()) for o in node.outs)
            if node.body is not None:
                node = node.model_copy(update={"body": self.renumber(node.body)})
            out.add(_rename(node, mapping))
        out.outputs = [mapping.get(v, v) for v in graph.outputs]
        out.names = {mapping[v]: n for v, n in graph.names.items() if v in mapping}
        return out

    def graph(self, graph: Graph) -> Graph:
        out = Graph(graph.inputs)
        out.names = dict(graph.names)
        alias: dict[str, str] = {}
        for node in graph.nodes:
            node = node.model_copy(update={"inputs": tuple(alias.get(v, v) for v in node.inputs)})
            if node.body is not None:
                node = node.model_copy(update={"body": self.graph(node.body)})
            if not _unrollable(node):
                out.add(node)
                continue
            finals = self.splice(node, out)
            for o, v in zip(node.outs, finals):
                alias[o] = v
                if o in graph.names:
                    out.names.setdefault(v, graph.names[o])
        out.outputs = [alias.get(v, v) for v in graph.outputs]
        return out

    def splice(self, loop: Node, out: Graph) -> list[str]:
        """Add the loop's iterations to `out`; return the values it yields."""
        body = loop.body
        var = loop.loop.var
        count = loop.loop.count.value
        carried = len(loop.outs)
        current = list(loop.inputs[:carried])
        captures = list(loop.inputs[carried:])
        for k in range(count):
            mapping = {vid: v for (vid, _t), v in zip(body.inputs, current + captures)}
            for inner in body.nodes:
                node = substitute(inner, var, k)
                if k > 0:
                    mapping.update((o, self.fresh()) for o in inner.outs)
                    if node.body is not None:
                        node = node.model_copy(update={"body": self.renumber(node.body)})
                node = _rename(node, mapping)
                out.add(node)
                for old, new in zip(inner.outs, node.outs):
                    if old in body.names:
                        out.names.setdefault(new, body.names[old])
            current = [mapping.get(v, v) for v in body.outputs]
        return current


def unroll(program: Program, options: PassOptions = DEFAULTS) -> Program:
    if not options.unroll:
        return program
    classes = dict(program.classes)
    for cls, block in program.classes.items():
        graph = _Unroller(next_value_id(block.graph)).graph(block.graph)
        classes[cls] = block.model_copy(update={"graph": graph})
    return program.model_copy(update={"classes": classes})


PASS = Pass("unroll", fn=unroll,
            doc="splice static loops into straight-line code (only with --unroll)")
