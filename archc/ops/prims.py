"""IR primitives: the ops that appear in the graph after elaboration.

Each primitive is declared once here: how it lowers to PyTorch (one expression), whether
it calls its module, whether it is elementwise (what the fuse pass looks for), and its FLOP
rule (what `archc.cost` counts). Spec ops such as `attention` are macros in `library.py`
that expand into these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from ..codegen.escape import py_str

Lower = Callable[[list[str], dict, str | None], str]


class Flops(NamedTuple):
    """Forward FLOPs of one application of a primitive, per token.

    `matmul` counts what torch.utils.flop_counter counts: 2 per multiply-add of a matrix
    product (mm, bmm, attention's two products; bias adds and softmax excluded).
    `vector` estimates the elementwise and reduction work (one per output element for a
    simple op, a few for norms, activations and softmax).
    """

    matmul: int = 0
    vector: int = 0


@dataclass(frozen=True)
class FlopInput:
    """What a FLOP rule reads: the node's types and attributes, the weights it calls (a
    `Leaf`, or None) and the sequence length (attention attends over `seq` keys)."""

    ins: tuple  # input TensorTypes
    outs: tuple  # output TensorTypes
    attrs: dict
    module: Any
    seq: int


FlopRule = Callable[[FlopInput], Flops]


def per_token(t) -> int:
    """Elements of a [B, T, ...] or [B, heads, T, ...] tensor per token (batch and sequence
    are the symbolic dims)."""
    n = 1
    for d in t.shape:
        if isinstance(d, int):
            n *= d
    return n


def no_flops(f: FlopInput) -> Flops:
    return Flops()


def per_element(k: int) -> FlopRule:
    """k vector FLOPs per output element."""
    return lambda f: Flops(0, k * per_token(f.outs[0]))


def _linear_flops(f: FlopInput) -> Flops:
    d_in, d_out = f.ins[0].shape[-1], f.outs[0].shape[-1]
    bias = bool(dict(f.module.args).get("bias")) if f.module is not None else False
    return Flops(2 * d_in * d_out, d_out if bias else 0)


def _lora_flops(f: FlopInput) -> Flops:
    d_in, d_out = f.ins[0].shape[-1], f.outs[0].shape[-1]
    rank = dict(f.module.args)["rank"]
    return Flops(2 * rank * (d_in + d_out), d_out)


def _sdpa_flops(f: FlopInput) -> Flops:
    """Scores q k^T and the weighted sum over v at `seq` keys, counted in full as torch
    counts scaled_dot_product_attention (a causal mask does not halve the count).

    An attention over its block's own past output (`past="output"`) runs as a scan whose
    tiled prefill multiplies each query only with the keys of earlier positions (the
    diagonal is elementwise): seq * (seq - 1) / 2 pairs, so (seq - 1) / 2 keys per token.
    """
    heads, d_qk = f.ins[0].shape[1], f.ins[0].shape[-1]
    d_v = f.ins[2].shape[-1]
    if f.attrs.get("past") == "output":
        return Flops(heads * (f.seq - 1) * (d_qk + d_v), 5 * heads * f.seq)
    return Flops(2 * heads * f.seq * (d_qk + d_v), 5 * heads * f.seq)


@dataclass(frozen=True)
class Prim:
    name: str
    lower: Lower
    elementwise: bool = False
    calls_module: bool = False
    flops: FlopRule | None = None  # None: not declared; the cost model counts it as 0
    # why a node with these attrs cannot be decoded incrementally with a KV cache, and
    # what to do instead (None: it can); a cache gives a position only what it keeps of
    # earlier positions: their keys and values
    no_decode: Callable[[dict], tuple[str, str] | None] | None = None


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


def _attend(a, attrs, mod):
    opts = []
    if not attrs.get("causal", True):
        opts.append("causal=False")
    if attrs.get("alibi"):
        opts.append("alibi=True")
    extra = "".join(f", {o}" for o in opts)
    return f"rt.attend({a[0]}, {a[1]}, {a[2]}{extra})"


def _reads_later_positions(causal_by_default: bool) -> Callable[[dict], tuple | None]:
    """A non-causal attention's output at a position depends on later positions (`attend`
    is causal unless told otherwise, `sdpa` only when told so)."""
    def rule(attrs: dict) -> tuple[str, str] | None:
        if attrs.get("causal", causal_by_default):
            return None
        return ("attention(..., causal=false) attends to later positions, which a KV cache "
                "(earlier positions only) cannot hold",
                "run whole sequences without a cache (m(tokens)), or make it causal")
    return rule


def _state_not_cached(what: str) -> Callable[[dict], tuple[str, str]]:
    """An op that carries state across positions which the KV cache does not keep yet."""
    return lambda attrs: (f"{what} is not kept in the KV cache yet",
                          "run whole sequences without a cache (m(tokens))")


def _depth_mix(a, attrs, mod):
    n = attrs["n"]
    ks, vs = a[1:1 + n], a[1 + n:]
    return f"rt.depth_mix({a[0]}, [{', '.join(ks)}], [{', '.join(vs)}])"


def _depth_mix_flops(f: FlopInput) -> Flops:
    """Scores against n same-position keys and their weighted sum: elementwise work."""
    kv = per_token(f.outs[0])
    return Flops(0, 4 * f.attrs["n"] * kv)


def _hyper_flops(f: FlopInput) -> Flops:
    """The coefficient projection (a matmul over the n*d streams) and the stream mix."""
    nd = f.ins[0].shape[-1]
    k = f.outs[1].shape[-1] + f.outs[0].shape[-1] // max(1, nd // f.outs[0].shape[-1])
    n = nd // f.outs[0].shape[-1]
    return Flops(2 * nd * (2 * n + n * n), 4 * nd + 40 * n * n + k)


def _hyper_write_flops(f: FlopInput) -> Flops:
    nd = f.ins[0].shape[-1]
    n = nd // f.ins[2].shape[-1]
    return Flops(2 * n * nd, 2 * nd)


def _delta_flops(f: FlopInput) -> Flops:
    d = f.ins[0].shape[-1]
    return Flops(4 * d, 8 * d)


def _head_loop(a, attrs, mod):
    rope = attrs.get("table") or "None"
    return f"{mod}({a[0]}, {a[1]}, {a[2]}, {attrs['attn']}, {rope}, cache, {attrs['slot']})"


def _head_loop_flops(f: FlopInput) -> Flops:
    """The looped heads' q/k/v projections, their attention at `seq` keys, and their
    share of the output projection."""
    d = f.ins[0].shape[-1]
    dh = f.ins[2].shape[-1]
    n = f.attrs["heads"]
    proj = 2 * d * n * dh * 4
    attention = 2 * n * f.seq * 2 * dh
    return Flops(proj + attention, 5 * n * f.seq + 2 * d)


def _moe_flops(f: FlopInput) -> Flops:
    """The router, and each token's k experts: exact in eval (nothing is dropped there);
    in training capacity drops make the measured work a little lower."""
    d = f.ins[0].shape[-1]
    a = dict(f.module.args)
    return Flops(2 * d * a["experts"] + a["k"] * 2 * 2 * d * a["hidden"],
                 5 * a["experts"] + a["k"] * (8 * a["hidden"] + d))


def _route_flops(f: FlopInput) -> Flops:
    d = f.ins[0].shape[-1]
    a = dict(f.module.args)
    routed = a["groups"] - a["shared"]
    return Flops(2 * d * routed, 5 * routed + 2 * d)


def _fuse_flops(f: FlopInput) -> Flops:
    d = f.ins[0].shape[-1]
    g = dict(f.module.args)["groups"]
    return Flops(2 * d * g, 0)


def _ds_flops(f: FlopInput) -> Flops:
    """x S then D: the factorised product as computed in training (S held dense)."""
    a = dict(f.module.args)
    return Flops(2 * a["in"] * a["rank"] + 2 * a["rank"] * a["out"], a["out"])


def _dwconv_flops(f: FlopInput) -> Flops:
    """A depthwise convolution counts as torch counts convolutions: 2 k per output."""
    k = dict(f.module.args)["kernel"]
    return Flops(2 * k * per_token(f.outs[0]), 0)


def _linear_attend_flops(f: FlopInput) -> Flops:
    """Per head: q against the running sum of k v^T (a batched matmul), the outer product
    k v^T and the running sums themselves (elementwise)."""
    heads, dh = f.ins[0].shape[1], f.ins[0].shape[-1]
    return Flops(2 * heads * dh * dh, heads * (3 * dh * dh + 4 * dh))


def _select_kv(a, attrs, mod):
    return (f"rt.select_kv(self.training, {attrs['p']!r}, {py_str(attrs['infer'])}, "
            f"({a[0]}, {a[1]}), ({a[2]}, {a[3]}))")


def _concat(a, attrs, mod):
    return f"torch.cat([{', '.join(a)}], dim=-1)"


def _split(a, attrs, mod):
    return f"{a[0]}.split({list(attrs['sizes'])}, dim=-1)"


def _init_state(a, attrs, mod):
    if attrs["mode"] == "zeros":
        return f"torch.zeros_like({a[0]})"
    return (f"rt.state_noise({a[0]}, std={attrs['std']!r}, scale={attrs['scale']!r}, "
            "seed=seed, start=rt.cache_start(cache), training=self.training)")


PRIMS: dict[str, Prim] = {p.name: p for p in [
    # modules that hold weights: the graph calls them
    Prim("embed", _call, calls_module=True, flops=no_flops),
    Prim("linear", _call, calls_module=True, flops=_linear_flops),
    Prim("lora", _call, calls_module=True, flops=_lora_flops),
    Prim("rmsnorm", _call, calls_module=True, flops=per_element(4)),
    Prim("layernorm", _call, calls_module=True, flops=per_element(5)),
    Prim("layerscale", _call, elementwise=True, calls_module=True,
         flops=per_element(1)),
    Prim("scalar", _call, elementwise=True, calls_module=True, flops=per_element(1)),
    Prim("bias", _call, elementwise=True, calls_module=True, flops=per_element(1)),
    Prim("tied_linear", lambda a, attrs, mod: f"F.linear({a[0]}, {mod}.weight)",
         flops=_linear_flops),
    # attention pieces
    Prim("heads", lambda a, attrs, mod: f"rt.split_heads({a[0]}, {attrs['n']})",
         flops=no_flops),
    Prim("merge_heads", lambda a, attrs, mod: f"rt.merge_heads({a[0]})", flops=no_flops),
    Prim("rope", lambda a, attrs, mod: f"rt.apply_rope({a[0]}, {attrs['table']})",
         flops=per_element(3)),
    Prim("sdpa", _sdpa, flops=_sdpa_flops, no_decode=_reads_later_positions(False)),
    Prim("attend", _attend, flops=_sdpa_flops, no_decode=_reads_later_positions(True)),
    Prim("kv_cache", lambda a, attrs, mod: f"rt.kv_cache(cache, {attrs['slot']}, {a[0]}, {a[1]})",
         flops=no_flops),
    Prim("select_kv", _select_kv, flops=no_flops),
    Prim("depth_mix", _depth_mix, flops=_depth_mix_flops),
    Prim("gate_heads", lambda a, attrs, mod: f"rt.gate_heads({a[0]})", flops=no_flops),
    Prim("head_loop", _head_loop, calls_module=True, flops=_head_loop_flops),
    Prim("moe", _call, calls_module=True, flops=_moe_flops),
    Prim("drop_path", lambda a, attrs, mod: f"rt.drop_path({a[0]}, {attrs['p']!r}, "
         "self.training)", elementwise=True, flops=per_element(1)),
    Prim("width_route", _call, calls_module=True, flops=_route_flops),
    Prim("group_fuse", _call, calls_module=True, flops=_fuse_flops),
    Prim("batchnorm", _call, calls_module=True, flops=per_element(4)),
    Prim("repbn", _call, calls_module=True, flops=per_element(5)),
    Prim("sigma_linear", _call, calls_module=True, flops=_linear_flops),
    Prim("ds_linear", _call, calls_module=True, flops=_ds_flops),
    Prim("dwconv", _call, calls_module=True, flops=_dwconv_flops,
         no_decode=_state_not_cached("the window of earlier positions of a causal conv")),
    Prim("linear_attend", lambda a, attrs, mod: f"rt.linear_attend({a[0]}, {a[1]}, {a[2]})",
         flops=_linear_attend_flops,
         no_decode=_state_not_cached("linear attention's running sum over earlier positions")),
    Prim("topk", lambda a, attrs, mod: f"rt.topk_keep({a[0]}, {attrs['k']})",
         flops=per_element(2)),
    Prim("partition_norm", _call, calls_module=True, flops=per_element(4)),
    Prim("rotate", _call, calls_module=True, flops=per_element(3)),
    Prim("horn", lambda a, attrs, mod: f"rt.horn({a[0]}, {attrs['dc']}, rt.cache_start(cache))",
         flops=no_flops),
    Prim("hyper", _call, calls_module=True, flops=_hyper_flops),
    Prim("hyper_write", lambda a, attrs, mod: f"rt.hyper_write({a[0]}, {a[1]}, {a[2]}, "
         f"{attrs['n']})", flops=_hyper_write_flops),
    Prim("expand_streams", lambda a, attrs, mod: f"rt.expand_streams({a[0]}, {attrs['n']})",
         flops=no_flops),
    Prim("merge_streams", lambda a, attrs, mod: f"rt.merge_streams({a[0]}, {attrs['n']})",
         flops=per_element(1)),
    Prim("delta", _call, calls_module=True, flops=_delta_flops),
    Prim("leaky_relu", lambda a, attrs, mod: f"F.leaky_relu({a[0]}, {attrs['slope']!r})",
         elementwise=True, flops=per_element(1)),
    Prim("softmax_scaled", lambda a, attrs, mod: f"rt.softmax_scaled({a[0]})",
         flops=per_element(5)),
    # elementwise
    Prim("add", _binary("+"), elementwise=True, flops=per_element(1)),
    Prim("sub", _binary("-"), elementwise=True, flops=per_element(1)),
    Prim("mul", _binary("*"), elementwise=True, flops=per_element(1)),
    Prim("neg", lambda a, attrs, mod: f"-{a[0]}", elementwise=True, flops=per_element(1)),
    Prim("scale", _scale, elementwise=True, flops=per_element(1)),
    Prim("silu", _fn("F.silu"), elementwise=True, flops=per_element(4)),
    Prim("gelu", _fn("F.gelu"), elementwise=True, flops=per_element(8)),
    Prim("relu", _fn("F.relu"), elementwise=True, flops=per_element(1)),
    Prim("sigmoid", _fn("torch.sigmoid"), elementwise=True, flops=per_element(4)),
    Prim("tanh", _fn("torch.tanh"), elementwise=True, flops=per_element(6)),
    Prim("lerp", lambda a, attrs, mod: f"torch.lerp({a[0]}, {a[1]}, {a[2]})", elementwise=True,
         flops=per_element(3)),
    # layout
    Prim("concat", _concat, flops=no_flops),
    Prim("split", _split, flops=no_flops),
    Prim("init_state", _init_state, flops=no_flops),
]}
