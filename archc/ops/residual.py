"""The residual stream and its variants: learnable residual scales (LayerScale, a
scalar), the gated mix, hyper-connections (n streams), Deep Delta Learning's residual and
stochastic depth.
"""

from __future__ import annotations

from pydantic import Field

from ..ir import Weight, act
from .registry import Attrs, InitAttrs, op


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


class DropPathAttrs(Attrs):
    p: float = Field(ge=0, lt=1)


@op("drop_path", DropPathAttrs,
    "stochastic depth: in training drop the whole branch for a sample with probability p "
    "(survivors scaled by 1/(1-p)); in eval the identity", positional=("p",))
def drop_path(c, x, a: DropPathAttrs):
    return c.emit("drop_path", [x], x.type, {"p": a.p}, hint="x")
