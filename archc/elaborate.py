"""Elaborate a parsed spec into the IR.

Elaboration binds the model params, evaluates static expressions (a small pure language:
nothing in a spec ever reaches Python eval/exec), expands spec ops into IR primitives,
makes one class per block specialization, and turns `for`/`loop` into regions:

- `for` is unrolled in meaning (distinct weights per iteration). Its body is elaborated
  once per iteration; when every iteration gives the same graph, the region stays rolled
  (`for layer in self.layers`), otherwise the iterations are spliced in one after another.
- `loop` is a recurrence with shared weights. Its body is elaborated once with the index
  as a run-time value; instances made inside it are one per iteration (stacked).

Weights live where an instance is made: an inline call `rmsnorm(x)` makes one at the call
site, `let n = rmsnorm()` names one so later calls share it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from . import limits, loopvars, names, scalar, syntax as S
from .errors import ArchcError, Span, fail
from .init import DEFAULT_STD, choices_hint, resolve_residual, weight_init, zero_bias
from .ir import (TOKENS, BlockDef, broadcast, BlockInst, Count, Graph, Group, Leaf, Module, Node,
                 ParamInfo, Program, Ref, Stack, TensorType, Weight, act)
from .analysis.scan import plan_scan
from .ops import ADAPTERS, OPS
from .ops.library import LoraAttrs, lora_scale, suggest
from .identity.record import SpecOps, record_application


@dataclass
class Budget:
    """Limits checked before anything is allocated (a NAS loop may sample huge specs)."""

    max_nodes: int = 200_000
    max_params: int = 20_000_000_000
    max_bytes: int | None = None  # for archc.build's weights; None: the memory available
    # Ops elaborated one by one (repeats of a uniform stack or of a block class are not
    # elaborated again): about 10 µs each here, so every check within budget takes < 5 s.
    max_built: int = 20_000
    # Spec text, checked before parsing: lark parses about 4,000 statements a second here,
    # so this keeps every check within the budget under 5 s; written specs are a few KiB
    # (depth comes from `for` and `loop`, not from copied lines).
    max_source_bytes: int = 128 * 1024


BUDGET_HINT = ("lower the depth, or raise the budget: `--max-nodes N` on the command line, "
               "`archc.load(spec, budget=archc.Budget(max_nodes=N))` in Python")


# ----------------------------------------------------------------------------- values


@dataclass
class TensorVal:
    id: str
    type: TensorType
    level: int
    span: Span | None = None
    fields: dict[str, "TensorVal"] = field(default_factory=dict)


@dataclass
class Returned:
    """What `return x, v=a.v` hands back: the value and its named outputs."""

    value: TensorVal
    named: dict[str, TensorVal]


@dataclass
class DepthFrame:
    """The values one iteration of a `for` stack bound, reachable as layers[j].name."""

    label: str
    index: int
    values: dict[str, Any]


@dataclass
class DepthStack:
    """A `for` stack's label: indexing it by depth gives the iterations done so far."""

    label: str
    frames: list[DepthFrame]
    span: Span | None
    body: tuple = ()


@dataclass
class RuntimeScalar:
    """A number known only at run time: a loop index, a run-time param, a block's
    run-time param, or arithmetic and schedules over them (archc.scalar trees)."""

    tree: tuple


@dataclass
class RuntimeParam:
    name: str
    default: int
    span: Span | None


@dataclass
class InstState:
    """What the first call of an instance decided; shared by every way of reaching it."""

    module: Module | None = None
    first_call: Span | None = None
    adapted_at: Span | None = None


@dataclass(frozen=True)
class Inst:
    """A named instance: weights made once, shared by every call."""

    name: str
    template: str
    kwargs: dict[str, Any]
    kwarg_spans: dict[str, Span]
    scope: "ModuleScope"
    ref: Ref
    span: Span | None
    loop_depth: int
    index: int | None = None  # position in an instance array
    state: InstState = field(default_factory=InstState)


@dataclass
class InstArray:
    name: str
    items: list[Inst]
    span: Span | None


@dataclass
class AdaptCfg:
    """Per-iteration adapters of an instance called inside a loop."""

    var: str
    count: int
    lora: LoraAttrs | None
    untie: tuple[str, ...]
    span: Span | None

    def key(self):
        return (self.count, self.lora, self.untie)


# ----------------------------------------------------------------------------- scopes


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


# ----------------------------------------------------------------------------- elaborator


class Elaborator:
    def __init__(self, model: S.Model, params: dict[str, Any], budget: Budget,
                 param_spans: dict[str, Span] | None = None):
        self.model = model
        self.budget = budget
        self.blocks: dict[str, S.Block] = {}
        self.classes: dict[str, BlockDef] = {}
        self.class_keys: dict[Any, str] = {}
        self.class_names: set[str] = set()
        self.block_stack: list[tuple[str, Span | None]] = []
        self.nodes = 0  # ops of the model, every iteration counted (the size budget)
        self.built = 0  # ops actually elaborated (the work budget)
        self.class_sizes: dict[str, int] = {}  # ops one call of a class stands for
        self.rope: dict[tuple[int, float], str] = {}
        self.globals: dict[str, Any] = {}
        self.param_info: dict[str, ParamInfo] = {}
        self.spec_ops = SpecOps()  # each op application, for the architecture hash
        self._register_blocks()
        self._bind_params(params, param_spans or {})

    # -------------------------------------------------------------- declarations

    def _register_blocks(self) -> None:
        for b in self.model.blocks:
            names.check(b.name, b.name_span, "block")
            if b.name in self.blocks:
                fail(f"duplicate block `{b.name}`", b.name_span, "rename one of them",
                     code="A011", labels=[(self.blocks[b.name].name_span, "first defined here")])
            if b.name in OPS:
                fail(f"block `{b.name}` has the name of a built-in op", b.name_span,
                     f"rename it, e.g. `{b.name}_block`", code="A011")
            self.blocks[b.name] = b

    def _bind_params(self, overrides: dict[str, Any], override_spans: dict[str, Span]) -> None:
        declared = {p.name for p in self.model.params}
        for name in overrides:
            if name not in declared:
                close = suggest(name, declared)
                fail(f"the model has no param `{name}`",
                     override_spans.get(name, self.model.span),
                     f"did you mean `{close}`?" if close else
                     f"declared params: {', '.join(sorted(declared)) or 'none'}", code="A020")
        env = Env(None, 0)
        for p in self.model.params:
            names.check(p.name, p.span, "model param")
            if p.name in env.vars:
                fail(f"duplicate param `{p.name}`", p.span, "rename one of them", code="A011")
            if p.name in self.blocks or p.name in OPS:
                fail(f"param `{p.name}` has the name of a block or op", p.span,
                     "rename the param", code="A011")
            if p.default is None:
                fail(f"param `{p.name}` needs a default", p.span,
                     f"write `{p.name}: {p.type} = ...`", code="A021")
            default = self.static(p.default, env, f"the default of `{p.name}`")
            _coerce(default, p.type, p.name, p.default.span)
            given = p.name in overrides
            value = overrides.get(p.name, default)
            span = override_spans.get(p.name, p.span if given else p.default.span)
            where = " (as given)" if given else ""
            value = _coerce(value, p.type, p.name, span, where)
            domain = self._domain(p, env)
            if domain is not None and not _in_domain(value, domain):
                fail(f"{p.name} = {_show(value)}{where} is outside its domain "
                     f"{_show_domain(domain)}", span,
                     f"pick a value in {_show_domain(domain)}", code="A022")
            if p.runtime:
                names.check_runtime_param(p.name, p.span)
            if p.runtime and p.type != "int":
                fail(f"run-time param `{p.name}` must be an int", p.span,
                     "only loop counts can be chosen at run time", code="A023")
            self.param_info[p.name] = ParamInfo(name=p.name, type=p.type, default=default,
                                                value=value, domain=_jsonable(domain),
                                                runtime=p.runtime,
                                                domain_text=_show_domain(domain)
                                                if domain is not None else None)
            env.set(p.name, RuntimeParam(p.name, value, p.span) if p.runtime else value, p.span)
        self.globals = dict(env.vars)

    def _domain(self, p: S.Param, env: Env):
        if p.domain is None:
            return None
        if isinstance(p.domain, tuple):
            return tuple(self.static(e, env, "a domain value") for e in p.domain)
        if not isinstance(p.domain, S.Range):
            fail("a domain is a range `lo..hi` / `lo..=hi` or a set `{a, b}`", p.domain.span,
                 "e.g. `d: int = 64 in {32, 64}` or `r: int = 4 in 1..=32`", code="A022")
        if p.type not in ("int", "float"):
            fail(f"a range domain needs an int or float param; `{p.name}` is a {p.type}",
                 p.domain.span, "list the values instead: `in {a, b}`", code="A022")
        lo = _number(self.static(p.domain.lo, env, "a domain bound"), p.domain.lo.span)
        hi = _number(self.static(p.domain.hi, env, "a domain bound"), p.domain.hi.span)
        return ("range", lo, hi, p.domain.inclusive)

    # -------------------------------------------------------------- entry

    def run(self) -> Program:
        cls = _camel(self.model.name)
        self.class_names.add(cls)
        cb = ClassBuilder(self, cls, self.model.name, None, self.model.span)
        env = cb.root_env(self.globals)
        tok = cb.input("tokens", TOKENS)
        env.set("tokens", tok)
        cb.ast = self.model.body
        out = cb.body(self.model.body, env)
        if isinstance(out, Returned):
            if out.named:
                fail("named outputs are for blocks; the model returns one tensor",
                     self.model.span, "return the logits only", code="A030")
            out = out.value
        if out is None:
            fail("the model computes nothing", self.model.span,
                 "end the model with `return logits`", code="A030")
        block = cb.finish([out], inputs=(("tokens", TOKENS),))
        for node in block.graph.nodes:
            if node.op == "attend" and node.attr("past") == "output":
                fail("an attention over its own past output belongs in a block", node.span,
                     "the block's output feeds the keys; write it as `block layer(x)`",
                     code="A015")
        self.classes[cls] = block
        program = Program(name=self.model.name, file=self.model.span.file if self.model.span
                          else "<spec>", params=self.param_info, classes=self.classes,
                          root=cls, rope=tuple(sorted(self.rope)), spec_ops=self.spec_ops)
        program = resolve_residual(program)  # residual projections' std from the depth
        self._check_params(program)
        return program

    def _check_params(self, program: Program) -> None:
        from .analysis.params import unique_params

        total = unique_params(program)
        if total > self.budget.max_params:
            fail(f"the model has {total:,} parameters, over the budget of "
                 f"{self.budget.max_params:,}", self.model.span,
                 "lower the widths or depth, or raise the budget (--max-params)", code="A040")

    # -------------------------------------------------------------- static evaluation

    def static(self, expr: S.Expr, env: Env, what: str = "this") -> Any:
        value = self.eval_static(expr, env)
        if isinstance(value, (RuntimeParam, RuntimeScalar)):
            fail(f"{what} must be known when the model is built, but it depends on a "
                 "run-time value", expr.span,
                 "run-time params, schedules and loop indices can only set loop counts and "
                 "scales", code="A023")
        return value

    @limits.elaboration_guard
    def eval_static(self, e: S.Expr, env: Env) -> Any:
        """Evaluate an expression that involves no tensors."""
        if isinstance(e, S.Num):
            return e.value
        if isinstance(e, (S.Str, S.Bool)):
            return e.value
        if isinstance(e, S.Name):
            found = env.find(e.id)
            if found is None:
                self._unknown(e, env)
            value = found[0]
            if isinstance(value, (TensorVal, Inst, InstArray)):
                fail(f"`{e.id}` is a tensor or instance, but a static value is needed here",
                     e.span, "widths, counts and options must be numbers", code="A031")
            return value
        if isinstance(e, (S.TupleLit, S.ListLit)):
            return tuple(self.eval_static(x, env) for x in e.items)
        if isinstance(e, S.Neg):
            v = self.eval_static(e.value, env)
            if isinstance(v, (RuntimeParam, RuntimeScalar)):
                return RuntimeScalar(limits.check_scalar(("neg", _tree(v)), e.span))
            return -_number(v, e.value.span)
        if isinstance(e, S.Not):
            return not _boolean(self.eval_static(e.value, env), e.value.span)
        if isinstance(e, S.Logic):
            vals = [_boolean(self.eval_static(x, env), x.span) for x in e.items]
            return all(vals) if e.op == "and" else any(vals)
        if isinstance(e, S.Compare):
            return _compare(e, self.eval_static(e.left, env), self.eval_static(e.right, env))
        if isinstance(e, S.BinOp):
            return _arith(e, self.eval_static(e.left, env), self.eval_static(e.right, env))
        if isinstance(e, S.Range):
            lo = self.eval_static(e.lo, env)
            hi = self.eval_static(e.hi, env)
            for v, s in ((lo, e.lo.span), (hi, e.hi.span)):
                if not isinstance(v, int) or isinstance(v, bool):
                    fail(f"a range bound must be an int, got {_show(v)}", s,
                         "ranges count whole steps: `0..n`", code="A031")
            stop = hi + 1 if e.inclusive else hi
            if stop - lo > self.budget.max_nodes:
                fail(f"the range {lo}..{hi} has {stop - lo:,} items, over the size budget",
                     e.span, "is a bound wrong? the budget is --max-nodes", code="A040")
            return tuple(range(lo, stop))
        if isinstance(e, S.Index):
            seq = self.eval_static(e.value, env)
            idx = self.eval_static(e.index, env)
            return _index(seq, idx, e)
        if isinstance(e, S.Attr):
            fail(f"static values have no field `{e.name}`", e.span,
                 "fields such as `a.q` belong to tensors made by ops", code="A031")
        if isinstance(e, S.Call):
            if isinstance(e.func, S.Name) and e.func.id in _SCHEDULES:
                return self._schedule(e, env)
            return self._builtin(e, env)
        raise AssertionError(e)

    def _schedule(self, e: S.Call, env: Env) -> "RuntimeScalar":
        """after(onset) and ramp(start, end): values of the training step;
        training(a, b): a while training, b in eval (an explicit inference form)."""
        if e.func.id == "training":
            if len(e.args) != 2 or e.kwargs:
                fail("training() takes the training value and the inference value", e.span,
                     "e.g. training(ramp(0, 1000), 1.0)", code="A032")
            a, b = (self.eval_static(x, env) for x in e.args)
            for v, arg in ((a, e.args[0]), (b, e.args[1])):
                if not _runtime(v):
                    _number(v, arg.span)
            return RuntimeScalar(limits.check_scalar(scalar.training(_tree(a), _tree(b)),
                                                     e.span))
        step = self.globals.get("step")
        if not isinstance(step, RuntimeParam):
            fail(f"{e.func.id}() reads the training step, which this model does not declare",
                 e.span, "add `step: int = 0 runtime` to the model's params; "
                 "model.set_step(n) sets it", code="A025")
        arity = _SCHEDULES[e.func.id]
        if len(e.args) != arity or e.kwargs:
            fail(f"{e.func.id}() takes {arity} positional argument(s)", e.span,
                 "after(onset) or ramp(start, end), in steps", code="A032")
        args = [self.eval_static(a, env) for a in e.args]
        for a, arg in zip(args, e.args):
            if not _runtime(a):
                _number(a, arg.span)
            elif "step" in scalar.free(_tree(a), "param"):
                fail(f"{e.func.id}() takes step counts, not the training step itself",
                     arg.span, "e.g. ramp(1000, 2000) or after(onset)", code="A031")
        if e.func.id == "ramp" and _tree(args[0]) == _tree(args[1]):
            fail("this ramp ends where it starts", e.span,
                 "ramp(start, end) rises from 0 at `start` to 1 at `end`: end > start; "
                 "after(onset) is the step from 0 to 1", code="A031")
        if e.func.id == "after":
            tree = scalar.after(("param", "step"), _tree(args[0]))
        else:
            if not any(_runtime(a) for a in args) and args[1] <= args[0]:
                fail(f"ramp({_show(args[0])}, {_show(args[1])}) ends where it starts", e.span,
                     "ramp(start, end) rises from 0 at `start` to 1 at `end`: end > start; "
                     "after(onset) is the step from 0 to 1", code="A031")
            tree = scalar.ramp(("param", "step"), _tree(args[0]), _tree(args[1]))
        return RuntimeScalar(limits.check_scalar(tree, e.span))

    def default_of(self, tree: tuple, bound: int) -> int:
        """A run-time count at the params' current values (the bound if it reads values
        kept on instances or loop indices)."""
        env = {name: (p.value if not isinstance(p.value, bool) else int(p.value))
               for name, p in self.param_info.items()}
        try:
            value = int(scalar.evaluate(tree, env))
        except (KeyError, TypeError, ValueError, OverflowError):
            return bound
        return max(0, min(value, bound))

    def _builtin(self, e: S.Call, env: Env) -> Any:
        if not isinstance(e.func, S.Name) or e.func.id not in _BUILTINS:
            what = e.func.id if isinstance(e.func, S.Name) else "this"
            fail(f"`{what}` makes a tensor, but a static value is needed here", e.span,
                 "static expressions use numbers and min, max, len, abs, int, float, sqrt",
                 code="A031")
        if e.kwargs:
            fail(f"{e.func.id}() takes no keyword arguments", e.kwargs[0].span,
                 f"write {e.func.id}(a, b)", code="A032")
        args = [self.eval_static(a, env) for a in e.args]
        fn, arity = _BUILTINS[e.func.id]
        if arity is not None and len(args) != arity:
            fail(f"{e.func.id}() takes {arity} argument(s), got {len(args)}", e.span,
                 f"write {e.func.id}(x)", code="A032")
        try:
            value = fn(*args)
        except (TypeError, ValueError, OverflowError) as err:
            fail(f"{e.func.id}(): {err}", e.span, "check the argument's value", code="A031")
        if isinstance(value, int) and abs(value) >= _MAX_INT:
            fail("this number is too large", e.span, "static numbers fit in 64 bits",
                 code="A031")
        return value

    def _unknown(self, e: S.Name, env: Env):
        known: set[str] = set(self.blocks) | set(OPS) | set(_BUILTINS)
        scope = env
        while scope is not None:
            known |= set(scope.vars)
            scope = scope.parent
        close = suggest(e.id, known)
        fail(f"unknown name `{e.id}`", e.span,
             f"did you mean `{close}`?" if close else "define it before this line",
             code="A012")

    # -------------------------------------------------------------- blocks

    def block_class(self, block: S.Block, kwargs: dict[str, Any], inputs: list[TensorVal],
                    adapt: AdaptCfg | None, span: Span | None) -> tuple[str, TensorType]:
        """The class for one specialization of a block; elaborated once and memoized.
        Run-time block params are not part of it: they live on each instance."""
        runtime = {p.name for p in block.params if p.runtime}
        kwargs = {k: v for k, v in kwargs.items() if k not in runtime}
        _check_block_kwargs(block, kwargs, span)
        key = (block.name, tuple(sorted(kwargs.items())), tuple(x.type for x in inputs),
               adapt.key() if adapt else None)
        if key in self.class_keys:
            cls = self.class_keys[key]
            return cls, self.classes[cls].graph.types[self.classes[cls].graph.outputs[0]]
        for name, at in self.block_stack:
            if name == block.name:
                fail(f"block `{block.name}` calls itself", span,
                     "blocks cannot recurse; use `for` or `loop` for depth", code="A033",
                     labels=[(block.name_span, "defined here")])
        if len(self.block_stack) >= limits.MAX_BLOCK_DEPTH:
            fail(f"block calls nested deeper than {limits.MAX_BLOCK_DEPTH} levels", span,
                 "a chain of blocks calling blocks this deep is a stack: write it as a "
                 "`for` over one block", code="A041")
        self.block_stack.append((block.name, span))
        before = self.nodes
        try:
            cls = self._class_name(block.name)
            cb = ClassBuilder(self, cls, block.name, adapt, block.span)
            env = cb.root_env(self.globals)
            self._bind_block_params(block, kwargs, env)
            graph_inputs = []
            for inp, x in zip(block.inputs, inputs):
                names.check(inp.name, inp.span, "input")
                graph_inputs.append((inp.name, x.type))
                env.set(inp.name, cb.input(inp.name, x.type), inp.span)
            cb.ast = block.body
            out = cb.body(block.body, env)
            if out is None:
                fail(f"block `{block.name}` computes nothing", block.name_span,
                     "end it with `return x`", code="A030")
            if not isinstance(out, (TensorVal, Returned)):
                fail(f"block `{block.name}` must return one tensor", block.name_span,
                     "end it with `return x`", code="A030")
            if adapt is not None:
                cb.check_adapters(adapt)
            named = out.named if isinstance(out, Returned) else {}
            out = out.value if isinstance(out, Returned) else out
            self.classes[cls] = cb.finish([out] + list(named.values()), tuple(graph_inputs),
                                          tuple(named))
            self.classes[cls] = self.classes[cls].model_copy(
                update={"attrs": tuple(p.name for p in block.params if p.runtime)})
            plan_scan(self.classes[cls])  # checks a block that reads its own past output
        finally:
            self.block_stack.pop()
        self.class_keys[key] = cls
        self.class_sizes[cls] = self.nodes - before
        return cls, out.type

    def _bind_block_params(self, block: S.Block, kwargs: dict[str, Any], env: Env) -> None:
        declared = {p.name for p in block.params}
        for p in block.params:
            names.check(p.name, p.span, "param")
            if p.runtime:
                if p.type not in ("int", "float"):
                    fail(f"run-time block param `{p.name}` must be an int or a float", p.span,
                         "it is a number kept on each instance, for schedules", code="A023")
                env.set(p.name, RuntimeScalar(("attr", p.name)), p.span)
                continue
            if p.name in kwargs:
                value = kwargs[p.name]
            elif p.default is not None:
                value = self.static(p.default, env, f"the default of `{p.name}`")
            else:
                fail(f"block `{block.name}` needs `{p.name}=`", p.span,
                     f"give it a default (`{p.name}: {p.type} = ...`) or pass it at the "
                     "call", code="A032")
            env.set(p.name, _coerce(value, p.type, p.name, p.span), p.span)
        for k in kwargs:
            if k not in declared:
                close = suggest(k, declared)
                fail(f"block `{block.name}` has no param `{k}`", block.name_span,
                     f"did you mean `{close}`?" if close else
                     f"its params: {', '.join(sorted(declared)) or 'none'}", code="A032")

    def _class_name(self, block: str) -> str:
        base = _camel(block)
        name, n = base, 1
        while name in self.class_names:
            n += 1
            name = f"{base}{n}"
        self.class_names.add(name)
        return name

    def count_node(self, span: Span | None) -> None:
        self.nodes += 1
        self.built += 1
        if self.nodes > self.budget.max_nodes:
            fail(f"the model has more than {self.budget.max_nodes:,} ops, over the size budget",
                 span, BUDGET_HINT, code="A040")
        if self.built > self.budget.max_built:
            fail(f"elaborating the spec builds more than {self.budget.max_built:,} ops one by "
                 "one, over the work budget", span,
                 "a stack whose iterations differ (its body reads the index, or a depth "
                 "reference) is built iteration by iteration; make the layers alike so it is "
                 "built once, lower the depth, or raise `archc.Budget(max_built=N)`",
                 code="A040")

    def count_repeats(self, times: int, ops: int, span: Span | None, what: str) -> None:
        """Count `times` more runs of `ops` ops elaborated once (the other iterations of a
        stack, another call of a block class), so nested stacks count at their full size,
        the product of their trip counts, and are refused before any of it is built."""
        self.nodes += max(times, 0) * ops
        if self.nodes > self.budget.max_nodes:
            fail(f"{what} brings the model to {self.nodes:,} ops, over the size budget "
                 f"of {self.budget.max_nodes:,}", span, BUDGET_HINT, code="A040")


# ----------------------------------------------------------------------------- one class


class ClassBuilder:
    """Elaborates the body of one block specialization (or the root) into a BlockDef."""

    def __init__(self, el: Elaborator, cls: str, name: str, adapt: AdaptCfg | None,
                 span: Span | None):
        self.el = el
        self.cls = cls
        self.name = name
        self.adapt = adapt
        self.span = span
        self.root_scope = ModuleScope(None, {"lora"} if adapt and adapt.lora else set())
        self.scope = self.root_scope
        self.gb = GraphBuilder(0, None)
        self.loops: list[LoopFrame] = []
        self.scope_stack: list[ModuleScope] = []
        self.lora: dict[str, Leaf] = {}
        self.lora_hits: set[str] = set()
        self.untie_hits: set[str] = set()
        self.ids = 0
        self.ast: tuple = ()  # the statements of this class, for depth-reference scans

    # values ----------------------------------------------------------------

    def root_env(self, globals_: dict[str, Any]) -> Env:
        top = Env(None, 0)
        top.vars.update(globals_)
        return Env(top, 0)

    def input(self, name: str, t: TensorType) -> TensorVal:
        vid = self.fresh(name)
        self.gb.graph.inputs.append((vid, t))
        self.gb.graph.types[vid] = t
        self.gb.graph.names[vid] = name
        return TensorVal(vid, t, self.gb.level)

    def fresh(self, hint: str = "v") -> str:
        self.ids += 1
        return f"%{self.ids}"

    def emit(self, op: str, inputs: list[TensorVal], types: list[TensorType], attrs=None,
             ref: Ref | None = None, span: Span | None = None, hint: str = "",
             body: Graph | None = None) -> list[TensorVal]:
        self.el.count_node(span)
        args = [self.capture(x) for x in inputs]
        outs = [self.fresh() for _ in types]
        node = Node(op=op, outs=tuple(outs), types=tuple(types), inputs=tuple(a.id for a in args),
                    attrs=tuple(sorted((attrs or {}).items())), ref=ref, span=span, hint=hint,
                    body=body)
        self.gb.graph.add(node)
        return [TensorVal(o, t, self.gb.level, span) for o, t in zip(outs, types)]

    def capture(self, x: TensorVal) -> TensorVal:
        """Make an outer value available in the current region body (closed graphs)."""
        if x.level == self.gb.level:
            return x
        chain = []
        gb = self.gb
        while gb.level > x.level:
            chain.append(gb)
            gb = gb.outer
        value = x
        for body in reversed(chain):
            if value.id not in body.captures:
                vid = self.fresh()
                body.captures[value.id] = vid
                body.graph.inputs.append((vid, value.type))
                body.graph.types[vid] = value.type
            value = TensorVal(body.captures[value.id], value.type, body.level, value.span,
                              value.fields)
        return value

    # statements --------------------------------------------------------------

    def body(self, stmts, env: Env) -> Any:
        """Run statements; return the value of `return`, else the last assigned tensor."""
        self._reserve_lets(stmts)
        last = None
        for st in stmts:
            result = self.stmt(st, env)
            if isinstance(result, Returned):
                return result
            if isinstance(result, TensorVal):
                last = result
        return last

    def _reserve_lets(self, stmts) -> None:
        for st in stmts:
            if isinstance(st, S.Let):
                self.scope.reserved.add(st.name)

    @limits.elaboration_guard
    def stmt(self, st, env: Env) -> Any:
        if isinstance(st, S.Assign):
            names.check(st.target, st.target_span, "value")
            value = self.expr(st.value, env, st.with_)
            self._bind(env, st.target, value, st.target_span)
            return value if isinstance(value, TensorVal) else None
        if isinstance(st, S.Unpack):
            value = self.expr(st.value, env)
            if not isinstance(value, tuple) or len(value) != len(st.targets):
                n = len(value) if isinstance(value, tuple) else 1
                fail(f"cannot unpack {n} value(s) into {len(st.targets)} names", st.span,
                     "the number of names must match, e.g. `a, b = split(x, 2)`", code="A031")
            for name, v in zip(st.targets, value):
                names.check(name, st.span, "value")
                self._bind(env, name, v, st.span)
            return value[-1] if isinstance(value[-1], TensorVal) else None
        if isinstance(st, S.Let):
            self.let(st, env)
            return None
        if isinstance(st, S.For):
            return self.for_(st, env)
        if isinstance(st, S.Loop):
            return self.loop(st, env)
        if isinstance(st, S.If):
            cond = self.el.static(st.cond, env, "an `if` condition")
            branch = st.then if _boolean(cond, st.cond.span) else st.orelse
            return self.body(branch, env) if branch else None
        if isinstance(st, S.Return):
            value = self.expr(st.value, env, st.with_)
            if not isinstance(value, TensorVal):
                fail("`return` needs a tensor", st.value.span,
                     "return the value a block or model computes, e.g. `return x`", code="A030")
            named: dict[str, TensorVal] = {}
            for kw in st.outputs:
                if kw.name in named:
                    fail(f"output `{kw.name}` is named twice", kw.span, "rename one of them",
                         code="A011")
                names.check(kw.name, kw.span, "output")
                v = self.expr(kw.value, env)
                if not isinstance(v, TensorVal):
                    fail(f"output `{kw.name}` must be a tensor, got {_show(v)}", kw.span,
                         "named outputs expose values computed in the block", code="A030")
                named[kw.name] = v
            return Returned(value, named)
        raise AssertionError(st)

    def _bind(self, env: Env, name: str, value: Any, span: Span | None) -> None:
        found = env.find(name)
        if found is not None and isinstance(found[0], (Inst, InstArray)):
            fail(f"`{name}` names an instance and cannot be reassigned", span,
                 "pick a new name for the value", code="A011",
                 labels=[(found[1].spans.get(name), "the instance")] if found[1].spans.get(name)
                 else [])
        if isinstance(value, (Inst, InstArray)):
            fail("assigning an instance makes an alias; use its name directly", span,
                 "call it to get a value: `y = core(x)`", code="A031")
        if isinstance(value, TensorVal):
            self.gb.graph.names.setdefault(value.id, name)
        env.set(name, value, span)

    def let(self, st: S.Let, env: Env) -> None:
        names.check(st.name, st.name_span, "instance")
        if st.name in env.vars:
            fail(f"duplicate name `{st.name}`", st.name_span, "each instance needs its own name",
                 code="A011", labels=[(env.spans.get(st.name), "first defined here")]
                 if env.spans.get(st.name) else [])
        call = st.value
        if not isinstance(call, S.Call) or not isinstance(call.func, S.Name):
            fail("`let` makes an instance of a block or op", st.value.span,
                 "e.g. `let core = layer()`; plain values need no `let`: `h = 4 * d`",
                 code="A031")
        template = call.func.id
        if template not in self.el.blocks and not (template in OPS and OPS[template].stateful):
            if template in OPS:
                fail(f"`{template}` has no weights, so there is no instance to name",
                     call.func.span, "call it directly where it is needed", code="A031")
            self.el._unknown(call.func, env)
        if call.args:
            fail("`let` makes an instance; tensor inputs go where it is called", call.args[0].span,
                 f"write `let {st.name} = {template}(...)` then `y = {st.name}(x)`", code="A032")
        kwargs, spans = self.kwargs(call, env)
        self.scope.reserved.discard(st.name)
        if st.count is None:
            inst = self.new_inst(st.name, template, kwargs, spans, st.span, claim=True)
            env.set(st.name, inst, st.name_span)
            return
        n = self.el.static(st.count, env, "an instance-array size")
        if not isinstance(n, int) or n < 1:
            fail(f"an instance array needs a positive int size, got {_show(n)}", st.count.span,
                 "e.g. `let blocks[k] = layer()`", code="A031")
        if n > self.el.budget.max_nodes:
            fail(f"instance array of {n:,} is over the size budget", st.count.span,
                 "is the size right? the budget is --max-nodes", code="A040")
        name = self.scope.claim(st.name, st.name_span)
        items = []
        for k in range(n):
            inst = Inst(f"{name}[{k}]", template, kwargs, spans, self.scope,
                        self.scope.ref(name, k), st.span, len(self.loops), index=k)
            items.append(inst)
        env.set(st.name, InstArray(name, items, st.span), st.name_span)

    def new_inst(self, name: str, template: str, kwargs, spans, span, claim: bool) -> Inst:
        name = self.scope.claim(name, span) if claim else self.scope.claim(
            self.scope.fresh(name), span)
        return Inst(name, template, kwargs, spans, self.scope, self.scope.ref(name), span,
                    len(self.loops))

    def kwargs(self, call: S.Call, env: Env, tensor_names: tuple[str, ...] = ()
               ) -> tuple[dict[str, Any], dict[str, Span]]:
        """Keyword arguments: static values, instances (`tied=emb`), and for the names an op
        declares as tensor arguments (`kv=`, `v_add=`), values computed by the graph."""
        out, spans = {}, {}
        for kw in call.kwargs:
            if kw.name in out:
                fail(f"argument `{kw.name}` given twice", kw.span, "remove one of them",
                     code="A032")
            if kw.name in tensor_names:
                out[kw.name] = self.expr(kw.value, env)
                spans[kw.name] = kw.span
                continue
            value = self.static_or_inst(kw.value, env)
            if isinstance(value, RuntimeParam):
                fail(f"run-time param `{value.name}` cannot set `{kw.name}`", kw.span,
                     "run-time params only set loop counts; declare it without `runtime` "
                     "to use it here", code="A023")
            out[kw.name] = value
            spans[kw.name] = kw.span
        return out, spans

    def static_or_inst(self, e: S.Expr, env: Env) -> Any:
        """Keyword values are static, or an instance (`tied=emb`), or a loop-index scalar."""
        if isinstance(e, S.Name):
            found = env.find(e.id)
            if found is not None and isinstance(found[0], Inst):
                return found[0]
        return self.el.eval_static(e, env)

    # expressions --------------------------------------------------------------

    @limits.elaboration_guard
    def expr(self, e: S.Expr, env: Env, with_=()) -> Any:
        if with_ and not isinstance(e, S.Call):
            fail("`with` adapters attach to a call of an instance", e.span,
                 "write `x = core(x) with lora(rank=8)`", code="A031")
        if isinstance(e, S.Call):
            return self.call(e, env, with_)
        if isinstance(e, S.Name):
            found = env.find(e.id)
            if found is None:
                if e.id in self.el.blocks or e.id in OPS:
                    fail(f"`{e.id}` is a template; call it to make a value", e.span,
                         f"write `{e.id}(x)`", code="A031")
                self.el._unknown(e, env)
            return found[0]
        if isinstance(e, S.BinOp):
            left = self.expr(e.left, env)
            right = self.expr(e.right, env)
            if isinstance(left, TensorVal) or isinstance(right, TensorVal):
                return self.tensor_arith(e, left, right)
            return _arith(e, left, right)
        if isinstance(e, S.Neg):
            v = self.expr(e.value, env)
            if isinstance(v, TensorVal):
                return self.emit("neg", [v], [v.type], span=e.span, hint="x")[0]
            return self.el.eval_static(e, env)
        if isinstance(e, S.Attr):
            base = self.expr(e.value, env)
            if isinstance(base, tuple):
                return tuple(self._field(item, e) for item in base)
            return self._field(base, e)
        if isinstance(e, S.Index):
            base = self.expr(e.value, env)
            if isinstance(base, DepthStack):
                return self.depth_index(base, e, env)
            if isinstance(base, InstArray):
                return self.inst_item(base, e, env)
            idx = self.el.static(e.index, env, "an index")
            return _index(base, idx, e)
        return self.el.eval_static(e, env)

    def _field(self, base: Any, e: S.Attr) -> Any:
        """`a.q` on a tensor, `layers[j].a` on one depth of a stack."""
        if isinstance(base, DepthFrame):
            if e.name not in base.values:
                have = ", ".join(sorted(n for n, v in base.values.items()
                                        if isinstance(v, TensorVal))) or "none"
                fail(f"`{base.label}[{base.index}]` has no value `{e.name}`", e.span,
                     f"values bound at that depth: {have}", code="A012")
            return base.values[e.name]
        if isinstance(base, _FutureDepth):
            where = _assignment_span(base.stack.body, e.name) or base.stack.span
            fail(f"`{base.stack.label}[{base.index}].{e.name}` reads depth {base.index}, "
                 f"which does not come before this one (depth {base.current})", e.span,
                 "depth references must point to earlier layers, e.g. "
                 f"{base.stack.label}[i - 1].{e.name}", code="A014",
                 labels=[(where, "the value it names is computed here, later")])
        if isinstance(base, TensorVal):
            if e.name not in base.fields or e.name in _HIDDEN_FIELDS:
                have = ", ".join(sorted(n for n in base.fields if n not in _HIDDEN_FIELDS))
                fail(f"this value has no field `{e.name}`", e.span,
                     f"its fields: {have or 'none'}", code="A012")
            return base.fields[e.name]
        fail(f"no field `{e.name}` here", e.span,
             "fields such as `a.q` belong to tensors made by ops", code="A012")

    def depth_index(self, stack: DepthStack, e: S.Index, env: Env) -> Any:
        """layers[j] (one earlier depth) or layers[a..b] (a list of them)."""
        idx = self.el.static(e.index, env, "a depth")
        current = len(stack.frames)
        many = isinstance(idx, tuple)
        out = []
        for j in (idx if many else (idx,)):
            if not isinstance(j, int) or isinstance(j, bool):
                fail(f"a depth must be an int, got {_show(j)}", e.index.span,
                     f"e.g. {stack.label}[i - 1] or {stack.label}[0..i]", code="A031")
            if j < 0:
                fail(f"depth {j} does not exist", e.index.span,
                     "the first layer is depth 0; guard it with `if i > 0`", code="A014")
            out.append(stack.frames[j] if j < current else _FutureDepth(stack, j, current))
        return tuple(out) if many else out[0]

    def tensor_arith(self, e: S.BinOp, left: Any, right: Any) -> TensorVal:
        if isinstance(left, TensorVal) and isinstance(right, TensorVal):
            op = {"+": "add", "-": "sub", "*": "mul"}.get(e.op)
            if op is None:
                fail(f"`{e.op}` between two tensors is not supported", e.span,
                     "use +, - or *", code="A031")
            return self.binary(op, left, right, e.span, e.left.span, e.right.span)
        tensor, other = (left, right) if isinstance(left, TensorVal) else (right, left)
        if e.op == "*" or (e.op == "/" and tensor is left):
            if isinstance(other, (RuntimeParam, RuntimeScalar)):
                by = _tree(other) if e.op == "*" else scalar.binary("/", 1.0, _tree(other))
            else:
                num = _number(other, e.span)
                if e.op == "/":
                    if num == 0:
                        fail("division by zero", e.span, "divide by a non-zero number",
                             code="A031")
                    num = 1 / num
                by = float(num)
            return self.emit("scale", [tensor], [tensor.type], {"by": by}, span=e.span,
                             hint="x")[0]
        fail(f"`{e.op}` between a tensor and a number is not supported", e.span,
             "tensors can be scaled: `0.5 * x` or `x / 2`", code="A031")

    def binary(self, op: str, x: TensorVal, y: TensorVal, span: Span | None,
               xs: Span | None = None, ys: Span | None = None) -> TensorVal:
        out = broadcast(x.type, y.type)
        if out is None:
            labels = []
            if xs:
                labels.append((xs, f"this is {x.type}"))
            if ys:
                labels.append((ys, f"this is {y.type}"))
            fail(f"width mismatch: {op} of {x.type} and {y.type}", span,
                 "both sides must have the same shape (or 1 where a gate broadcasts); insert "
                 "a linear() to project one", code="A013", labels=labels)
        return self.emit(op, [x, y], [out], span=span, hint="x")[0]

    def inst_item(self, arr: InstArray, e: S.Index, env: Env) -> Inst:
        idx_expr = e.index
        value = self.el.eval_static(idx_expr, env)
        if not isinstance(value, int) or isinstance(value, bool):
            fail(f"an instance index must be a static int, got {_show(value)}", idx_expr.span,
                 "index instance arrays with a for variable or a number", code="A031")
        if not 0 <= value < len(arr.items):
            fail(f"index {value} is out of range for `{arr.name}` of size {len(arr.items)}",
                 idx_expr.span, f"valid indices are 0..{len(arr.items)}", code="A031")
        inst = arr.items[value]
        # Inside a rollable `for k in 0..n`, blocks[k] reads the same in every iteration.
        frame = next((f for f in reversed(self.loops) if isinstance(idx_expr, S.Name)
                      and f.var == idx_expr.id), None)
        if frame is not None and frame.kind == "for" and frame.sym is not None:
            inst = replace(inst, ref=Ref(path=inst.ref.path[:-1] +
                                         ((inst.ref.path[-1][0], frame.sym),)))
        return inst

    # calls --------------------------------------------------------------------

    def call(self, e: S.Call, env: Env, with_=()) -> Any:
        func = e.func
        if isinstance(func, S.Index):
            return self.call_inst(self.expr(func, env), e, env, with_)
        if not isinstance(func, S.Name):
            fail("only names can be called", func.span,
                 "call an op, a block or an instance by name: `layer(x)`", code="A031")
        found = env.find(func.id)
        if found is not None:
            if isinstance(found[0], Inst):
                return self.call_inst(found[0], e, env, with_)
            fail(f"`{func.id}` is not callable", func.span,
                 "only ops, blocks and instances can be called", code="A031")
        if with_:
            fail("`with` adapters go on a named instance shared across iterations", e.span,
                 "write `let core = layer()` before the loop, then `core(x) with ...`",
                 code="A034")
        # An inline call makes its instance here; inputs first, so names follow the order
        # in which instances run.
        if func.id in self.el.blocks:
            block = self.el.blocks[func.id]
            inputs = self.tensor_args(e, env, len(block.inputs), f"block `{block.name}`")
            kwargs, spans = self.kwargs(e, env)
            inst = self.new_inst(func.id, func.id, kwargs, spans, e.span, claim=False)
            return self.call_block(inst, block, inputs, None, e.span)
        if func.id in OPS:
            opdef = OPS[func.id]
            inputs = self.tensor_args(e, env, opdef.inputs, f"`{opdef.name}`", opdef.positional)
            inst = None
            if opdef.stateful:
                kwargs, spans = self._op_kwargs(opdef, e, env)
                static = {k: v for k, v in kwargs.items() if k not in opdef.tensor_kwargs}
                inst = self.new_inst(func.id, func.id, static, spans, e.span, claim=False)
            return self.expand_op(opdef, inst, inputs, e, env)
        if func.id in _BUILTINS or func.id in _SCHEDULES:
            return self.el.eval_static(e, env)
        if func.id in ADAPTERS:
            fail(f"`{func.id}` is an adapter; it goes after `with` on an instance call",
                 func.span, f"write `core(x) with {func.id}(...)`", code="A034")
        self.el._unknown(func, env)

    def _op_kwargs(self, opdef, e: S.Call, env: Env):
        """Keyword args, plus static positional args such as scale(x, 0.2)."""
        kwargs, spans = self.kwargs(e, env, opdef.tensor_kwargs)
        n = opdef.inputs or len(e.args)
        extra = e.args[n:] if opdef.inputs is not None else ()
        for name, arg in zip(opdef.positional, extra):
            kwargs[name] = self.static_or_inst(arg, env)
            spans[name] = arg.span
        return kwargs, spans

    def tensor_args(self, e: S.Call, env: Env, expected: int | None, what: str,
                    positional: tuple[str, ...] = ()) -> list[TensorVal]:
        n_static = len(positional)
        args = e.args
        if expected is not None:
            if len(args) < expected or len(args) > expected + n_static:
                fail(f"{what} takes {expected} tensor input(s), got {len(args)}", e.span,
                     "options go as keywords, e.g. attention(x, heads=4)", code="A032")
            args = args[:expected]
        elif not args:
            fail(f"{what} needs at least one tensor input", e.span, "e.g. concat(a, b)",
                 code="A032")
        out = []
        for a in args:
            v = self.expr(a, env)
            if expected is None and isinstance(v, tuple) and \
                    all(isinstance(x, TensorVal) for x in v):
                out.extend(v)  # concat(x, layers[0..i].y)
                continue
            if not isinstance(v, TensorVal):
                fail(f"{what} expects a tensor here, got {_show(v)}", a.span,
                     "static options go as keywords, e.g. hidden=4*d", code="A031")
            out.append(v)
        if not out:
            fail(f"{what} got an empty list of tensors", e.span,
                 "a depth range such as layers[0..i] is empty at i = 0; give a first "
                 "value too, e.g. sum(x, layers[0..i].h)", code="A031")
        return out

    def call_inst(self, inst: Any, e: S.Call, env: Env, with_=()) -> Any:
        if not isinstance(inst, Inst):
            fail("only instances can be called", e.func.span,
                 "make one with `let name = block()`", code="A031")
        tensor_names = OPS[inst.template].tensor_kwargs if inst.template in OPS else ()
        for kw in e.kwargs:
            if kw.name not in tensor_names:
                fail(f"instance `{inst.name}` already has its arguments; pass only tensors "
                     "here", kw.span, f"set them where it is made: `let {inst.name} = "
                     f"{inst.template}({kw.name}=...)`", code="A032")
        adapt = self.adapters(inst, with_, e, env) if with_ else None
        if inst.template in self.el.blocks:
            block = self.el.blocks[inst.template]
            inputs = self.tensor_args(e, env, len(block.inputs), f"block `{block.name}`")
            return self.call_block(inst, block, inputs, adapt, e.span)
        if adapt is not None:
            fail("adapters apply to block instances", e.span,
                 "wrap the op in a block, or adapt the block that contains it", code="A034")
        opdef = OPS[inst.template]
        inputs = self.tensor_args(e, env, opdef.inputs, f"`{opdef.name}`")
        return self.expand_op(opdef, inst, inputs, e, env)

    def call_block(self, inst: Inst, block: S.Block, inputs, adapt, span) -> TensorVal:
        before = self.el.nodes
        cls, _ = self.el.block_class(block, inst.kwargs, inputs, adapt, span)
        if self.el.nodes == before:  # elaborated before: this call still runs all of it
            ops = self.el.class_sizes.get(cls, 0)
            self.el.count_repeats(1, ops, span, f"this call of `{block.name}` ({ops:,} ops)")
        self.materialize(inst, BlockInst(cls=cls, args=_instance_args(block, inst), span=inst.span),
                         span)
        attrs = {"cls": cls}
        if adapt is not None:
            attrs["iteration"] = adapt.var
        callee = self.el.classes[cls]
        types = [callee.graph.types[o] for o in callee.graph.outputs]
        out, *extra = self.emit("call", inputs, types, attrs, ref=inst.ref, span=span, hint="y")
        for name, v in zip(callee.output_names, extra):
            out.fields[name] = v
            self.gb.graph.names.setdefault(v.id, name)
        return out

    def expand_op(self, opdef, inst: Inst | None, inputs, e: S.Call, env: Env) -> Any:
        if inst is None:
            kwargs, spans = self._op_kwargs(opdef, e, env)
        else:
            call_kw, call_spans = self.kwargs(e, env, opdef.tensor_kwargs)
            kwargs = {**inst.kwargs, **call_kw}
            spans = {**inst.kwarg_spans, **call_spans}
        tensors = {k: kwargs.pop(k) for k in list(kwargs) if k in opdef.tensor_kwargs}
        _check_token_inputs(opdef, inputs, e)
        _check_ranks(opdef, inputs, e)
        attrs = self.validate(opdef, kwargs, spans, e.span)
        ctx = OpCtx(self, opdef, inst, e.span, spans, tensors)
        ctx.sigma = bool(getattr(attrs, "sigma", False))
        first = self.gb.graph.next_key
        result = opdef.expand(ctx, *inputs, attrs)
        record_application(self, first, opdef, inst, attrs, inputs, tensors, result)
        if inst is not None:
            module = ctx.module()
            if isinstance(module, Group) and not module.children:  # e.g. a tied head
                inst.state.module = module
                inst.scope.modules.pop(inst.ref.path[-1][0], None)
            else:
                self.materialize(inst, module, e.span)
        return result

    def validate(self, opdef, kwargs, spans, span):
        fields = opdef.attrs.model_fields
        for k in kwargs:
            if k not in fields:
                close = suggest(k, list(fields) + list(opdef.tensor_kwargs))
                retired = dict(opdef.retired).get(k)  # an option it no longer takes, and why
                fail(f"`{opdef.name}` has no argument `{k}`", spans.get(k, span),
                     retired or (f"did you mean `{close}`?" if close else
                                 f"its arguments: {', '.join(fields) or 'none'}"), code="A032")
        for k, v in kwargs.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and \
                    not abs(v) <= _FLOAT32_MAX:
                fail(f"`{opdef.name}` argument `{k}` = {v!r} is past the range of float32",
                     spans.get(k, span), "weights and activations are float32: at most "
                     "about 3.4e38", code="A031")
        try:
            return opdef.attrs(**kwargs)
        except ValidationError as err:
            first = err.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else ""
            got = kwargs.get(name, None)
            if first["type"] == "missing":
                fail(f"`{opdef.name}` needs `{name}=`", span,
                     f"e.g. {opdef.name}(x, {name}=...)", code="A032")
            fail(f"`{opdef.name}` argument `{name}`: {first['msg'].lower()} (got {_show(got)})",
                 spans.get(name, span), choices_hint(first) or f"`{opdef.name}`: {opdef.doc}",
                 code="A031")

    def materialize(self, inst: Inst, module: Module, span: Span | None) -> None:
        """Place an instance's weights on first call; later calls must match them."""
        state = inst.state
        if state.module is None:
            state.module = module
            state.first_call = span
            _place(inst, module)
            return
        if _strip(state.module) != _strip(module):
            fail(f"instance `{inst.name}` is called with different input shapes than before",
                 span, "a shared instance has one set of weights; its inputs must keep the "
                 "same width", code="A013", labels=[(state.first_call, "first called here")]
                 if state.first_call else [])

    def adapters(self, inst: Inst, with_, e: S.Call, env: Env) -> AdaptCfg:
        frame = next((f for f in reversed(self.loops[inst.loop_depth:]) if f.kind == "loop"),
                     None)
        if frame is None:
            fail("per-iteration adapters need the call to be inside a `loop` that shares the "
                 "instance", e.span, "declare the instance before the loop: `let core = "
                 "layer()`, then `loop n { x = core(x) with lora(rank=8) }`", code="A034")
        if inst.state.adapted_at is not None:
            fail(f"instance `{inst.name}` already has adapters from another call site", e.span,
                 "one call site per adapted instance", code="A034",
                 labels=[(inst.state.adapted_at, "adapted here first")])
        inst.state.adapted_at = e.span
        lora, untie = None, ()
        for call in with_:
            kind = call.func.id if isinstance(call.func, S.Name) else ""
            if kind == "lora":
                if call.args:
                    fail("lora takes keyword arguments", call.span,
                         'write lora(rank=8) or lora(rank=8, targets=["q", "v"])', code="A032")
                kwargs = {kw.name: self.el.static(kw.value, env, "a lora option")
                          for kw in call.kwargs}
                lora = self._adapter_attrs("lora", kwargs, call)
            elif kind == "untie":
                untie = tuple(a.id if isinstance(a, S.Name) else "" for a in call.args)
                if not untie or "" in untie or call.kwargs:
                    fail("untie takes the names of instances or ops to make per-iteration",
                         call.span, "e.g. `with untie(rmsnorm)`", code="A032")
            else:
                fail(f"unknown adapter `{kind}`", call.span, "adapters: lora, untie",
                     code="A034")
        return AdaptCfg(frame.sym, frame.count, lora, untie, e.span)

    def _adapter_attrs(self, kind: str, kwargs, call: S.Call):
        schema = ADAPTERS[kind]
        for k in kwargs:
            if k not in schema.model_fields:
                fail(f"`{kind}` has no argument `{k}`", call.span,
                     f"its arguments: {', '.join(schema.model_fields)}", code="A032")
        try:
            return schema(**kwargs)
        except ValidationError as err:
            first = err.errors()[0]
            fail(f"`{kind}`: {first['msg'].lower()} ({'.'.join(map(str, first['loc']))})",
                 call.span, 'e.g. lora(rank=8, alpha=16, targets=["q", "v"])', code="A031")

    def check_adapters(self, adapt: AdaptCfg) -> None:
        if adapt.lora:
            for t in adapt.lora.targets:
                if t not in self.lora_hits:
                    fail(f"lora target `{t}` matches no linear in block `{self.name}`",
                         adapt.span, "targets name linears, e.g. q, v, gate, or attn.q",
                         code="A034")
            if not self.lora:
                fail(f"block `{self.name}` has no linear for lora to adapt", adapt.span,
                     "lora adapts linears: attention, mlp, swiglu and linear have them",
                     code="A034")
        for t in adapt.untie:
            if t not in self.untie_hits:
                fail(f"untie `{t}` matches no instance in block `{self.name}`", adapt.span,
                     "name an op (rmsnorm) or an instance made in the block", code="A034")

    # regions ------------------------------------------------------------------

    def for_(self, st: S.For, env: Env) -> None:
        items = self.el.static(st.iter, env, "what `for` iterates over")
        if not isinstance(items, tuple):
            fail(f"`for` iterates over a range or a list, got {_show(items)}", st.iter.span,
                 "write `for i in 0..n`", code="A031")
        for v in st.vars:
            names.check(v, st.span, "loop variable")
        var = st.vars[0]
        sym = self._ir_var(var)
        # Rollable when the variable is the iteration position: `for i in 0..n`.
        rollable = (isinstance(st.iter, S.Range) and len(st.vars) == 1
                    and bool(items) and items[0] == 0)
        label = self._label(st.label, "layers", st.span)
        if not rollable or _mentions_depth(self.ast, label):
            self._for_inline(st, env, label, items)
            return
        if len(items) > 1 and not _mentions_name(st.body, var) and \
                self._assigns_only_tensors(st.body, env) and \
                self._for_uniform(st, env, label, len(items), sym):
            return  # every iteration elaborates to the same graph: done once
        inits = self._carried(st.body, env)
        current = dict(inits)
        iterations = []
        for k, item in enumerate(items):
            body_env, gb = self._open_body(env, current, label, sym)
            _bind_for_vars(body_env, st, item)
            self.loops.append(LoopFrame(var, len(items), "for", sym))
            try:
                _no_return(self.body(st.body, body_env), st)
            finally:
                self.loops.pop()
            scope = self.scope
            outs = self._close_body(gb, body_env, list(current), st)
            iterations.append((gb, scope))
            current = {name: TensorVal(o.id, o.type, gb.level) for name, o in zip(current, outs)}
            for name, value in body_env.vars.items():  # statics flow to the next iteration
                if name not in st.vars and not isinstance(value, TensorVal) and \
                        env.find(name) is not None:
                    env.set(name, value, body_env.spans.get(name))
        self._finish_for(st, env, label, inits, iterations, rollable, sym)

    def _for_inline(self, st: S.For, env: Env, label: str, items: tuple) -> None:
        """Run the iterations one after another in the enclosing graph. Values bound in
        iteration j stay reachable as label[j].name (depth references)."""
        var = st.vars[0]
        stack = DepthStack(label, [], st.span, st.body)
        if st.label is not None:
            if env.find(label) is not None:
                fail(f"the label `{label}` is already a name here", st.span,
                     "labels name a stack's depths; pick another", code="A011")
            env.set(label, stack, st.span)
        modules = []
        for k, item in enumerate(items):
            body_env = Env(env, self.gb.level)
            _bind_for_vars(body_env, st, item)
            self.scope_stack.append(self.scope)
            self.scope = ModuleScope(self.scope.ref(label, k))
            first = self.gb.graph.next_key
            self.loops.append(LoopFrame(var, len(items), "for", None))
            try:
                _no_return(self.body(st.body, body_env), st)
            finally:
                self.loops.pop()
            scope = self.scope
            self.scope = self.scope_stack.pop()
            fix = _collapse_fix(scope)
            if fix is not None:
                self.gb.graph.rewrite_from(first, lambda n: n.model_copy(
                    update={"ref": fix(n.ref), "attrs": _ref_attrs(n, fix),
                            "body": _map_graph(n.body, fix) if n.body is not None else None}))
            modules.append(_collapse(scope, st.span))
            values = {}
            for name, value in body_env.vars.items():
                if name in st.vars:
                    continue
                values[name] = value
                if env.find(name) is not None and not isinstance(value, (Inst, InstArray)):
                    env.set(name, value, body_env.spans.get(name))
            stack.frames.append(DepthFrame(label, k, values))
        if any(m is not None for m in modules):
            self.scope.modules[label] = Stack(
                items=tuple(m if m is not None else Group(children=()) for m in modules),
                span=st.span)
        else:
            del self.scope.modules[label]

    def _assigns_only_tensors(self, body, env: Env) -> bool:
        """No outer static is reassigned in the body (so iterations cannot differ)."""
        for name in _assigned(body):
            found = env.find(name)
            if found is not None and not isinstance(found[0], TensorVal):
                return False
        return True

    def _for_uniform(self, st: S.For, env: Env, label: str, n: int, sym: str) -> bool:
        """A `for` whose body never reads its variable: one elaboration, n iterations.
        False (and nothing emitted) if the body changes a carried width: then the
        iterations differ after all and are elaborated one by one."""
        var = st.vars[0]
        before = self.el.nodes
        inits = self._carried(st.body, env)
        body_env, gb = self._open_body(env, inits, label, sym)
        body_env.set(var, 0, st.span)
        self.loops.append(LoopFrame(var, n, "for", sym))
        try:
            _no_return(self.body(st.body, body_env), st)
        finally:
            self.loops.pop()
        scope = self.scope
        self._close_body(gb, body_env, list(inits), st)
        graph = _rewrite_refs(gb.graph, scope)
        types = [graph.types[o] for o in graph.outputs]
        if types != [v.type for v in inits.values()]:
            self.el.nodes = before  # elaborated again, one iteration at a time
            return False
        ops = self.el.nodes - before
        self.el.count_repeats(n - 1, ops, st.span,
                              f"this stack of {n:,} iterations of {ops:,} ops")
        module = _collapse(scope, st.span)
        if module is not None:
            self.scope.modules[label] = Stack(items=(module,) * n, span=st.span)
        else:
            del self.scope.modules[label]
        outs = self.emit("loop", [inits[k] for k in inits] + self._captured(gb), types,
                         {"kind": "for", "var": sym, "count": Count(value=n), "label": label},
                         span=st.span, hint=",".join(inits), body=graph)
        self._rebind(env, list(inits), outs)
        return True

    def _finish_for(self, st, env, label, inits, iterations, rollable, var) -> None:
        modules = [_collapse(scope, st.span) for _, scope in iterations]
        graphs = [_rewrite_refs(gb.graph, scope) for gb, scope in iterations]
        if any(m is not None for m in modules):
            self.scope.modules[label] = Stack(
                items=tuple(m if m is not None else Group(children=()) for m in modules),
                span=st.span)
        else:
            del self.scope.modules[label]
        if rollable and len(iterations) > 1 and len({_fingerprint(g) for g in graphs}) == 1:
            gb0 = iterations[0][0]
            inputs = [inits[n] for n in inits] + self._captured(gb0)
            types = [gb0.graph.types[o] for o in gb0.graph.outputs]
            outs = self.emit("loop", inputs, types,
                             {"kind": "for", "var": var, "count": Count(value=len(graphs)),
                              "label": label}, span=st.span, hint=",".join(inits),
                             body=graphs[0])
            self._rebind(env, list(inits), outs)
            return
        # Otherwise the iterations run one after another in the enclosing graph.
        values = dict(inits)
        for k, ((gb, _scope), graph) in enumerate(zip(iterations, graphs)):
            mapping = {vid: values[name].id for (vid, _t), name in
                       zip(graph.inputs, list(inits))}
            mapping.update({inner: outer for outer, inner in gb.captures.items()})
            for node in graph.nodes:
                node = _substitute(node, var, k, mapping) if rollable else \
                    node.model_copy(update={"inputs": tuple(mapping.get(i, i)
                                                            for i in node.inputs)})
                self.gb.graph.add(node)  # counted when its iteration was elaborated
                for o in node.outs:
                    if o in graph.names:
                        self.gb.graph.names.setdefault(o, graph.names[o])
            for name, out in zip(list(inits), graph.outputs):
                out = mapping.get(out, out)
                values[name] = TensorVal(out, self.gb.graph.types[out], self.gb.level)
        for name in inits:
            env.set(name, values[name])

    def loop(self, st: S.Loop, env: Env) -> None:
        count = self._count(st, env)
        if st.var is not None:
            names.check(st.var, st.span, "loop variable")
        var = self._ir_var(st.var)
        label = self._label(st.label, "loop", st.span)
        inits = self._carried(st.body, env)
        if not inits:
            fail("this loop changes nothing", st.span,
                 "assign to a value defined before the loop, e.g. `s = core(s)`", code="A031")
        if count.bound == 0:  # no iteration runs (as `for` over an empty range): no body
            self.scope.modules.pop(label, None)
            return
        before = self.el.nodes
        body_env, gb = self._open_body(env, inits, label, var)
        if st.var is not None:
            body_env.set(st.var, RuntimeScalar(("var", var)), st.span)
        self.loops.append(LoopFrame(st.var, count.bound, "loop", var))
        try:
            _no_return(self.body(st.body, body_env), st)
        finally:
            self.loops.pop()
        ops = self.el.nodes - before
        self.el.count_repeats(count.bound - 1, ops, st.span,
                              f"this loop of up to {count.bound:,} iterations of {ops:,} ops")
        for name in body_env.vars:
            if name not in inits and name != st.var and env.find(name) is not None:
                fail(f"`{name}` is reassigned inside a loop body", body_env.spans.get(name),
                     "a loop body runs as one shared body; only tensors can be carried",
                     code="A031")
        scope = self.scope
        outs = self._close_body(gb, body_env, list(inits), st)
        for name, out in zip(inits, outs):
            if out.type != inits[name].type:
                fail(f"the loop changes `{name}` from {inits[name].type} to {out.type}",
                     st.span, "a loop-carried value must keep its shape", code="A013")
        module = _collapse(scope, st.span)
        if module is not None:
            self.scope.modules[label] = Stack(items=(module,) * count.bound, span=st.span)
        else:
            del self.scope.modules[label]
        attrs = {"kind": "loop", "var": var, "count": count, "label": label}
        if st.until is not None:
            attrs["halt"] = self._halt(st, list(inits), env)
        inputs = [inits[n] for n in inits] + self._captured(gb)
        outs = self.emit("loop", inputs, [v.type for v in inits.values()], attrs, span=st.span,
                         hint=",".join(inits), body=_rewrite_refs(gb.graph, scope))
        self._rebind(env, list(inits), outs)

    def _count(self, st: S.Loop, env: Env) -> Count:
        value = self.el.eval_static(st.count, env)
        runtime = isinstance(value, (RuntimeParam, RuntimeScalar))
        if not runtime and (not isinstance(value, int) or isinstance(value, bool)):
            fail(f"a loop count must be an int, got {_show(value)}", st.count.span,
                 "e.g. `loop 4 { ... }` or `loop r max 64 { ... }`", code="A031")
        mx = None
        if st.max is not None:
            mx = self.el.static(st.max, env, "a loop max")
            if not isinstance(mx, int) or isinstance(mx, bool) or mx < 1:
                fail(f"a loop max must be a positive int, got {_show(mx)}", st.max.span,
                     "e.g. `loop r max 64`", code="A031")
        if isinstance(value, RuntimeScalar):
            if mx is None:
                fail("a loop whose count is known only at run time needs a max", st.count.span,
                     "write `loop COUNT max N { ... }`; the max sizes per-iteration weights",
                     code="A024")
            count = Count(value=self.el.default_of(value.tree, mx), max=mx, expr=value.tree)
        elif runtime:
            if mx is None:
                fail(f"the run-time loop over `{value.name}` needs a max", st.count.span,
                     f"write `loop {value.name} max N {{ ... }}`; the max sizes "
                     "per-iteration weights", code="A024")
            if value.default > mx:
                fail(f"{value.name} = {value.default} is over the loop max {mx}", st.max.span,
                     f"raise the max or lower `{value.name}`", code="A022")
            count = Count(value=value.default, param=value.name, max=mx,
                          expr=("param", value.name))
        else:
            if value < 0:
                fail(f"a loop count must not be negative, got {value}", st.count.span,
                     "check the count expression", code="A031")
            if mx is not None and value > mx:
                fail(f"loop count {value} is over its max {mx}", st.count.span,
                     "raise the max or lower the count", code="A022")
            count = Count(value=value)
        if count.bound > self.el.budget.max_nodes:
            fail(f"a loop of {count.bound:,} iterations is over the size budget",
                 st.count.span, "the budget is --max-nodes", code="A040")
        return count

    def _halt(self, st: S.Loop, carried: list[str], env: Env) -> tuple:
        u = st.until
        if not (isinstance(u, S.Call) and isinstance(u.func, S.Name)
                and u.func.id == "converged" and len(u.args) == 1
                and isinstance(u.args[0], S.Name)):
            fail('a halting rule reads `until converged(s, tol=1e-3, per="token")`', u.span,
                 "s is a value the loop carries", code="A035")
        state = u.args[0].id
        if state not in carried:
            fail(f"`{state}` is not carried by this loop", u.args[0].span,
                 f"the loop carries: {', '.join(carried)}", code="A035")
        opts: dict[str, Any] = {"tol": 1e-3, "per": "sequence"}
        for kw in u.kwargs:
            if kw.name not in opts:
                fail(f"converged() has no argument `{kw.name}`", kw.span,
                     "its arguments: tol, per", code="A035")
            opts[kw.name] = self.el.static(kw.value, env, "a halting option")
        if opts["per"] not in ("token", "sequence"):
            fail(f'per must be "token" or "sequence", got {_show(opts["per"])}', u.span,
                 'per="token" freezes each position; per="sequence" whole sequences',
                 code="A035")
        tol = _number(opts["tol"], u.span)
        if tol <= 0:
            fail("tol must be positive", u.span, "e.g. tol=1e-3 (relative change)", code="A035")
        return (carried.index(state), float(tol), opts["per"])

    def _label(self, label: str | None, default: str, span) -> str:
        if label is not None:
            names.check(label, span, "label")
            return self.scope.claim(label, span)
        return self.scope.claim(self.scope.fresh(default), span)

    def _carried(self, body, env: Env) -> dict[str, TensorVal]:
        """Values assigned in a body that exist before it: the loop-carried state."""
        out = {}
        for name in _assigned(body):
            found = env.find(name)
            if found is not None and isinstance(found[0], TensorVal):
                out[name] = found[0]
        return out

    def _ir_var(self, name: str | None) -> str:
        """The IR name of a region's variable: free among the enclosing regions' (see
        archc/loopvars.py), so an inner `for i` cannot take an outer loop's index."""
        taken = {f.sym for f in self.loops if f.sym is not None}
        if self.adapt is not None:
            taken.add(self.adapt.var)
        return loopvars.ir_var(name, taken, self.el.param_info)

    def _open_body(self, env: Env, carried: dict[str, TensorVal], label: str, index):
        """Start a region body: a closed graph whose first inputs are the carried values."""
        gb = GraphBuilder(self.gb.level + 1, self.gb)
        body_env = Env(env, gb.level)
        for name, v in carried.items():
            vid = self.fresh()
            gb.graph.inputs.append((vid, v.type))
            gb.graph.types[vid] = v.type
            gb.graph.names[vid] = name
            body_env.set(name, TensorVal(vid, v.type, gb.level), None)
        self.scope_stack.append(self.scope)
        self.scope = ModuleScope(self.scope.ref(label, index))
        self.gb = gb
        return body_env, gb

    def _close_body(self, gb: GraphBuilder, body_env: Env, carried: list[str], st):
        outs = []
        for name in carried:
            v = body_env.vars.get(name)
            if not isinstance(v, TensorVal):
                fail(f"`{name}` must stay a tensor in the loop body", st.span,
                     "assign it a tensor in every iteration", code="A031")
            v = self.capture(v)
            gb.graph.outputs.append(v.id)
            outs.append(v)
        self.gb = gb.outer
        self.scope = self.scope_stack.pop()
        return outs

    def _captured(self, gb: GraphBuilder) -> list[TensorVal]:
        """Outer values a body read, in the order they became its inputs."""
        return [self.capture(TensorVal(outer, gb.graph.types[inner], self.gb.level))
                for outer, inner in gb.captures.items()]

    def _rebind(self, env: Env, carried: list[str], outs: list[TensorVal]) -> None:
        for name, v in zip(carried, outs):
            env.set(name, v)
            self.gb.graph.names.setdefault(v.id, name)

    # finishing ------------------------------------------------------------------

    def finish(self, outputs: list[TensorVal], inputs, output_names=()) -> BlockDef:
        graph = self.gb.graph
        graph.outputs = [self.capture(o).id for o in outputs]
        modules = []
        for name, m in self.root_scope.modules.items():
            _check_called(name, m, self.root_scope.spans.get(name) or self.span)
            modules.append((name, m))
        if self.adapt is not None and self.adapt.lora is not None:
            group = Group(children=tuple(self.lora.items()), op="lora")
            modules.append(("lora", Stack(items=(group,) * self.adapt.count)))
        return BlockDef(cls=self.cls, name=self.name, inputs=tuple(inputs), graph=graph,
                        modules=tuple(modules), span=self.span, output_names=output_names,
                        iteration=self.adapt.var if self.adapt else None,
                        iterations=self.adapt.count if self.adapt else None)


# ----------------------------------------------------------------------------- op context


class OpCtx:
    """What an op's `expand` sees: its inputs' types, and ways to make weights and nodes."""

    def __init__(self, cb: ClassBuilder, opdef, inst: Inst | None, span, spans,
                 tensors: dict[str, Any] | None = None):
        self.cb = cb
        self.opdef = opdef
        self.inst = inst
        self.span = span
        self.spans = spans
        self.tensors = tensors or {}
        self.sigma = False
        self._self_leaf: Module | None = None
        self._children: list[tuple[str, Module]] = []

    def fail(self, message: str, hint: str | None = None, at: str | None = None):
        fail(message, self.spans.get(at, self.span) if at else self.span, hint, code="A031")

    def module(self) -> Module:
        if self._self_leaf is not None:
            return self._self_leaf
        return Group(children=tuple(self._children), op=self.opdef.name, span=self.inst.span)

    def _untied(self, names_: tuple[str, ...]) -> bool:
        adapt = self.cb.adapt
        if adapt is None or not adapt.untie:
            return False
        hit = [n for n in names_ if n in adapt.untie]
        self.cb.untie_hits.update(hit)
        return bool(hit)

    def leaf(self, name: str | None, op: str, args: dict, weights: list[Weight]) -> Ref:
        """Declare weights: the instance itself (name None) or a named child of it."""
        leaf = Leaf(op=op, args=tuple(args.items()), weights=tuple(weights),
                    span=self.inst.span)
        adapt = self.cb.adapt
        untie = self._untied((op, self.inst.name) if name is None else (op, name))
        module: Module = Stack(items=(leaf,) * adapt.count) if untie else leaf
        idx = adapt.var if untie else None
        if name is not None:
            self._children.append((name, module))
            return self.inst.ref.child(name, idx)
        self._self_leaf = module
        if idx is None:
            return self.inst.ref
        last, old = self.inst.ref.path[-1]
        if old is not None:
            self.fail("an element of an instance array cannot be untied",
                      "untie the ops inside the block instead")
        return Ref(path=self.inst.ref.path[:-1] + ((last, idx),))

    def emit(self, prim: str, inputs, out_type: TensorType, attrs=None, ref=None, hint=""):
        return self.cb.emit(prim, inputs, [out_type], attrs, ref=ref, span=self.span,
                            hint=hint)[0]

    def emit_many(self, prim: str, inputs, types, attrs=None, ref=None, hint=""):
        return tuple(self.cb.emit(prim, inputs, list(types), attrs, ref=ref, span=self.span,
                                  hint=hint))

    def fields(self, out: TensorVal, **fields: TensorVal) -> TensorVal:
        out.fields.update(fields)
        return out

    def binary(self, op: str, x: TensorVal, y: TensorVal) -> TensorVal:
        return self.cb.binary(op, x, y, self.span)

    def linear(self, x: TensorVal, name: str | None, out: int, bias: bool, hint: str = "y",
               bias_init: float | None = None, init: str = "normal",
               std: float = DEFAULT_STD) -> TensorVal:
        d = x.type.width
        w_init = weight_init(init, std)
        b_init = ("const", bias_init) if bias_init is not None else zero_bias(init)
        if self.sigma:  # sigma-Reparam: the op asked for spectrally reparameterized weights
            weights = [Weight(name="weight", shape=(out, d), init=w_init),
                       Weight(name="gamma", shape=())]
            if bias:
                weights.append(Weight(name="bias", shape=(out,), init=b_init))
            ref = self.leaf(name, "sigma_linear", {"in": d, "out": out, "bias": bias}, weights)
            return self.emit("sigma_linear", [x], TensorType(shape=x.type.shape[:-1] + (out,)),
                             ref=ref, hint=hint)
        weights = [Weight(name="weight", shape=(out, d), init=w_init)]
        args = {"in": d, "out": out, "bias": bias}
        if bias:
            weights.append(Weight(name="bias", shape=(out,), init=b_init))
            if bias_init is not None:
                args["bias_init"] = bias_init
        ref = self.leaf(name, "linear", args, weights)
        out_t = TensorType(shape=x.type.shape[:-1] + (out,))
        y = self.emit("linear", [x], out_t, ref=ref, hint=hint)
        adapt = self.cb.adapt
        if adapt is not None and adapt.lora is not None:
            path = ".".join(n for n, _ in ref.path)
            leaf_name = name or self.inst.name
            targets = adapt.lora.targets
            hits = [t for t in targets if t in (leaf_name, path)]
            if not targets or hits:
                self.cb.lora_hits.update(hits)
                key = path.replace(".", "_")
                r = adapt.lora.rank
                self.cb.lora[key] = Leaf(op="lora", args=(("in", d), ("out", out), ("rank", r),
                                                          ("scale", lora_scale(adapt.lora))),
                                         weights=(Weight(name="A", shape=(r, d)),
                                                  Weight(name="B", shape=(out, r),
                                                         init=("const", 0.0))),
                                         span=self.span)
                lref = Ref(path=(("lora", adapt.var), (key, None)))
                delta = self.emit("lora", [x], out_t, ref=lref, hint="d")
                y = self.emit("add", [y, delta], out_t, hint=hint)
        return y

    def norm(self, x: TensorVal, name: str | None, op: str, eps: float,
             bias: bool = True) -> TensorVal:
        d = x.type.width
        weights = [Weight(name="weight", shape=(d,), init=("const", 1.0))]
        args = {"dim": d, "eps": eps}
        if op == "layernorm":
            args["bias"] = bias
            if bias:
                weights.append(Weight(name="bias", shape=(d,), init=("const", 0.0)))
        ref = self.leaf(name, op, args, weights)
        return self.emit(op, [x], x.type, ref=ref, hint="h")

    def bias(self, x: TensorVal, name: str, shape: tuple[int, ...]) -> TensorVal:
        ref = self.leaf(name, "bias", {"shape": shape},
                        [Weight(name="bias", shape=shape, init=("const", 0.0))])
        return self.emit("bias", [x], x.type, ref=ref, hint=name.split("_")[0])

    def rope_table(self, head_dim: int, theta: float) -> str:
        key = (head_dim, float(theta))
        self.cb.el.rope[key] = f"rope_{head_dim}_{int(theta)}"
        return f"rope:{head_dim}:{float(theta)!r}"

    def tied_embed(self, inst: Any) -> tuple[Ref, dict]:
        """The ref and constructor args of the embed a head is tied to."""
        if not isinstance(inst, Inst) or inst.template != "embed":
            self.fail("`tied=` names an embed instance", "write `let emb = embed(...)` and "
                      "`lm_head(x, tied=emb)`", at="tied")
        if inst.state.module is None:
            self.fail(f"embed `{inst.name}` is tied before it is used", "call the embed first",
                      at="tied")
        return inst.ref, dict(inst.state.module.args)

    def attention_of(self, inst: Any) -> tuple[Ref, dict]:
        """The ref and settings of an attention instance another op works with."""
        if not isinstance(inst, Inst) or inst.template != "attention":
            self.fail("`attn=` names an attention instance",
                      "write `let attn = attention(heads=...)` and pass attn=attn", at="attn")
        if inst.state.module is None:
            self.fail(f"attention `{inst.name}` must run before it is looped",
                      "call it first: a = attn(norm(x))", at="attn")
        kw = inst.kwargs
        for option in ("alibi", "qk_norm", "qk_bias", "kv_p"):
            if kw.get(option):
                self.fail(f"head loops do not support attention option `{option}`",
                          "loop a plain RoPE attention", at="attn")
        group = inst.state.module
        q = dict(group.get("q").args)
        k = dict(group.get("k").args)
        heads = kw["heads"]
        dh = q["out"] // heads
        return inst.ref, {"name": inst.name, "heads": heads, "kv_heads": k["out"] // dh,
                          "head_dim": dh, "rope": kw.get("rope", True),
                          "rope_theta": kw.get("rope_theta", 10000.0)}

    def scalar(self, value: Any, at: str) -> float | tuple:
        """A static number, or a run-time scalar's tree (loop index, schedule, param)."""
        if isinstance(value, (RuntimeParam, RuntimeScalar)):
            return _tree(value)
        return float(_number(value, self.spans.get(at, self.span)))


# ----------------------------------------------------------------------------- helpers


# Fields ops keep for each other (an attention's cached keys/values), not for specs.
_HIDDEN_FIELDS = frozenset({"k_all", "v_all"})


@dataclass
class _FutureDepth:
    """A depth not computed yet; reading a value from it is an error with both spans."""

    stack: DepthStack
    index: int
    current: int


def _assignment_span(stmts, name: str) -> Span | None:
    for st in stmts:
        if isinstance(st, S.Assign) and st.target == name:
            return st.target_span
        if isinstance(st, S.Unpack) and name in st.targets:
            return st.span
        inner = st.body if isinstance(st, (S.For, S.Loop)) else \
            (st.then + st.orelse if isinstance(st, S.If) else ())
        found = _assignment_span(inner, name)
        if found is not None:
            return found
    return None


def _bind_for_vars(env: Env, st: S.For, item: Any) -> None:
    """`for i in ...` binds the item; `for b, n in [(0, 3), ...]` unpacks it."""
    if len(st.vars) == 1:
        env.set(st.vars[0], item, st.span)
        return
    if not isinstance(item, tuple) or len(item) != len(st.vars):
        fail(f"cannot unpack {_show(item)} into {len(st.vars)} names", st.iter.span,
             "each item needs one value per name, e.g. `for b, n in [(0, 3), (1, 5)]`",
             code="A031")
    for name, v in zip(st.vars, item):
        env.set(name, v, st.span)


def _mentions_name(node: Any, name: str) -> bool:
    """Does any expression under `node` read `name`?"""
    if isinstance(node, S.Name):
        return node.id == name
    if isinstance(node, tuple):
        return any(_mentions_name(x, name) for x in node)
    if hasattr(node, "__dataclass_fields__"):
        return any(_mentions_name(getattr(node, f), name)
                   for f in node.__dataclass_fields__ if f != "span")
    return False


def _mentions_depth(node: Any, label: str) -> bool:
    """Does any expression under `node` index `label` (a depth reference)?"""
    if isinstance(node, S.Index) and isinstance(node.value, S.Name) and node.value.id == label:
        return True
    if isinstance(node, tuple):
        return any(_mentions_depth(x, label) for x in node)
    if hasattr(node, "__dataclass_fields__"):
        return any(_mentions_depth(getattr(node, f), label)
                   for f in node.__dataclass_fields__ if f != "span")
    return False


def _instance_args(block: S.Block, inst: Inst) -> tuple:
    """Values of a block's run-time params for one instance (defaults filled in)."""
    args = []
    for p in block.params:
        if not p.runtime:
            continue
        if p.name in inst.kwargs:
            value = inst.kwargs[p.name]
        elif isinstance(p.default, S.Num):
            value = p.default.value
        else:
            fail(f"run-time block param `{p.name}` needs a value", inst.span,
                 f"pass it: {block.name}(x, {p.name}=...)", code="A032")
        if _runtime(value) or not isinstance(value, (int, float)) or isinstance(value, bool):
            fail(f"`{p.name}` takes a number known when the model is built", inst.span,
                 "it is kept on the instance; schedules read it at run time", code="A023")
        args.append((p.name, float(value) if p.type == "float" else value))
    return tuple(args)


def _check_block_kwargs(block: S.Block, kwargs: dict[str, Any], span: Span | None) -> None:
    """A block's static params take numbers, bools and strings (they key its class);
    an instance or a run-time value there is the spec's mistake, said before use."""
    declared = {p.name for p in block.params}
    for k, v in kwargs.items():
        if k not in declared:
            close = suggest(k, declared)
            fail(f"block `{block.name}` has no param `{k}`", span,
                 f"did you mean `{close}`?" if close else
                 f"its params: {', '.join(sorted(declared)) or 'none'}", code="A032")
        if not _static_value(v):
            fail(f"block `{block.name}` param `{k}` takes a number, bool or string, got "
                 f"{_show(v)}", span, "static block params are known when the model is "
                 "built; declare it `runtime` for a number read at run time", code="A031")


def _static_value(v: Any) -> bool:
    if isinstance(v, tuple):
        return all(_static_value(x) for x in v)
    return isinstance(v, (int, float, str, bool))


def _check_token_inputs(opdef, inputs: list[TensorVal], e: S.Call) -> None:
    """Token ids (`tokens`, integers) go only to ops that read them (embed); anywhere
    else they would be treated as activations, which they are not."""
    if opdef.reads_tokens:
        return
    aligned = len(inputs) == len(e.args)
    for k, value in enumerate(inputs):
        if value.type.dtype == "long":
            fail(f"`{opdef.name}` takes activations, but this is {_show(value)} of token ids",
                 e.args[k].span if aligned else e.span,
                 "embed the tokens first: `x = embed(tokens, vocab=..., dim=...)`",
                 code="A031")


def _no_return(result: Any, st) -> None:
    if isinstance(result, Returned):
        fail("`return` inside a loop body", st.span,
             "assign the value instead; the loop's carried values are its result", code="A030")


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
    out = Graph(graph.inputs)
    for node in graph.nodes:
        body = _map_graph(node.body, fix) if node.body is not None else None
        out.add(node.model_copy(update={"ref": fix(node.ref), "body": body,
                                        "attrs": _ref_attrs(node, fix)}))
    out.outputs = list(graph.outputs)
    out.names = dict(graph.names)
    return out


def _check_ranks(opdef, inputs: list[TensorVal], e: S.Call) -> None:
    """An op whose shape rule is for activations refuses per-head values (OpDef.refuses)."""
    k = opdef.refuses([v.type for v in inputs])
    if k is None:
        return
    span = e.args[k].span if opdef.inputs is not None and k < len(e.args) else e.span
    fail(f"`{opdef.name}` takes activations [B, T, d]; this is {inputs[k].type}", span,
         "a per-head value (an attention's q, k, v or heads) goes to elementwise ops, "
         "concat or head_loop; use the attention's output for its merged heads",
         code="A013")


def _substitute(node: Node, var: str, k: int, mapping: dict[str, str]) -> Node:
    """Node of a spliced `for` iteration: loop variable -> k, body inputs -> outer values."""
    fix = lambda r: r.substitute(var, k) if r is not None else r  # noqa: E731
    body = _map_graph(node.body, fix) if node.body is not None else None
    return node.model_copy(update={
        "ref": fix(node.ref), "body": body, "attrs": _ref_attrs(node, fix),
        "inputs": tuple(mapping.get(i, i) for i in node.inputs)})


def _fingerprint(graph: Graph) -> Any:
    ids: dict[str, int] = {}
    for i, (vid, _t) in enumerate(graph.inputs):
        ids[vid] = i
    items = []
    for node in graph.nodes:
        for o in node.outs:
            ids[o] = len(ids)
        items.append((node.op, tuple(ids.get(i, i) for i in node.inputs), node.attrs,
                      str(node.ref), node.types, node.hint,
                      _fingerprint(node.body) if node.body is not None else None))
    return (tuple(t for _, t in graph.inputs), tuple(items),
            tuple(ids.get(o, o) for o in graph.outputs))


def _assigned(stmts) -> list[str]:
    out: list[str] = []
    for st in stmts:
        if isinstance(st, S.Assign):
            out.append(st.target)
        elif isinstance(st, S.Unpack):
            out.extend(st.targets)
        elif isinstance(st, (S.For, S.Loop)):
            out.extend(_assigned(st.body))
        elif isinstance(st, S.If):
            out.extend(_assigned(st.then) + _assigned(st.orelse))
    seen: dict[str, None] = {}
    for n in out:
        seen.setdefault(n, None)
    return list(seen)


def _camel(name: str) -> str:
    parts = [p for p in re.split(r"_+", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return out if not out[0].isdigit() else "M" + out


def _tree(v: Any) -> tuple:
    if isinstance(v, RuntimeScalar):
        return v.tree
    if isinstance(v, RuntimeParam):
        return ("param", v.name)
    return scalar.num(v)


def _runtime(v: Any) -> bool:
    return isinstance(v, (RuntimeScalar, RuntimeParam))


def _show(v: Any) -> str:
    if isinstance(v, TensorVal):
        return f"a tensor {v.type}"
    if isinstance(v, (Inst, InstArray)):
        return f"instance `{v.name}`"
    if isinstance(v, (RuntimeScalar, RuntimeParam)):
        return "a run-time value"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, int):
        return _show_int(v)
    return repr(v)


def _number(v: Any, span) -> int | float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        fail(f"expected a number, got {_show(v)}", span, "use an int or a float here",
             code="A031")
    return v


def _boolean(v: Any, span) -> bool:
    if not isinstance(v, bool):
        fail(f"expected true or false, got {_show(v)}", span,
             "conditions compare numbers, e.g. `if depth > 2`", code="A031")
    return v


_MAX_INT = 2 ** 63
_FLOAT32_MAX = 3.4028234663852886e38


def _arith(e: S.BinOp, a: Any, b: Any) -> Any:
    if _runtime(a) or _runtime(b):
        if e.op not in ("+", "-", "*", "/", "//", "%"):
            fail(f"`{e.op}` is not supported on a run-time value", e.span,
                 "run-time values take + - * / // %", code="A031")
        if not _runtime(a):
            _number(a, e.left.span)
        if not _runtime(b):
            _number(b, e.right.span)
            if b == 0 and e.op in ("/", "//", "%"):
                fail("division by zero", e.span, "divide by a non-zero number", code="A031")
        return RuntimeScalar(limits.check_scalar(scalar.binary(e.op, _tree(a), _tree(b)),
                                                 e.span))
    if e.op == "+" and isinstance(a, tuple) and isinstance(b, tuple):
        return a + b
    x, y = _number(a, e.left.span), _number(b, e.right.span)
    try:
        if e.op == "+":
            r = x + y
        elif e.op == "-":
            r = x - y
        elif e.op == "*":
            r = x * y
        elif e.op == "/":
            r = x / y
        elif e.op == "//":
            r = x // y
        elif e.op == "%":
            r = x % y
        elif e.op == "**":
            if isinstance(y, int) and abs(y) > 256:
                fail(f"exponent {y} is too large", e.right.span, "exponents are at most 256",
                     code="A031")
            r = x ** y
            if isinstance(r, complex):
                fail("this power has no real value", e.span, "check the sign of the base",
                     code="A031")
        else:
            raise AssertionError(e.op)
    except ZeroDivisionError:
        fail("division by zero", e.span, "divide by a non-zero number", code="A031")
    except OverflowError:
        fail("this number is too large", e.span, "static numbers fit in 64 bits", code="A031")
    if isinstance(r, int) and abs(r) >= _MAX_INT:
        fail("this number is too large", e.span, "static numbers fit in 64 bits", code="A031")
    if isinstance(r, float) and not math.isfinite(r):
        fail("this number is not finite", e.span, "check for overflow", code="A031")
    return r


def _compare(e: S.Compare, a: Any, b: Any) -> Any:
    if _runtime(a) or _runtime(b):
        return RuntimeScalar(limits.check_scalar(scalar.compare(e.op, _tree(a), _tree(b)),
                                                 e.span))
    if e.op in ("==", "!="):
        return (a == b) == (e.op == "==")
    x, y = _number(a, e.left.span), _number(b, e.right.span)
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[e.op]


def _index(seq: Any, idx: Any, e: S.Index) -> Any:
    if not isinstance(seq, tuple):
        fail(f"cannot index {_show(seq)}", e.value.span, "only lists and tuples can be indexed",
             code="A031")
    if not isinstance(idx, int) or isinstance(idx, bool):
        fail(f"an index must be an int, got {_show(idx)}", e.index.span, "e.g. xs[0]",
             code="A031")
    if not -len(seq) <= idx < len(seq):
        fail(f"index {idx} is out of range for {len(seq)} items", e.index.span,
             f"valid indices are 0..{len(seq)}", code="A031")
    return seq[idx]


def _sqrt(x):
    if x < 0:
        raise ValueError("negative argument")
    return math.sqrt(x)


_SCHEDULES = {"after": 1, "ramp": 2, "training": 2}

_BUILTINS = {
    "min": (lambda *a: min(a), None),
    "max": (lambda *a: max(a), None),
    "len": (len, 1),
    "abs": (abs, 1),
    "int": (int, 1),
    "float": (float, 1),
    "sqrt": (_sqrt, 1),
}


def _coerce(value: Any, typ: str, name: str, span, where: str = "") -> Any:
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "choice": isinstance(value, str),
    }[typ]
    if not ok:
        article = "an" if typ == "int" else "a"
        fail(f"`{name}` is {article} {typ}, but got {_show(value)}{where}", span,
             "choices are strings in quotes" if typ == "choice" else None, code="A031")
    if typ in ("int", "float") and isinstance(value, int) and abs(value) >= _MAX_INT:
        fail(f"`{name}` = {_show(value)}{where} is too large", span,
             "static numbers fit in 64 bits", code="A031")
    if typ == "float" and not math.isfinite(value):
        fail(f"`{name}` must be a finite number, got {value!r}{where}", span,
             "floats are finite: no inf or nan", code="A031")
    return float(value) if typ == "float" else value


def _show_int(value: int) -> str:
    """An int short enough to quote in a message (a 4,000-digit one is not, and Python
    refuses to print one past 4,300 digits)."""
    if abs(value) < 10 ** 30:
        return str(value)
    return f"an int of {value.bit_length()} bits"


def _in_domain(value: Any, domain: Any) -> bool:
    if isinstance(domain, tuple) and domain and domain[0] == "range" and len(domain) == 4:
        _, lo, hi, inclusive = domain
        return lo <= value <= hi if inclusive else lo <= value < hi
    return value in domain


def _show_domain(domain: Any) -> str:
    if isinstance(domain, tuple) and domain and domain[0] == "range" and len(domain) == 4:
        _, lo, hi, inclusive = domain
        return f"{lo}..{'=' if inclusive else ''}{hi}"
    return "{" + ", ".join(_show(v) for v in domain) + "}"


def _jsonable(domain: Any) -> Any:
    if domain is None:
        return None
    if isinstance(domain, tuple) and domain and domain[0] == "range" and len(domain) == 4:
        return {"lo": domain[1], "hi": domain[2], "inclusive": domain[3]}
    return list(domain)


def elaborate(model: S.Model, params: dict[str, Any] | None = None,
              budget: Budget | None = None, param_spans: dict[str, Span] | None = None
              ) -> Program:
    """Bind params and build the IR Program, or raise a located ArchcError."""
    return Elaborator(model, params or {}, budget or Budget(), param_spans).run()
