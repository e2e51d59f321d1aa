"""Width partitions (3PT): RMSNorm per partition, the per-block Givens rotation
between partitions and the absolute-position side channel outside them.
"""

from __future__ import annotations

from pydantic import Field

from ..ir import Weight
from .registry import Attrs, op


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
