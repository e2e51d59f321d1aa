"""The typed graph IR that every pass and backend reads.

A spec elaborates to a `Program`: one `BlockDef` per distinct block specialization (a
generated class), plus the root model. A `BlockDef` has

- `modules`: the weights it owns, as a tree of `Leaf` (one op's parameters, an explicit
  weight group), `Group` (named children), `Stack` (one entry per iteration) and
  `BlockInst` (an instance of another BlockDef). Weights live where a block is
  instantiated; sharing is several nodes naming the same module path.
- `graph`: a dataflow `Graph` of `Node`s in program order, held in a networkx DiGraph.
  A `for`/`loop` is a region node whose `body` is a Graph; loops stay rolled until a pass
  decides otherwise. Node kinds are closed, as in torch.fx: an op of the op table (its
  options in `attrs`), a `loop` (its facts in a typed `Loop`, a halting rule in `Halt`) or
  a `call` of another class (`Call`). What backend passes note about a node (its KV-cache
  slot, its fusion region) lives in `Node.meta`, outside equality and CSE.

Shapes: activations are ("B", "T", width); per-head tensors are ("B", heads, "T", head_dim);
tokens are ("B", "T") long. Only widths are concrete, batch and sequence are symbolic.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from .errors import Span


class TensorType(BaseModel):
    model_config = ConfigDict(frozen=True)

    shape: tuple[Union[int, str], ...]
    dtype: Literal["float", "long"] = "float"

    @property
    def width(self) -> int:
        w = self.shape[-1]
        assert isinstance(w, int), self
        return w

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def broadcast(a: TensorType, b: TensorType) -> TensorType | None:
    """The shape of an elementwise op on a and b: equal dims, or 1 against anything (a
    gate per token [B, T, 1] or per head [B, H, T, 1] broadcasts); None if they clash."""
    if len(a.shape) != len(b.shape) or a.dtype != b.dtype:
        return None
    dims = []
    for x, y in zip(a.shape, b.shape):
        if x == y or y == 1:
            dims.append(x)
        elif x == 1:
            dims.append(y)
        else:
            return None
    return TensorType(shape=tuple(dims), dtype=a.dtype)


def act(width: int) -> TensorType:
    """An activation: [B, T, width]."""
    return TensorType(shape=("B", "T", width))


TOKENS = TensorType(shape=("B", "T"), dtype="long")

# An index into a Stack: a literal int, or the name of a loop variable.
Index = Union[int, str]


class Ref(BaseModel):
    """A path from a BlockDef to one of its modules, e.g. layers[i].attn.q."""

    model_config = ConfigDict(frozen=True)

    path: tuple[tuple[str, Union[Index, None]], ...]

    def __str__(self) -> str:
        parts = []
        for name, idx in self.path:
            parts.append(name if idx is None else f"{name}[{idx}]")
        return ".".join(parts)

    def child(self, name: str, idx: Index | None = None) -> "Ref":
        return Ref(path=self.path + ((name, idx),))

    def substitute(self, var: str, value: int) -> "Ref":
        return Ref(path=tuple((n, value if i == var else i) for n, i in self.path))


class Weight(BaseModel):
    """One parameter tensor of a Leaf, with its init."""

    model_config = ConfigDict(frozen=True)

    name: str
    shape: tuple[int, ...]
    init: tuple[Any, ...] = ("default",)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Leaf(BaseModel):
    """The parameters of one op instance (a weight group), built by a runtime module."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["leaf"] = "leaf"
    op: str
    args: tuple[tuple[str, Any], ...] = ()
    weights: tuple[Weight, ...] = ()
    span: Span | None = Field(default=None, exclude=True)

    @property
    def numel(self) -> int:
        return sum(w.numel for w in self.weights)


class Group(BaseModel):
    """Named child modules (an attention's q/k/v/o, one iteration's instances)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["group"] = "group"
    children: tuple[tuple[str, "Module"], ...]
    op: str = ""
    span: Span | None = Field(default=None, exclude=True)

    def get(self, name: str) -> "Module | None":
        for n, m in self.children:
            if n == name:
                return m
        return None


class Stack(BaseModel):
    """A list of modules indexed by an iteration or an instance-array index."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["stack"] = "stack"
    items: tuple["Module", ...]
    span: Span | None = Field(default=None, exclude=True)


class BlockInst(BaseModel):
    """An instance of a generated block class; `args` are its run-time block params
    (values kept on the instance, such as a layer's schedule onset)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["block"] = "block"
    cls: str
    args: tuple[tuple[str, Any], ...] = ()
    span: Span | None = Field(default=None, exclude=True)


Module = Union[Leaf, Group, Stack, BlockInst]


class Count(BaseModel):
    """A loop trip count: static (`value`), or known at run time (`expr`, an archc.scalar
    tree over run-time params such as `r` or the training `step`, up to `max`). `value`
    is then the count at the params' defaults; `param` names the param when the count is
    exactly one (`loop r max 64`)."""

    model_config = ConfigDict(frozen=True)

    value: int
    param: str | None = None
    max: int | None = None
    expr: tuple | None = None

    @property
    def runtime(self) -> bool:
        return self.expr is not None

    @property
    def bound(self) -> int:
        """The most iterations that can run: sizes per-iteration weights."""
        return self.max if self.max is not None else self.value


class Halt(BaseModel):
    """A loop's halting rule, `until converged(s, tol=1e-3, per="token")`: the loop stops
    once the carried value `state` (its index among the loop's carried values) changes by
    less than `tol` (relative), judged per position (`per="token"`) or per sequence."""

    model_config = ConfigDict(frozen=True)

    state: int
    tol: float
    per: Literal["token", "sequence"]


class Loop(BaseModel):
    """What a `loop` node is: a `for` over a stack (`kind="for"`: each iteration indexes
    its own weights) or a `loop` (one shared body, possibly a run-time count and a halting
    rule). `var` is the IR name of its index, `label` the stack of its weights."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["for", "loop"]
    var: str
    count: Count
    label: str
    halt: Halt | None = None


class Call(BaseModel):
    """What a `call` node is: a call of the generated block class `cls`. `iteration`
    names the loop variable that picks the callee's per-iteration adapters (`with`), or
    is a literal index once a pass unrolled that loop."""

    model_config = ConfigDict(frozen=True)

    cls: str
    iteration: str | None = None


# The node kinds beyond the op table's ops: each carries its typed field (Node.loop,
# Node.call) and no other node does; the verifier checks both directions.
STRUCTURAL_OPS = ("loop", "call")


class Node(BaseModel):
    """One op, block call or region. Produces the values named in `outs`.

    `op` is an op of the op table, or one of STRUCTURAL_OPS: a `loop` node carries its
    `Loop` (and a `body`), a `call` node its `Call`; no other node carries either. An op's
    own options stay in `attrs`.

    `meta` holds what a backend pass noted about the node (kvplan's cache `slot`, fuse's
    `fusion` region): annotations, not meaning. Equality, hashing and CSE ignore them, so
    two nodes computing the same value are equal however they were annotated (fx keeps
    `Node.meta` out of the graph's structure for the same reason)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    op: str
    outs: tuple[str, ...]
    types: tuple[TensorType, ...]
    inputs: tuple[str, ...] = ()
    attrs: tuple[tuple[str, Any], ...] = ()
    ref: Ref | None = None
    span: Span | None = Field(default=None, exclude=True)
    hint: str = ""
    body: "Graph | None" = None
    loop: Loop | None = None
    call: Call | None = None
    meta: tuple[tuple[str, Any], ...] = Field(default=(), exclude=True)

    def attr(self, name: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    def annotation(self, name: str, default: Any = None) -> Any:
        """A backend annotation (`slot`, `fusion`), or default if no pass set it."""
        for k, v in self.meta:
            if k == name:
                return v
        return default

    def _structure(self) -> tuple:
        """Every field but `meta`: what equality and hashing compare."""
        return tuple(getattr(self, f) for f in type(self).model_fields if f != "meta")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return self._structure() == other._structure()

    def __hash__(self) -> int:
        return hash(self._structure())


class Graph:
    """Nodes in program order with dataflow edges (a networkx DiGraph underneath).

    `inputs` are the graph's parameters (value name, type); `outputs` the values it
    returns. A value is defined once (SSA). Region bodies are Graphs too.
    """

    def __init__(self, inputs: list[tuple[str, TensorType]] | None = None):
        self.g = nx.DiGraph()
        self.inputs: list[tuple[str, TensorType]] = list(inputs or [])
        self.outputs: list[str] = []
        self.producer: dict[str, int] = {}
        self.types: dict[str, TensorType] = {name: t for name, t in self.inputs}
        self.names: dict[str, str] = {}  # value -> the spec name it was bound to
        self._count = 0

    def add(self, node: Node) -> Node:
        key = self._count
        self._count += 1
        self.g.add_node(key, node=node)
        for i, name in enumerate(node.inputs):
            src = self.producer.get(name)
            if src is not None:
                self.g.add_edge(src, key, slot=i)
        for name, t in zip(node.outs, node.types):
            self.producer[name] = key
            self.types[name] = t
        return node

    @property
    def next_key(self) -> int:
        return self._count

    def rewrite_from(self, first: int, fn) -> None:
        """Replace the nodes added since key `first` by fn(node) (same values out)."""
        for key in range(first, self._count):
            self.g.nodes[key]["node"] = fn(self.g.nodes[key]["node"])

    @property
    def nodes(self) -> list[Node]:
        return [data["node"] for _, data in self.g.nodes(data=True)]

    def users(self, value: str) -> list[Node]:
        key = self.producer.get(value)
        if key is None:
            return [n for n in self.nodes if value in n.inputs]
        return [self.g.nodes[k]["node"] for k in self.g.successors(key)]

    def __len__(self) -> int:
        return self.g.number_of_nodes()


Group.model_rebuild()
Stack.model_rebuild()
Node.model_rebuild()


class BlockDef(BaseModel):
    """One generated class: a block specialization, or the root model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    cls: str
    name: str
    inputs: tuple[tuple[str, TensorType], ...]
    graph: Graph
    modules: tuple[tuple[str, Module], ...]
    span: Span | None = None
    output_names: tuple[str, ...] = ()  # named outputs after the main one
    attrs: tuple[str, ...] = ()  # run-time block params: constructor args kept on self
    # Loop variable that indexes per-iteration adapters, passed by the caller.
    iteration: str | None = None
    iterations: int | None = None

    def module(self, name: str) -> Module | None:
        return _module_index(self.modules).get(name)


class ParamInfo(BaseModel):
    """A declared model parameter, its bound value and its search domain."""

    name: str
    type: str
    default: Any
    value: Any
    domain: Any = None
    domain_text: str | None = None
    runtime: bool = False


class WeightGroup(BaseModel):
    """Weights applied more than once per forward, recorded by the share pass.

    `shared`: one module applied by several nodes, or by one node inside a loop that does
    not index it per iteration (a `let` instance called again, a looped core). `tied`: a
    module whose weights another op reads as well (`lm_head(tied=emb)` reads the
    embedding as its output projection; a head loop reads its attention's projections).
    `uses` has one entry per node that applies it: the op (a block call: the class), the
    spec line it comes from, `x4` (or `x r`, `x <=64` for a run-time count) inside loops."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["shared", "tied"]
    cls: str  # the class whose modules hold it
    ref: Ref  # its path there, indices literal
    module: str  # format_module of it
    uses: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.kind} {self.cls}.{self.ref}: {self.module} <- {', '.join(self.uses)}"



_INDEX: dict[int, tuple[tuple, dict]] = {}  # id(modules) -> (modules, name -> module)


def _module_index(modules: tuple[tuple[str, Module], ...]) -> dict[str, Module]:
    """A class's modules by name, built once per modules tuple (a scan per lookup made
    resolving every op of a 20k-op class quadratic). Keyed by identity and holding the
    tuple, so an entry can never answer for another tuple; the first name wins, as the
    scan did."""
    hit = _INDEX.get(id(modules))
    if hit is not None and hit[0] is modules:
        return hit[1]
    index: dict[str, Module] = {}
    for name, m in modules:
        index.setdefault(name, m)
    if len(_INDEX) > 4096:
        _INDEX.clear()
    _INDEX[id(modules)] = (modules, index)
    return index


class Program(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    file: str
    params: dict[str, ParamInfo]
    classes: dict[str, BlockDef]
    root: str
    # Set by the reparam pass: (class, target weight, recipe) for archc.reparam.
    folds: tuple[tuple[str, str, tuple], ...] = ()
    rope: tuple[tuple[int, float], ...] = ()
    # Set by the kvplan pass: (kv_heads, head_dim) of every cache slot, in slot order.
    kv_layout: tuple[tuple[int, int], ...] = ()
    # Set by the share pass: every module applied more than once, and every tied weight.
    weight_groups: tuple[WeightGroup, ...] = ()
    # Set by the elaborator: each spec-level op application (archc/identity/record.py),
    # what the architecture hash reads instead of the primitives the op expanded into.
    spec_ops: Any = Field(default=None, exclude=True, repr=False)

    @property
    def model(self) -> BlockDef:
        return self.classes[self.root]


def walk(graph: Graph):
    """Every node of a graph and of its region bodies, outer first."""
    for node in graph.nodes:
        yield node
        if node.body is not None:
            yield from walk(node.body)


def resolve(block: BlockDef, ref: Ref, classes: dict[str, BlockDef],
            env: dict[str, Any] | None = None) -> Module | None:
    """The module a Ref names; a symbolic index takes its value from env (else 0)."""
    current: Module | None = None
    for depth, (name, idx) in enumerate(ref.path):
        if depth == 0:
            current = block.module(name)
        elif isinstance(current, Group):
            current = current.get(name)
        elif isinstance(current, BlockInst):
            current = classes[current.cls].module(name)
        else:
            return None
        if current is None:
            return None
        if idx is not None:
            if not isinstance(current, Stack) or not current.items:
                return None
            i = idx if isinstance(idx, int) else int((env or {}).get(idx, 0))
            if i >= len(current.items):
                return None
            current = current.items[i]
    return current


# ----------------------------------------------------------------------------- printing


def format_module(m: Module) -> str:
    """One-line summary of a module tree: linear(64->32), 4 x Layer, attention{...}."""
    if isinstance(m, BlockInst):
        return m.cls
    if isinstance(m, Leaf):
        a = dict(m.args)
        if m.op in ("linear", "lora"):
            extra = f", rank={a['rank']}" if m.op == "lora" else ""
            return f"{m.op}({a['in']}->{a['out']}{extra})"
        if m.op == "embed":
            return f"embed({a['vocab']}x{a['dim']})"
        if "dim" in a:
            return f"{m.op}({a['dim']})"
        return f"{m.op}({', '.join(f'{k}={v}' for k, v in a.items())})"
    if isinstance(m, Group):
        inner = ", ".join(f"{n}: {format_module(c)}" for n, c in m.children)
        return f"{m.op or 'group'}{{{inner}}}"
    if isinstance(m, Stack):
        first = m.items[0] if m.items else None
        if first is not None and all(i.model_dump() == first.model_dump() for i in m.items):
            return f"{len(m.items)} x {format_module(first)}"
        return "[" + ", ".join(format_module(i) for i in m.items) + "]"
    raise AssertionError(m)


def _format_attr(value: Any) -> str:
    if isinstance(value, Count):
        if value.param:
            return f"{value.param} (default {value.value}, max {value.max})"
        return str(value.value)
    return repr(value)


def format_graph(graph: Graph, indent: str = "  ") -> list[str]:
    lines = []
    for node in graph.nodes:
        outs = ", ".join(node.outs)
        args = ", ".join(node.inputs)
        types = ", ".join(str(t) for t in node.types)
        where = f"  # :{node.span.line}" if node.span else ""
        if node.loop is not None:
            loop = node.loop
            count = _format_attr(loop.count)
            halt = loop.halt
            until = f" until converged(tol={halt.tol}, per={halt.per})" if halt else ""
            ins = ", ".join(f"{v}: {t}" for v, t in node.body.inputs)
            lines.append(f"{indent}{outs} = {loop.kind} {loop.var} in {count} "
                         f"[{loop.label}]{until}({args}) {{{where}")
            lines.append(f"{indent}  ({ins}) ->")
            lines.extend(format_graph(node.body, indent + "    "))
            lines.append(f"{indent}  yield {', '.join(node.body.outputs)}")
            lines.append(f"{indent}}} : {types}")
            continue
        attrs = dict(node.attrs + node.meta)
        if node.call is not None and node.call.iteration is not None:
            attrs["iteration"] = node.call.iteration
        attrs = dict(sorted(attrs.items()))  # annotations print among the attributes
        attr_text = ("{" + ", ".join(f"{k}={_format_attr(v)}" for k, v in attrs.items()) + "}"
                     if attrs else "")
        target = node.call.cls if node.call is not None else node.op
        ref = f"[{node.ref}]" if node.ref is not None else ""
        lines.append(f"{indent}{outs} = {target}{ref}{attr_text}({args}) : {types}{where}")
    return lines


def _numbering(graph: Graph, ids: dict[str, str]) -> dict[str, str]:
    """%1, %2, ... in order of definition (inputs, then each node's outputs, bodies inline),
    so printed IR does not depend on how elaboration happened to number values."""
    for v, _ in graph.inputs:
        ids.setdefault(v, f"%{len(ids) + 1}")
    for node in graph.nodes:
        if node.body is not None:
            _numbering(node.body, ids)
        for o in node.outs:
            ids.setdefault(o, f"%{len(ids) + 1}")
    return ids


def _renumber(graph: Graph, ids: dict[str, str]) -> Graph:
    out = Graph([(ids.get(v, v), t) for v, t in graph.inputs])
    for node in graph.nodes:
        update = {"inputs": tuple(ids.get(v, v) for v in node.inputs),
                  "outs": tuple(ids.get(v, v) for v in node.outs)}
        if node.body is not None:
            update["body"] = _renumber(node.body, ids)
        out.add(node.model_copy(update=update))
    out.outputs = [ids.get(v, v) for v in graph.outputs]
    return out


def format_block(block: BlockDef) -> str:
    block = block.model_copy(update={"graph": _renumber(block.graph,
                                                        _numbering(block.graph, {}))})
    head = f"class {block.cls}  # {block.name}"
    if block.span:
        head += f" ({block.span.file}:{block.span.line})"
    lines = [head]
    if block.iteration:
        lines.append(f"  iteration {block.iteration} < {block.iterations}")
    for name, m in block.modules:
        lines.append(f"  {name}: {format_module(m)}")
    ins = ", ".join(f"{v}: {t}" for v, t in block.graph.inputs)
    lines.append(f"  def ({ins}):")
    lines.extend(format_graph(block.graph, "    "))
    lines.append(f"    return {', '.join(block.graph.outputs)}")
    return "\n".join(lines)


def format_program(program: Program) -> str:
    """The IR as text: what `archc compile --print-ir` shows and golden tests compare."""
    params = ", ".join(f"{p.name}={p.value!r}" for p in program.params.values())
    out = [f"program {program.name}({params})"]
    if program.weight_groups:
        out.append("weights")
        out.extend(f"  {group}" for group in program.weight_groups)
    for block in program.classes.values():
        out.append("")
        out.append(format_block(block))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- traversal


def map_graph(graph: Graph, fn) -> Graph:
    """A copy of a graph with `fn(node) -> node` applied to every node (bodies first)."""
    out = Graph(graph.inputs)
    for node in graph.nodes:
        if node.body is not None:
            node = node.model_copy(update={"body": map_graph(node.body, fn)})
        out.add(fn(node))
    out.outputs = list(graph.outputs)
    out.names = dict(graph.names)
    return out


def next_value_id(graph: Graph) -> int:
    """One more than the highest `%N` value id in a graph and its region bodies: where a
    pass that makes new values starts numbering them."""
    high = 0
    values = [v for v, _ in graph.inputs]
    for node in walk(graph):
        values.extend(node.outs)
        if node.body is not None:
            values.extend(v for v, _ in node.body.inputs)
    for v in values:
        if v.startswith("%") and v[1:].isdigit():
            high = max(high, int(v[1:]))
    return high + 1


def with_attrs(node: Node, **updates: Any) -> Node:
    attrs = dict(node.attrs)
    attrs.update(updates)
    return node.model_copy(update={"attrs": tuple(sorted(attrs.items()))})


def annotate(node: Node, **updates: Any) -> Node:
    """The node with backend annotations added to its `meta` (see Node)."""
    meta = dict(node.meta)
    meta.update(updates)
    return node.model_copy(update={"meta": tuple(sorted(meta.items()))})


def class_order(program: Program) -> list[str]:
    """Classes with callees before callers (the root last), else in elaboration order."""
    order: list[str] = []

    def deps(block: BlockDef) -> list[str]:
        out: list[str] = []

        def visit(m: Module) -> None:
            if isinstance(m, BlockInst):
                out.append(m.cls)
            elif isinstance(m, Group):
                for _, c in m.children:
                    visit(c)
            elif isinstance(m, Stack):
                for c in m.items:
                    visit(c)

        for _, m in block.modules:
            visit(m)
        return out

    def visit_cls(cls: str) -> None:
        if cls in order:
            return
        for dep in deps(program.classes[cls]):
            visit_cls(dep)
        order.append(cls)

    for cls in program.classes:
        visit_cls(cls)
    return order


# ----------------------------------------------------------------------------- run-time counts


def param_env(program: Program, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Values of the model's params for evaluating run-time counts and scales."""
    env = {name: p.value for name, p in program.params.items()}
    env.update(overrides or {})
    return env


def instance_env(env: dict[str, Any], module: Module | None) -> dict[str, Any]:
    """The env inside a block instance: its run-time block params join the model's."""
    if isinstance(module, Stack) and module.items:
        module = module.items[0]
    if isinstance(module, BlockInst) and module.args:
        return {**env, **dict(module.args)}
    return env


def trip_count(count: Count, env: dict[str, Any]) -> int:
    """How many times a loop runs for these param values (its default if the count reads
    something env lacks), clamped to its bound."""
    from .scalar import evaluate

    if count.expr is None:
        return count.value
    try:
        n = int(evaluate(count.expr, env))
    except (KeyError, TypeError, ValueError, OverflowError):
        return count.value
    return max(0, min(n, count.bound))
