"""fuse: mark chains of elementwise ops and row reductions as fusion regions.

Between two matmuls a transformer runs short chains of cheap ops (residual add, norm;
silu then the gating product; a head bias then RoPE), each of which PyTorch runs as its
own kernel reading and writing the whole activation. A kernel per chain reads the inputs
once and writes one result. This pass finds the chains; a code generator that fuses
(the Triton backend) writes one kernel per region. The torch backend ignores the marks.

What fuses: ops that are elementwise (`Prim.elementwise` in archc/ops/prims.py:
add, mul, scale, activations, lerp, gates such as a layerscale, drop_path) and row
reductions over the last dim (rmsnorm, layernorm, partition_norm, softmax_scaled, rope,
rotate): each output row depends on its input row only. A chain is a sequence of such
nodes in one graph where each node reads the previous node's value, and each value but
the last is read by nothing else (not a later op, not the graph's outputs): it can stay
in registers. A node extends at most one chain (the chain of its first input that
qualifies). Chains are maximal: none can grow at either end.

Invariant: the graph is unchanged except that each node of a chain of two or more gets
the annotation `fusion=N` in its `meta` (unseen by equality and CSE; printed among the
attributes), N numbering the regions of the program from 0 in class and program order. The ops, values and generated torch code stay as they were.
"""

from __future__ import annotations

from collections import Counter

from ..ir import Graph, Node, Program, annotate
from ..ops.prims import PRIMS
from .pipeline import DEFAULTS, Pass, PassOptions

def fusible(node: Node) -> bool:
    if node.body is not None or len(node.outs) != 1:
        return False
    prim = PRIMS.get(node.op)
    return prim is not None and (prim.row_local or prim.elementwise)


def _chains(graph: Graph) -> list[list[Node]]:
    """The maximal chains of a graph (single nodes included), in program order."""
    uses: Counter = Counter()
    for node in graph.nodes:
        uses.update(set(node.inputs))
    uses.update(graph.outputs)
    chain_of: dict[str, list[Node]] = {}  # value -> the chain it ends
    chains: list[list[Node]] = []
    for node in graph.nodes:
        if not fusible(node):
            continue
        chain = None
        for v in node.inputs:
            prev = chain_of.get(v)
            if prev is not None and uses[v] == 1 and v not in graph.outputs:
                chain = prev
                del chain_of[v]
                break
        if chain is None:
            chain = []
            chains.append(chain)
        chain.append(node)
        chain_of[node.outs[0]] = chain
    return chains


class _Marker:
    def __init__(self):
        self.next = 0

    def graph(self, graph: Graph) -> Graph:
        """Number the graph's regions in program order (a loop body's where the loop is)."""
        chain_of = {id(n): chain for chain in _chains(graph) if len(chain) >= 2
                    for n in chain}
        numbers: dict[int, int] = {}  # id of a chain's first node -> its region
        out = Graph(graph.inputs)
        for node in graph.nodes:
            chain = chain_of.get(id(node))
            if chain is not None:
                head = id(chain[0])
                if head not in numbers:
                    numbers[head] = self.next
                    self.next += 1
                node = annotate(node, fusion=numbers[head])
            elif node.body is not None:
                node = node.model_copy(update={"body": self.graph(node.body)})
            out.add(node)
        out.outputs = list(graph.outputs)
        out.names = dict(graph.names)
        return out


def fuse(program: Program, options: PassOptions = DEFAULTS) -> Program:
    marker = _Marker()
    classes = dict(program.classes)
    for cls, block in program.classes.items():
        classes[cls] = block.model_copy(update={"graph": marker.graph(block.graph)})
    return program.model_copy(update={"classes": classes})


PASS = Pass("fuse", fn=fuse,
            doc="mark chains of elementwise ops and row reductions as fusion regions")
