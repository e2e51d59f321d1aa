"""The spec-level op registry: `OpDef`, the `@op` decorator that fills `OPS`, and the
attribute schemas most ops share (`Attrs`, `InitAttrs`, `ResidualInitAttrs`).

An op has an attribute schema (pydantic: names, types, defaults, checks), a number of
tensor inputs, and an `expand` function that emits IR primitives through an `OpCtx`
(see `archc/frontend/opctx.py`). The families of ops register themselves by importing
this module; `archc/ops/library.py` imports every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..init import DEFAULT_STD, InitName, check_std
from ..ir import TensorType


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


def suggest(name: str, options) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return close[0] if close else None
