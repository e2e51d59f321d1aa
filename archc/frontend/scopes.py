"""Where things live while a spec is elaborated: value scopes, module scopes, graphs.

`Env` is the lexical scope of values; `ModuleScope` is where the instances made at one
point of the program live (a class, or one iteration of a stack), and the helpers at the
end place an instance's weights in its scope and collapse an iteration that holds a
single instance (`layers.3.attn.q` rather than `layers.3.layer.attn.q`), rewriting the
refs of the nodes already built to match. `GraphBuilder` is one graph being built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Span, fail
from ..ir import Graph, Group, Module, Node, Ref, Stack, map_graph

if TYPE_CHECKING:
    from .values import Inst


class _Names(dict):
    """A scope's module names; notes when one is deleted (so fresh names may reuse it)."""

    freed = False

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self.freed = True

    def pop(self, *args):
        self.freed = True
        return super().pop(*args)


class ModuleScope:
    """Where instances made at this point of the program live (a class, or one iteration)."""

    def __init__(self, prefix: Ref | None, reserved: set[str] = frozenset()):
        self.prefix = prefix
        self.modules: dict[str, Module | None] = _Names()
        self.reserved = set(reserved)
        self.next: dict[str, int] = {}  # base -> the first suffix fresh() may try
        self.spans: dict[str, Span | None] = {}  # where each name was claimed

    def ref(self, name: str, idx=None) -> Ref:
        return self.prefix.child(name, idx) if self.prefix else Ref(path=((name, idx),))

    def fresh(self, base: str) -> str:
        """The first free name of base, base_1, base_2, ... Suffixes below the last one
        returned were taken when it was, and stay taken unless a name is deleted, so the
        search resumes there (from 0 on every call it was quadratic in the instances)."""
        if self.modules.freed:
            self.next.clear()
            self.modules.freed = False
        n = self.next.get(base, 0)
        name = f"{base}_{n}" if n else base
        while name in self.modules or name in self.reserved:
            n += 1
            name = f"{base}_{n}"
        self.next[base] = n
        return name

    def claim(self, name: str, span: Span | None) -> str:
        if name in self.modules:
            fail(f"duplicate name `{name}`", span, "each instance in a scope needs its own "
                 "name", code="A011")
        self.modules[name] = None
        self.spans[name] = span
        return name


class Env:
    """Lexical scope for values. `level` is the graph nesting depth it belongs to."""

    def __init__(self, parent: "Env | None", level: int):
        self.parent = parent
        self.level = level
        self.vars: dict[str, Any] = {}
        self.spans: dict[str, Span | None] = {}

    def find(self, name: str) -> tuple[Any, "Env"] | None:
        env = self
        while env is not None:
            if name in env.vars:
                return env.vars[name], env
            env = env.parent
        return None

    def set(self, name: str, value: Any, span: Span | None = None) -> None:
        self.vars[name] = value
        self.spans[name] = span


class GraphBuilder:
    """One graph being built; region bodies capture outer values as graph inputs."""

    def __init__(self, level: int, outer: "GraphBuilder | None"):
        self.graph = Graph()
        self.level = level
        self.outer = outer
        self.captures: dict[str, str] = {}  # outer value id -> input id here


@dataclass
class LoopFrame:
    var: str | None      # the spec's name (None: an unnamed loop)
    count: int
    kind: str            # "for" (one iteration, index known) or "loop" (run-time index)
    sym: str | None      # the variable that indexes per-iteration modules, if symbolic


def _place(inst: Inst, module: Module) -> None:
    scope = inst.scope
    name = inst.ref.path[-1][0]
    if inst.index is None:
        scope.modules[name] = module
        return
    # An element of an instance array: the Stack fills in as its elements are first called.
    current = scope.modules.get(name)
    items = list(current.items) if isinstance(current, Stack) else []
    items += [None] * (inst.index + 1 - len(items))
    items[inst.index] = module
    scope.modules[name] = Stack.model_construct(kind="stack", items=tuple(items),
                                                span=inst.span)


def _check_called(name: str, module: Module | None, span: Span | None) -> None:
    if module is None:
        fail(f"instance `{name}` is never called, so its shapes are unknown", span,
             f"call it, or remove `let {name}`", code="A036")
    if isinstance(module, Stack):
        for k, item in enumerate(module.items):
            _check_called(f"{name}[{k}]", item, span)


def _strip(module: Module) -> Any:
    """A module without spans, for comparing two calls of one instance."""
    return module.model_dump()


def _collapse(scope: ModuleScope, span: Span | None) -> Module | None:
    """One iteration's instances: the single instance itself, or a Group of them."""
    for n, m in scope.modules.items():
        _check_called(n, m, span)
    live = list(scope.modules.items())
    if not live:
        return None
    if _collapses(scope):
        return live[0][1]
    return Group(children=tuple(live))


def _collapses(scope: ModuleScope) -> bool:
    """An iteration holding one instance (not a nested stack) is that instance itself:
    layers.3.attn.q rather than layers.3.layer.attn.q."""
    live = list(scope.modules.values())
    return len(live) == 1 and not isinstance(live[0], Stack)


def _rewrite_refs(graph: Graph, scope: ModuleScope) -> Graph:
    """Drop the per-iteration name when an iteration holds a single instance."""
    fix = _collapse_fix(scope)
    return graph if fix is None else _map_graph(graph, fix)


def _collapse_fix(scope: ModuleScope):
    """The ref rewrite for a collapsing iteration scope (layers[i].layer -> layers[i])."""
    if not _collapses(scope) or scope.prefix is None:
        return None
    prefix = scope.prefix.path
    only = list(scope.modules)[0]

    def fix(ref: Ref | None) -> Ref | None:
        if ref is None or ref.path[:len(prefix)] != prefix or len(ref.path) <= len(prefix):
            return ref
        head = ref.path[len(prefix)]
        if head[0] != only:
            return ref
        # layers[i].layer[...] -> layers[i] (an instance array inside keeps its index)
        if head[1] is not None:
            return ref
        return Ref(path=prefix + ref.path[len(prefix) + 1:])

    return fix


def _ref_attrs(node: Node, fix) -> tuple:
    """A node's attributes with `fix` applied to those naming an instance (head_loop's
    `attn`), like its own ref."""
    return tuple((key, fix(v) if isinstance(v, Ref) else v) for key, v in node.attrs)


def _map_graph(graph: Graph, fix) -> Graph:
    """A copy of a graph with `fix` applied to every instance ref, bodies included."""
    return map_graph(graph, lambda node: node.model_copy(
        update={"ref": fix(node.ref), "attrs": _ref_attrs(node, fix)}))
