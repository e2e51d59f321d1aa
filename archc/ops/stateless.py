"""Ops without weights: scaling, elementwise arithmetic and activations, concat and
split of the width, and the initial state of a loop.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from ..ir import TensorType
from .prims import PRIMS
from .registry import Attrs, NoAttrs, op


class ScaleAttrs(Attrs):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    by: Any


@op("scale", ScaleAttrs, "multiply by a constant (or a loop-index expression)",
    positional=("by",), per_head=True)
def scale(c, x, a: ScaleAttrs):
    return c.emit("scale", [x], x.type, {"by": c.scalar(a.by, "by")}, hint="x")


@op("add", NoAttrs, "elementwise sum", inputs=2, per_head=True)
def add(c, x, y, a):
    return c.binary("add", x, y)


@op("sum", NoAttrs, "elementwise sum of one or more tensors, e.g. sum(branches[0..n].y)",
    inputs=None, per_head=True)
def sum_(c, *xs):
    *xs, _ = xs
    total = xs[0]
    for x in xs[1:]:
        total = c.binary("add", total, x)
    return total


@op("mul", NoAttrs, "elementwise product", inputs=2, per_head=True)
def mul(c, x, y, a):
    return c.binary("mul", x, y)


def _unary(name: str, doc: str):
    @op(name, NoAttrs, doc, per_head=True)
    def fn(c, x, a):
        return c.emit(name, [x], x.type, hint=name[0])
    return fn


class LeakyAttrs(Attrs):
    slope: float = 0.01


@op("leaky_relu", LeakyAttrs, "max(x, slope * x)", positional=("slope",), per_head=True)
def leaky_relu(c, x, a: LeakyAttrs):
    return c.emit("leaky_relu", [x], x.type, {"slope": a.slope}, hint="x")


for _prim in PRIMS.values():  # each activation of the op table is a spec op
    if _prim.activation:
        _unary(_prim.name, _prim.activation)


@op("concat", NoAttrs, "concatenate along the width", inputs=None, per_head=True)
def concat(c, *xs):
    *xs, _ = xs
    first = xs[0].type
    for x in xs[1:]:
        if x.type.shape[:-1] != first.shape[:-1] or x.type.dtype != first.dtype:
            c.fail(f"concat joins values that differ only in width; got {first} and "
                   f"{x.type}", "concatenate activations [B, T, d] with activations, "
                   "per-head values with per-head values of the same heads")
    widths = [x.type.width for x in xs]
    out = TensorType(shape=first.shape[:-1] + (sum(widths),), dtype=first.dtype)
    return c.emit("concat", list(xs), out, hint="x")


class SplitAttrs(Attrs):
    model_config = ConfigDict(extra="forbid", frozen=True)
    parts: int | tuple[int, ...]


@op("split", SplitAttrs, "split the width into `parts` equal parts, or into given sizes",
    positional=("parts",), per_head=True)
def split(c, x, a: SplitAttrs):
    d = x.type.width
    if isinstance(a.parts, int):
        if a.parts <= 0 or d % a.parts:
            c.fail(f"cannot split width {d} into {a.parts} equal parts",
                   f"use a divisor of {d}, or give sizes such as [{d // 2}, {d - d // 2}]",
                   at="parts")
        sizes = (d // a.parts,) * a.parts
    else:
        sizes = a.parts
        if sum(sizes) != d or min(sizes) <= 0:
            c.fail(f"split sizes {list(sizes)} do not add up to width {d}",
                   "the sizes must be positive and sum to the width", at="parts")
    parts = [TensorType(shape=x.type.shape[:-1] + (s,), dtype=x.type.dtype) for s in sizes]
    return c.emit_many("split", [x], parts, {"sizes": sizes},
                       hint=",".join(f"p{k}" for k in range(len(sizes))))


class StateAttrs(Attrs):
    init: Literal["zeros", "trunc_normal"] = "zeros"
    std: float = Field(default=1.0, gt=0)
    scale: float = 1.0


@op("init_state", StateAttrs,
    "a loop state shaped like its input: zeros, or a truncated normal (cut at 3 std) "
    "times `scale`; its noise is a function of (seed, absolute position) in eval (seed 0 "
    "unless m(tokens, seed=...) says) and fresh on every training forward without a seed")
def init_state(c, x, a: StateAttrs):
    return c.emit("init_state", [x], x.type,
                  {"mode": a.init, "std": a.std, "scale": a.scale}, hint="s")
