"""Gates and routing: multipliers computed from a value, the mixture of experts, and
MoHD's width routing and group fusion.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..init import weight_init
from ..ir import TensorType, Weight
from .registry import Attrs, InitAttrs, ResidualInitAttrs, op


class GateAttrs(InitAttrs):
    per: Literal["head", "channel", "token"] = "channel"
    units: int | None = Field(default=None, gt=0)
    act: Literal["sigmoid", "relu", "tanh", "softmax", "identity"] = "sigmoid"
    bias: bool = False
    bias_init: float = Field(default=0.0, allow_inf_nan=False)


@op("gate", GateAttrs,
    "multipliers computed from a value: per head ([B, H, T, 1], `units` heads), per channel "
    "([B, T, units]) or per token ([B, T, 1]); act sigmoid, relu, tanh, identity, or softmax "
    "(over the units, times their number); weights any edge by `*`", stateful=True)
def gate(c, x, a: GateAttrs):
    if a.per == "token":
        if a.units not in (None, 1):
            c.fail("a per-token gate has one unit", "drop `units`", at="units")
        units = 1
    else:
        if a.units is None:
            c.fail(f"a per-{a.per} gate needs `units=`",
                   "the number of heads (per head) or channels (per channel)", at="units")
        units = a.units
    if "bias_init" in a.model_fields_set and not a.bias:
        c.fail("bias_init sets the gate's bias, and this gate has none", "add bias=true",
               at="bias_init")
    g = c.linear(x, None, units, a.bias, hint="g", init=a.init, std=a.std,
                 bias_init=a.bias_init if a.bias_init != 0.0 else None)
    if a.act == "softmax":
        g = c.emit("softmax_scaled", [g], g.type, hint="g")
    elif a.act != "identity":
        g = c.emit(a.act, [g], g.type, hint="g")
    if a.per == "head":
        g = c.emit("gate_heads", [g], TensorType(shape=("B", units, "T", 1)), hint="g")
    return g


class MoeAttrs(ResidualInitAttrs):
    experts: int = Field(gt=0)
    k: int = Field(default=2, gt=0)
    hidden: int = Field(gt=0)
    capacity: float = Field(default=1.25, gt=0, le=1e6)  # factors of the fair share
    act: Literal["gelu", "relu", "silu"] = "gelu"
    noise: float = Field(default=0.0, ge=0)


@op("moe", MoeAttrs,
    "mixture of experts: a router sends each token to its top-k of `experts` MLPs, "
    "weighted by its renormalised router probabilities; in training each expert takes at "
    "most capacity * tokens * k / experts tokens (the rest are dropped, first choices "
    "first); in eval no token is dropped, so a token's output does not depend on the "
    "other tokens of its call (decoding equals the prefill); the load-balance loss of "
    "every application adds up in model.aux_loss()",
    stateful=True, retired=(("eval_capacity", "eval drops no token (every token gets its "
                             "top-k experts), so eval does not depend on the tokens of a "
                             "call; `capacity` applies in training"),))
def moe(c, x, a: MoeAttrs):
    d = x.type.width
    if a.k > a.experts:
        c.fail(f"top-{a.k} of {a.experts} experts", "k <= experts", at="k")
    ref = c.leaf(None, "moe", {"dim": d, "experts": a.experts, "hidden": a.hidden, "k": a.k,
                               "capacity": a.capacity,
                               "act": a.act, "noise": a.noise},
                 [Weight(name="router", shape=(a.experts, d),
                         init=weight_init(a.init, a.std)),
                  Weight(name="w_in", shape=(a.experts, a.hidden, d),
                         init=weight_init(a.init, a.std)),
                  Weight(name="w_out", shape=(a.experts, d, a.hidden),
                         init=weight_init(a.out_init, a.std))])
    return c.emit("moe", [x], x.type, {"k": a.k, "hidden": a.hidden}, ref=ref, hint="m")


class RouteAttrs(Attrs):
    groups: int = Field(gt=0)
    shared: int = Field(default=0, ge=0)
    k: int = Field(gt=0)
    weighted: bool = True
    scaling: bool = True


@op("width_route", RouteAttrs,
    "MoHD: the width is `groups` groups, the first `shared` always active and top-k of the "
    "rest chosen per token by a router; returns the input mask and the write-back weights "
    "(router weight on routed groups if `weighted`, times D / D_active if `scaling`, 0 on "
    "inactive dims): `m, w = width_route(x, ...)`", stateful=True)
def width_route(c, x, a: RouteAttrs):
    d = x.type.width
    routed = a.groups - a.shared
    if d % a.groups:
        c.fail(f"{a.groups} groups do not divide width {d}", "pick a divisor", at="groups")
    if routed <= 0 or a.k > routed:
        c.fail(f"top-{a.k} of {routed} routed groups", "need 0 < k <= groups - shared",
               at="k")
    ref = c.leaf(None, "width_route", {"dim": d, "groups": a.groups, "shared": a.shared,
                                       "k": a.k, "weighted": a.weighted, "scaling": a.scaling},
                 [Weight(name="router.weight", shape=(routed, d))])
    return c.emit_many("width_route", [x], [x.type, x.type], ref=ref, hint="m,w")


class FuseAttrs(Attrs):
    groups: int = Field(gt=0)


@op("group_fuse", FuseAttrs,
    "MoHD's group fusion: a learnable groups x groups mixing of a sublayer's output groups "
    "(starts as the identity)", stateful=True)
def group_fuse(c, x, a: FuseAttrs):
    if x.type.width % a.groups:
        c.fail(f"{a.groups} groups do not divide width {x.type.width}", "pick a divisor",
               at="groups")
    ref = c.leaf(None, "group_fuse", {"groups": a.groups},
                 [Weight(name="mix", shape=(a.groups, a.groups), init=("identity",))])
    return c.emit("group_fuse", [x], x.type, ref=ref, hint="m")
