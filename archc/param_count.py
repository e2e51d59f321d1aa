"""Parameter counts from the IR: unique (each weight once) and applied (once per use).

A looped core of P parameters run r times is P unique and r*P applied; a tied head adds
no unique parameters but applies the embedding again. `archc info` prints both, per
top-level instance, without building anything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .ir import (BlockDef, BlockInst, Graph, Group, Leaf, Module, Program, Stack,
                  instance_env, param_env, resolve, trip_count)


@dataclass
class ParamCount:
    unique: int
    applied: int
    rows: list[tuple[str, str, int, int]] = field(default_factory=list)  # name, kind, uniq, appl


def module_numel(module: Module | None, classes: dict[str, BlockDef]) -> int:
    if module is None:
        return 0
    if isinstance(module, Leaf):
        return module.numel
    if isinstance(module, Group):
        return sum(module_numel(m, classes) for _, m in module.children)
    if isinstance(module, Stack):
        return sum(module_numel(m, classes) for m in module.items)
    if isinstance(module, BlockInst):
        return sum(module_numel(m, classes) for _, m in classes[module.cls].modules)
    raise AssertionError(module)


def unique_params(program: Program) -> int:
    """Each weight once: the model's module tree, each block class counted once per
    instance but computed once."""
    memo: dict[str, int] = {}

    def numel(m: Module | None) -> int:
        if m is None:
            return 0
        if isinstance(m, Leaf):
            return m.numel
        if isinstance(m, Group):
            return sum(numel(c) for _, c in m.children)
        if isinstance(m, Stack):
            return sum(numel(c) for c in m.items)
        if m.cls not in memo:
            memo[m.cls] = sum(numel(c) for _, c in program.classes[m.cls].modules)
        return memo[m.cls]

    return sum(numel(m) for _, m in program.model.modules)


def applied_numel(node, module, classes) -> int:
    """Parameters one application of a node reads: its module's, except that a head loop
    reads its looped heads' slices of the attention's W_q, W_k, W_v and W_o."""
    if node.op == "head_loop":
        d, dh = node.types[0].shape[-1], node.types[1].shape[-1]
        return 4 * node.attr("heads") * dh * d
    return module_numel(module, classes)


def _applied(block: BlockDef, graph: Graph, classes, env: dict, mult: int,
             out: dict[str, int]) -> None:
    for node in graph.nodes:
        if node.op == "loop":
            n = trip_count(node.loop.count, env)
            if node.loop.kind == "for":  # iterations may differ (per-instance params)
                for i in range(n):
                    _applied(block, node.body, classes, {**env, node.loop.var: i}, mult, out)
            else:
                _applied(block, node.body, classes, env, mult * n, out)
            continue
        if node.ref is None:
            continue
        top = node.ref.path[0][0]
        if node.op == "call":
            cls = classes[node.call.cls]
            inst = resolve(block, node.ref, classes, env)
            inner: dict[str, int] = defaultdict(int)
            _applied(cls, cls.graph, classes, instance_env(env, inst), mult, inner)
            out[top] += sum(inner.values())
        else:
            module = resolve(block, node.ref, classes, env)
            out[top] += mult * applied_numel(node, module, classes)


def count_params(program: Program, runtime: dict[str, int] | None = None) -> ParamCount:
    classes = program.classes
    root = program.model
    applied: dict[str, int] = defaultdict(int)
    _applied(root, root.graph, classes, param_env(program, runtime), 1, applied)
    rows = []
    for name, module in root.modules:
        kind = module.cls if isinstance(module, BlockInst) else (
            module.op if isinstance(module, (Leaf, Group)) and module.op else module.kind)
        if isinstance(module, Stack) and module.items:
            first = module.items[0]
            inner = first.cls if isinstance(first, BlockInst) else getattr(first, "op", "") or \
                first.kind
            kind = f"{len(module.items)} x {inner}"
        rows.append((name, kind, module_numel(module, classes), applied.get(name, 0)))
    unique = sum(r[2] for r in rows)
    return ParamCount(unique, sum(applied.values()), rows)
