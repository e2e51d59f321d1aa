"""Spec-level ops: what a .arch file can call, each declared once.

An op has an attribute schema (pydantic: names, types, defaults, checks), a number of
tensor inputs, and an `expand` function that emits IR primitives through an `OpCtx`
(see `archc.elaborate`). Ops with weights create an instance where they are called;
`let n = rmsnorm()` names one so it can be called again with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..init import DEFAULT_STD, InitName, check_std, weight_init, zero_bias
from ..ir import TensorType, Weight, act


class Attrs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    attrs: type[Attrs]
    expand: Callable[..., Any]
    inputs: int | None = 1          # tensor inputs; None means one or more
    positional: tuple[str, ...] = ()  # static attrs that may follow the tensors positionally
    stateful: bool = False          # creates an instance with weights
    outputs: tuple[str, ...] = ()   # named outputs exposed as value fields
    tensor_kwargs: tuple[str, ...] = ()  # keyword arguments that take graph values
    retired: tuple[tuple[str, str], ...] = ()  # options it no longer takes: (name, why)
    reads_tokens: bool = False      # takes token ids (integers); other ops refuse them
    per_head: bool = False          # its shape rule keeps the input's rank (see `refuses`)

    def refuses(self, types: list[TensorType]) -> int | None:
        """The position of the first input this op cannot take, or None.

        Most shape rules are written for activations [B, T, d]: given a per-head value
        such as `a.heads` ([B, H, T, d]) they would type the result [B, T, out] while
        torch computes [B, H, T, out]. Only ops whose rule keeps the input's rank
        (`per_head`) take other float ranks; token ids (long) are the embed's business."""
        if self.per_head:
            return None
        for k, t in enumerate(types):
            if t.dtype == "float" and len(t.shape) != 3:
                return k
        return None


OPS: dict[str, OpDef] = {}


def op(name: str, attrs: type[Attrs], doc: str, **kw):
    def register(fn):
        OPS[name] = OpDef(name, doc, attrs, fn, **kw)
        return fn
    return register


class NoAttrs(Attrs):
    pass


class _StdCheck(Attrs):
    @field_validator("std", check_fields=False)
    @classmethod
    def _std_used(cls, std, info):
        return check_std(std, [info.data[f] for f in ("init", "out_init") if f in info.data])


class InitAttrs(_StdCheck):
    """`init` and `std` of an op's weight matrices; the default is the LM scheme of
    archc/init.py (normal(0, 0.02), zero biases)."""
    init: InitName = "normal"
    std: float = Field(default=DEFAULT_STD, gt=0, allow_inf_nan=False)


class ResidualInitAttrs(_StdCheck):
    """InitAttrs plus `out_init` for the output projection that writes into the residual
    stream: by default normal(0, std / sqrt(2 * n_layers)) (see archc/init.py)."""
    init: InitName = "normal"
    out_init: InitName = "residual"
    std: float = Field(default=DEFAULT_STD, gt=0, allow_inf_nan=False)


# --------------------------------------------------------------------------- weights

class EmbedAttrs(InitAttrs):
    vocab: int = Field(gt=0)
    dim: int = Field(gt=0)
    scale: float = 1.0


@op("embed", EmbedAttrs, "token embedding; `scale` multiplies the output (Huginn uses sqrt(d))",
    stateful=True, reads_tokens=True)
def embed(c, tokens, a: EmbedAttrs):
    if tokens.type.dtype != "long":
        c.fail("embed reads token ids, not activations", "call it on `tokens`")
    ref = c.leaf(None, "embed", {"vocab": a.vocab, "dim": a.dim},
                 [Weight(name="weight", shape=(a.vocab, a.dim),
                         init=weight_init(a.init, a.std))])
    x = c.emit("embed", [tokens], act(a.dim), ref=ref, hint="x")
    if a.scale != 1.0:
        x = c.emit("scale", [x], x.type, {"by": a.scale}, hint="x")
    return x


class LinearAttrs(InitAttrs):
    out: int = Field(gt=0)
    bias: bool = False
    sigma: bool = False


@op("linear", LinearAttrs, "y = x W^T (+ b)", stateful=True)
def linear(c, x, a: LinearAttrs):
    return c.linear(x, None, a.out, a.bias, init=a.init, std=a.std)


class NormAttrs(Attrs):
    eps: float = Field(default=1e-6, gt=0)


@op("rmsnorm", NormAttrs, "RMSNorm over the last dimension, learnable gain", stateful=True)
def rmsnorm(c, x, a: NormAttrs):
    return c.norm(x, None, "rmsnorm", a.eps)


class LayerNormAttrs(Attrs):
    eps: float = Field(default=1e-5, gt=0)
    bias: bool = True


@op("layernorm", LayerNormAttrs, "LayerNorm over the last dimension", stateful=True)
def layernorm(c, x, a: LayerNormAttrs):
    return c.norm(x, None, "layernorm", a.eps, bias=a.bias)


class LmHeadAttrs(InitAttrs):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    vocab: int | None = Field(default=None, gt=0)
    tied: Any = None


@op("lm_head", LmHeadAttrs, "logits over the vocabulary; `tied=emb` reuses an embed's weight",
    stateful=True)
def lm_head(c, x, a: LmHeadAttrs):
    if a.tied is not None:
        ref, emb = c.tied_embed(a.tied)
        for option in ("init", "std"):
            if option in a.model_fields_set:
                c.fail(f"a tied head has no weights of its own to `{option}`",
                       "set it on the embed it is tied to", at=option)
        if a.vocab is not None and a.vocab != emb["vocab"]:
            c.fail(f"vocab={a.vocab} but the tied embed has vocab {emb['vocab']}",
                   "drop `vocab`; a tied head takes it from the embed", at="vocab")
        if emb["dim"] != x.type.width:
            c.fail(f"width mismatch: the head reads width {x.type.width} but the tied embed "
                   f"has dim {emb['dim']}", "project to the embed's width first")
        return c.emit("tied_linear", [x], act(emb["vocab"]), ref=ref, hint="logits")
    if a.vocab is None:
        c.fail("lm_head needs `vocab=` or `tied=`", "write lm_head(x, tied=emb) to share the "
               "embedding, or lm_head(x, vocab=V)")
    return c.linear(x, None, a.vocab, False, hint="logits", init=a.init, std=a.std)


class AttentionAttrs(ResidualInitAttrs):
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    partitions: int | None = Field(default=None, gt=0)
    causal: bool = True
    rope: bool = True
    rope_theta: float = Field(default=10000.0, gt=0)
    alibi: bool = False
    qk_norm: bool = False
    qk_bias: bool = False
    bias: bool = False
    kv_p: float | None = Field(default=None, ge=0, le=1)
    kv_infer: Literal["shared", "own"] = "shared"
    past: Literal["input", "output"] = "input"
    sigma: bool = False


@op("attention", AttentionAttrs,
    "multi-head self-attention (GQA via kv_heads, RoPE, ALiBi or none, optional q/k norm); "
    "`kv=` reads an earlier attention's keys and values (always, or with probability kv_p "
    "in training and as kv_infer says in eval), `v_add=` adds to the values before they are "
    "attended and cached, `depth=` mixes the values of earlier layers at the same position "
    "(Depth-Attention); exposes the per-head q, k, v as fields", stateful=True,
    outputs=("q", "k", "v"), tensor_kwargs=("kv", "v_add", "depth"))
def attention(c, x, a: AttentionAttrs):
    d = x.type.width
    kv = a.kv_heads or a.heads
    if a.head_dim is None and d % a.heads:
        c.fail(f"{a.heads} heads do not divide width {d}",
               f"pick heads among the divisors of {d}, or give head_dim", at="heads")
    dh = a.head_dim or d // a.heads
    if a.partitions is not None and (a.heads % a.partitions or kv % a.partitions):
        c.fail(f"heads={a.heads} and kv_heads={kv} must both be multiples of "
               f"partitions={a.partitions} so each head group sits in one partition",
               "align the head counts with the partitions", at="partitions")
    if a.heads % kv:
        c.fail(f"kv_heads={kv} does not divide heads={a.heads}",
               "each key/value head serves a whole group of query heads", at="kv_heads")
    if a.rope and a.alibi:
        c.fail("rope and alibi are two position encodings; pick one",
               "set rope=false to use alibi", at="alibi")
    if a.rope and dh % 2:
        c.fail(f"RoPE needs an even head dim, got {dh}", "change heads or set rope=false",
               at="heads")
    kv_type = TensorType(shape=("B", kv, "T", dh))
    if a.past == "output":
        return _own_output_attention(c, x, a, dh)
    src = _kv_source(c, kv_type)
    if a.kv_p is not None and src is None:
        c.fail("kv_p is the chance of reading another layer's keys and values; give `kv=`",
               "e.g. attention(h, heads=4, kv=layers[i - 1].a, kv_p=0.5)", at="kv_p")
    own = src is None or a.kv_p is not None
    table = c.rope_table(dh, a.rope_theta) if a.rope else None

    q = c.linear(x, "q", a.heads * dh, a.bias, hint="q", init=a.init, std=a.std)
    q = c.emit("heads", [q], TensorType(shape=("B", a.heads, "T", dh)), {"n": a.heads}, hint="q")
    if a.qk_bias:
        q = c.bias(q, "q_bias", (a.heads, 1, dh))
    if a.qk_norm:
        q = c.norm(q, "q_norm", "rmsnorm", 1e-6)
    if table:
        q = c.emit("rope", [q], q.type, {"table": table}, hint="q")
    fields = {"q": q}
    if own:
        k = c.linear(x, "k", kv * dh, a.bias, hint="k", init=a.init, std=a.std)
        v = c.linear(x, "v", kv * dh, a.bias, hint="v", init=a.init, std=a.std)
        k = c.emit("heads", [k], kv_type, {"n": kv}, hint="k")
        v = c.emit("heads", [v], kv_type, {"n": kv}, hint="v")
        if a.qk_bias:
            k = c.bias(k, "k_bias", (kv, 1, dh))
        if a.qk_norm:
            k = c.norm(k, "k_norm", "rmsnorm", 1e-6)
        if table:
            k = c.emit("rope", [k], k.type, {"table": table}, hint="k")
        fields.update(k=k, v=v)
        v = _value_edges(c, q, k, v, kv_type)
        if src is None or a.kv_infer == "own":
            k, v = c.emit_many("kv_cache", [k, v], [kv_type, kv_type], hint="k,v")
        if src is not None:
            k, v = c.emit_many("select_kv", [k, v, src[0], src[1]], [kv_type, kv_type],
                               {"p": a.kv_p, "infer": a.kv_infer}, hint="k,v")
    else:
        k, v = src
        if "v_add" in c.tensors or "depth" in c.tensors:
            c.fail("a layer that always reads another layer's keys and values has no values "
                   "of its own to change", "drop v_add/depth, or give kv_p", at="kv")
    o = c.emit("attend", [q, k, v], q.type,
               {"causal": a.causal, "gqa": kv != a.heads, "alibi": a.alibi}, hint="a")
    fields.update(k_all=k, v_all=v, heads=o)
    o = c.emit("merge_heads", [o], act(a.heads * dh), hint="a")
    out = c.linear(o, "o", d, a.bias, hint="a", init=a.out_init, std=a.std)
    return c.fields(out, **fields)


def _own_output_attention(c, x, a: AttentionAttrs, dh: int):
    """Keys/values of earlier positions come from the enclosing block's own output
    (Recurrent Transformer); the diagonal uses this position's input. The block runs as a
    scan over positions (see archc/analysis/scan.py); its cache holds those keys."""
    if a.rope:
        c.fail("an attention over its block's past output runs position by position and "
               "cannot use RoPE", "write rope=false, alibi=true", at="past")
    if a.kv_heads not in (None, a.heads):
        c.fail("an attention over its block's past output needs kv_heads = heads",
               "drop kv_heads", at="kv_heads")
    for name in ("kv", "v_add", "depth"):
        if name in c.tensors:
            c.fail(f"`{name}=` does not combine with past=\"output\"", "drop one of them",
                   at=name)
    d = x.type.width
    heads = TensorType(shape=("B", a.heads, "T", dh))
    q = c.linear(x, "q", d, a.bias, hint="q", init=a.init, std=a.std)
    k = c.linear(x, "k", d, a.bias, hint="k", init=a.init, std=a.std)
    v = c.linear(x, "v", d, a.bias, hint="v", init=a.init, std=a.std)
    q = c.emit("heads", [q], heads, {"n": a.heads}, hint="q")
    k = c.emit("heads", [k], heads, {"n": a.heads}, hint="k")
    v = c.emit("heads", [v], heads, {"n": a.heads}, hint="v")
    if a.qk_norm:
        q = c.norm(q, "q_norm", "rmsnorm", 1e-6)
        k = c.norm(k, "k_norm", "rmsnorm", 1e-6)
    o = c.emit("scan_attend", [q, k, v], heads, {"alibi": a.alibi}, hint="a")
    o = c.emit("merge_heads", [o], act(d), hint="a")
    out = c.linear(o, "o", d, a.bias, hint="a", init=a.out_init, std=a.std)
    return c.fields(out, q=q, k=k, v=v)


def _kv_source(c, kv_type: TensorType):
    """The (k, v) an attention reads from `kv=`: an earlier attention's cached keys/values."""
    src = c.tensors.get("kv")
    if src is None:
        return None
    fields = getattr(src, "fields", {})
    if "k_all" not in fields:
        c.fail("`kv=` takes the value of an earlier attention (its output, e.g. layers[i-1].a)",
               "bind the attention's output to a name and read it by depth", at="kv")
    k, v = fields["k_all"], fields["v_all"]
    if k.type != kv_type:
        c.fail(f"the shared keys are {k.type} but this attention needs {kv_type}",
               "kv_heads and the head dim must match the layer it reads from", at="kv")
    return k, v


def _value_edges(c, q, k, v, kv_type: TensorType):
    """Cross-layer value edges: a gated residual (v_add) and depth mixing (depth=)."""
    add = c.tensors.get("v_add")
    if add is not None:
        if not hasattr(add, "type"):
            c.fail("`v_add=` takes a per-head tensor", "e.g. v_add=alpha * layers[0].a.v",
                   at="v_add")
        v = c.binary("add", v, add)
        if v.type != kv_type:
            c.fail(f"v_add has shape {add.type}; the values are {kv_type}",
                   "gate per head ([B, H, T, 1]) or give a value tensor", at="v_add")
    depth = c.tensors.get("depth")
    if depth is not None and depth != ():
        earlier = depth if isinstance(depth, tuple) else (depth,)
        pairs = []
        for item in earlier:
            fields = getattr(item, "fields", {})
            if "k" not in fields or "v" not in fields:
                c.fail("`depth=` takes earlier attentions' values, e.g. depth=layers[0..i].a",
                       "each item must be an attention output", at="depth")
            if fields["k"].type != kv_type:
                c.fail(f"depth item has keys {fields['k'].type}, this layer {kv_type}",
                       "depth mixing needs equal kv_heads and head dims", at="depth")
            pairs.append((fields["k"], fields["v"]))
        ks = [p[0] for p in pairs] + [k]
        vs = [p[1] for p in pairs] + [v]
        v = c.emit("depth_mix", [q] + ks + vs, kv_type, {"n": len(ks)}, hint="v")
    return v


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


class LayerScaleAttrs(Attrs):
    init: float = 1e-4


@op("layerscale", LayerScaleAttrs, "per-channel learnable scale (CaiT LayerScale)",
    stateful=True, positional=("init",))
def layerscale(c, x, a: LayerScaleAttrs):
    d = x.type.width
    ref = c.leaf(None, "layerscale", {"dim": d, "init": a.init},
                 [Weight(name="gamma", shape=(d,), init=("const", a.init))])
    return c.emit("layerscale", [x], x.type, ref=ref, hint="x")


class ScalarAttrs(Attrs):
    init: float = 1.0


@op("scalar", ScalarAttrs, "one learnable scalar multiplier (SReT residual coefficients)",
    stateful=True, positional=("init",))
def scalar(c, x, a: ScalarAttrs):
    ref = c.leaf(None, "scalar", {"init": a.init},
                 [Weight(name="value", shape=(), init=("const", a.init))])
    return c.emit("scalar", [x], x.type, ref=ref, hint="x")


class GatedMixAttrs(InitAttrs):
    bias: float = 2.0


@op("gated_mix", GatedMixAttrs,
    "g = sigmoid(W[h; f] + b), out = g*h + (1-g)*f; b starts at `bias` so the gate starts "
    "near identity on the state h", stateful=True, inputs=2)
def gated_mix(c, h, f, a: GatedMixAttrs):
    d = h.type.width
    if f.type != h.type:
        c.fail(f"width mismatch: gated_mix of {h.type.width} and {f.type.width}",
               "the state and the update must have the same width")
    both = c.emit("concat", [h, f], act(2 * d), hint="hf")
    g = c.linear(both, "gate", d, True, hint="g", bias_init=a.bias, init=a.init,
                 std=a.std)
    g = c.emit("sigmoid", [g], g.type, hint="g")
    return c.emit("lerp", [f, h, g], h.type, hint="h")


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


class StreamsAttrs(Attrs):
    n: int = Field(gt=0)


class HyperAttrs(Attrs):
    n: int = Field(gt=0)
    alpha: float = 0.01
    sinkhorn_iters: int = Field(default=20, gt=0)


@op("hyper_read", HyperAttrs,
    "mHC: from n residual streams [B, T, n*d], the sublayer input H_pre X and the packed "
    "coefficients (H_post, Sinkhorn-constrained H_res) for hyper_write; per-token (dynamic) "
    "coefficients times a learnable scale alpha, plus static biases", stateful=True)
def hyper_read(c, xs, a: HyperAttrs):
    nd = xs.type.width
    if nd % a.n:
        c.fail(f"{a.n} streams do not divide width {nd}", "make them with streams(x, n=...)",
               at="n")
    d = nd // a.n
    k = 2 * a.n + a.n * a.n
    ref = c.leaf(None, "hyper", {"n": a.n, "dim": d, "alpha": a.alpha,
                                 "iters": a.sinkhorn_iters},
                 [Weight(name="norm.weight", shape=(nd,), init=("const", 1.0)),
                  Weight(name="proj.weight", shape=(k, nd)),
                  Weight(name="alpha", shape=(3,), init=("const", a.alpha)),
                  Weight(name="b_pre", shape=(a.n,), init=("const", 0.0)),
                  Weight(name="b_post", shape=(a.n,), init=("const", 0.0)),
                  Weight(name="b_res", shape=(a.n, a.n), init=("identity_logits", -8.0))])
    return c.emit_many("hyper", [xs], [act(d), act(a.n + a.n * a.n)], ref=ref, hint="h,c")


@op("hyper_write", StreamsAttrs,
    "mHC update of the streams: X' = H_res X + H_post^T f", inputs=3)
def hyper_write(c, xs, coeffs, f, a: StreamsAttrs):
    if xs.type.width != a.n * f.type.width:
        c.fail(f"streams of width {xs.type.width} do not hold {a.n} copies of width "
               f"{f.type.width}", "pass the sublayer output computed from hyper_read's h")
    if coeffs.type.width != a.n + a.n * a.n:
        c.fail(f"the coefficients of {a.n} streams have width {a.n + a.n * a.n}, not "
               f"{coeffs.type.width}", "pass the `c` of `h, c = hyper_read(xs, n=...)`")
    return c.emit("hyper_write", [xs, coeffs, f], xs.type, {"n": a.n}, hint="streams")


@op("streams", StreamsAttrs, "n copies of the residual stream side by side: [B, T, n*d]")
def streams(c, x, a: StreamsAttrs):
    return c.emit("expand_streams", [x], act(a.n * x.type.width), {"n": a.n}, hint="streams")


@op("stream_merge", StreamsAttrs, "the sum of the n residual streams: [B, T, d]")
def stream_merge(c, xs, a: StreamsAttrs):
    if xs.type.width % a.n:
        c.fail(f"{a.n} streams do not divide width {xs.type.width}", "match streams(x, n=...)",
               at="n")
    return c.emit("merge_streams", [xs], act(xs.type.width // a.n), {"n": a.n}, hint="x")


class DeltaAttrs(Attrs):
    beta_init: float = Field(default=1.0, ge=0, le=2)


@op("delta", DeltaAttrs,
    "Deep Delta Learning's residual (d_v = 1): x + beta (v - k.x) k with k the direction of "
    "the sublayer output f, beta = 2 sigmoid(w.ctx + b) in [0, 2] (beta_init at start) and "
    "v a scalar from x; beta = 0 is the identity, beta = 2 with v = 0 a reflection",
    stateful=True, inputs=3)
def delta(c, x, f, ctx, a: DeltaAttrs):
    d = x.type.width
    if f.type != x.type or ctx.type != x.type:
        c.fail(f"delta needs x, f and ctx of one width, got {x.type.width}, {f.type.width}, "
               f"{ctx.type.width}", "pass the state, the sublayer output and its normed input")
    ref = c.leaf(None, "delta", {"dim": d, "beta_init": a.beta_init},
                 [Weight(name="beta.weight", shape=(1, d)), Weight(name="beta.bias", shape=(1,)),
                  Weight(name="value.weight", shape=(1, d)),
                  Weight(name="value.bias", shape=(1,))])
    return c.emit("delta", [x, f, ctx], x.type, ref=ref, hint="x")


class HeadLoopAttrs(Attrs):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    attn: Any
    heads: int = Field(gt=0)


@op("head_loop", HeadLoopAttrs,
    "SGT's head-subset loop: `a, o = looped(h, a, o)` reruns `heads` heads of the attention "
    "`attn` on the new input h and updates its output a (and per-head outputs o = a.heads); "
    "the other heads keep theirs. The looped heads are the highest-entropy ones, measured at "
    "the first run (the growth event) and kept as state", stateful=True, inputs=3,
    per_head=True)
def head_loop(c, h, a, o, x: HeadLoopAttrs):
    ref, cfg = c.attention_of(x.attn)
    heads, kv, dh = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    if x.heads > heads:
        c.fail(f"cannot loop {x.heads} of {heads} heads", f"pick at most {heads}", at="heads")
    if o.type.shape != ("B", heads, "T", dh):
        c.fail(f"the per-head outputs are {o.type}; attention `{cfg['name']}` gives "
               f"[B, {heads}, T, {dh}]", "pass its output's field: o = a.heads")
    if a.type != h.type or h.type.width != heads * dh:
        c.fail("head_loop reads the attention's input width and output",
               "call it as looped(norm(x + a), a, o)")
    leaf = c.leaf(None, "head_loop", {"count": x.heads, "heads": heads, "kv_heads": kv,
                                      "head_dim": dh}, [])
    attrs = {"attn": ref, "heads": x.heads}
    if cfg["rope"]:
        attrs["table"] = c.rope_table(dh, cfg["rope_theta"])
    return c.emit_many("head_loop", [h, a, o], [a.type, o.type], attrs, ref=leaf, hint="a,o")


class TopkAttrs(Attrs):
    k: int = Field(gt=0)


@op("topk", TopkAttrs, "keep the k largest activations of each token, zero the rest "
    "(Lazy Neuron activation sparsity)", positional=("k",))
def topk(c, x, a: TopkAttrs):
    if a.k > x.type.width:
        c.fail(f"k={a.k} is more than the width {x.type.width}", "k <= width", at="k")
    return c.emit("topk", [x], x.type, {"k": a.k}, hint="m")


class PartitionAttrs(Attrs):
    parts: int = Field(gt=0)
    dc: int = Field(default=0, ge=0)
    eps: float = Field(default=1e-6, gt=0)


def _partition_width(c, x, a) -> int:
    d = x.type.width
    if (d - a.dc) <= 0 or (d - a.dc) % a.parts:
        c.fail(f"width {d} is not {a.parts} equal partitions plus dc={a.dc}",
               f"make the width parts * c + dc, e.g. {a.parts * 16 + a.dc}", at="parts")
    return (d - a.dc) // a.parts


@op("partition_norm", PartitionAttrs,
    "RMSNorm within each of `parts` equal partitions of the width (statistics per partition, "
    "learnable gain); the last `dc` dims, if any, are normalised as their own group",
    stateful=True)
def partition_norm(c, x, a: PartitionAttrs):
    _partition_width(c, x, a)
    d = x.type.width
    ref = c.leaf(None, "partition_norm", {"dim": d, "parts": a.parts, "dc": a.dc, "eps": a.eps},
                 [Weight(name="weight", shape=(d,), init=("const", 1.0))])
    return c.emit("partition_norm", [x], x.type, ref=ref, hint="h")


class RotateAttrs(Attrs):
    parts: int = Field(gt=0)
    dc: int = Field(default=0, ge=0)


@op("rotate", RotateAttrs,
    "3PT's per-block Givens rotation: each partition's dims pair into planes rotated by "
    "theta + 2*pi*i/parts (partition i; theta learnable, starts at 0); the dc dims stay",
    stateful=True)
def rotate(c, x, a: RotateAttrs):
    width = _partition_width(c, x, PartitionAttrs(parts=a.parts, dc=a.dc))
    if width % 2:
        c.fail(f"partitions of {width} dims cannot pair into planes", "use an even partition "
               "width", at="parts")
    ref = c.leaf(None, "rotate", {"dim": x.type.width, "parts": a.parts, "dc": a.dc},
                 [Weight(name="theta", shape=(), init=("const", 0.0))])
    return c.emit("rotate", [x], x.type, ref=ref, hint="x")


class HornAttrs(Attrs):
    dc: int = Field(gt=0)


@op("horn", HornAttrs,
    "3PT's absolute-position side channel: adds r(p) = 1/(p+1) along the unit direction of "
    "the last `dc` dims (outside every partition)")
def horn(c, x, a: HornAttrs):
    if a.dc > x.type.width:
        c.fail(f"dc={a.dc} is more than the width", "dc counts trailing dims", at="dc")
    if c.cb.name != c.cb.el.model.name:
        c.fail("horn reads absolute positions and belongs in the model body",
               "apply it to the embeddings, outside blocks")
    return c.emit("horn", [x], x.type, {"dc": a.dc}, hint="x")


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


class DropPathAttrs(Attrs):
    p: float = Field(ge=0, lt=1)


@op("drop_path", DropPathAttrs,
    "stochastic depth: in training drop the whole branch for a sample with probability p "
    "(survivors scaled by 1/(1-p)); in eval the identity", positional=("p",))
def drop_path(c, x, a: DropPathAttrs):
    return c.emit("drop_path", [x], x.type, {"p": a.p}, hint="x")


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


class BatchNormAttrs(Attrs):
    eps: float = Field(default=1e-5, gt=0)
    momentum: float = Field(default=0.1, gt=0, le=1)


@op("batchnorm", BatchNormAttrs,
    "BatchNorm over the width, all tokens of the batch as its batch (running statistics in "
    "eval): a per-channel affine at inference, which reparam folds into the next linear",
    stateful=True)
def batchnorm(c, x, a: BatchNormAttrs):
    d = x.type.width
    ref = c.leaf(None, "batchnorm", {"dim": d, "eps": a.eps, "momentum": a.momentum},
                 [Weight(name="weight", shape=(d,), init=("const", 1.0)),
                  Weight(name="bias", shape=(d,), init=("const", 0.0))])
    return c.emit("batchnorm", [x], x.type, ref=ref, hint="h")


@op("repbn", BatchNormAttrs,
    "SLAB's RepBN: BatchNorm(x) + alpha * x, alpha learnable (starts at 1)", stateful=True)
def repbn(c, x, a: BatchNormAttrs):
    d = x.type.width
    ref = c.leaf(None, "repbn", {"dim": d, "eps": a.eps, "momentum": a.momentum},
                 [Weight(name="alpha", shape=(), init=("const", 1.0)),
                  Weight(name="bn.weight", shape=(d,), init=("const", 1.0)),
                  Weight(name="bn.bias", shape=(d,), init=("const", 0.0))])
    return c.emit("repbn", [x], x.type, ref=ref, hint="h")


class SigmaAttrs(InitAttrs):
    out: int = Field(gt=0)
    bias: bool = False


@op("sigma_linear", SigmaAttrs,
    "sigma-Reparam linear: W_hat = (gamma / sigma(W)) W, sigma the spectral norm from one "
    "power-iteration step per training forward (u kept as state), gamma learnable and "
    "starting at sigma(W), so W_hat starts at W; reparam bakes W_hat into a plain linear",
    stateful=True)
def sigma_linear(c, x, a: SigmaAttrs):
    d = x.type.width
    weights = [Weight(name="weight", shape=(a.out, d), init=weight_init(a.init, a.std)),
               Weight(name="gamma", shape=())]
    if a.bias:
        weights.append(Weight(name="bias", shape=(a.out,), init=zero_bias(a.init)))
    ref = c.leaf(None, "sigma_linear", {"in": d, "out": a.out, "bias": a.bias}, weights)
    return c.emit("sigma_linear", [x], act(a.out), ref=ref, hint="y")


class DsAttrs(Attrs):
    out: int = Field(gt=0)
    rank: int = Field(gt=0)
    nnz: int = Field(gt=0)
    bias: bool = False


@op("ds_linear", DsAttrs,
    "DSFormer's linear: W = D S with D dense [out, rank] and S semi-structured sparse "
    "[rank, in] (each input column keeps its `nnz` largest-magnitude entries; a dense "
    "shadow is trained through a straight-through estimator); reparam bakes S's top-nnz "
    "projection and keeps D and S as two plain linears",
    stateful=True)
def ds_linear(c, x, a: DsAttrs):
    d = x.type.width
    if a.nnz > a.rank:
        c.fail(f"nnz={a.nnz} is more than rank={a.rank}", "keep nnz <= rank", at="nnz")
    weights = [Weight(name="dense", shape=(a.out, a.rank)),
               Weight(name="sparse", shape=(a.rank, d))]
    if a.bias:
        weights.append(Weight(name="bias", shape=(a.out,)))
    ref = c.leaf(None, "ds_linear", {"in": d, "out": a.out, "rank": a.rank, "nnz": a.nnz,
                                     "bias": a.bias}, weights)
    return c.emit("ds_linear", [x], act(a.out), ref=ref, hint="y")


class SlaAttrs(ResidualInitAttrs):
    heads: int = Field(gt=0)
    kernel: int = Field(default=5, gt=0)


@op("linear_attention", SlaAttrs,
    "SLAB's simplified linear attention, causal: Q = relu(x Wq), K = relu(x Wk), V = x Wv; "
    "per head O_t = q_t (sum_{s<=t} k_s v_s^T) / (q_t . sum_{s<=t} k_s + 1e-6) plus a causal "
    "depthwise conv of V over positions (width `kernel`); out = O Wo", stateful=True)
def linear_attention(c, x, a: SlaAttrs):
    d = x.type.width
    if d % a.heads:
        c.fail(f"{a.heads} heads do not divide width {d}", "pick a divisor", at="heads")
    dh = d // a.heads
    heads = TensorType(shape=("B", a.heads, "T", dh))
    w = {"init": a.init, "std": a.std}
    q = c.emit("relu", [c.linear(x, "q", d, False, hint="q", **w)], act(d), hint="q")
    k = c.emit("relu", [c.linear(x, "k", d, False, hint="k", **w)], act(d), hint="k")
    v = c.linear(x, "v", d, False, hint="v", **w)
    q = c.emit("heads", [q], heads, {"n": a.heads}, hint="q")
    k = c.emit("heads", [k], heads, {"n": a.heads}, hint="k")
    v = c.emit("heads", [v], heads, {"n": a.heads}, hint="v")
    conv = c.leaf("conv", "dwconv", {"channels": dh, "kernel": a.kernel},
                  [Weight(name="weight", shape=(dh, 1, a.kernel)),
                   Weight(name="bias", shape=(dh,))])
    o = c.emit("linear_attend", [q, k, v], heads, hint="o")
    o = c.binary("add", o, c.emit("dwconv", [v], heads, ref=conv, hint="o"))
    o = c.emit("merge_heads", [o], act(d), hint="a")
    return c.linear(o, "o", d, False, hint="a", init=a.out_init, std=a.std)


# --------------------------------------------------------------------------- stateless

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


for _name, _doc in [("silu", "x * sigmoid(x)"), ("gelu", "GELU (erf)"), ("relu", "max(x, 0)"),
                    ("sigmoid", "logistic"), ("tanh", "tanh")]:
    _unary(_name, _doc)


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


# --------------------------------------------------------------------------- adapters

class LoraAttrs(Attrs):
    rank: int = Field(gt=0)
    alpha: float | None = None
    targets: tuple[str, ...] = ()


class UntieAttrs(Attrs):
    names: tuple[str, ...]


ADAPTERS = {"lora": LoraAttrs, "untie": UntieAttrs}


def lora_scale(a: LoraAttrs) -> float:
    return (a.alpha if a.alpha is not None else a.rank) / a.rank


def suggest(name: str, options) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return close[0] if close else None

