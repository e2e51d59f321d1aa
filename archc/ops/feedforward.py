"""Position-wise projections: linear, the SwiGLU and MLP blocks, and top-k activation
sparsity (Lazy Neuron). The mixture of experts is in routing.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .registry import Attrs, InitAttrs, ResidualInitAttrs, op


class LinearAttrs(InitAttrs):
    out: int = Field(gt=0)
    bias: bool = False
    sigma: bool = False


@op("linear", LinearAttrs, "y = x W^T (+ b)", stateful=True)
def linear(c, x, a: LinearAttrs):
    return c.linear(x, None, a.out, a.bias, init=a.init, std=a.std)


class SwigluAttrs(ResidualInitAttrs):
    hidden: int = Field(gt=0)
    sigma: bool = False


@op("swiglu", SwigluAttrs, "down(silu(gate(x)) * up(x))", stateful=True)
def swiglu(c, x, a: SwigluAttrs):
    d = x.type.width
    g = c.linear(x, "gate", a.hidden, False, hint="g", init=a.init, std=a.std)
    u = c.linear(x, "up", a.hidden, False, hint="u", init=a.init, std=a.std)
    g = c.emit("silu", [g], g.type, hint="g")
    h = c.emit("mul", [g, u], g.type, hint="m")
    return c.linear(h, "down", d, False, hint="m", init=a.out_init, std=a.std)


class MlpAttrs(ResidualInitAttrs):
    hidden: int = Field(gt=0)
    act: Literal["gelu", "relu", "silu"] = "gelu"
    bias: bool = False
    out: int | None = Field(default=None, gt=0)
    sigma: bool = False


@op("mlp", MlpAttrs, "down(act(up(x))), act gelu by default", stateful=True)
def mlp(c, x, a: MlpAttrs):
    h = c.linear(x, "up", a.hidden, a.bias, hint="m", init=a.init, std=a.std)
    h = c.emit(a.act, [h], h.type, hint="m")
    return c.linear(h, "down", a.out or x.type.width, a.bias, hint="m", init=a.out_init,
                    std=a.std)


class TopkAttrs(Attrs):
    k: int = Field(gt=0)


@op("topk", TopkAttrs, "keep the k largest activations of each token, zero the rest "
    "(Lazy Neuron activation sparsity)", positional=("k",))
def topk(c, x, a: TopkAttrs):
    if a.k > x.type.width:
        c.fail(f"k={a.k} is more than the width {x.type.width}", "k <= width", at="k")
    return c.emit("topk", [x], x.type, {"k": a.k}, hint="m")
