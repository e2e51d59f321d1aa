"""The analytic cost of a spec, read from its IR without torch.

Every number is a sum over op *applications*: a loop region multiplies its body by its trip
count (a run-time count at its bound value: the param's default or the value passed to
`archc.cost`), a block call adds the callee's cost, a per-iteration LoRA is an op in the
body like any other. What one application of a primitive costs is declared once, as the
`flops` rule of its `Prim` in `archc/ops/prims.py`; this module only walks the graph.

Numbers per token are exact for the IR as the backends get it: the elaborated IR after
`dce` (`live.live_program`), so dead code (an unused linear, a dead call of a shared
instance, the query and output projections of an attention only whose K/V are read) costs
nothing, as in the built module:

- `flops_per_token`: forward matmul FLOPs, 2 per multiply-add, the quantity torch's
  `FlopCounterMode` reports: linears 2*in*out, LoRA 2*rank*(in+out), a tied head
  2*d*vocab, attention 2*heads*seq*(d_qk + d_v) at `seq` keys (counted in full, as torch
  counts scaled_dot_product_attention: a causal mask does not halve it).
- `vector_flops_per_token`: an estimate of elementwise and reduction work (norms,
  activations, residual adds, softmax), from the same rules.
- `kv_bytes_per_token`: `kv_bytes(node)` summed over the caches of the kv plan, i.e. what
  `module.new_cache(batch, max_len).nbytes / (batch * max_len)` is.
- `activation_bytes`: the activations a training step keeps for its backward pass, at
  `batch` x `seq`, in float32. The approximation: each op keeps what its backward needs
  (`Prim.saved`: a linear its input, a product both factors, an attention q, k, v, its output
  and a log-sum-exp per head, plus `Prim.saved_extra`), and a value kept by several ops of one
  graph is counted once. Attention is a fused kernel (no seq x seq score matrix is kept).
  Parameters, gradients, optimizer state, RoPE tables, token ids and the transient memory
  of the backward pass are not counted. Against the tensors torch's autograd actually
  saves (tests/analysis/test_cost.py) it is within -25%/+50% on the specs in specs/,
  except two whose runtime keeps more than their IR shows: hyper-connections (Sinkhorn's
  iterations keep n x n intermediates) and the scan of an attention over its block's past
  output (per-position softmax state); there it is about half the measured bytes.

Each block class is costed once per call of `cost_of` (memoized by class and by the
run-time block params its instances keep), so a 48-layer stack of one class costs one
class walk plus a multiply. A run-time count that reads values kept on instances (a
layer's schedule onset) or loop indices is evaluated per instance, at the model's params
(the training `step` included) as bound.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import scalar
from ..ir import (BlockDef, BlockInst, Graph, Group, Leaf, Module, Node, Program, Stack,
                  param_env, resolve, trip_count, walk)
from ..ops.prims import PRIMS, FlopInput, per_token
from ..passes import kvplan
from .live import live_program
from ..param_count import applied_numel
from ..scan import plan_scan

FLOAT_BYTES = 4  # activations, caches and parameters are float32

def kv_bytes(node: Node) -> int:
    """KV-cache bytes per token that one application of `node` keeps for decoding.

    The kv plan decides which nodes own a cache slot (`Prim.owns_slot`: a `kv_cache`
    node where an attention keeps its own keys and values, or an attention that fills its
    cache from its block's output); an attention that reads another layer's K/V owns
    none. A slot holds float32 k and v of the slot's layout: 2 * kv_heads * head_dim * 4
    bytes per token. A loop's slots are counted at the loop's *bound* (a run-time count's
    max), since `new_cache` sizes them for every iteration that can run.
    """
    if not kvplan.owns_slot(node):
        return 0
    heads, head_dim = kvplan.slot_layout(node)
    return 2 * FLOAT_BYTES * heads * head_dim


@dataclass(frozen=True)
class Cost:
    """The cost report of one spec at one binding of its params."""

    model: str
    seq: int
    batch: int
    params: int  # unique parameters (what module.parameters() holds)
    params_applied: int  # parameters read by one forward (a loop of r counts r times)
    flops_per_token: int  # forward matmul FLOPs per token at `seq`
    vector_flops_per_token: int  # estimated elementwise/reduction FLOPs per token
    kv_bytes_per_token: int  # KV cache bytes per token for incremental decoding
    activation_bytes: int  # training activations at `batch` x `seq` (module docstring)
    bindings: dict[str, Any] = field(default_factory=dict)  # the bound params
    rows: tuple[tuple[str, int, int, int], ...] = ()  # instance, unique, applied, flops/token
    uncounted: tuple[str, ...] = ()  # ops with no FLOP rule (counted as 0)

    @property
    def flops(self) -> int:
        """Forward matmul FLOPs of one batch of `batch` x `seq` tokens."""
        return self.flops_per_token * self.seq * self.batch

    @property
    def kv_bytes(self) -> int:
        """KV-cache bytes for `batch` sequences of `seq` tokens."""
        return self.kv_bytes_per_token * self.seq * self.batch

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows"] = [dict(zip(("instance", "params", "params_applied", "flops_per_token"),
                                r)) for r in self.rows]
        out["uncounted"] = list(self.uncounted)
        out["flops"] = self.flops
        out["kv_bytes"] = self.kv_bytes
        return out

    def to_json(self) -> str:
        """The report as one JSON object (a string), keys in a fixed order."""
        return json.dumps(self.to_dict(), indent=2)


@dataclass
class _Tally:
    """Sums for one application of a graph, per token."""

    matmul: int = 0
    vector: int = 0
    kv: int = 0
    act: int = 0
    applied: int = 0

    def add(self, other: "_Tally", times: int = 1, bound: int | None = None) -> None:
        """Add `other` applied `times` times; caches are sized for `bound` applications."""
        self.matmul += times * other.matmul
        self.vector += times * other.vector
        self.kv += (times if bound is None else bound) * other.kv
        self.act += times * other.act
        self.applied += times * other.applied


class _Walker:
    def __init__(self, program: Program, seq: int):
        self.program = program
        self.classes = program.classes
        self.seq = seq
        self.params = param_env(program)
        self.class_tally: dict[tuple, _Tally] = {}
        self.class_numel: dict[str, int] = {}
        self.uncounted: set[str] = set()

    # ------------------------------------------------------------------ parameters

    def numel(self, module: Module | None) -> int:
        if module is None:
            return 0
        if isinstance(module, Leaf):
            return module.numel
        if isinstance(module, Group):
            return sum(self.numel(m) for _, m in module.children)
        if isinstance(module, Stack):
            return sum(self.numel(m) for m in module.items)
        if isinstance(module, BlockInst):
            cached = self.class_numel.get(module.cls)
            if cached is None:
                cached = sum(self.numel(m) for _, m in self.classes[module.cls].modules)
                self.class_numel[module.cls] = cached
            return cached
        raise AssertionError(module)

    # ------------------------------------------------------------------ graphs
    # `attrs` are the run-time block params of the instance being walked (the values it
    # keeps, such as a layer's schedule onset) and `index` the loop indices known so far:
    # run-time loop counts are evaluated with them, the model's params at their values.

    def block(self, cls: str, attrs: dict[str, Any]) -> _Tally:
        key = (cls, tuple(sorted(attrs.items())))
        cached = self.class_tally.get(key)
        if cached is None:
            block = self.classes[cls]
            cached = self.graph(block, block.graph, attrs, {})
            if any(n.op == "scan_attend" for n in block.graph.nodes):
                # Run as a scan: the keys of each position are computed again from the
                # block's output there, through the same norm and k/v projections.
                keys = plan_scan(block).keys
                for node in keys.nodes:
                    t = self.op(block, keys, node, attrs, {})
                    cached.matmul += t.matmul
                    cached.vector += t.vector
                    cached.applied += t.applied
                cached.act += self.saved(block, keys)
            self.class_tally[key] = cached
        return cached

    def graph(self, block: BlockDef, graph: Graph, attrs: dict, index: dict,
              rows: dict | None = None, times: int = 1, bound: int = 1) -> _Tally:
        """One application of a graph. With `rows` (the root graph), also credit each op,
        `times` applied (caches sized for `bound`), to the top-level instance it calls."""
        total = _Tally()
        for node in graph.nodes:
            if node.op == "loop":
                total.add(*self.loop(block, node, attrs, index, rows, times, bound))
                continue
            t = self.op(block, graph, node, attrs, index)
            total.add(t)
            if rows is not None:
                top = node.ref.path[0][0] if node.ref is not None else None
                rows.get(top, rows[None]).add(t, times, bound)
        total.act += self.saved(block, graph)
        return total

    def loop(self, block: BlockDef, node: Node, attrs: dict, index: dict, rows, times: int,
             bound: int) -> tuple[_Tally, int, int]:
        """A loop's body tally, how many times it runs, and how many times it can run."""
        count = node.loop.count
        n, most = self.count(count, attrs, index), count.bound
        var = node.loop.var
        if not self.needs_index(node.body, var):
            return self.graph(block, node.body, attrs, index, rows, times * n,
                              bound * most), n, most
        # The body calls per-iteration instances that keep different values (or counts read
        # the index): walk each iteration.
        total = _Tally()
        for k in range(max(n, most)):
            runs, kept = int(k < n), int(k < most)
            t = self.graph(block, node.body, attrs, {**index, var: k}, rows, times * runs,
                           bound * kept)
            total.add(t, runs, kept)
        return total, 1, 1

    def count(self, count, attrs: dict, index: dict) -> int:
        """A loop's trip count, as the generated module computes it."""
        return trip_count(count, {**self.params, **attrs, **index})

    def needs_index(self, body: Graph, var: str | None) -> bool:
        if var is None:
            return False
        for node in walk(body):
            if node.op == "call" and getattr(self.classes[node.call.cls], "attrs", ()) \
                    and node.ref is not None and any(i == var for _, i in node.ref.path):
                return True
            expr = getattr(node.loop.count, "expr", None) if node.op == "loop" else None
            if expr is not None and var in scalar.free(expr, "var"):
                return True
        return False

    def instance_attrs(self, block: BlockDef, node: Node, index: dict) -> dict[str, Any]:
        """The run-time block params a call's instance keeps (empty for most classes)."""
        if not getattr(self.classes[node.call.cls], "attrs", ()) or node.ref is None:
            return {}
        ref = node.ref
        for var, k in index.items():
            ref = ref.substitute(var, k)
        inst = resolve(block, ref, self.classes)
        out = {}
        for name, value in getattr(inst, "args", ()):
            if isinstance(value, tuple):
                try:
                    value = scalar.evaluate(value, {**self.params, **index})
                except (KeyError, TypeError, ValueError, OverflowError):
                    continue
            out[name] = value
        return out

    def saved(self, block: BlockDef, graph: Graph) -> int:
        """Activation elements per token kept by this graph's own ops (not by its loop
        bodies or callees, which their tallies hold): each kept value once."""
        kept: dict[str, int] = {}
        extra = 0
        for node in graph.nodes:
            if node.op in ("loop", "call"):
                continue
            prim = PRIMS[node.op]
            slots = prim.saved if prim.saved is not None else ("out",)
            values: list[str] = []
            for slot in slots:
                if slot == "out":
                    values.extend(node.outs)
                elif slot == "*":
                    values.extend(node.inputs)
                elif slot < len(node.inputs):
                    values.append(node.inputs[slot])
            for v in values:
                t = graph.types.get(v)
                if t is not None and t.dtype == "float":
                    kept[v] = per_token(t)
            if prim.saved_extra is not None:
                ins = tuple(graph.types[i] for i in node.inputs)
                module = resolve(block, node.ref, self.classes) if node.ref is not None else None
                extra += prim.saved_extra(FlopInput(ins, node.types, dict(node.attrs), module,
                                                    self.seq))
        return sum(kept.values()) + extra

    def op(self, block: BlockDef, graph: Graph, node: Node, attrs: dict, index: dict) -> _Tally:
        """The tally of one application of a primitive or a block call."""
        if node.op == "call":
            return self.block(node.call.cls, self.instance_attrs(block, node, index))
        t = _Tally()
        module = resolve(block, node.ref, self.classes) if node.ref is not None else None
        t.applied = self.numel(module) if node.op != "head_loop" else \
            applied_numel(node, module, self.classes)
        ins = tuple(graph.types[i] for i in node.inputs)
        prim = PRIMS.get(node.op)
        if prim is None or prim.flops is None:
            self.uncounted.add(node.op)
        else:
            f = prim.flops(FlopInput(ins, node.types, dict(node.attrs), module, self.seq))
            t.matmul, t.vector = f.matmul, f.vector
        t.kv = kv_bytes(node)
        return t


def cost_of(program: Program, seq: int = 2048, batch: int = 1) -> Cost:
    """The cost of an elaborated program (see the module docstring for what is counted)."""
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"seq must be a positive int, got {seq!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    program = live_program(program)
    w = _Walker(program, seq)
    root = program.model
    rows: dict[str | None, _Tally] = {name: _Tally() for name, _ in root.modules}
    rows[None] = other = _Tally()
    total = w.graph(root, root.graph, {}, {}, rows)
    unique = sum(w.numel(m) for _, m in root.modules)
    table = [(name, w.numel(m), rows[name].applied, rows[name].matmul)
             for name, m in root.modules]
    if other.matmul or other.applied:
        table.append(("(no instance)", 0, other.applied, other.matmul))
    return Cost(
        model=program.name, seq=seq, batch=batch, params=unique,
        params_applied=total.applied, flops_per_token=total.matmul,
        vector_flops_per_token=total.vector, kv_bytes_per_token=total.kv,
        activation_bytes=FLOAT_BYTES * total.act * seq * batch,
        bindings={p.name: p.value for p in program.params.values()},
        rows=tuple(table), uncounted=tuple(sorted(w.uncounted)))

