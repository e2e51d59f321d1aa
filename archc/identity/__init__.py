"""The identity of an architecture: a hash of its normal form, up to renaming.

`archc hash` / `archc.hash(spec, **params)` hashes the *normal form* of the program that
elaboration builds for one binding of the params (archc/identity/normal.py prints it;
`archc hash SPEC --explain` shows it). So the hash is a property of the *architecture*:
two specs that build the same model hash the same, whatever their layout, comments,
names, or the params and expressions that led to the same shapes. And it is a property
of the spec, not of this compiler's op library: each application of a spec-level op
(attention, swiglu, moe, ...) is one node of the normal form, named by the op and its
attributes, so rewriting how an op expands into primitives, without changing what it
computes or which weights it has, leaves every hash alone.

What the hash covers (a change to any of these changes it):
- every op application in program order: the op's name, its attributes as the op's
  schema resolves them (defaults filled in: `heads=4` and an omitted `rope=true` are the
  same; `kv_heads` omitted and `kv_heads=heads` are two spellings the schema keeps apart,
  and hash apart), its inputs by dataflow position and role, and the types of the values
  it gives (its result and the fields other ops read, such as `a.v`); tensor arithmetic
  (`x + y`, `0.5 * x`, `-x`) is a node of its own, and hashes like the op it is
  (`x + y` like `add(x, y)`);
- the weight tree: which instances own weights, their shapes and inits (`init=`/`std=`
  options, and the residual-write count the default scheme scales by, see
  archc/init.py), how instances are grouped and stacked, and which applications share a
  weight (two calls naming one instance, a tied head, a stack indexed per iteration).
  The weight tree is the checkpoint layout, so it is part of the identity even where an
  expansion decides it: an attention that fused q, k and v into one matrix would hash
  differently (its state dict differs too);
- loops: kind (`for` / `loop`), trip count, a run-time count's expression, default and
  max, halting rules; block calls (by the callee's own hash), per-iteration adapters, and
  run-time scalars (`scale(x, by=1 / (i + 1))`, schedules over the training step, a
  block's run-time params and the values each instance keeps for them).

What it does not cover (renaming is free):
- value names, instance names (`let` names, so state-dict keys), labels, loop variables,
  block names, the model name, named-output names, names of run-time params (numbered in
  order of first use) and of a block's run-time params (by position), spans, comments and
  formatting;
- search domains and params that do not reach the program;
- the primitives an op expands into, their order and their attributes.

Names are replaced by positions: values by order of definition, loop variables by
nesting, instances and their children by order of first use in the graph (then
declaration order for instances that are never called); weights inside an op's instance
keep the op library's names (q, k, v, o). Block classes are hashed bottom-up (a Merkle
hash), so two block definitions with identical bodies are one architecture. Statement
order is kept: reordering independent statements, or `a + b` versus `b + a`, changes the
hash. The `for`/`loop` structure is kept too: a `for` region and the same layers written
out one by one hash differently (their weight layouts differ). An op application that
computes nothing (a `sum` of one tensor) leaves no node.

LoRA adapters are weights of the class they adapt; each is named by the linear it adapts
(`lora of m1.q`), so the order in which an expansion applies its linears plays no part.
Known limit: an op's output fields that its expansion makes one value print as one output
(`k|k_all=%5`), so an expansion that merges or splits two fields changes the hash.

Versions. The normal form's text starts with its format version (`VERSION`, the line
`archc-hash/2`), so a hash of one format never equals a hash of another; bump it with any
change to what the normal form prints. `archc.hash` still returns 64 hex digits (the
README and callers rely on that shape): a store of hashes (a NAS study's dedup table, a
compile cache) keeps `archc.identity.VERSION` beside them to tell formats apart.
Version 1 hashed the expanded primitives.

The text is ASCII, the digest SHA-256, so the hash is the same in every process
(PYTHONHASHSEED plays no part).
"""

from __future__ import annotations

from ..ir import Program
from .normal import VERSION, NormalForm, normal_form

__all__ = ["VERSION", "NormalForm", "architecture_hash", "explain", "normal_form",
           "program_hash"]


def architecture_hash(program: Program) -> str:
    """The architecture hash of an elaborated program (what `archc.hash` returns): the
    SHA-256, 64 hex digits, of its normal form."""
    return normal_form(program).digest


def explain(program: Program) -> str:
    """The normal form that `architecture_hash` hashes, as text, then the hash."""
    return normal_form(program).explain()


def program_hash(program: Program) -> str:
    """A hash of the program's *expanded* form: every primitive, as the IR holds it.
    Unlike the architecture hash it moves when an op's expansion does, and it reads a
    program after passes too: tests compare programs with it (roll undoes unroll)."""
    return normal_form(program, contract=False).digest
