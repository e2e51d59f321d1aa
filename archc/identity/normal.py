"""The normal form the architecture hash is taken of: readable text, one line per op.

A program becomes one text per class (the root model and each block specialization).
A class text lists its inputs, its graph in program order, its outputs and its weight
tree, with every local name replaced by a position: values by order of definition (%0,
%1, ...), loop variables by nesting (v0, v1), instances by order of first use (m0, m1),
run-time params by order of first use from the root (r0, r1). A block call names its
callee by the SHA-256 of the callee's text (a Merkle hash), so identical bodies are one
architecture whatever their names.

Two forms share this printer:
- the *normal form* (`contract=True`, what `archc.hash` hashes): each application of a
  spec-level op (attention, swiglu, moe, ...) is one line, named by the op and its
  attributes as the op's schema resolved them, with its inputs by role (positional
  inputs as `%n`, tensor keywords as `kv=%n`, fields read as `kv.k_all=%n`) and its
  outputs by name (`q=%n` for a field). Which primitives the op expanded into, and in
  which order, does not appear: the record of the applications (archc/identity/record.py)
  says which primitive nodes to fold into each line.
- the *expanded form* (`contract=False`): every primitive node, as the IR holds it. Passes
  compare programs with it (roll undoes unroll); its hash moves whenever an expansion does.

The weight tree is printed in both: it is the checkpoint layout (which instances own
which weights, their shapes and inits, which applications share them), so a change to it
is a change to the architecture. Inside a spec-level op's instance the weights keep the
op library's names (q, k, v, o), sorted by name, so an expansion may create them in any
order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .. import scalar
from ..ir import (BlockDef, BlockInst, Count, Graph, Group, Leaf, Module, Node, Program, Ref, Stack,
                  walk)
from ..ops import OPS

VERSION = "archc-hash/2"
# The first line of the expanded form: never taken for an architecture hash.
EXPANDED = "archc-expanded/2"

# Node attributes that only name things: dropped.
_NAME_ATTRS = frozenset({"label"})


@dataclass
class NormalForm:
    """The texts of a program: `blocks` as (sha256, text) with callees first, then the
    root's text, whose first line is the format VERSION; `digest` is its SHA-256."""

    blocks: list[tuple[str, str]]
    root: str
    digest: str

    def explain(self) -> str:
        """Every text with the hash it is known by, then the architecture hash. A hash is
        of the text's lines joined by newlines, with no newline at the end."""
        out = []
        for digest, text in self.blocks:
            out.append(f"# block @{digest}: the SHA-256 of the {_count(text)} lines below")
            out.append(text)
        out.append(f"# model: the architecture hash is the SHA-256 of the "
                   f"{_count(self.root)} lines below")
        out.append(self.root)
        out.append(self.digest)
        return "\n".join(out) + "\n"


def normal_form(program: Program, contract: bool = True) -> NormalForm:
    """The normal form of an elaborated program (`contract=False`: its expanded form)."""
    if contract and program.spec_ops is None:
        raise ValueError("the normal form reads the op applications the elaborator "
                         "recorded: hash archc.load(spec).program, not a compiled program")
    forms = _Forms(program, contract)
    root = (VERSION if contract else EXPANDED) + "\n" + forms.text(program.root)
    blocks = [(forms.digest(cls), forms.text(cls)) for cls in forms.order
              if cls != program.root]
    return NormalForm(blocks, root, _sha(root))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _count(text: str) -> int:
    return text.count("\n") + 1


# ----------------------------------------------------------------------------- values

def _is_tree(value: Any) -> bool:
    return (isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str)
            and value[0] in scalar.KINDS)


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


def _canon(value: Any) -> Any:
    """A plain, process-independent form of a value (lists, dicts, str, numbers)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, BaseModel):
        return {"model": type(value).__name__, **_canon(value.model_dump())}
    return {"type": type(value).__name__}  # never a repr: it may hold an address


def render(value: Any) -> str:
    """One canonical line for a plain value. Numbers print by value (2 and 2.0 are one
    number: `x * 2` and `scale(x, 2)` scale alike); strings are JSON-quoted, so no spec
    text can break a line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2 ** 53:
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {render(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


# ----------------------------------------------------------------------------- names

def _graphs(graph: Graph):
    """A graph and every region body in it."""
    yield graph
    for node in graph.nodes:
        if node.body is not None:
            yield from _graphs(node.body)


def _is_op_group(module: Module | None) -> bool:
    """A spec-level op's instance: its children carry the op library's names."""
    return isinstance(module, Group) and module.op in OPS


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


def _is_adapter(block: BlockDef, ref: Ref) -> bool:
    """A ref into a class's LoRA adapters (a Stack of Group(op="lora") at the root)."""
    m = block.module(ref.path[0][0])
    return isinstance(m, Stack) and any(isinstance(i, Group) and i.op == "lora"
                                        for i in m.items)


class _Names:
    """Canonical names for a class's instances: by first use (`used`: the refs of the
    graph's lines in order), then by declaration. Keyed by the parent's name path (stack
    indices ignored)."""

    def __init__(self, block: BlockDef, used: list[Ref]):
        self.block = block
        self.order: dict[tuple[str, ...], dict[str, int]] = {}
        for ref in used:
            self._register(ref)
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


# ----------------------------------------------------------------------------- program

class _Forms:
    """The texts of a program's classes, each made once (callees before callers)."""

    def __init__(self, program: Program, contract: bool):
        self.classes = program.classes
        self.root = program.root
        self.spec_ops = program.spec_ops if contract else None
        self.texts: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.names: dict[str, _Names] = {}
        self.order: list[str] = []
        self.gathered: dict[int, list] = {}
        self.runtime: dict[str, str] = {}
        self._number_runtime(program.root, set())

    def _number_runtime(self, cls: str, seen: set[str]) -> None:
        """Run-time params are numbered by first use, walking from the root."""
        if cls in seen:
            return
        seen.add(cls)
        for node in walk(self.classes[cls].graph):
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
        if cls not in self.names:
            block = self.classes[cls]
            self.names[cls] = _Names(block, list(self._used(block, block.graph)))
        return self.names[cls]

    def _used(self, block: BlockDef, graph: Graph):
        """The refs the lines of a graph name, in order: an application's own instance
        and the other instances it uses, a node's ref."""
        for item in self.items(block.cls, graph):
            if isinstance(item, _Application):
                own, uses = _application_refs(item, block)
                yield from ([own] if own is not None else []) + uses
                continue
            if item.ref is not None:
                yield item.ref
            if item.body is not None:
                yield from self._used(block, item.body)

    def items(self, cls: str, graph: Graph) -> list:
        """The graph's nodes, those of one op application gathered into one item at the
        place of its first node (made once per graph: names and text both walk them)."""
        key = id(graph)
        if key not in self.gathered:
            self.gathered[key] = self._gather(cls, graph)
        return self.gathered[key]

    def _gather(self, cls: str, graph: Graph) -> list:
        spec = self.spec_ops
        origins = spec.origins.get(cls, {}) if spec else {}
        out: list = []
        open_: dict[int, _Application] = {}
        for node in graph.nodes:
            app = origins.get(node.outs[0]) if node.outs else None
            if app is None or node.body is not None:
                out.append(node)
                continue
            item = open_.get(app)
            if item is None:
                item = open_[app] = _Application(spec.apps[app])
                out.append(item)
            item.nodes.append((node, item.records[node.outs[0]]))
        return out

    def text(self, cls: str) -> str:
        if cls not in self.texts:
            self.texts[cls] = "\n".join(_ClassText(self, cls).lines())
            self.digests[cls] = _sha(self.texts[cls])
            self.order.append(cls)
        return self.texts[cls]

    def digest(self, cls: str) -> str:
        self.text(cls)
        return self.digests[cls]


# ----------------------------------------------------------------------------- one class

class _Application:
    """The primitive nodes of one spec-level op application, as they sit in a graph:
    (node, (input slots with their roles, parts of its ref inside the op's instance))."""

    def __init__(self, app):
        self.app = app  # record.Application
        self.records = {out: (dict(slots), own) for out, slots, own in app.nodes}
        self.nodes: list = []


class _ClassText:
    def __init__(self, forms: _Forms, cls: str):
        self.forms = forms
        self.cls = cls
        self.block = forms.classes[cls]
        self.names = forms.class_names(cls)
        self.values: dict[str, str] = {}
        self.scopes: list[dict[str, str]] = [{}]
        self.nvars = 0
        self.lora_targets: dict[str, str] | None = None

    def lines(self) -> list[str]:
        block = self.block
        if block.iteration:
            self.scopes[0][block.iteration] = "it"
        head = "model" if self.cls == self.forms.root else "block"
        out = [head, "inputs " + ", ".join(self.define(v, t) for v, t in block.graph.inputs)]
        out += self.graph(block.graph, "")
        out.append("outputs " + ", ".join(self.use(o) for o in block.graph.outputs))
        if block.iteration:
            out.append(f"adapters per iteration {block.iterations}")
        if getattr(block, "attrs", ()):
            out.append(f"run-time params {len(block.attrs)}")
        modules = sorted(((self.names.canon((), n), n, m) for n, m in block.modules),
                         key=lambda c: _index(c[0]))
        for canon, name, m in modules:
            out += self.module(f"module {canon}", (name,), m, "")
        return out

    # ------------------------------------------------------------------ values

    def define(self, value: str, t=None) -> str:
        name = f"%{len(self.values)}"
        self.values[value] = name
        return name if t is None else f"{name}: {t}"

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

    def graph(self, graph: Graph, indent: str) -> list[str]:
        out: list[str] = []
        for item in self.forms.items(self.cls, graph):
            if isinstance(item, _Application):
                out.append(indent + self.application(item, graph))
            else:
                out += self.node(item, indent)
        return out

    def node(self, node: Node, indent: str) -> list[str]:
        inputs = ", ".join(self.use(i) for i in node.inputs)
        body: list[str] = []
        if node.body is not None:
            var = node.loop.var if node.loop is not None else None
            scope = {}
            if var is not None:
                scope[var] = f"v{self.nvars}"
                self.nvars += 1
            self.scopes.append(scope)
            try:
                inner = indent + "  "
                body.append(inner + "inputs " + ", ".join(self.define(v, t)
                                                          for v, t in node.body.inputs))
                body += self.graph(node.body, inner)
                body.append(inner + "outputs " + ", ".join(self.use(o)
                                                           for o in node.body.outputs))
                attrs = self.attrs(node)
            finally:
                self.scopes.pop()
        else:
            attrs = self.attrs(node)
        ref = f" @{self.ref(node.ref)}" if node.ref is not None else ""
        outs = ", ".join(self.define(o, t) for o, t in zip(node.outs, node.types))
        line = f"{indent}{outs} = {node.op}({inputs}){_attrs_text(attrs)}{ref}"
        if node.body is None:
            return [line]
        return [line + " {"] + body + [indent + "}"]

    def attrs(self, node: Node) -> dict:
        out = {}
        for key, value in _facts(node):
            if key in _NAME_ATTRS:
                continue
            if key == "cls":
                out[key] = "@" + self.forms.digest(value)
            elif key in ("var", "iteration"):
                out[key] = self.var(value) if isinstance(value, str) else _canon(value)
            elif key == "count" and isinstance(value, Count):
                out[key] = {"value": value.value, "param": self.forms.runtime.get(value.param)
                            if value.param else None, "max": value.max,
                            "expr": self.value(value.expr)}
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
                return ["param", self.forms.runtime.get(value[1], f"?{value[1]}")]
            if kind == "attr":
                attrs = tuple(getattr(self.block, "attrs", ()))
                return ["attr", attrs.index(value[1]) if value[1] in attrs else f"?{value[1]}"]
            if kind == "num":
                return ["num", _canon(value[1])]
            if kind == "neg":
                return ["neg", self.value(value[1])]
            return [kind, value[1], *(self.value(v) for v in value[2:])]  # bin, cmp, call
        if isinstance(value, Ref):
            return "@" + self.ref(value)
        if isinstance(value, (tuple, list)):
            return [self.value(v) for v in value]
        return _canon(value)

    # ------------------------------------------------------------------ applications

    def application(self, item: _Application, graph: Graph) -> str:
        """One op application: `outs = op(inputs) attrs @instance uses=[...]`."""
        defined = {o for node, _ in item.nodes for o in node.outs}
        roles: dict[str, str] = {}
        unknown: list[str] = []
        for node, (slots, _own) in item.nodes:
            for k, v in enumerate(node.inputs):
                if k in slots:
                    for role in slots[k]:
                        roles.setdefault(role, self.use(v))
                elif v not in defined and self.use(v) not in unknown:
                    unknown.append(self.use(v))
        inputs = [roles[r] if r.isdigit() else f"{r}={roles[r]}"
                  for r in sorted(roles, key=_role_order)]
        inputs += [f"?={v}" for v in unknown]  # read by no role: should not happen
        attrs = {name: self.value(value) for name, value in item.app.attrs}
        refs = self.application_refs(item)
        outs = []
        labels = sorted(((sorted(ls, key=_role_order), vid) for vid, ls in
                         item.app.labels if vid in defined),
                        key=lambda lv: [_role_order(x) for x in lv[0]])
        for names, vid in labels:
            named = "" if names == ["out"] else "|".join(names) + "="
            outs.append(f"{named}{self.define(vid, graph.types[vid])}")
        return f"{', '.join(outs)} = {item.app.op}({', '.join(inputs)}){_attrs_text(attrs)}{refs}"

    def application_refs(self, item: _Application) -> str:
        own, uses = _application_refs(item, self.block)
        out = f" @{self.ref(own)}" if own is not None else ""
        names = sorted({self.ref(u) for u in uses})
        return out + (f" uses=[{', '.join('@' + u for u in names)}]" if names else "")

    # ------------------------------------------------------------------ refs

    def ref(self, ref: Ref, indices: bool = True) -> str:
        """A ref with canonical names (`m1[v0].q`); without its indices when the loop
        variables they name are out of scope."""
        out = []
        names = self.names
        key: tuple[str, ...] = ()
        block = self.block
        module: Module | None = None
        depth = 0
        for name, idx in ref.path:
            if _is_op_group(module):
                part = name
            elif name in names.order.get(key, {}):
                part = names.canon(key, name)
            else:
                part = f"?{name}"
            if isinstance(idx, int) and indices:
                part += f"[{idx}]"
            elif isinstance(idx, str) and indices:
                part += f"[{self.var(idx)}]"
            out.append(part)
            module = _child(block, module, name, depth)
            if idx is not None:
                module = _item(module, idx)
            key = key + (name,)
            depth += 1
            if isinstance(module, BlockInst):  # the rest of the path is the callee's
                names = self.forms.class_names(module.cls)
                block = self.forms.classes[module.cls]
                key, module, depth = (), None, 0
        return ".".join(out)

    # ------------------------------------------------------------------ weights

    def lora_target(self, key: str) -> str:
        """A LoRA adapter named by the linear it adapts (`lora of m1.q`), not by the order
        in which the op expansions met their linears. Its linear is the nearest weight
        before it that reads the same input (an adapter is applied right after it)."""
        if self.lora_targets is None:
            self.lora_targets = {}
            for graph in _graphs(self.block.graph):
                self._find_lora_targets(graph.nodes)
        return "lora of " + self.lora_targets.get(key, "?")

    def _find_lora_targets(self, nodes: list[Node]) -> None:
        for k, node in enumerate(nodes):
            if node.op != "lora" or node.ref is None or not node.inputs:
                continue
            for prev in reversed(nodes[:k]):
                if prev.ref is not None and prev.inputs[:1] == node.inputs[:1] and \
                        not _is_adapter(self.block, prev.ref):
                    # by names only, as the adapter's own key is
                    self.lora_targets[node.ref.path[-1][0]] = self.ref(prev.ref, indices=False)
                    break

    def module(self, head: str, key: tuple[str, ...], m: Module | None, indent: str
               ) -> list[str]:
        inner = indent + "  "
        if m is None:
            return [f"{indent}{head}: none"]
        if isinstance(m, Leaf):
            out = [f"{indent}{head}: leaf {m.op}{_attrs_text(_canon(dict(m.args)))}"]
            for w in m.weights:
                out.append(f"{inner}{w.name} {list(w.shape)} init={render(_canon(w.init))}")
            return out
        if isinstance(m, Group):
            out = [f"{indent}{head}: group {m.op}".rstrip()]
            if _is_op_group(m):
                children = sorted((n, n, c) for n, c in m.children)
            elif m.op == "lora":
                children = sorted((self.lora_target(n), n, c) for n, c in m.children)
            else:
                children = sorted(((self.names.canon(key, n), n, c) for n, c in m.children),
                                  key=lambda c: _index(c[0]))
            for canon, name, child in children:
                out += self.module(canon, key + (name,), child, inner)
            return out
        if isinstance(m, Stack):
            out = [f"{indent}{head}: stack of {len(m.items)}"]
            for k, item in enumerate(m.items):
                out += self.module(f"[{k}]", key, item, inner)
            return out
        if isinstance(m, BlockInst):
            # Values of the callee's run-time block params, by the params' positions.
            names = tuple(getattr(self.forms.classes[m.cls], "attrs", ()))
            args = sorted((names.index(k) if k in names else -1, self.value(v))
                          for k, v in getattr(m, "args", ()))
            return [f"{indent}{head}: instance @{self.forms.digest(m.cls)}"
                    f"{' args=' + render([list(a) for a in args]) if args else ''}"]
        raise TypeError(m)


def _application_refs(item: _Application, block: BlockDef) -> tuple[Ref | None, list[Ref]]:
    """An application's own instance (the ref of its first weight, cut to the instance),
    and the other instances it uses, in order (a tied embed, the attention a head loop
    reruns). LoRA adapters are left out: the class's weight tree holds them."""
    own = None
    uses: list[Ref] = []
    for node, (_slots, inside) in item.nodes:
        found = [node.ref] if node.ref is not None else []
        found += [v for _k, v in node.attrs if isinstance(v, Ref)]
        for k, ref in enumerate(found):
            if k == 0 and inside is not None:
                if own is None:
                    own = Ref(path=ref.path[:len(ref.path) - inside])
            elif not _is_adapter(block, ref) and ref not in uses:
                uses.append(ref)
    return own, uses


def _facts(node: Node) -> tuple:
    """A node's attributes with its typed Loop or Call (archc/ir.py) as (key, value)
    pairs, in key order: what the normal form prints of a loop or a call."""
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


def _attrs_text(attrs: dict) -> str:
    return "".join(f" {k}={render(v)}" for k, v in sorted(attrs.items()))


def _role_order(role: str):
    """Positional inputs (and outputs) first, by position, then names alphabetically."""
    head = role.split(".")[0]
    return (0, int(head), role) if head.isdigit() else (1 if head == "out" else 2, 0, role)


def _index(canon: str) -> int:
    return int(canon[1:])
