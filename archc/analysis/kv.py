"""KV-cache bytes per token, from the IR (no torch).

With the plan: the slots the kvplan pass assigned (what `new_cache` allocates).
Without: as if every attention application kept its own keys and values, which is what
the model would cost with no cross-layer sharing. Run-time loops count at their max, as
the cache must hold every iteration's keys.
"""

from __future__ import annotations

from ..ir import Graph, Program


def planned_bytes_per_token(program: Program, dtype_bytes: int = 4) -> int:
    """Needs a program after the kvplan pass."""
    return sum(2 * h * dh * dtype_bytes for h, dh in program.kv_layout)


def unplanned_bytes_per_token(program: Program, dtype_bytes: int = 4) -> int:
    return sum(2 * h * dh * dtype_bytes * n
               for h, dh, n in _attention_caches(program.model.graph, program, 1))


def _attention_caches(graph: Graph, program: Program, mult: int):
    for node in graph.nodes:
        if node.op == "attend":
            shape = graph.types[node.inputs[1]].shape  # the keys it reads
            yield shape[1], shape[3], mult
        elif node.op == "call":
            callee = program.classes[node.call.cls]
            yield from _attention_caches(callee.graph, program, mult)
        elif node.op == "loop":
            yield from _attention_caches(node.body, program, mult * node.loop.count.bound)

