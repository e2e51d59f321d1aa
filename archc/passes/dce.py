"""dce: remove ops whose values nobody reads, and the weights only they used.

In an inference build (`mode="infer"`) train-time choices are first resolved to the
spec's inference map: a stochastic K/V route becomes the branch `kv_infer` names. A layer
that reads another layer's keys and values then has dead K/V projections; they, their
weights, and (since no kv_cache node survives for them) their cache slots disappear.
"""

from __future__ import annotations

from ..ir import BlockDef, Graph, Group, Module, Node, Program, Stack, class_order
from ..ops.prims import PRIMS
from .pipeline import DEFAULTS, Pass, PassOptions


def _resolve_choices(graph: Graph, alias: dict[str, str]) -> Graph:
    """Inference map: select_kv nodes forward the branch their `infer` attr names."""
    out = Graph(graph.inputs)
    for node in graph.nodes:
        node = node.model_copy(update={"inputs": tuple(alias.get(v, v) for v in node.inputs)})
        if node.op == "select_kv":
            own, other = node.inputs[:2], node.inputs[2:]
            chosen = other if node.attr("infer") == "shared" else own
            alias.update(zip(node.outs, chosen))
            continue
        if node.body is not None:
            node = node.model_copy(update={"body": _resolve_choices(node.body, {})})
        out.add(node)
    out.outputs = [alias.get(v, v) for v in graph.outputs]
    out.names = dict(graph.names)
    return out


def sweep(graph: Graph) -> tuple[Graph, bool]:
    """Drop nodes none of whose outputs are used; loop bodies are swept on their own."""
    used = set(graph.outputs)
    keep: list[Node] = []
    changed = False
    for node in reversed(graph.nodes):
        live = any(o in used for o in node.outs) or node.op == "loop"
        if node.op in PRIMS and PRIMS[node.op].effects and any(o in used for o in node.outs):
            live = True
        if not live:
            changed = True
            continue
        if node.body is not None:
            body, inner = sweep(node.body)
            changed |= inner
            node = node.model_copy(update={"body": body})
        keep.append(node)
        used.update(node.inputs)
    out = Graph(graph.inputs)
    for node in reversed(keep):
        out.add(node)
    out.outputs = list(graph.outputs)
    out.names = dict(graph.names)
    return out, changed


def _used_paths(graph: Graph, acc: set) -> set:
    for node in graph.nodes:
        if node.ref is not None:
            acc.add(node.ref.path)
        if node.body is not None:
            _used_paths(node.body, acc)
    return acc


def _by_name(paths) -> dict[str, list[tuple]]:
    """Paths grouped by the module name they start with: (index used on it, path inside).
    Grouping once keeps pruning linear in the paths (a filter per child was quadratic)."""
    out: dict[str, list[tuple]] = {}
    for path in paths:
        out.setdefault(path[0][0], []).append((path[0][1], path[1:]))
    return out


def _prune(module: Module, rests: list[tuple]) -> Module:
    """Keep the parts of a module the remaining paths reach; a path that ends here keeps
    the whole subtree (a leaf, or a block instance that a call uses)."""
    if any(len(r) == 0 for r in rests) or not isinstance(module, Group):
        return module
    children = []
    by_name = _by_name(rests)
    for name, child in module.children:
        kept = _prune_selected(child, by_name.get(name, []))
        if kept is not None:
            children.append((name, kept))
    return module.model_copy(update={"children": tuple(children)})


def _prune_selected(module: Module, entries: list[tuple]) -> Module | None:
    """A module reached by paths: (index used on it, path inside). None if unreached."""
    if not entries:
        return None
    if not isinstance(module, Stack):
        return _prune(module, [rest for _, rest in entries])
    every = [rest for idx, rest in entries if idx is None or isinstance(idx, str)]
    at: dict[int, list[tuple]] = {}
    for idx, rest in entries:
        if isinstance(idx, int):
            at.setdefault(idx, []).append(rest)
    items = []
    for k, item in enumerate(module.items):
        rests = every + at.get(k, [])
        # an unreached iteration keeps its place (indices stay aligned) but no weights
        items.append(_prune(item, rests) if rests else Group(children=()))
    if all(isinstance(m, Group) and not m.children for m in items):
        return None
    return module.model_copy(update={"items": tuple(items)})


def prune_block(block: BlockDef) -> BlockDef:
    """The block without the modules its graph no longer calls (reparam prunes too)."""
    by_name = _by_name(_used_paths(block.graph, set()))
    modules = []
    for name, module in block.modules:
        kept = _prune_selected(module, by_name.get(name, []))
        if kept is not None:
            modules.append((name, kept))
    return block.model_copy(update={"modules": tuple(modules)})


def dce(program: Program, options: PassOptions = DEFAULTS) -> Program:
    classes = dict(program.classes)
    for cls in class_order(program):
        block = classes[cls]
        graph = block.graph
        if options.mode == "infer":
            graph = _resolve_choices(graph, {})
        # One sweep is a fixpoint: nodes are in program order and it walks them last to
        # first, so each node is judged after every node that could read it.
        graph, _changed = sweep(graph)
        classes[cls] = prune_block(block.model_copy(update={"graph": graph}))
    return program.model_copy(update={"classes": classes})


PASS = Pass("dce", fn=dce,
            doc="drop unused ops and weights (and resolve train-time choices in infer mode)")
