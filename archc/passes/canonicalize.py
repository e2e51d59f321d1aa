"""canonicalize: fold constants and algebraic identities, merge common subexpressions.

Elaboration writes ops down as the spec says them: `scale(x, by=1.0)`, a `drop_path` whose
probability is 0, `a + -b`, the same norm of the same value computed twice. This pass
gives every later pass and backend one simpler form of the same computation:

- identities: `scale` by 1, `drop_path` with p = 0, `topk` keeping the whole width,
  `neg(neg(x))`, `merge_heads(heads(x))` and back, `concat` of all of one `split`'s parts
  in order, a static loop that runs 0 times: the value is replaced by the one it equals;
- constants: a `scale` factor written as a constant expression becomes a number;
  `scale(scale(x, a), b)` is `scale(x, a * b)`; `neg` folds into a `scale`;
  `a + neg(b)` is `a - b` and `a - neg(b)` is `a + b`;
- CSE: two nodes with the same op, attributes, module and inputs (in either order for
  `add` and `mul`) make the same value; the first is kept.

Invariant: every value the program computed is still computed, or replaced by a value
that equals it exactly (each identity holds bit for bit; the one exception is
`scale(scale(x, a), b)`, where `x * (a * b)` may round differently from `(x * a) * b` in
the last bit). Ops with randomness or state (`init_state`, `select_kv`, `drop_path`,
`moe`, `head_loop`, `kv_cache`, a routed width with noise, batch norms, anything this pass
does not know) are never merged, nor are calls of block classes that contain them. Value
ids stay: a folded node keeps the ids of the node it replaces; a merged value takes the
first one's id and, if it had none, its spec name. Nodes left without users by a fold or
a merge go; nodes that were already dead are dce's to drop.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from .. import scalar
from ..ir import BlockDef, Graph, Leaf, Node, Program, class_order, resolve, walk, with_attrs
from ..ops.prims import PRIMS
from .pipeline import DEFAULTS, Pass, PassOptions

_COMMUTATIVE = frozenset({"add", "mul"})
# scalar tree kinds that hold no free name (loop index, param, instance value)
_CLOSED_KINDS = scalar.KINDS - {"var", "param", "attr"}


def _pure_node(node: Node, block: BlockDef, program: Program, pure_classes: set[str]) -> bool:
    if node.op == "call":
        return node.call.cls in pure_classes
    if node.op == "loop":
        return True  # deterministic given its body; the body's nodes are checked on their own
    prim = PRIMS.get(node.op)
    if prim is None:
        return False  # unknown to this pass: not safe to merge
    if callable(prim.pure):
        leaf = resolve(block, node.ref, program.classes) if node.ref is not None else None
        return prim.is_pure(leaf if isinstance(leaf, Leaf) else None)
    return prim.pure


def pure_classes(program: Program) -> set[str]:
    """Block classes whose every op is pure (callees first, so calls can be judged)."""
    pure: set[str] = set()
    for cls in class_order(program):
        block = program.classes[cls]
        if all(_pure_node(n, block, program, pure) for n in walk(block.graph)):
            pure.add(cls)
    return pure


# ----------------------------------------------------------------------------- constants


def _constant(by: Any) -> float | None:
    """A scale factor's value if it is known now: a number, or a tree of numbers."""
    if isinstance(by, (int, float)) and not isinstance(by, bool):
        return float(by)
    if not _closed(by):
        return None
    try:
        return float(scalar.evaluate(by, {}))
    except (ArithmeticError, TypeError, ValueError):
        return None


def _closed(tree: Any) -> bool:
    """A tree of numbers only (no loop index, param, instance value or train/infer)."""
    if not (isinstance(tree, tuple) and tree and tree[0] in _CLOSED_KINDS):
        return False
    if tree[0] == "num":
        return True
    return all(_closed(p) for p in tree[1:] if isinstance(p, tuple))


def _factor(by: Any) -> Any:
    value = _constant(by)
    return by if value is None else value


def _times(a: Any, b: Any) -> Any:
    if isinstance(a, float) and isinstance(b, float):
        return a * b
    return scalar.binary("*", a, b)


def _negate(a: Any) -> Any:
    return -a if isinstance(a, float) else ("neg", a)


# ----------------------------------------------------------------------------- folding


class _Folder:
    """Folds one graph, node by node, against the nodes it has already emitted."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.uses = _uses(graph)
        self.defs: dict[str, Node] = {}  # value -> the emitted node making it

    def single(self, value: str) -> Node | None:
        """The emitted producer of a value nothing else reads."""
        if self.uses[value] != 1:
            return None
        return self.defs.get(value)

    def fold(self, node: Node) -> Node | list[str]:
        """The node simplified, or the values its outputs equal."""
        op = node.op
        if op == "scale":
            by = _factor(node.attr("by"))
            if by == 1.0:
                return [node.inputs[0]]
            src = self.single(node.inputs[0])
            if src is not None and src.op == "scale":
                by = _times(_factor(src.attr("by")), by)
                return self.fold(self.rescale(node, src.inputs, by))
            if src is not None and src.op == "neg":
                return self.fold(self.rescale(node, src.inputs, _negate(by)))
            if isinstance(node.attr("by"), tuple) and isinstance(by, float):
                return with_attrs(node, by=by)  # a constant expression, now a number
            return node
        if op == "neg":
            src = self.single(node.inputs[0])
            if src is not None and src.op == "neg":
                return [src.inputs[0]]
            if src is not None and src.op == "scale":
                return self.fold(self.rescale(node, src.inputs, _negate(_factor(src.attr("by")))))
            return node
        if op in ("add", "sub"):
            x, y = node.inputs
            right = self.single(y)
            if right is not None and right.op == "neg":
                flipped = "sub" if op == "add" else "add"
                return node.model_copy(update={"op": flipped, "inputs": (x, right.inputs[0])})
            left = self.single(x)
            if op == "add" and left is not None and left.op == "neg":
                return node.model_copy(update={"op": "sub", "inputs": (y, left.inputs[0])})
            return node
        if op == "drop_path" and node.attr("p") == 0:
            return [node.inputs[0]]
        if op == "topk" and node.attr("k") >= self.type(node.inputs[0]).shape[-1]:
            return [node.inputs[0]]
        if op in ("merge_heads", "heads"):
            other = "heads" if op == "merge_heads" else "merge_heads"
            src = self.defs.get(node.inputs[0])
            if src is not None and src.op == other and \
                    self.type(src.inputs[0]) == node.types[0]:
                return [src.inputs[0]]
            return node
        if op == "concat":
            src = self.defs.get(node.inputs[0])
            if src is not None and src.op == "split" and tuple(node.inputs) == src.outs \
                    and self.type(src.inputs[0]) == node.types[0]:
                return [src.inputs[0]]
            return node
        if op == "loop":
            count = node.loop.count
            if count.expr is None and count.value == 0 and node.loop.halt is None:
                return list(node.inputs[:len(node.outs)])
        return node

    def rescale(self, node: Node, inputs: tuple[str, ...], by: Any) -> Node:
        return node.model_copy(update={"op": "scale", "inputs": tuple(inputs),
                                       "attrs": (("by", by),)})

    def type(self, value: str):
        return self.graph.types[value]


def _uses(graph: Graph) -> Counter:
    uses: Counter = Counter()
    for node in graph.nodes:
        uses.update(node.inputs)
    uses.update(graph.outputs)
    return uses


def _key(node: Node) -> Any:
    inputs = tuple(sorted(node.inputs)) if node.op in _COMMUTATIVE else node.inputs
    return (node.op, node.attrs, node.ref, inputs, node.types)


def _canonical(graph: Graph, pure: Callable[[Node], bool]) -> Graph:
    folder = _Folder(graph)
    alias: dict[str, str] = {}
    names = dict(graph.names)
    seen: dict[Any, Node] = {}
    kept: list[Node] = []

    def replace(old: str, new: str) -> None:
        alias[old] = new
        if old in names and new not in names:
            names[new] = names[old]

    for node in graph.nodes:
        node = node.model_copy(update={"inputs": tuple(alias.get(v, v) for v in node.inputs)})
        if node.body is not None:
            node = node.model_copy(update={"body": _canonical(node.body, pure)})
        folded = folder.fold(node)
        if isinstance(folded, list):
            for old, new in zip(node.outs, folded):
                replace(old, alias.get(new, new))
            continue
        node = folded
        if node.body is None and pure(node):
            try:
                key = _key(node)
                first = seen.get(key)
            except TypeError:  # an attribute that does not hash: leave the node alone
                key, first = None, None
            if first is not None:
                for old, new in zip(node.outs, first.outs):
                    replace(old, new)
                continue
            if key is not None:
                seen[key] = node
        kept.append(node)
        for o in node.outs:
            folder.defs[o] = node
    outputs = [alias.get(v, v) for v in graph.outputs]
    kept = _sweep(kept, outputs, set(folder.uses), pure)
    out = Graph(graph.inputs)
    for node in kept:
        out.add(node)
    out.outputs = outputs
    out.names = names
    return out


def _sweep(nodes: list[Node], outputs: list[str], was_used: set[str],
           pure: Callable[[Node], bool]) -> list[Node]:
    """Drop the pure nodes a fold or merge left unread (ones unread before stay: dce's)."""
    used = set(outputs)
    keep: list[Node] = []
    for node in reversed(nodes):
        dead = not any(o in used for o in node.outs)
        if dead and node.body is None and pure(node) and any(o in was_used for o in node.outs):
            continue
        keep.append(node)
        used.update(node.inputs)
    return keep[::-1]


def canonicalize(program: Program, options: PassOptions = DEFAULTS) -> Program:
    pure = pure_classes(program)
    classes = dict(program.classes)
    for cls, block in program.classes.items():
        def is_pure(node: Node, block: BlockDef = block) -> bool:
            return _pure_node(node, block, program, pure)
        classes[cls] = block.model_copy(update={"graph": _canonical(block.graph, is_pure)})
    return program.model_copy(update={"classes": classes})


PASS = Pass("canonicalize", fn=canonicalize,
            doc="fold constants and identities (scale by 1, a + -b, ...), merge"
                " common subexpressions")
