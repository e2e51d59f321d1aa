"""What each spec-level op application emitted: the elaborator's record for the hash.

The architecture hash (archc/identity/__init__.py) hashes each application of a
spec-level op (attention, swiglu, moe, ...) as one node: the op's name, its resolved
attributes and its inputs by role, not the primitives its `expand` emits. The elaborator
calls `record_application` once per application, right after the op expanded; the record
is kept beside the IR (`Program.spec_ops`), so nothing in the IR, and nothing a pass or a
backend sees, changes.

The record is keyed by the values the primitives define: a node's output names survive
everything the elaborator does to a graph afterwards (splicing `for` iterations,
rewriting instance paths), while node positions and input names do not. Inputs are
recorded as *slots* (input k of this primitive is the op's input `role`), so they stay
right when a spliced iteration renames the values a primitive reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# A primitive of an application: its first output value, its input slots with the op's
# input roles they carry ((slot, roles), ...), and how many parts of its ref lie inside
# the op's own instance (None: another instance's weights).
NodeRecord = tuple[str, tuple[tuple[int, tuple[str, ...]], ...], "int | None"]


class Application(NamedTuple):
    """One call of a spec-level op, in plain values only: tuples of strings and numbers,
    which the garbage collector stops tracking, so a spec of 100k applications does not
    slow every collection down."""

    op: str
    attrs: tuple[tuple[str, Any], ...]  # the validated attributes, every field, by name
    labels: tuple[tuple[str, tuple[str, ...]], ...]  # value defined -> its output names
    nodes: tuple[NodeRecord, ...]


@dataclass
class SpecOps:
    """Every application in a program; per class, the application each primitive node
    belongs to, keyed by the node's first output value."""

    apps: list[Application] = field(default_factory=list)
    origins: dict[str, dict[str, int]] = field(default_factory=dict)


def record_application(cb, first: int, opdef, inst, attrs, inputs, tensors, result) -> None:
    """Note that the nodes the class builder `cb` added to its current graph since key
    `first` are one application of `opdef` (on instance `inst`, or None). `inputs` are the
    positional tensor inputs, `tensors` the tensor keywords (kv=, v_add=, depth=),
    `result` what `expand` returned. A nested application is overwritten by the one
    around it: the op the spec wrote is the one that counts."""
    ops = cb.el.spec_ops
    graph = cb.gb.graph
    app = len(ops.apps)
    origins = ops.origins.setdefault(cb.cls, {})
    roles = _resolved_roles(cb, inputs, tensors)
    inst_path = _names(inst.ref) if inst is not None else None
    defined: set[str] = set()
    nodes = []
    for key in range(first, graph.next_key):
        node = graph.g.nodes[key]["node"]
        if not node.outs:
            continue  # defines nothing to be known by: hashed as a node of its own
        defined.update(node.outs)
        slots = tuple((k, roles[v]) for k, v in enumerate(node.inputs) if v in roles)
        nodes.append((node.outs[0], slots, _own(node.ref, inst_path)))
        origins[node.outs[0]] = app
    ops.apps.append(Application(opdef.name, _plain_attrs(attrs), _labels(result, defined),
                                tuple(nodes)))


def _plain_attrs(attrs) -> tuple[tuple[str, Any], ...]:
    """Every field of an op's attribute model, the elaborator's values made plain: a
    run-time scalar as its tree, a run-time param as ("param", name), an instance (a tied
    embed) as {"instance": op} (the nodes' refs say which one)."""
    return tuple((name, v if type(v) in _ATOMIC else _plain(v))
                 for name, v in sorted(attrs.__dict__.items()))  # a model's fields


_ATOMIC = frozenset({type(None), bool, int, float, str})


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "tree"):  # RuntimeScalar
        return value.tree
    if hasattr(value, "template") and hasattr(value, "ref"):  # Inst
        return {"instance": value.template}
    if type(value).__name__ == "RuntimeParam":
        return ("param", value.name)
    return value


def _names(ref) -> tuple[str, ...]:
    return tuple(name for name, _idx in ref.path)


def _own(ref, inst_path: tuple[str, ...] | None) -> int | None:
    """How many trailing parts of `ref` lie inside the instance at `inst_path`. Counted
    from the end because the elaborator may later drop a part before the instance (an
    iteration holding one instance collapses: layers[i].attn.q -> layers[i].q)."""
    if ref is None or inst_path is None:
        return None
    names = _names(ref)
    if names[:len(inst_path)] != inst_path:
        return None  # another instance's weights: a tied embed, a LoRA adapter
    return len(names) - len(inst_path)


def _resolved_roles(cb, inputs, tensors) -> dict[str, tuple[str, ...]]:
    """The value names, in the current graph, of the op's tensor inputs -> their roles:
    "0", "1", ... for positional inputs, the keyword for tensor keywords, with ".field"
    for a field the expansion reads (kv.k_all) and ".k" for an item of a list."""
    out: dict[str, tuple[str, ...]] = {}
    pairs = [(str(k), x) for k, x in enumerate(inputs)]
    pairs += [(name, tensors[name]) for name in sorted(tensors)]
    for role, value in pairs:
        for r, tv in _flatten(role, value):
            vid = _current_id(cb, tv)
            if vid is not None:
                out[vid] = out.get(vid, ()) + (r,)
    return out


def _flatten(role: str, value: Any):
    if isinstance(value, (tuple, list)):
        for k, item in enumerate(value):
            yield from _flatten(f"{role}.{k}", item)
        return
    if not (hasattr(value, "id") and hasattr(value, "level")):
        return  # not a tensor (an instance given as attn=, say)
    yield role, value
    for name in sorted(getattr(value, "fields", {})):
        yield from _flatten(f"{role}.{name}", value.fields[name])


def _current_id(cb, tv) -> str | None:
    """The name a value has in the graph being built: its own, or the region input it
    was captured as (None if no primitive read it here)."""
    chain = []
    gb = cb.gb
    while gb is not None and gb.level > tv.level:
        chain.append(gb)
        gb = gb.outer
    vid = tv.id
    for body in reversed(chain):
        vid = body.captures.get(vid)
        if vid is None:
            return None
    return vid


def _labels(result: Any, defined: set[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Output names of the values the expansion defined: "out" for the result (or "0",
    "1", ... for a list of results), and each field's name."""
    out: dict[str, tuple[str, ...]] = {}

    def add(vid: str, label: str) -> None:
        if vid in defined:
            out[vid] = out.get(vid, ()) + (label,)

    items = list(enumerate(result)) if isinstance(result, (tuple, list)) else [("out", result)]
    for label, value in items:
        if not hasattr(value, "id"):
            continue
        add(value.id, str(label))
        for name, item in sorted(getattr(value, "fields", {}).items()):
            if hasattr(item, "id"):
                add(item.id, name if label == "out" else f"{label}.{name}")
    return tuple(out.items())
