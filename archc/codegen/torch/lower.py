"""The torch backend's lowering tables: one PyTorch expression per IR primitive, and one
module constructor per weight-carrying leaf.

What the backend supports is the keys of these tables (`archc backends` prints the
coverage against archc/ops/prims.py). A lowering is `(args, attrs, ctx) -> str`: `args`
are the Python names of the node's inputs, `attrs` its attributes, and `ctx` (a
`LowerContext`, implemented by the emitter) answers what only the emitter knows: the
module a node calls, its cache slot, a rotary table's local name, and the names of the
forward's context (cache, seed, training flag). A lowering never reads emitter locals.
"""

from __future__ import annotations

from typing import Callable, Protocol

from ..escape import literal, py_str


class LowerContext(Protocol):
    """What a lowering may ask of the emitter about the node it lowers."""

    module: str  # the module the node calls (`self.blocks[i].attn.q`), or "" if none
    cache: str  # the KV cache of this forward (None when there is none)
    seed: str  # the noise seed of this forward
    training: str  # the training flag

    def ref(self, ref) -> str: ...  # another module of the block, by its IR Ref

    def slot(self) -> str: ...  # the node's KV-cache slot (an int expression)

    def rope(self, table: str) -> str: ...  # the local holding a rotary table

    def scalar(self, value) -> str: ...  # a run-time scalar (a tree) or a constant


Lower = Callable[[list[str], dict, LowerContext], str]


def _call(a, attrs, ctx) -> str:
    return f"{ctx.module}({', '.join(a)})"


def _binary(symbol: str) -> Lower:
    return lambda a, attrs, ctx: f"{a[0]} {symbol} {a[1]}"


def _fn(name: str) -> Lower:
    return lambda a, attrs, ctx: f"{name}({a[0]})"


def _rt(name: str, *keys: str) -> Lower:
    """`rt.name(inputs..., attrs[key]...)`: a runtime function of its inputs and options."""
    def lower(a, attrs, ctx):
        return f"rt.{name}({', '.join(list(a) + [literal(attrs[k]) for k in keys])})"
    return lower


def _attend(a, attrs, ctx) -> str:
    opts = []
    if not attrs.get("causal", True):
        opts.append("causal=False")
    if attrs.get("alibi"):
        opts.append("alibi=True")
    extra = "".join(f", {o}" for o in opts)
    return f"rt.attend({a[0]}, {a[1]}, {a[2]}{extra})"


def _scan_attend(a, attrs, ctx) -> str:
    raise AssertionError("scan_attend is emitted with its block, as rt.recurrent_scan "
                         "(emit._ClassEmitter._scan), not as an expression")


def _select_kv(a, attrs, ctx) -> str:
    return (f"rt.select_kv({ctx.training}, {attrs['p']!r}, {py_str(attrs['infer'])}, "
            f"({a[0]}, {a[1]}), ({a[2]}, {a[3]}))")


def _depth_mix(a, attrs, ctx) -> str:
    n = attrs["n"]
    ks, vs = a[1:1 + n], a[1 + n:]
    return f"rt.depth_mix({a[0]}, [{', '.join(ks)}], [{', '.join(vs)}])"


def _head_loop(a, attrs, ctx) -> str:
    rope = ctx.rope(attrs["table"]) if attrs.get("table") else "None"
    return (f"{ctx.module}({a[0]}, {a[1]}, {a[2]}, {ctx.ref(attrs['attn'])}, {rope}, "
            f"{ctx.cache}, {ctx.slot()})")


def _init_state(a, attrs, ctx) -> str:
    if attrs["mode"] == "zeros":
        return f"torch.zeros_like({a[0]})"
    return (f"rt.state_noise({a[0]}, std={attrs['std']!r}, scale={attrs['scale']!r}, "
            f"seed={ctx.seed}, start=rt.cache_start({ctx.cache}), training={ctx.training})")


LOWERINGS: dict[str, Lower] = {
    # modules that hold weights: the graph calls them
    **{op: _call for op in ("embed", "linear", "lora", "rmsnorm", "layernorm", "layerscale",
                            "scalar", "bias", "moe", "width_route", "group_fuse",
                            "batchnorm", "repbn", "sigma_linear", "ds_linear", "dwconv",
                            "partition_norm", "rotate", "hyper", "delta")},
    "tied_linear": lambda a, attrs, ctx: f"F.linear({a[0]}, {ctx.module}.weight)",
    # attention pieces
    "heads": lambda a, attrs, ctx: f"rt.split_heads({a[0]}, {attrs['n']})",
    "merge_heads": _rt("merge_heads"),
    "rope": lambda a, attrs, ctx: f"rt.apply_rope({a[0]}, {ctx.rope(attrs['table'])})",
    "attend": _attend,
    "scan_attend": _scan_attend,
    "kv_cache": lambda a, attrs, ctx: f"rt.kv_cache({ctx.cache}, {ctx.slot()}, {a[0]}, {a[1]})",
    "select_kv": _select_kv,
    "depth_mix": _depth_mix,
    "gate_heads": _rt("gate_heads"),
    "softmax_scaled": _rt("softmax_scaled"),
    "linear_attend": _rt("linear_attend"),
    "head_loop": _head_loop,
    # routing
    "drop_path": lambda a, attrs, ctx: f"rt.drop_path({a[0]}, {attrs['p']!r}, {ctx.training})",
    "topk": lambda a, attrs, ctx: f"rt.topk_keep({a[0]}, {attrs['k']})",
    # residual streams
    "horn": lambda a, attrs, ctx: f"rt.horn({a[0]}, {attrs['dc']}, rt.cache_start({ctx.cache}))",
    "hyper_write": _rt("hyper_write", "n"),
    "expand_streams": _rt("expand_streams", "n"),
    "merge_streams": _rt("merge_streams", "n"),
    # elementwise
    "add": _binary("+"),
    "sub": _binary("-"),
    "mul": _binary("*"),
    "neg": lambda a, attrs, ctx: f"-{a[0]}",
    "scale": lambda a, attrs, ctx: f"{a[0]} * {ctx.scalar(attrs['by'])}",
    "leaky_relu": lambda a, attrs, ctx: f"F.leaky_relu({a[0]}, {attrs['slope']!r})",
    "silu": _fn("F.silu"),
    "gelu": _fn("F.gelu"),
    "relu": _fn("F.relu"),
    "sigmoid": _fn("torch.sigmoid"),
    "tanh": _fn("torch.tanh"),
    "softplus": _fn("F.softplus"),
    "lerp": lambda a, attrs, ctx: f"torch.lerp({a[0]}, {a[1]}, {a[2]})",
    # layout
    "concat": lambda a, attrs, ctx: f"torch.cat([{', '.join(a)}], dim=-1)",
    "split": lambda a, attrs, ctx: f"{a[0]}.split({list(attrs['sizes'])}, dim=-1)",
    "init_state": _init_state,
}


# ----------------------------------------------------------------------------- leaves
# The module each weight-carrying leaf builds, from the leaf's args.

def _linear(a: dict) -> str:
    if a.get("bias_init") is not None:
        return f"rt.linear({a['in']}, {a['out']}, bias_init={a['bias_init']!r})"
    return f"nn.Linear({a['in']}, {a['out']}, bias={a['bias']})"


def _rmsnorm(a: dict) -> str:
    affine = "" if a.get("affine", True) else ", elementwise_affine=False"
    return f"nn.RMSNorm({a['dim']}, eps={a['eps']!r}{affine})"


def _layernorm(a: dict) -> str:
    if a.get("affine", True):
        return f"nn.LayerNorm({a['dim']}, eps={a['eps']!r}, bias={a['bias']})"
    return f"nn.LayerNorm({a['dim']}, eps={a['eps']!r}, elementwise_affine=False)"


def _runtime(cls: str, positional: tuple[str, ...], keywords: tuple[str, ...]):
    """`cls(positional..., keyword=...)` from the leaf's args of those names."""
    def build(a: dict) -> str:
        args = [literal(a[k]) for k in positional] + [f"{k}={literal(a[k])}" for k in keywords]
        return f"{cls}({', '.join(args)})"
    return build


LEAVES: dict[str, Callable[[dict], str]] = {
    "linear": _linear,
    "embed": lambda a: f"nn.Embedding({a['vocab']}, {a['dim']})",
    "rmsnorm": _rmsnorm,
    "layernorm": _layernorm,
    "bias": lambda a: f"rt.Bias({', '.join(str(s) for s in a['shape'])})",
    "lora": _runtime("rt.LoRA", ("in", "out"), ("rank", "scale")),
    "layerscale": _runtime("rt.LayerScale", ("dim",), ("init",)),
    "scalar": _runtime("rt.Scalar", (), ("init",)),
    "hyper": _runtime("rt.HyperConnection", ("n", "dim"), ("alpha", "iters")),
    "batchnorm": _runtime("rt.TokenBatchNorm", ("dim",), ("eps", "momentum")),
    "repbn": _runtime("rt.RepBN", ("dim",), ("eps", "momentum")),
    "sigma_linear": _runtime("rt.SigmaLinear", ("in", "out"), ("bias",)),
    "ds_linear": _runtime("rt.DSLinear", ("in", "out"), ("rank", "nnz", "bias")),
    "dwconv": _runtime("rt.CausalDepthwiseConv", ("channels",), ("kernel",)),
    "moe": _runtime("rt.MoE", ("dim",), ("experts", "hidden", "k", "capacity", "act",
                                         "noise")),
    "width_route": _runtime("rt.WidthRouter", ("dim",), ("groups", "shared", "k",
                                                         "weighted", "scaling")),
    "group_fuse": _runtime("rt.GroupFusion", ("groups",), ()),
    "partition_norm": _runtime("rt.PartitionNorm", ("dim",), ("parts", "dc", "eps")),
    "rotate": _runtime("rt.PhaseRotation", ("dim",), ("parts", "dc")),
    "head_loop": _runtime("rt.HeadLoop", ("count",), ("heads", "kv_heads", "head_dim")),
    "delta": _runtime("rt.DeltaResidual", ("dim",), ("beta_init",)),
}


def leaf_expr(op: str, args: dict) -> str:
    """The constructor of a leaf's module."""
    return LEAVES[op](args)
