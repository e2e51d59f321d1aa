"""Structural operations on graph regions that both the front end and the passes need:
a region's shape up to value names (are two iterations the same computation?) and a
node as iteration k of a loop sees it (the loop variable replaced by k). One copy, below
both stages, so rolling and unrolling decide alike wherever they run."""

from __future__ import annotations

from typing import Any

from .ir import Count, Graph, Node, Ref


def graph_shape(graph: Graph) -> Any:
    """A region body up to the names of its values (for comparing two nodes)."""
    ids: dict[str, int] = {}
    for vid, _t in graph.inputs:
        ids[vid] = len(ids)
    items = []
    for node in graph.nodes:
        ins = tuple(ids.get(v, v) for v in node.inputs)
        for o in node.outs:
            ids[o] = len(ids)
        items.append(node_signature(node) + (ins,))
    return (tuple(t for _, t in graph.inputs), tuple(items),
            tuple(ids.get(o, o) for o in graph.outputs))


def node_signature(node: Node) -> tuple:
    """What makes two nodes the same computation, up to the names of their values."""
    body = graph_shape(node.body) if node.body is not None else None
    return (node.op, node.attrs, node.loop, node.call, node.ref, node.types, node.hint,
            len(node.outs), body)


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
