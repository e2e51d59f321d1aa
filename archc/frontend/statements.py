"""Statements of a block body: assignments, `let` instances, `if`, `return`.

`for` and `loop` are regions (regions.py); expressions are in expressions.py.
"""

from __future__ import annotations

from typing import Any

from .. import limits, names, syntax as S
from ..errors import Span, fail
from ..ops import OPS
from .consteval import _boolean
from .scopes import Env
from .values import Inst, InstArray, Returned, RuntimeParam, TensorVal, _show


class Statements:
    """Running statements; mixed into the ClassBuilder."""

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
