"""The identity of an architecture: a hash of its elaborated IR up to renaming.

`archc hash` / `archc.hash(spec, **params)` hashes the IR that elaboration produces for one
binding of the params, not the spec text or its AST. So the hash is a property of the
*architecture*: two specs that build the same model hash the same, whatever their layout,
comments, names, or the params and expressions that led to the same shapes.

What the hash covers (a change to any of these changes it):
- every op in program order with its inputs (by dataflow position), output types, and
  options (an attention's heads, a norm's eps, a scale factor, an init value);
- the weight tree: which ops own weights, their shapes and inits (`init=`/`std=` options,
  and the residual-write count the default scheme scales by, see archc/init.py), how
  instances are grouped and stacked, and which applications share a weight (sharing is
  part of the dataflow: two calls naming one instance, or a stack indexed per iteration);
- loops: kind (`for` / `loop`), trip count, a run-time count's expression, default and
  max, halting rules; block calls (by the callee's own hash), per-iteration adapters, and
  run-time scalars (`scale(x, by=1 / (i + 1))`, schedules over the training step, a
  block's run-time params and the values each instance keeps for them).

What it does not cover (renaming is free):
- value names, instance names (`let` names, so state-dict keys), labels, loop variables,
  block names, the model name, named-output names, names of run-time params (numbered in
  order of first use) and of a block's run-time params (by position), spans, comments and
  formatting;
- search domains and params that do not reach the IR.

Names are replaced by positions: values by order of definition, loop variables by
nesting, instances and their children by order of first use in the graph (then
declaration order for instances that are never called). Block classes are hashed
bottom-up (a Merkle hash), so two block definitions with identical bodies are one
architecture. Statement order is kept: reordering independent statements, or `a + b`
versus `b + a`, changes the hash. The `for`/`loop` structure is kept too: a `for` region
and the same layers written out one by one hash differently (their weight layouts differ).

The serialization is JSON over sorted, explicit fields and the digest is SHA-256, so the
hash is the same in every process (PYTHONHASHSEED plays no part).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from .ir import BlockDef, BlockInst, Count, Graph, Group, Leaf, Module, Node, Program, Ref, Stack

VERSION = "archc-hash/1"

# Node attributes that only name things: dropped from the hash.
_NAME_ATTRS = frozenset({"label"})
# The node kinds of an archc.scalar tree (a run-time scalar: loop index, run-time param,
# block attribute, arithmetic and schedules over them).
_TREE_KINDS = frozenset({"num", "var", "param", "attr", "bin", "cmp", "neg", "call"})


def _is_tree(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str)
            and value[0] in _TREE_KINDS)


def _tree_params(value: Any):
    """Run-time param names a value reads, in order (scalar trees, nested anywhere)."""
    if _is_tree(value):
        if value[0] == "param":
            yield value[1]
            return
        for part in value[1:]:
            yield from _tree_params(part)
    elif isinstance(value, (tuple, list)):
        for part in value:
            yield from _tree_params(part)


def _facts(node: Node) -> tuple:
    """A node's attributes with its typed Loop or Call as the (key, value) pairs they
    were before they were typed, so archc-hash/1 stays what it was."""
    pairs = list(node.attrs)
    if node.loop is not None:
        loop = node.loop
        pairs += [("count", loop.count), ("kind", loop.kind), ("label", loop.label),
                  ("var", loop.var)]
        if loop.halt is not None:
            pairs.append(("halt", (loop.halt.state, loop.halt.tol, loop.halt.per)))
    if node.call is not None:
        pairs.append(("cls", node.call.cls))
        if node.call.iteration is not None:
            pairs.append(("iteration", node.call.iteration))
    return tuple(sorted(pairs, key=lambda kv: kv[0]))


def program_hash(program: Program) -> str:
    """The architecture hash of an elaborated program: 64 hex digits."""
    h = _Hasher(program)
    payload = [VERSION, h.class_hash(program.root)]
    return hashlib.sha256(_dumps(payload).encode()).hexdigest()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


class _Names:
    """Canonical names for a class's instances: by first use in its graph, then by
    declaration. Keyed by the parent's name path (stack indices ignored)."""

    def __init__(self, block: BlockDef, classes: dict[str, BlockDef]):
        self.block = block
        self.classes = classes
        self.order: dict[tuple[str, ...], dict[str, int]] = {}
        for node in _walk(block.graph):
            if node.ref is not None:
                self._register(node.ref)
        for name, module in block.modules:
            self._declare((), name, module)

    def _add(self, key: tuple[str, ...], name: str) -> None:
        names = self.order.setdefault(key, {})
        if name not in names:
            names[name] = len(names)

    def _register(self, ref: Ref) -> None:
        key: tuple[str, ...] = ()
        module: Module | None = None
        for depth, (name, idx) in enumerate(ref.path):
            self._add(key, name)
            module = _child(self.block, module, name, depth)
            if idx is not None:
                module = _item(module, idx)
            key = key + (name,)
            if isinstance(module, BlockInst):  # the rest is named by the callee's class
                return

    def _declare(self, key: tuple[str, ...], name: str, module: Module) -> None:
        self._add(key, name)
        self._declare_inside(key + (name,), module)

    def _declare_inside(self, key: tuple[str, ...], module: Module) -> None:
        if isinstance(module, Group):
            for child_name, child in module.children:
                self._declare(key, child_name, child)
        elif isinstance(module, Stack):
            for item in module.items:
                if item is not None:
                    self._declare_inside(key, item)

    def canon(self, key: tuple[str, ...], name: str) -> str:
        return f"m{self.order[key][name]}"


def _child(block: BlockDef, module: Module | None, name: str, depth: int) -> Module | None:
    if depth == 0:
        return block.module(name)
    if isinstance(module, Group):
        return module.get(name)
    return None


def _item(module: Module | None, idx) -> Module | None:
    if not isinstance(module, Stack) or not module.items:
        return None
    i = idx if isinstance(idx, int) else 0
    return module.items[i] if i < len(module.items) else None


def _walk(graph: Graph):
    for node in graph.nodes:
        yield node
        if node.body is not None:
            yield from _walk(node.body)


class _Hasher:
    def __init__(self, program: Program):
        self.classes = program.classes
        self.hashes: dict[str, str] = {}
        self.names: dict[str, _Names] = {}
        self.runtime: dict[str, str] = {}
        self._number_runtime(program.root, set())

    def _number_runtime(self, cls: str, seen: set[str]) -> None:
        """Run-time params are numbered by first use, walking from the root."""
        if cls in seen:
            return
        seen.add(cls)
        for node in _walk(self.classes[cls].graph):
            names: list[str] = []
            for _key, value in _facts(node):
                if isinstance(value, Count):
                    names += [value.param] if value.param else []
                    names += list(_tree_params(value.expr))
                else:
                    names += list(_tree_params(value))
            for name in names:
                if name not in self.runtime:
                    self.runtime[name] = f"r{len(self.runtime)}"
            if node.op == "call":
                self._number_runtime(node.call.cls, seen)

    def class_names(self, cls: str) -> _Names:
        names = self.names.get(cls)
        if names is None:
            names = _Names(self.classes[cls], self.classes)
            self.names[cls] = names
        return names

    def class_hash(self, cls: str) -> str:
        cached = self.hashes.get(cls)
        if cached is None:
            cached = hashlib.sha256(_dumps(_ClassSerializer(self, cls).run()).encode()
                                    ).hexdigest()
            self.hashes[cls] = cached
        return cached


class _ClassSerializer:
    def __init__(self, hasher: _Hasher, cls: str):
        self.h = hasher
        self.block = hasher.classes[cls]
        self.names = hasher.class_names(cls)
        self.values: dict[str, str] = {}
        self.scopes: list[dict[str, str]] = [{}]
        self.nvars = 0

    def run(self) -> dict:
        block = self.block
        if block.iteration:
            self.scopes[0][block.iteration] = "it"
        inputs = [self.define(v, t) for v, t in block.graph.inputs]
        graph = self.graph(block.graph)
        modules = sorted(((self.names.canon((), n), self.module((n,), m))
                          for n, m in block.modules), key=lambda nm: _index(nm[0]))
        return {"inputs": inputs, "graph": graph,
                "outputs": [self.use(o) for o in block.graph.outputs],
                "modules": modules, "iterations": block.iterations if block.iteration else None,
                "attrs": len(getattr(block, "attrs", ()))}

    # ------------------------------------------------------------------ values

    def define(self, value: str, t=None) -> str:
        name = f"%{len(self.values)}"
        self.values[value] = name
        return name if t is None else f"{name}:{t}"

    def use(self, value: str) -> str:
        if value not in self.values:  # defined outside this graph walk: number it now
            return self.define(value)
        return self.values[value]

    def var(self, name: str) -> str:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return f"?{name}"  # not a loop variable in scope: keep it as written

    # ------------------------------------------------------------------ graphs

    def graph(self, graph: Graph) -> list:
        return [self.node(node) for node in graph.nodes]

    def node(self, node: Node) -> list:
        inputs = [self.use(i) for i in node.inputs]
        attrs = {}
        body = None
        if node.body is not None:
            var = node.loop.var
            scope = {}
            if var is not None:
                scope[var] = f"v{self.nvars}"
                self.nvars += 1
            self.scopes.append(scope)
            try:
                body = {"inputs": [self.define(v, t) for v, t in node.body.inputs],
                        "graph": self.graph(node.body),
                        "outputs": [self.use(o) for o in node.body.outputs]}
                attrs = self.attrs(node)
            finally:
                self.scopes.pop()
        else:
            attrs = self.attrs(node)
        ref = self.ref(node.ref) if node.ref is not None else None
        outs = [self.define(o, t) for o, t in zip(node.outs, node.types)]
        return [node.op, inputs, outs, attrs, ref, body]

    def attrs(self, node: Node) -> dict:
        out = {}
        for key, value in _facts(node):
            if key in _NAME_ATTRS:
                continue
            if key == "cls":
                out[key] = self.h.class_hash(value)
            elif key in ("var", "iteration"):
                out[key] = self.var(value) if isinstance(value, str) else _canon(value)
            elif key == "count" and isinstance(value, Count):
                out[key] = [value.value, self.h.runtime.get(value.param) if value.param
                            else None, value.max, self.value(getattr(value, "expr", None))]
            else:
                out[key] = self.value(value)
        return out

    def value(self, value: Any) -> Any:
        """An attribute value, with the names inside run-time scalar trees canonical."""
        if _is_tree(value):
            kind = value[0]
            if kind == "var":
                return ["var", self.var(value[1])]
            if kind == "param":
                return ["param", self.h.runtime.get(value[1], f"?{value[1]}")]
            if kind == "attr":
                attrs = tuple(getattr(self.block, "attrs", ()))
                return ["attr", attrs.index(value[1]) if value[1] in attrs else f"?{value[1]}"]
            if kind == "num":
                return ["num", _canon(value[1])]
            if kind == "neg":
                return ["neg", self.value(value[1])]
            return [kind, value[1], *(self.value(v) for v in value[2:])]  # bin, cmp, call
        if isinstance(value, (tuple, list)):
            return [self.value(v) for v in value]
        return _canon(value)

    def ref(self, ref: Ref) -> list:
        out = []
        names = self.names
        key: tuple[str, ...] = ()
        block = self.block
        module: Module | None = None
        depth = 0
        for name, idx in ref.path:
            part = names.canon(key, name) if name in names.order.get(key, {}) else f"?{name}"
            if isinstance(idx, int):
                part += f"[{idx}]"
            elif isinstance(idx, str):
                part += f"[{self.var(idx)}]"
            out.append(part)
            module = _child(block, module, name, depth)
            if idx is not None:
                module = _item(module, idx)
            key = key + (name,)
            depth += 1
            if isinstance(module, BlockInst):  # the rest of the path is the callee's
                names = self.h.class_names(module.cls)
                block = self.h.classes[module.cls]
                key, module, depth = (), None, 0
        return out

    # ------------------------------------------------------------------ weights

    def module(self, key: tuple[str, ...], m: Module) -> Any:
        if m is None:
            return None
        if isinstance(m, Leaf):
            return ["leaf", m.op, _canon(dict(m.args)),
                    [[w.name, list(w.shape), _canon(w.init)] for w in m.weights]]
        if isinstance(m, Group):
            children = sorted(((self.names.canon(key, n), self.module(key + (n,), c))
                               for n, c in m.children), key=lambda nc: _index(nc[0]))
            return ["group", m.op, children]
        if isinstance(m, Stack):
            return ["stack", [self.module(key, i) for i in m.items]]
        if isinstance(m, BlockInst):
            # Values of the callee's run-time block params, by the params' positions.
            names = tuple(getattr(self.h.classes[m.cls], "attrs", ()))
            args = sorted((names.index(k) if k in names else -1, self.value(v))
                          for k, v in getattr(m, "args", ()))
            return ["inst", self.h.class_hash(m.cls), [list(a) for a in args]]
        raise TypeError(m)


def _index(canon: str) -> int:
    return int(canon[1:])


def _canon(value: Any) -> Any:
    """A JSON-able, process-independent form of an attribute value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, (tuple, list)):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, BaseModel):
        return {"model": type(value).__name__, **_canon(value.model_dump())}
    return {"repr": repr(value)}
