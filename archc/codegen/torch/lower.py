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


# prims emitted with their whole block rather than as an expression
EMITTED_WITH_BLOCK = frozenset({"scan_attend"})


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


# ----------------------------------------------------------------------------- decompositions
# The simple prims that archc/passes/decompose.py writes composites in (ops/simple_prims.py).


def _weight(a, attrs, ctx) -> str:
    """`self.delta.beta.weight`, or one entry of it, viewed with the rank of the
    activations it meets (a bias [n] as [1, 1, n])."""
    text = f"{ctx.module}.{attrs['name']}"
    if attrs.get("item") is not None:
        text += f"[{int(attrs['item'])}]"
    view = attrs.get("view")
    return text if view is None else f"{text}.view({', '.join(str(int(s)) for s in view)})"


def _dims(dims: tuple) -> str:
    ints = [str(int(d)) for d in dims]
    return ints[0] if len(ints) == 1 else f"({', '.join(ints)})"


def _reduce(a, attrs, ctx) -> str:
    how = {"sum": "sum", "amax": "amax", "mean": "mean"}[attrs["how"]]
    keep = ", keepdim=True" if attrs.get("keepdim") else ""
    return f"{a[0]}.{how}({_dims(attrs['dims'])}{keep})"


def _head_rows(a, attrs, ctx) -> str:
    """The rows of a [heads * dh, d] projection that hold the given heads, in order."""
    dh = int(attrs["dh"])
    return f"({a[0]}[:, None] * {dh} + torch.arange({dh}, device={a[0]}.device)).flatten()"


SIMPLE_LOWERINGS: dict[str, Lower] = {
    "weight": _weight,
    "affine": lambda a, attrs, ctx: f"F.linear({', '.join(a)})",
    "rms_norm": lambda a, attrs, ctx: (f"F.rms_norm({a[0]}, ({int(attrs['dim'])},), {a[1]}, "
                                       f"eps={float(attrs['eps'])!r})"),
    "normalize": lambda a, attrs, ctx: (f"F.normalize({a[0]}, dim=-1, "
                                        f"eps={float(attrs['eps'])!r})"),
    "reduce": _reduce,
    "matmul": _binary("@"),
    "einsum": lambda a, attrs, ctx: f"torch.einsum({py_str(attrs['equation'])}, {', '.join(a)})",
    "div": _binary("/"),
    "exp": _fn("torch.exp"),
    "softmax": lambda a, attrs, ctx: f"torch.softmax({a[0]}, dim=-1)",
    "topk_mask": lambda a, attrs, ctx: (f"torch.zeros_like({a[0]}).scatter(-1, "
                                        f"{a[0]}.topk({int(attrs['k'])}, dim=-1).indices, 1.0)"),
    "fill": lambda a, attrs, ctx: (f"{a[0]}.new_full((*{a[0]}.shape[:-1], "
                                   f"{int(attrs['width'])}), {float(attrs['value'])!r})"),
    "repeat_interleave": lambda a, attrs, ctx: (f"{a[0]}.repeat_interleave("
                                                f"{int(attrs['repeats'])}, -1)"),
    "unflatten": lambda a, attrs, ctx: (f"{a[0]}.unflatten(-1, "
                                        f"({', '.join(str(int(s)) for s in attrs['sizes'])}))"),
    "flatten": lambda a, attrs, ctx: f"{a[0]}.flatten(-2)",
    "index_select": lambda a, attrs, ctx: f"{a[0]}.index_select({int(attrs['dim'])}, {a[1]})",
    "index_copy": lambda a, attrs, ctx: (f"{a[0]}.index_copy({int(attrs['dim'])}, {a[1]}, "
                                         f"{a[2]})"),
    "floordiv": lambda a, attrs, ctx: f"{a[0]} // {int(attrs['by'])}",
    "head_rows": _head_rows,
    "head_select": lambda a, attrs, ctx: f"rt.chosen_heads({ctx.module}, {a[0]}, {a[1]})",
    "eval_only": lambda a, attrs, ctx: (f"rt.eval_only({a[0]}, {ctx.training}, "
                                        f"{py_str(attrs['what'])}, "
                                        f"{literal(attrs.get('where'))})"),
}


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
    **SIMPLE_LOWERINGS,
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
