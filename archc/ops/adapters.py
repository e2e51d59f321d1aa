"""Adapters: what `with` attaches to an instance call inside a loop (per-iteration lora
and untie); the elaborator applies them (archc/frontend/calls.py, opctx.py).
"""

from __future__ import annotations

from pydantic import Field

from .registry import Attrs


class LoraAttrs(Attrs):
    rank: int = Field(gt=0)
    alpha: float | None = None
    targets: tuple[str, ...] = ()


class UntieAttrs(Attrs):
    names: tuple[str, ...]


ADAPTERS = {"lora": LoraAttrs, "untie": UntieAttrs}


def lora_scale(a: LoraAttrs) -> float:
    return (a.alpha if a.alpha is not None else a.rank) / a.rank
