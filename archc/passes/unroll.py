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

from typing import Any

from ..ir import Count, Graph, Node, Program, Ref, next_value_id
from .pipeline import DEFAULTS, Pass, PassOptions


def _unrollable(node: Node) -> bool:
    if node.op != "loop":
        return False
    if node.loop.kind == "for":
        return True
    return node.loop.count.expr is None and node.loop.halt is None


# ----------------------------------------------------------------------------- substitution


def _tree(tree: Any, var: str, k: int) -> Any:
    """A run-time scalar tree with the loop variable `var` replaced by the number k."""
    if tree == ("var", var):
        return ("num", k)
    return tuple(_tree(p, var, k) if isinstance(p, tuple) else p for p in tree)


def _is_tree(value: Any) -> bool:
    return isinstance(value, tuple) and bool(value) and isinstance(value[0], str)


def _attr(value: Any, var: str, k: int) -> Any:
    if isinstance(value, Ref):
        return value.substitute(var, k)
    if isinstance(value, Count) and value.expr is not None:
        return value.model_copy(update={"expr": _tree(value.expr, var, k)})
    if _is_tree(value):
        return _tree(value, var, k)
    return value


def substitute(node: Node, var: str, k: int) -> Node:
    """The node as iteration k sees it: `var` is k in refs, attributes, the count of an
    inner Loop, a Call's adapter iteration, and bodies."""
    update: dict[str, Any] = {
        "attrs": tuple((key, _attr(v, var, k)) for key, v in node.attrs)}
    if node.loop is not None:  # an inner loop whose count reads the index
        update["loop"] = node.loop.model_copy(update={"count": _attr(node.loop.count, var, k)})
    if node.call is not None and node.call.iteration == var:
        # the adapter index the call passes: a literal in generated code
        update["call"] = node.call.model_copy(update={"iteration": str(k)})
    if node.ref is not None:
        update["ref"] = node.ref.substitute(var, k)
    if node.body is not None:
        body = Graph(node.body.inputs)
        for inner in node.body.nodes:
            body.add(substitute(inner, var, k))
        body.outputs = list(node.body.outputs)
        body.names = dict(node.body.names)
        update["body"] = body
    return node.model_copy(update=update)


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
