"""The values an elaboration passes around: tensors, instances, run-time numbers.

A spec expression evaluates to one of these (or to a plain number, bool, string or
tuple). They live only while a spec is elaborated; the IR keeps none of them. `_show`
names any of them in an error message the way a spec author would write it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import scalar
from ..errors import Span
from ..ir import Module, Ref, TensorType
from ..ops.adapters import LoraAttrs

if TYPE_CHECKING:
    from .scopes import ModuleScope


@dataclass
class TensorVal:
    id: str
    type: TensorType
    level: int
    span: Span | None = None
    fields: dict[str, "TensorVal"] = field(default_factory=dict)


@dataclass
class Returned:
    """What `return x, v=a.v` hands back: the value and its named outputs."""

    value: TensorVal
    named: dict[str, TensorVal]


@dataclass
class DepthFrame:
    """The values one iteration of a `for` stack bound, reachable as layers[j].name."""

    label: str
    index: int
    values: dict[str, Any]


@dataclass
class DepthStack:
    """A `for` stack's label: indexing it by depth gives the iterations done so far."""

    label: str
    frames: list[DepthFrame]
    span: Span | None
    body: tuple = ()


@dataclass
class RuntimeScalar:
    """A number known only at run time: a loop index, a run-time param, a block's
    run-time param, or arithmetic and schedules over them (archc.scalar trees)."""

    tree: tuple


@dataclass
class RuntimeParam:
    name: str
    default: int
    span: Span | None


@dataclass
class InstState:
    """What the first call of an instance decided; shared by every way of reaching it."""

    module: Module | None = None
    first_call: Span | None = None
    adapted_at: Span | None = None


@dataclass(frozen=True)
class Inst:
    """A named instance: weights made once, shared by every call."""

    name: str
    template: str
    kwargs: dict[str, Any]
    kwarg_spans: dict[str, Span]
    scope: "ModuleScope"
    ref: Ref
    span: Span | None
    loop_depth: int
    index: int | None = None  # position in an instance array
    state: InstState = field(default_factory=InstState)


@dataclass
class InstArray:
    name: str
    items: list[Inst]
    span: Span | None


@dataclass
class AdaptCfg:
    """Per-iteration adapters of an instance called inside a loop."""

    var: str
    count: int
    lora: LoraAttrs | None
    untie: tuple[str, ...]
    span: Span | None

    def key(self):
        return (self.count, self.lora, self.untie)


# Fields ops keep for each other (an attention's cached keys/values), not for specs.
_HIDDEN_FIELDS = frozenset({"k_all", "v_all"})


@dataclass
class _FutureDepth:
    """A depth not computed yet; reading a value from it is an error with both spans."""

    stack: DepthStack
    index: int
    current: int


def _tree(v: Any) -> tuple:
    if isinstance(v, RuntimeScalar):
        return v.tree
    if isinstance(v, RuntimeParam):
        return ("param", v.name)
    return scalar.num(v)


def _runtime(v: Any) -> bool:
    return isinstance(v, (RuntimeScalar, RuntimeParam))


def _show(v: Any) -> str:
    if isinstance(v, TensorVal):
        return f"a tensor {v.type}"
    if isinstance(v, (Inst, InstArray)):
        return f"instance `{v.name}`"
    if isinstance(v, (RuntimeScalar, RuntimeParam)):
        return "a run-time value"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, int):
        return _show_int(v)
    return repr(v)


def _show_int(value: int) -> str:
    """An int short enough to quote in a message (a 4,000-digit one is not, and Python
    refuses to print one past 4,300 digits)."""
    if abs(value) < 10 ** 30:
        return str(value)
    return f"an int of {value.bit_length()} bits"
