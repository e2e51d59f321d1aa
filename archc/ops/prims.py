"""IR primitives: the ops that appear in the graph after elaboration.

Each primitive is declared once here, with the facts every pass, analysis and backend
asks about it: whether it calls a weight leaf, is pure (safe to merge), has effects beyond
its value, is elementwise or row-local (what `fuse` looks for), mixes positions, acts per
head, owns a KV-cache slot, can be decoded incrementally, what it saves for the backward
pass, and its FLOP rule (what `archc.cost` counts). Nothing else keeps a table of prim
names: a pass that needs a fact adds a trait here. How a prim runs is a backend's business
(`archc/codegen/<backend>/`, a lowering table keyed by these names). Spec ops such as
`attention` are macros in `library.py` that expand into these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from ..ir import TensorType, broadcast

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

    `scan_attend` (an attention over its block's own past output) runs as a scan whose
    tiled prefill multiplies each query only with the keys of earlier positions (the
    diagonal is elementwise): seq * (seq - 1) / 2 pairs, so (seq - 1) / 2 keys per token.
    """
    heads, d_qk = f.ins[0].shape[1], f.ins[0].shape[-1]
    d_v = f.ins[2].shape[-1]
    return Flops(2 * heads * f.seq * (d_qk + d_v), 5 * heads * f.seq)


def _scan_attend_flops(f: FlopInput) -> Flops:
    heads, d_qk = f.ins[0].shape[1], f.ins[0].shape[-1]
    d_v = f.ins[2].shape[-1]
    return Flops(heads * (f.seq - 1) * (d_qk + d_v), 5 * heads * f.seq)


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


SavedExtra = Callable[[FlopInput], int]
# (input TensorTypes, attrs, the called leaf's args or {}) -> output TensorTypes
ShapeRule = Callable[[tuple, dict, dict], tuple]


@dataclass(frozen=True)
class Prim:
    """The backend-neutral facts about one primitive."""

    name: str
    flops: FlopRule | None = None  # None: not declared; the cost model counts it as 0
    # the node calls a weight-carrying leaf of the same op (node.ref names it)
    weights: bool = False
    # its value depends only on inputs, attributes and weights (CSE may merge two
    # applications); a callable decides from the leaf it calls (None if it calls none)
    pure: bool | Callable[[Any], bool] = False
    effects: bool = False  # kept by dce for what it does besides its value (a cache write)
    elementwise: bool = False  # one output element from the same element of each input
    row_local: bool = False  # one output row from the same row of its input (norms)
    # its output at a position reads other positions (or their cache)
    mixes_positions: bool = False
    # acts alike on each head of a [B, heads, T, dh] value: widening the head count
    # widens its types (the widen rewrite)
    per_head: bool = False
    owns_slot: bool = False  # keeps keys and values in a KV-cache slot of its own
    attention: bool = False  # (q, k, v) -> per-head output; saves a log-sum-exp per head
    # its output is a fresh activation as large as its inputs: a backend releases dead
    # values before it, as a hand-written forward would have dropped them
    allocates: bool = False
    # what the backward pass keeps: positions of inputs, "out" for its own output, "*"
    # for every input; None: not declared (the activation model assumes its output)
    saved: tuple | None = None
    saved_extra: SavedExtra | None = None  # elements per token kept besides those
    # why a node with these attrs cannot be decoded incrementally with a KV cache, and
    # what to do instead (None: it can); a cache gives a position only what it keeps of
    # earlier positions: their keys and values
    no_decode: Callable[[dict], tuple[str, str] | None] | None = None
    # a composite prim runs a whole sub-computation (routing, stream mixing, a scan);
    # archc/passes/decompose.py rewrites it into simpler prims for a backend without it
    composite: bool = False
    # a one-argument activation the language offers as a spec op of the same name
    # (`silu(x)`); the text is its entry in `archc ops`
    activation: str | None = None
    # the output types from the input types: the verifier holds every node to it after
    # every pass (None: elementwise ops broadcast, row-local ones keep their input's type,
    # others are not checked)
    shape: ShapeRule | None = None

    def out_types(self, ins: tuple, attrs: dict, leaf: dict) -> tuple | None:
        """The types this prim gives for `ins`, or None where it declares no rule (or the
        inputs already clash: the rule's own inputs are checked where they are made)."""
        if self.shape is not None:
            return self.shape(ins, attrs, leaf)
        if self.elementwise and ins:
            out = ins[0]
            for t in ins[1:]:
                out = broadcast(out, t) if out is not None else None
            return (out,) if out is not None else None
        if self.row_local and len(ins) == 1:
            return (ins[0],)
        return None

    def is_pure(self, leaf: Any = None) -> bool:
        return self.pure(leaf) if callable(self.pure) else self.pure


def _projected(key: str) -> ShapeRule:
    """[..., d] -> [..., leaf[key]]: a linear map to its leaf's output width."""
    return lambda ins, attrs, leaf: (_with_width(ins[0], leaf[key]),)


def _with_width(t: TensorType, width: int) -> TensorType:
    return TensorType(shape=t.shape[:-1] + (width,), dtype="float")


def _heads_shape(ins, attrs, leaf) -> tuple:
    b, t, d = ins[0].shape
    return (TensorType(shape=(b, attrs["n"], t, d // attrs["n"])),)


def _merge_shape(ins, attrs, leaf) -> tuple:
    b, h, t, dh = ins[0].shape
    return (TensorType(shape=(b, t, h * dh)),)


def _attend_shape(ins, attrs, leaf) -> tuple:
    q, _k, v = ins
    return (TensorType(shape=q.shape[:3] + v.shape[3:]),)


def _concat_shape(ins, attrs, leaf) -> tuple:
    return (_with_width(ins[0], sum(t.shape[-1] for t in ins)),)


def _split_shape(ins, attrs, leaf) -> tuple:
    return tuple(_with_width(ins[0], size) for size in attrs["sizes"])


def _noiseless(leaf: Any) -> bool:
    """A width router without routing noise is deterministic given its weights."""
    return leaf is not None and not dict(leaf.args).get("noise")


def _heads(f: FlopInput) -> int:
    return f.ins[0].shape[1]


def _inputs(f: FlopInput) -> int:
    return per_token(f.ins[0])


def _rank(f: FlopInput) -> int:
    return dict(f.module.args).get("rank", 0) if f.module is not None else 0


def _elementwise(name: str, flops: int, saved: tuple = (0,), **traits) -> Prim:
    return Prim(name, per_element(flops), pure=True, elementwise=True, saved=saved, **traits)


def _leaf(name: str, flops: FlopRule, **traits) -> Prim:
    """A prim that calls its weight leaf."""
    return Prim(name, flops, weights=True, **traits)


NOTHING = ()  # saves nothing: sums, constant scales, biases, views, fresh states
OWN = ("out",)
QKV_OUT = (0, 1, 2, "out")

PRIMS: dict[str, Prim] = {p.name: p for p in [
    # modules that hold weights: the graph calls them
    _leaf("embed", no_flops, pure=True, saved=NOTHING),
    _leaf("linear", _linear_flops, pure=True, saved=(0,), shape=_projected("out")),
    _leaf("lora", _lora_flops, pure=True, saved=(0,), saved_extra=_rank,
          shape=_projected("out")),
    _leaf("rmsnorm", per_element(4), pure=True, row_local=True, per_head=True, saved=(0,),
          saved_extra=lambda f: 1),
    _leaf("layernorm", per_element(5), pure=True, row_local=True, saved=(0,),
          saved_extra=lambda f: 2),
    _elementwise("layerscale", 1, weights=True),
    _elementwise("scalar", 1, weights=True),
    _elementwise("bias", 1, saved=NOTHING, weights=True, per_head=True),
    Prim("tied_linear", _linear_flops, pure=True, saved=(0,), shape=_projected("vocab")),  # reads the embedding's
    _leaf("batchnorm", per_element(4)),  # running statistics
    _leaf("repbn", per_element(5)),
    _leaf("sigma_linear", _linear_flops, shape=_projected("out")),  # power iteration state
    _leaf("ds_linear", _ds_flops, shape=_projected("out")),
    _leaf("dwconv", _dwconv_flops, mixes_positions=True,
          no_decode=_state_not_cached("the window of earlier positions of a causal conv")),
    _leaf("partition_norm", per_element(4), pure=True, row_local=True),
    _leaf("rotate", per_element(3), pure=True, row_local=True),
    # attention pieces
    Prim("heads", no_flops, pure=True, per_head=True, saved=NOTHING, shape=_heads_shape),
    Prim("merge_heads", no_flops, pure=True, saved=NOTHING, shape=_merge_shape),
    Prim("rope", per_element(3), pure=True, row_local=True, per_head=True,
         mixes_positions=True, saved=(0,), saved_extra=_inputs),
    Prim("attend", _sdpa_flops, pure=True, per_head=True, mixes_positions=True,
         shape=_attend_shape,
         attention=True, allocates=True, saved=QKV_OUT, saved_extra=_heads,
         no_decode=_reads_later_positions(True)),
    # an attention whose keys and values come from its block's own output at earlier
    # positions: the block runs as a scan over positions (archc/scan.py)
    Prim("scan_attend", _scan_attend_flops, per_head=True, mixes_positions=True,
         attention=True, allocates=True, owns_slot=True, saved=QKV_OUT, saved_extra=_heads,
         composite=True),
    Prim("kv_cache", no_flops, effects=True, per_head=True, mixes_positions=True,
         owns_slot=True, saved=NOTHING),
    Prim("select_kv", no_flops, per_head=True, mixes_positions=True, saved=NOTHING),
    Prim("depth_mix", _depth_mix_flops, pure=True, mixes_positions=True, saved=("*", "out")),
    Prim("gate_heads", no_flops, pure=True, saved=NOTHING),
    Prim("softmax_scaled", per_element(5), pure=True, row_local=True, saved=OWN),
    Prim("linear_attend", _linear_attend_flops, mixes_positions=True,
         no_decode=_state_not_cached("linear attention's running sum over earlier positions")),
    _leaf("head_loop", _head_loop_flops, mixes_positions=True, owns_slot=True, composite=True),
    # routing
    _leaf("moe", _moe_flops, composite=True),
    _leaf("width_route", _route_flops, pure=_noiseless, composite=True),
    _leaf("group_fuse", _fuse_flops, pure=True, composite=True),
    Prim("drop_path", per_element(1), elementwise=True),  # random in training
    Prim("topk", per_element(2), pure=True),
    # residual streams
    Prim("horn", no_flops, pure=True),
    _leaf("hyper", _hyper_flops, pure=True, saved=(0, "out"), saved_extra=_inputs,
          composite=True),
    Prim("hyper_write", _hyper_write_flops, pure=True, saved=("*",), composite=True),
    Prim("expand_streams", no_flops, pure=True, saved=NOTHING),
    Prim("merge_streams", per_element(1), pure=True, saved=NOTHING),
    _leaf("delta", _delta_flops, pure=True, saved=("*", "out"), composite=True),
    # elementwise
    _elementwise("add", 1, saved=NOTHING),
    _elementwise("sub", 1, saved=NOTHING),
    _elementwise("mul", 1, saved=(0, 1)),
    _elementwise("neg", 1, saved=NOTHING),
    _elementwise("scale", 1, saved=NOTHING),
    _elementwise("leaky_relu", 1),
    _elementwise("silu", 4, activation="x * sigmoid(x)"),
    _elementwise("gelu", 8, activation="GELU (erf)"),
    _elementwise("relu", 1, saved=OWN, activation="max(x, 0)"),
    _elementwise("sigmoid", 4, saved=OWN, activation="logistic"),
    _elementwise("tanh", 6, saved=OWN, activation="tanh"),
    _elementwise("softplus", 4, activation="log(1 + exp(x)), a smooth relu"),
    _elementwise("lerp", 3, saved=(0, 1, 2)),
    # layout
    Prim("concat", no_flops, pure=True, saved=NOTHING, shape=_concat_shape),
    Prim("split", no_flops, pure=True, saved=NOTHING, shape=_split_shape),
    Prim("init_state", no_flops, saved=NOTHING),  # noise in training
]}
from . import simple_prims  # noqa: E402,F401  (decomposition prims join PRIMS)
