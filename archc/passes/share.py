"""share: make weight sharing and tying explicit, and check it.

Sharing is written in a spec by calling one instance again (`let core = recur()` called in
a loop, `ln_f` applied twice) and tying by naming another instance's weights
(`lm_head(..., tied=emb)`). In the IR both are implicit: several nodes name one module
path. This pass lists them in `Program.weight_groups`, one `WeightGroup` per module that a
forward applies more than once (`shared`) or whose weights another op reads (`tied`), so
that `archc info`, the cost report and later passes can read sharing without walking the
graph, and checks what sharing needs: every shared use applies the module as the op it
was built for, to inputs of one shape, and every tied use fits the weights it reads (a
tied head's input is the embedding's width, its output the vocabulary).

How uses are counted: a node applies the module its ref names once per run of its graph;
inside a loop region it runs once per iteration, so a loop that does not index a module
by its variable applies it `count` times (a run-time count at its max), while `layers[i]`
in a `for` over i names a different module each iteration. A module of a block class is
counted per instance of the class: an instance applied several times is one group (the
instance), not one per weight inside it.

Invariant: the graph and the weights are unchanged; only the table is (re)computed.
A sharing the IR cannot honour (an op applied to a module of another kind, or with
inputs of another shape) is a compiler error (A900), like the verifier's.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any

from ..errors import ArchcError
from ..ir import (BlockDef, Count, Graph, Group, Leaf, Node, Program, Ref,
                  WeightGroup, format_module, resolve)
from .pipeline import DEFAULTS, Pass, PassOptions


@dataclass(frozen=True)
class _Loop:
    var: str
    count: Count


@dataclass(frozen=True)
class _Use:
    path: tuple  # concrete module path: ((name, int | None), ...)
    node: Node
    loops: tuple  # the enclosing loops that do not index the module
    tie: bool  # the node reads these weights as another op


def _sites(block: BlockDef, graph: Graph, loops: tuple[_Loop, ...], acc: list) -> None:
    for node in graph.nodes:
        if node.op == "loop":
            inner = loops + (_Loop(node.loop.var, node.loop.count),)
            _sites(block, node.body, inner, acc)
            continue
        refs = []
        if node.ref is not None:
            refs.append((node.ref, node.op == "tied_linear"))
        held = node.attr("attn") if node.op == "head_loop" else None
        if isinstance(held, Ref):
            refs.append((held, True))
        for ref, tie in refs:
            for path, rest in _concrete(block, ref, loops):
                acc.append(_Use(path, node, rest, tie))


def _concrete(block: BlockDef, ref: Ref, loops: tuple[_Loop, ...]):
    """Each module a ref names as its loop variables run, with the loops that do not
    index it (those apply that module once per iteration)."""
    bounds = {lp.var: lp.count.bound for lp in loops}
    if block.iteration:
        bounds.setdefault(block.iteration, block.iterations or 1)
    used = [i for _, i in ref.path if isinstance(i, str)]
    names = list(dict.fromkeys(used))
    rest = tuple(lp for lp in loops if lp.var not in names)
    for values in product(*(range(bounds.get(v, 1)) for v in names)):
        env = dict(zip(names, values))
        yield tuple((n, env.get(i, i) if isinstance(i, str) else i) for n, i in ref.path), rest


def _times(loops: tuple[_Loop, ...]) -> tuple[int, str]:
    """How often a node runs (at the loops' bounds), and that as text: x4, x r, x <=64."""
    n, text = 1, []
    for lp in loops:
        n *= lp.count.bound
        if lp.count.expr is None:
            text.append(f"x{lp.count.value}")
        elif lp.count.param:
            text.append(f"x {lp.count.param}")
        else:
            text.append(f"x <={lp.count.bound}")
    return n, " ".join(text)


def _label(use: _Use, path: tuple) -> str:
    what = use.node.call.cls if use.node.op == "call" else use.node.op
    if use.path != path:  # a part of the group's module, e.g. an attention's q
        what += f"[{_show(use.path)}]"
    _n, times = _times(use.loops)
    out = f"{what} :{use.node.span.line}" if use.node.span is not None else what
    return f"{out} {times}" if times else out


def _show(path: tuple) -> str:
    return str(Ref(path=path))


def _bug(message: str, node: Node | None) -> None:
    raise ArchcError(f"internal compiler error in share: {message}",
                     node.span if node is not None else None,
                     "this is a bug in archc, not in the spec; please report it", code="A900")


def _check_shared(uses: list[_Use], graph_types: dict, module: Any) -> None:
    """Every use of one module applies it as its own op, to inputs of one shape."""
    first = uses[0]
    want = [graph_types.get(v) for v in first.node.inputs]
    for use in uses:
        if use.node.op != "call" and isinstance(module, Leaf) and use.node.op != module.op:
            _bug(f"{use.node.op} applies {_show(use.path)}, a {module.op}", use.node)
        got = [graph_types.get(v) for v in use.node.inputs]
        if use.node.op == first.node.op and got != want:
            _bug(f"{_show(use.path)} is applied to {[str(t) for t in got]} here and to "
                 f"{[str(t) for t in want]} before", use.node)


def _check_tie(use: _Use, module: Any, graph_types: dict) -> None:
    node = use.node
    if node.op == "tied_linear":
        if not isinstance(module, Leaf) or module.op != "embed":
            _bug(f"tied_linear reads {_show(use.path)}, which is not an embedding", node)
        args = dict(module.args)
        width = graph_types[node.inputs[0]].shape[-1]
        if width != args["dim"] or node.types[0].shape[-1] != args["vocab"]:
            _bug(f"tied_linear maps {width} -> {node.types[0].shape[-1]} with an embedding "
                 f"of {args['vocab']} x {args['dim']}", node)
    elif node.op == "head_loop":
        if not isinstance(module, Group) or not all(module.get(k) is not None
                                                    for k in ("q", "k", "v", "o")):
            _bug(f"head_loop reads {_show(use.path)}, which is not an attention", node)


def _types(graph: Graph, acc: dict) -> dict:
    acc.update(graph.types)
    for node in graph.nodes:
        if node.body is not None:
            _types(node.body, acc)
    return acc


def _instance(block: BlockDef, path: tuple, classes) -> tuple:
    """The instance a module path lies in: its shortest prefix naming a leaf, a block
    instance or an op's group (an attention's q/k/v/o), past per-iteration scopes."""
    for n in range(1, len(path) + 1):
        module = resolve(block, Ref(path=path[:n]), classes)
        if not (isinstance(module, Group) and not module.op):
            return path[:n]
    return path


def _groups(program: Program, block: BlockDef) -> list[WeightGroup]:
    uses: list[_Use] = []
    _sites(block, block.graph, (), uses)
    types = _types(block.graph, {})
    by_instance: dict[tuple, list[_Use]] = {}
    for use in uses:
        if resolve(block, Ref(path=use.path), program.classes) is None:
            _bug(f"{block.cls} has no module {_show(use.path)}", use.node)
        key = _instance(block, use.path, program.classes)
        by_instance.setdefault(key, []).append(use)
    out = []
    for key, here in by_instance.items():
        module = resolve(block, Ref(path=key), program.classes)
        by_path: dict[tuple, list[_Use]] = {}
        for use in here:
            by_path.setdefault(use.path, []).append(use)
        for path, same in by_path.items():
            own = [u for u in same if not u.tie]
            if own:
                _check_shared(own, types, resolve(block, Ref(path=path), program.classes))
            for u in same:
                if u.tie:
                    _check_tie(u, resolve(block, Ref(path=path), program.classes), types)
        if any(u.tie for u in here):
            kind = "tied"
        elif any(sum(_times(u.loops)[0] for u in same) > 1 for same in by_path.values()):
            kind = "shared"
        else:
            continue
        out.append(WeightGroup(kind=kind, cls=block.cls, ref=Ref(path=key),
                               module=format_module(module),
                               uses=tuple(_label(u, key) for u in here)))
    return out


def share(program: Program, options: PassOptions = DEFAULTS) -> Program:
    groups: list[WeightGroup] = []
    for block in program.classes.values():
        groups += _groups(program, block)
    return program.model_copy(update={"weight_groups": tuple(groups)})


PASS = Pass("share", fn=share,
            doc="list shared and tied weights (Program.weight_groups) and check their shapes")
