"""IR primitives: the ops that appear in the graph after elaboration.

Each primitive is declared once here: how it lowers to PyTorch (one expression), whether
it calls its module, and whether it is elementwise (what the fuse pass looks for). Spec
ops such as `attention` are macros in `library.py` that expand into these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Lower = Callable[[list[str], dict, str | None], str]


@dataclass(frozen=True)
class Prim:
    name: str
    lower: Lower
    elementwise: bool = False
    calls_module: bool = False


def _call(args, attrs, mod):
    return f"{mod}({', '.join(args)})"


def _binary(symbol: str) -> Lower:
    return lambda a, attrs, mod: f"{a[0]} {symbol} {a[1]}"


def _fn(name: str) -> Lower:
    return lambda a, attrs, mod: f"{name}({a[0]})"


def _scale(a, attrs, mod):
    return f"{a[0]} * {attrs['by']}"


def _sdpa(a, attrs, mod):
    extra = ", is_causal=True" if attrs.get("causal") else ""
    if attrs.get("gqa"):
        extra += ", enable_gqa=True"
    return f"F.scaled_dot_product_attention({a[0]}, {a[1]}, {a[2]}{extra})"


def _concat(a, attrs, mod):
    return f"torch.cat([{', '.join(a)}], dim=-1)"


def _split(a, attrs, mod):
    return f"{a[0]}.split({list(attrs['sizes'])}, dim=-1)"


def _init_state(a, attrs, mod):
    if attrs["mode"] == "zeros":
        return f"torch.zeros_like({a[0]})"
    return f"rt.trunc_normal_like({a[0]}, std={attrs['std']!r}, scale={attrs['scale']!r})"


PRIMS: dict[str, Prim] = {p.name: p for p in [
    # modules that hold weights: the graph calls them
    Prim("embed", _call, calls_module=True),
    Prim("linear", _call, calls_module=True),
    Prim("lora", _call, calls_module=True),
    Prim("rmsnorm", _call, calls_module=True),
    Prim("layernorm", _call, calls_module=True),
    Prim("layerscale", _call, elementwise=True, calls_module=True),
    Prim("scalar", _call, elementwise=True, calls_module=True),
    Prim("bias", _call, elementwise=True, calls_module=True),
    Prim("tied_linear", lambda a, attrs, mod: f"F.linear({a[0]}, {mod}.weight)"),
    # attention pieces
    Prim("heads", lambda a, attrs, mod: f"rt.split_heads({a[0]}, {attrs['n']})"),
    Prim("merge_heads", lambda a, attrs, mod: f"rt.merge_heads({a[0]})"),
    Prim("rope", lambda a, attrs, mod: f"rt.apply_rope({a[0]}, {attrs['table']})"),
    Prim("sdpa", _sdpa),
    # elementwise
    Prim("add", _binary("+"), elementwise=True),
    Prim("sub", _binary("-"), elementwise=True),
    Prim("mul", _binary("*"), elementwise=True),
    Prim("neg", lambda a, attrs, mod: f"-{a[0]}", elementwise=True),
    Prim("scale", _scale, elementwise=True),
    Prim("silu", _fn("F.silu"), elementwise=True),
    Prim("gelu", _fn("F.gelu"), elementwise=True),
    Prim("relu", _fn("F.relu"), elementwise=True),
    Prim("sigmoid", _fn("torch.sigmoid"), elementwise=True),
    Prim("tanh", _fn("torch.tanh"), elementwise=True),
    Prim("lerp", lambda a, attrs, mod: f"torch.lerp({a[0]}, {a[1]}, {a[2]})", elementwise=True),
    # layout
    Prim("concat", _concat),
    Prim("split", _split),
    Prim("init_state", _init_state),
]}
