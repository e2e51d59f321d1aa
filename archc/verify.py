"""The IR verifier: runs after elaboration and after every pass.

It checks what every backend relies on: values are defined before use (SSA, no cycles),
module refs resolve to weights of the right kind, block calls match their class's
signature, loop regions are closed and keep their carried types, and elementwise ops see
equal shapes. A failure here is a compiler bug, not a spec error, and says so.
"""

from __future__ import annotations

from .errors import ArchcError
from .ops.prims import PRIMS
from .ir import (STRUCTURAL_OPS, BlockDef, BlockInst, Graph, Leaf, Node, Program, Stack,
                 resolve)



def verify(program: Program, after: str = "elaboration") -> Program:
    for block in program.classes.values():
        _verify_graph(program, block, block.graph, after, top=True)
    if program.root not in program.classes:
        _bug(after, f"root class {program.root} is missing", None)
    return program


def _bug(after: str, message: str, node: Node | None):
    raise ArchcError(f"internal compiler error after {after}: {message}",
                     node.span if node is not None else None,
                     "this is a bug in archc, not in the spec; please report it", code="A900")


def _verify_graph(program: Program, block: BlockDef, graph: Graph, after: str,
                  top: bool) -> None:
    # Every input defined before its use, in program order (SSA), also rules out cycles:
    # Graph.add draws an edge only from a node added earlier, so no separate check.
    defined = {v for v, _ in graph.inputs}
    for node in graph.nodes:
        for v in node.inputs:
            if v not in defined:
                _bug(after, f"{block.cls}: {node.op} reads {v} before it is defined", node)
        if len(node.outs) != len(node.types):
            _bug(after, f"{block.cls}: {node.op} has {len(node.outs)} outputs and "
                 f"{len(node.types)} types", node)
        for o in node.outs:
            if o in defined:
                _bug(after, f"{block.cls}: {o} is defined twice", node)
            defined.add(o)
        _verify_node(program, block, graph, node, after)
    for v in graph.outputs:
        if v not in defined:
            _bug(after, f"{block.cls}: output {v} is not defined", None)


def _verify_kind(node: Node, after: str) -> None:
    """The closed set of node kinds: a `loop` node carries its typed Loop, a `call` its
    Call, and no other node carries either (passes read the facts from them alone)."""
    if (node.op == "loop") != (node.loop is not None):
        _bug(after, "a loop node without its Loop" if node.op == "loop"
             else f"{node.op} carries a Loop", node)
    if (node.op == "call") != (node.call is not None):
        _bug(after, "a call node without its Call" if node.op == "call"
             else f"{node.op} carries a Call", node)
    if node.body is not None and node.op != "loop":
        _bug(after, f"{node.op} has a region body", node)
    if node.op == "loop" and node.loop.halt is not None \
            and not 0 <= node.loop.halt.state < len(node.outs):
        _bug(after, f"the loop halts on carried value {node.loop.halt.state} of "
             f"{len(node.outs)}", node)


def _verify_shape(node: Node, types: list, module, after: str) -> None:
    """The node's types are what its prim's shape rule gives for its inputs."""
    prim = PRIMS[node.op]
    leaf = module.items[0] if isinstance(module, Stack) else module
    args = dict(leaf.args) if isinstance(leaf, Leaf) else {}
    try:
        want = prim.out_types(tuple(types), dict(node.attrs), args)
    except (KeyError, IndexError, ValueError, TypeError, ZeroDivisionError):
        want = ()  # the rule cannot read these inputs: they do not fit the prim
    if want is None and prim.elementwise and len(types) > 1:
        want = ()  # elementwise inputs that do not broadcast
    if want is not None and tuple(want) != tuple(node.types):
        shown = ", ".join(str(t) for t in types)
        _bug(after, f"{node.op} of {shown} gives {', '.join(map(str, node.types))}, its "
             f"shape rule says {', '.join(map(str, want)) or 'they do not fit'}", node)


def _verify_node(program: Program, block: BlockDef, graph: Graph, node: Node,
                 after: str) -> None:
    types = [graph.types[v] for v in node.inputs]
    if node.op not in PRIMS and node.op not in STRUCTURAL_OPS:
        _bug(after, f"unknown op {node.op}", node)
    _verify_kind(node, after)
    module = resolve(block, node.ref, program.classes) if node.ref is not None else None
    if node.op in PRIMS:
        _verify_shape(node, types, module, after)
    if node.op == "call" or node.op in PRIMS and PRIMS[node.op].weights:
        if node.ref is None:
            _bug(after, f"{node.op} has no module", node)
        if module is None:
            _bug(after, f"{node.op} names {node.ref}, which {block.cls} does not have", node)
        if node.op == "call":
            if not isinstance(module, BlockInst) or module.cls != node.call.cls:
                _bug(after, f"call of {node.call.cls} names {node.ref}", node)
            callee = program.classes[module.cls]
            want = [t for _, t in callee.graph.inputs]
            if want != types:
                _bug(after, f"call of {callee.cls} with {types}, expected {want}", node)
        else:
            leaf = module.items[0] if isinstance(module, Stack) else module
            if not isinstance(leaf, Leaf) or leaf.op != node.op:
                _bug(after, f"{node.op} names a {getattr(leaf, 'op', leaf.kind)} module", node)
            if node.op in ("linear", "lora") and dict(leaf.args)["in"] != types[0].width:
                _bug(after, f"{node.op} of width {types[0].width} into {leaf.args}", node)
    if node.op == "loop":
        body = node.body
        if body is None:
            _bug(after, "loop without a body", node)
        carried = len(node.outs)
        if len(body.inputs) != len(node.inputs) or len(body.outputs) != carried:
            _bug(after, "loop body does not match the loop's inputs and outputs", node)
        for (vid, t), outer in zip(body.inputs, types):
            if t != outer:
                _bug(after, f"loop input {vid} is {t} but receives {outer}", node)
        if node.loop.kind == "loop":
            for (vid, t), out in zip(body.inputs[:carried], body.outputs):
                if body.types[out] != t:
                    _bug(after, f"loop changes the type of carried {vid}", node)
        _verify_graph(program, block, body, after, top=False)
