"""Tensor expressions: names, arithmetic on tensors, fields (`a.q`), depth references
(`layers[j].a`) and instance-array items. Calls are in calls.py; an expression without
tensors goes to the static evaluator (consteval.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .. import limits, scalar, syntax as S
from ..errors import Span, fail
from ..ir import Ref, broadcast
from ..ops import OPS
from .consteval import _arith, _index, _number
from .scopes import Env
from .values import (_HIDDEN_FIELDS, DepthFrame, DepthStack, InstArray, Inst, RuntimeParam,
                     RuntimeScalar, TensorVal, _FutureDepth, _show, _tree)


class Expressions:
    """Evaluating expressions that make tensors; mixed into the ClassBuilder."""

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
            out = _arith(e, left, right)
            if e.op in ("/", "//", "%") and isinstance(right, (RuntimeScalar, RuntimeParam)):
                self.el.check_divisor(_tree(right), e)
            return out
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
                if e.op == "/":
                    self.el.check_divisor(_tree(other), e)
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
