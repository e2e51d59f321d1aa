"""widen: the Wide Attention aspect-ratio rewrite (TOPOLOGIES.md 2.12).

A stack of n identical layers, each with one attention of h heads, becomes one layer whose
attention has n*h heads of the same head dim (and n times the key/value heads): the total
number of heads, the head dim and the attention's parameter count stay; the depth goes.
It runs only when asked (`archc compile --rewrite widen`, `archc.build(..., rewrites=
("widen",))`), on the model's first such stack.
"""

from __future__ import annotations

from ..errors import ArchcError
from ..ir import (BlockDef, BlockInst, Graph, Group, Leaf, Module, Node, Program, Ref, Stack,
                  TensorType)
from ..ops.prims import PRIMS
from .pipeline import DEFAULTS, Pass, PassOptions



def _find_stack(program: Program) -> tuple[Node, BlockDef]:
    for node in program.model.graph.nodes:
        if node.op != "loop" or node.loop.kind != "for" or node.loop.count.value < 2:
            continue
        calls = [n for n in node.body.nodes if n.op == "call"]
        if len(calls) == 1 and len(node.body.nodes) == 1:
            layer = program.classes[calls[0].call.cls]
            if sum(n.op == "attend" for n in layer.graph.nodes) == 1:
                return node, layer
    raise ArchcError("the widen rewrite found no stack of identical layers with one "
                     "attention each", None, "write the layers as `for i in 0..n as layers "
                     "{ x = layer(x) }` with one attention in `layer`", code="A051")


def _widen_leaf(leaf: Leaf, role: str, n: int) -> Leaf:
    args = dict(leaf.args)
    if leaf.op == "linear":
        key = "in" if role == "o" else "out"
        args[key] *= n
        weights = []
        for w in leaf.weights:
            if w.name == "weight":
                shape = (w.shape[0], w.shape[1] * n) if role == "o" else (w.shape[0] * n, w.shape[1])
            else:
                shape = w.shape if role == "o" else (w.shape[0] * n,)
            weights.append(w.model_copy(update={"shape": shape}))
        return leaf.model_copy(update={"args": tuple(args.items()), "weights": tuple(weights)})
    if leaf.op == "bias":
        shape = (args["shape"][0] * n,) + tuple(args["shape"][1:])
        return leaf.model_copy(update={"args": (("shape", shape),), "weights": tuple(
            w.model_copy(update={"shape": shape}) for w in leaf.weights)})
    return leaf


def _widen_block(layer: BlockDef, n: int, name: str) -> BlockDef:
    attend = next(x for x in layer.graph.nodes if x.op == "attend")
    group_name = None
    for node in layer.graph.nodes:
        if node.op == "linear" and node.ref is not None and len(node.ref.path) == 2 and \
                node.ref.path[1][0] in ("q", "k", "v", "o"):
            group_name = node.ref.path[0][0]
    if group_name is None:
        raise ArchcError("the widen rewrite needs the attention's q/k/v/o projections",
                         attend.span, "use the attention op", code="A051")
    modules = []
    for mname, module in layer.modules:
        if mname == group_name and isinstance(module, Group):
            module = module.model_copy(update={"children": tuple(
                (c, _widen_leaf(m, c, n) if isinstance(m, Leaf) else m)
                for c, m in module.children)})
        modules.append((mname, module))
    graph = Graph(layer.graph.inputs)
    for node in layer.graph.nodes:
        role = node.ref.path[1][0] if (node.ref is not None and len(node.ref.path) == 2 and
                                       node.ref.path[0][0] == group_name) else None
        types = node.types
        if node.op == "linear" and role in ("q", "k", "v"):
            types = tuple(TensorType(shape=t.shape[:-1] + (t.shape[-1] * n,)) for t in types)
        elif node.op in PRIMS and PRIMS[node.op].per_head:
            types = tuple(TensorType(shape=(t.shape[0], t.shape[1] * n) + t.shape[2:])
                          if len(t.shape) == 4 else t for t in types)
            if node.op == "heads":
                node = node.model_copy(update={"attrs": tuple(
                    (k, v * n if k == "n" else v) for k, v in node.attrs)})
        elif node.op == "merge_heads":
            types = tuple(TensorType(shape=t.shape[:-1] + (t.shape[-1] * n,)) for t in types)
        graph.add(node.model_copy(update={"types": types}))
    graph.outputs = list(layer.graph.outputs)
    graph.names = dict(layer.graph.names)
    return layer.model_copy(update={"cls": name, "graph": graph, "modules": tuple(modules)})


def widen(program: Program, options: PassOptions = DEFAULTS) -> Program:
    if "widen" not in options.rewrites:
        return program
    loop, layer = _find_stack(program)
    n = loop.loop.count.value
    name = layer.cls + "Wide"
    wide = _widen_block(layer, n, name)
    label = loop.loop.label
    call = loop.body.nodes[0]
    # The loop body is closed: map its inputs (carried value, captures) to the outer values.
    outer = dict(zip((v for v, _ in loop.body.inputs), loop.inputs))
    new_call = call.model_copy(update={
        "inputs": tuple(outer.get(v, v) for v in call.inputs), "outs": loop.outs,
        "types": loop.types, "ref": Ref(path=((label, None),)),
        "call": call.call.model_copy(update={"cls": name})})
    root = program.model
    graph = Graph(root.graph.inputs)
    for node in root.graph.nodes:
        graph.add(new_call if node is loop else node)
    graph.outputs = list(root.graph.outputs)
    graph.names = dict(root.graph.names)
    modules: list[tuple[str, Module]] = [
        (m, BlockInst(cls=name) if m == label and isinstance(mod, Stack) else mod)
        for m, mod in root.modules]
    classes = dict(program.classes)
    classes[name] = wide
    classes[root.cls] = root.model_copy(update={"graph": graph, "modules": tuple(modules)})
    if not any(n.op == "call" and n.call.cls == layer.cls
               for b in classes.values() for n in b.graph.nodes):
        del classes[layer.cls]
    return program.model_copy(update={"classes": classes})


PASS = Pass("widen", fn=widen,
            doc="Wide Attention rewrite: n layers x h heads -> 1 layer x n*h heads"
                " (only with --rewrite widen)")
