"""Normalisations over the width with a learnable gain: RMSNorm and LayerNorm.
(Per-partition RMSNorm is in partitions.py; BatchNorm, which folds away, in reparam.py.)
"""

from __future__ import annotations

from pydantic import Field

from .registry import Attrs, op


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
