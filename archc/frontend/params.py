"""Binding params: the model's (with overrides and search domains) and a block's.

A model param is typed (int, float, bool, choice), has a default and an optional domain;
an override from the command line or `archc.load(spec, name=value)` is checked against
both. A block's static params key its class; its run-time params are numbers kept on
each instance (`_instance_args`).
"""

from __future__ import annotations

import math
from typing import Any

from .. import names, syntax as S
from ..errors import Span, fail
from ..ir import ParamInfo
from ..ops import OPS
from ..ops.registry import suggest
from .consteval import _MAX_INT, _number
from .scopes import Env
from .values import Inst, RuntimeParam, RuntimeScalar, _runtime, _show


class ParamBinding:
    """Binding model and block params; mixed into the Elaborator."""

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
