"""Attention: multi-head self-attention with its cross-layer KV and value edges, the
attention over a block's own past output, SGT's head-subset loop and SLAB's linear
attention.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from ..ir import TensorType, Weight, act
from .registry import Attrs, ResidualInitAttrs, op


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
    scan over positions (see archc/scan.py); its cache holds those keys."""
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
