"""The backend seam: what every backend provides, and the registry that names them.

A backend reads the IR after the pass pipeline and turns it into artifacts. It declares
what it can lower as two tables keyed by the op table's names (archc/ops/prims.py):
`lowerings` (prim -> how to run it) and `leaves` (weight-carrying prim -> how to build
its module). Coverage is the keys of those tables, so `archc backends` can print it and a
test can fail when a backend that claims to be complete misses a prim.

A composite prim the backend does not lower is rewritten into simpler prims first
(archc/passes/decompose.py) when a decomposition exists; a prim that is neither lowered
nor decomposable is an archc error naming it, never a silently different program.

Backends are registered by module path and imported on first use, so `archc backends`
and `archc check` stay fast and a backend's own dependencies load only when it is used.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ArchcError
from ..ir import Program, walk
from ..ops.prims import PRIMS


@dataclass(frozen=True)
class Backend:
    """One target. `generate(program)` gives the artifacts as {file name: text};
    `build(program, spec)` (optional) gives an in-process module."""

    name: str
    summary: str
    lowerings: Mapping[str, Any]
    leaves: Mapping[str, Any]
    generate: Callable[[Program], dict[str, str]]
    build: Callable[[Program, Any], Any] | None = None
    complete: bool = False  # claims every prim of the op table (a test holds it to that)

    def lowers(self, prim: str) -> bool:
        """Whether this backend runs `prim` as it is (a weight prim needs its leaf too)."""
        if prim not in self.lowerings:
            return False
        return not PRIMS[prim].weights or prim in self.leaves

    def missing(self) -> list[str]:
        """The prims of the op table this backend cannot run as they are."""
        return sorted(name for name in PRIMS if not self.lowers(name))

    def unsupported(self, program: Program) -> list[str]:
        """The prims `program` uses that this backend cannot run as they are."""
        used = {node.op for block in program.classes.values() for node in walk(block.graph)}
        return sorted(op for op in used if op in PRIMS and not self.lowers(op))


# name -> module that defines BACKEND; imported on first use
REGISTRY: dict[str, str] = {
    "torch": "archc.codegen.torch.backend",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Backend:
    """The backend called `name`; an archc error naming the known ones otherwise."""
    if not isinstance(name, str) or name not in REGISTRY:
        close = difflib.get_close_matches(str(name), names(), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise ArchcError(f"no backend named {name!r}", None,
                         f"{hint}backends: {', '.join(names())} (`archc backends` lists "
                         "them with their coverage)", code="A002")
    return importlib.import_module(REGISTRY[name]).BACKEND


def prepare(program: Program, backend: Backend, mode: str = "train") -> Program:
    """The program (compiled for `mode`) as `backend` can run it: composite prims it does
    not lower are decomposed; anything else it cannot run is an archc error."""
    missing = backend.unsupported(program)
    if any(PRIMS[op].composite for op in missing):
        from ..passes.decompose import decompose

        keep = frozenset(p for p in PRIMS if backend.lowers(p))
        program = decompose(program, keep=keep, mode=mode)
        missing = backend.unsupported(program)
    if missing:
        raise ArchcError(f"the {backend.name} backend cannot lower {', '.join(missing)}",
                         None, "`archc backends` shows what each backend lowers; use "
                         "--backend torch for this spec", code="A070")
    return program


def generate(program: Program, backend: str = "torch", mode: str = "train") -> dict[str, str]:
    """The artifacts of `program` (compiled for `mode`) for the named backend."""
    b = get(backend)
    return b.generate(prepare(program, b, mode))
