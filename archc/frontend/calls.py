"""Calls: of an op (expanded into primitives through its OpCtx), of a block (one class per
specialization, called by a `call` node), of a named instance, and the `with` adapters
(lora, untie) an instance call may carry inside a loop.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .. import syntax as S
from ..errors import Span, fail
from ..identity.record import record_application
from ..init import choices_hint
from ..ir import BlockInst, Call, Group, Module, walk
from ..ops import ADAPTERS, OPS
from ..ops.registry import suggest
from .consteval import _BUILTINS, _FLOAT32_MAX, _SCHEDULES
from .opctx import OpCtx
from .params import _instance_args
from .scopes import Env, _place, _strip
from .values import AdaptCfg, Inst, TensorVal, _show


class Calls:
    """Calling ops, blocks and instances; mixed into the ClassBuilder."""

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
        call = Call(cls=cls, iteration=adapt.var if adapt is not None else None)
        callee = self.el.classes[cls]
        types = [callee.graph.types[o] for o in callee.graph.outputs]
        out, *extra = self.emit("call", inputs, types, ref=inst.ref, span=span, hint="y",
                                call=call)
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
        _check_inputs(opdef, inputs, e)
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

    def _check_head_loops_unadapted(self, adapt: AdaptCfg) -> None:
        """A head loop reruns its attention's projections from their weights alone: with
        lora on those linears it would compute something other than the adapted
        attention, so the combination is refused (found by bench/fuzz.py --seed 13)."""
        for node in walk(self.gb.graph):
            attn = node.attr("attn") if node.op == "head_loop" else None
            if attn is not None and any(p[:len(attn.path)] == attn.path
                                        for p in self.lora_refs):
                fail("this head loop reruns its attention's projections without their lora "
                     "deltas, so it would not compute the adapted attention", node.span,
                     "keep lora off that attention (lora(targets=[...]) naming other "
                     "linears), or drop the head loop", code="A034",
                     labels=[(adapt.span, "lora adapts the attention here")])

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
            self._check_head_loops_unadapted(adapt)
        for t in adapt.untie:
            if t not in self.untie_hits:
                fail(f"untie `{t}` matches no instance in block `{self.name}`", adapt.span,
                     "name an op (rmsnorm) or an instance made in the block", code="A034")


def _check_inputs(opdef, inputs: list[TensorVal], e: S.Call) -> None:
    """The tensor inputs an op refuses, said at the argument where it can tell which:
    token ids (`tokens`, integers) anywhere but an op that reads them (embed), where they
    would be treated as activations, which they are not; then a per-head value for an op
    whose shape rule is for activations [B, T, d] (OpDef.refuses)."""
    if not opdef.reads_tokens:
        aligned = len(inputs) == len(e.args)
        for k, value in enumerate(inputs):
            if value.type.dtype == "long":
                fail(f"`{opdef.name}` takes activations, but this is {_show(value)} of token "
                     "ids", e.args[k].span if aligned else e.span,
                     "embed the tokens first: `x = embed(tokens, vocab=..., dim=...)`",
                     code="A031")
    k = opdef.refuses([v.type for v in inputs])
    if k is None:
        return
    span = e.args[k].span if opdef.inputs is not None and k < len(e.args) else e.span
    fail(f"`{opdef.name}` takes activations [B, T, d]; this is {inputs[k].type}", span,
         "a per-head value (an attention's q, k, v or heads) goes to elementwise ops, "
         "concat or head_loop; use the attention's output for its merged heads",
         code="A013")
