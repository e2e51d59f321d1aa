"""The IR names of loop variables.

A spec's loop variables scope lexically: an inner `for i` hides an outer `i` for the
statements of its body. The IR has no scopes of its own for them: passes, analyses and
the emitter key per-iteration weights (`loop[i].layers[i]`), run-time scalars and the
generated `for` headers by the variable's name, so two nested regions with one name read
each other's index. The elaborator therefore gives every region a variable that no
enclosing region of the same graph uses: the spec's name where it is free, else a fresh
one. An unnamed `loop` (the spec cannot read its index) always gets a fresh name, drawn
from a different stem so that a spec's `i` never meets it.
"""

from __future__ import annotations

from collections.abc import Container

UNNAMED = "it"  # the stem of an unnamed loop's index: `for it in range(3)`


def ir_var(name: str | None, taken: Container[str], avoid: Container[str] = ()) -> str:
    """A loop variable for the IR: `name` if no enclosing region uses it (`taken`), else
    `name` with the first free number appended. `avoid` holds names the generated module
    already uses for something else (the model's params); a fresh name never takes one,
    a spec's own name keeps its meaning as written."""
    if name is not None and name not in taken:
        return name
    stem = UNNAMED if name is None else name
    if stem not in taken and stem not in avoid:
        return stem
    n = 1
    while f"{stem}{n}" in taken or f"{stem}{n}" in avoid:
        n += 1
    return f"{stem}{n}"
