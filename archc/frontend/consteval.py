"""The static-expression evaluator: a tiny pure language, never Python eval.

Widths, counts, options and conditions are expressions over numbers, bools, strings,
tuples and ranges, with min/max/len/abs/int/float/sqrt. A value known only at run time
(a run-time param, a loop index, a schedule over the training step) evaluates to a
`RuntimeScalar`, an archc.scalar tree; only loop counts and scales may take one.
Every overflow, division by zero or non-finite result is an archc error here, so
nothing the spec computes escapes as a Python exception.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from .. import limits, scalar, syntax as S
from ..errors import fail
from ..ops import OPS
from ..ops.registry import suggest
from .scopes import Env
from .values import (Inst, InstArray, RuntimeParam, RuntimeScalar, TensorVal, _runtime, _show,
                     _tree)


class StaticEval:
    """Evaluating static expressions; mixed into the Elaborator (which holds the bound
    `globals`, `param_info`, `blocks` and the `budget`)."""

    def index_frame(self, frame):
        """Remember the range of a loop's index (its IR name), for check_divisor."""
        if frame.sym is not None:
            self.index_bounds[frame.sym] = (frame.count, frame.var or "the loop index")
        return frame

    def check_divisor(self, tree: tuple, e: S.BinOp) -> None:
        """A run-time divisor that reads only loop indices is checked at every index the
        loops can take: `1 / (j - 1)` in `loop j in r max 3` divides by zero at j = 1,
        which would otherwise surface in the built module as a ZeroDivisionError."""
        bounds = self.index_bounds
        names = sorted(scalar.free(tree, "var"))
        if scalar.free(tree, "param") or scalar.free(tree, "attr") or \
                any(n not in bounds for n in names) or \
                math.prod(bounds[n][0] for n in names) > 4096:
            return  # it depends on values only known at run time
        for values in itertools.product(*(range(bounds[n][0]) for n in names)):
            env = dict(zip(names, values))
            if scalar.evaluate(tree, env) == 0:
                where = ", ".join(f"{bounds[n][1]} = {v}" for n, v in env.items())
                fail(f"division by zero when {where}", e.span,
                     "divide by a value that is never 0 at any index, e.g. (j + 1)",
                     code="A031")

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
            left, right = self.eval_static(e.left, env), self.eval_static(e.right, env)
            out = _arith(e, left, right)
            if e.op in ("/", "//", "%") and _runtime(right):
                self.check_divisor(_tree(right), e)
            return out
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
