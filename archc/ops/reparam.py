"""Reparameterizable ops: trained in one form, folded by the reparam pass into a plain
op for inference (BatchNorm and SLAB's RepBN into an affine, sigma-Reparam and DSFormer's
linears into plain linears).
"""

from __future__ import annotations

from pydantic import Field

from ..init import weight_init, zero_bias
from ..ir import Weight, act
from .registry import Attrs, InitAttrs, op


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
