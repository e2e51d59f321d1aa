"""kvplan: which attentions keep a KV cache, where each cache lives, what it costs.

Elaboration puts a `kv_cache` node where an attention keeps its own keys and values on the
inference path. An attention that reads another layer's K/V in inference (CLA-style
sharing, or stochastic routing whose inference map says "shared") has none: it reads its
source's cache through the graph. This pass numbers the caches: a class's slots are
relative to a base its caller passes, and each iteration of a loop gets its own range of
slots. It records the layout (kv_heads, head_dim) of every slot of the model, which
`new_cache` allocates and `archc info` prices.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import Span
from ..ir import Graph, Node, Program, annotate, class_order
from ..ops.prims import PRIMS
from .pipeline import DEFAULTS, Pass, PassOptions

Slot = tuple[int, tuple[tuple[str, int], ...]]  # offset, ((loop var, stride), ...)


def owns_slot(node: Node) -> bool:
    """kv_cache nodes, attentions that fill their own cache from their block's output, and
    head loops (their heads' keys on the loop's input): `Prim.owns_slot`."""
    prim = PRIMS.get(node.op)
    return prim is not None and prim.owns_slot


def slot_layout(node: Node) -> tuple[int, int]:
    """(heads, head_dim) of the keys and values a slot-owning node keeps."""
    if node.op == "head_loop":
        return node.attr("heads"), node.types[1].shape[3]
    k = node.types[0]
    return k.shape[1], k.shape[3]


def _count(graph: Graph, counts: dict[str, int]) -> int:
    n = 0
    for node in graph.nodes:
        if owns_slot(node):
            n += 1
        elif node.op == "call":
            n += counts[node.call.cls]
        elif node.op == "loop":
            n += _count(node.body, counts) * node.loop.count.bound
    return n


def _number(graph: Graph, counts: dict[str, int], offset: int,
            strides: tuple[tuple[str, int], ...]) -> tuple[Graph, int]:
    out = Graph(graph.inputs)
    for node in graph.nodes:
        if owns_slot(node):
            node = annotate(node, slot=(offset, strides))
            offset += 1
        elif node.op == "call" and counts[node.call.cls]:
            node = annotate(node, slot=(offset, strides))
            offset += counts[node.call.cls]
        elif node.op == "loop":
            per = _count(node.body, counts)
            if per:
                body, _ = _number(node.body, counts, offset,
                                  strides + ((node.loop.var, per),))
                node = node.model_copy(update={"body": body})
                offset += per * node.loop.count.bound
        out.add(node)
    out.outputs = list(graph.outputs)
    out.names = dict(graph.names)
    return out, offset


def _layout(graph: Graph, program: Program) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for node in graph.nodes:
        if owns_slot(node):
            out.append(slot_layout(node))
        elif node.op == "call":
            callee = program.classes[node.call.cls]
            out += _layout(callee.graph, program)
        elif node.op == "loop":
            out += _layout(node.body, program) * node.loop.count.bound
    return out


def kvplan(program: Program, options: PassOptions = DEFAULTS) -> Program:
    counts: dict[str, int] = {}
    classes = dict(program.classes)
    for cls in class_order(program):
        block = classes[cls]
        counts[cls] = _count(block.graph, counts)
        graph, _ = _number(block.graph, counts, 0, ())
        classes[cls] = block.model_copy(update={"graph": graph})
    planned = program.model_copy(update={"classes": classes})
    layout = tuple(_layout(planned.model.graph, planned))
    return planned.model_copy(update={"kv_layout": layout})


def slot_count(program: Program, cls: str) -> int:
    counts: dict[str, int] = {}
    for name in class_order(program):
        counts[name] = _count(program.classes[name].graph, counts)
    return counts[cls]


def node_slot(node: Node) -> Slot | None:
    return node.annotation("slot")


class DecodeBlocker(NamedTuple):
    """Why a model cannot decode incrementally: `new_cache` raises this as an ArchcError."""

    message: str
    span: Span | None
    hint: str


def _blocker_of(node: Node) -> DecodeBlocker | None:
    """A node that a KV cache cannot reproduce: its output at a position depends on later
    positions, or on state the cache does not keep (the fact lives in the op table)."""
    if node.op == "loop":
        halt = node.loop.halt
        if halt is None or halt.per != "sequence":
            return None
        return DecodeBlocker('halting per="sequence" decides for every position at once, '
                             "later ones included; a cached decode cannot reproduce it, so "
                             "this model has no incremental decoding", node.span,
                             'use per="token" (each position halts on its own), or run '
                             "whole sequences without a cache")
    rule = PRIMS[node.op].no_decode if node.op in PRIMS else None
    found = rule(dict(node.attrs)) if rule is not None else None
    if found is None:
        return None
    reason, hint = found
    return DecodeBlocker(f"{reason}, so this model has no incremental decoding", node.span,
                         hint)


def decode_blockers(program: Program) -> list[DecodeBlocker]:
    """Every node of the program that rules out incremental decoding, in class order."""
    found = []

    def walk(graph: Graph) -> None:
        for node in graph.nodes:
            blocker = _blocker_of(node)
            if blocker is not None:
                found.append(blocker)
            if node.body is not None:
                walk(node.body)

    for cls in class_order(program):
        walk(program.classes[cls].graph)
    return found


PASS = Pass("kvplan", fn=kvplan,
            doc="number the KV-cache slots and record the cache layout")
