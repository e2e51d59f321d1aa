"""The op registry: spec-level ops (`library`) and the IR primitives they expand to (`prims`)."""

from .library import ADAPTERS, OPS, OpDef
from .prims import PRIMS, Prim

__all__ = ["ADAPTERS", "OPS", "OpDef", "PRIMS", "Prim"]
