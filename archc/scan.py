"""Partition a block whose attention reads K/V from the block's own past output.

Such a block (the Recurrent Transformer's layer) cannot run all positions at once: the
keys of position s come from the block's output at s. The backend runs it as a scan
(`rt.recurrent_scan`) over three pieces cut from the block's graph:

- `queries(x)`: everything the attention reads, for all positions at once (q, and the
  diagonal k, v from the block's own input), plus values the rest of the block reuses;
- `keys(out)`: the same norm and k/v projections applied to the block's output;
- `finish(x_t, a_t, ...)`: the rest of the block for one position, from the attention.

The checks here are what make that cut exact: one such attention, directly in the block,
no RoPE (positions are implicit; use ALiBi), and nothing after it that mixes positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ArchcError
from .ir import BlockDef, Graph, Node
from .ops.prims import PRIMS



@dataclass
class ScanPlan:
    attend: Node
    queries: Graph
    keys: Graph
    finish: Graph
    alibi: bool

    def pieces(self) -> list[tuple[str, Graph, str]]:
        """(method name, graph, what it computes) of each piece, in the order the scan
        calls them: the names are the contract with `rt.recurrent_scan`, kept here once."""
        return [(name, getattr(self, name), doc) for name, doc in PIECES]


PIECES = (
    ("queries", "q for every position, and k, v of each position's own input (the diagonal)"),
    ("keys", "k, v of past positions: the same norm and projections, on the output"),
    ("finish", "the rest of the block for one position, given its attention output"),
)


def _fail(message: str, node: Node | None, hint: str) -> None:
    raise ArchcError(message, node.span if node is not None else None, hint, code="A015")


def _ancestors(graph: Graph, values: list[str]) -> set[int]:
    seen: set[int] = set()
    stack = [graph.producer[v] for v in values if v in graph.producer]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        node = graph.g.nodes[key]["node"]
        stack.extend(graph.producer[v] for v in node.inputs if v in graph.producer)
    return seen


def _subgraph(graph: Graph, keys: set[int], inputs, outputs) -> Graph:
    sub = Graph(inputs)
    for key in sorted(keys):
        sub.add(graph.g.nodes[key]["node"])
    sub.outputs = list(outputs)
    sub.names = dict(graph.names)
    return sub


def _is_scan_attend(node: Node) -> bool:
    return node.op == "scan_attend"


def plan_scan(block: BlockDef) -> ScanPlan | None:
    graph = block.graph
    found = [(key, n) for key, n in zip(graph.g.nodes, graph.nodes) if _is_scan_attend(n)]
    for node in graph.nodes:
        if node.body is not None and any(_is_scan_attend(n) for n in node.body.nodes):
            _fail("an attention over the block's own past output cannot sit inside a loop",
                  node, "put it directly in a block and loop over the block")
    if not found:
        return None
    if len(found) > 1:
        _fail("a block may have one attention that reads its own past output",
              found[1][1], "split the block in two")
    key, attend = found[0]
    if len(graph.inputs) != 1:
        _fail("a block whose attention reads its own past output takes one input",
              attend, "its output at earlier positions feeds the keys, so it must be the "
              "same kind of value as its input")
    (x, x_type), = graph.inputs
    out = graph.outputs[0]
    if graph.types[out] != x_type:
        _fail(f"the block maps {x_type} to {graph.types[out]}; keys computed from its output "
              "need the output shaped like the input", attend, "keep the residual width")
    q, k, v = attend.inputs
    prefix = _ancestors(graph, [q, k, v])
    kv_part = _ancestors(graph, [k, v])
    for pk in prefix:
        node = graph.g.nodes[pk]["node"]
        if node.op == "rope":
            _fail("RoPE needs positions, which a scan over positions does not keep", node,
                  "use alibi=true, rope=false on this attention")
    suffix = [kk for kk in graph.g.nodes if kk not in prefix and kk != key]
    for sk in suffix:
        node = graph.g.nodes[sk]["node"]
        if node.op in ("loop", "call") or PRIMS[node.op].mixes_positions:
            _fail(f"`{node.op}` after an attention over the block's own past output would "
                  "mix positions", node, "the rest of the block runs one position at a time")
    used_later = {v for sk in suffix for v in graph.g.nodes[sk]["node"].inputs}
    saved = [o for pk in sorted(prefix) for o in graph.g.nodes[pk]["node"].outs
             if o in used_later and o not in (q, k, v)]
    a = attend.outs[0]
    queries = _subgraph(graph, prefix, [(x, x_type)], [q, k, v] + saved)
    keys = _subgraph(graph, kv_part, [(x, x_type)], [k, v])
    finish = _subgraph(graph, set(suffix), [(x, x_type), (a, attend.types[0])] +
                       [(s, graph.types[s]) for s in saved], graph.outputs)
    keys.names[x] = "out"
    finish.names[a] = "a"
    return ScanPlan(attend, queries, keys, finish, bool(attend.attr("alibi")))
