"""The pass pipeline: small pure functions Program -> Program, run in one fixed order.

Each pass lives in its own file and registers here; the verifier runs after each one.
`archc compile --print-after=NAME` prints the IR after a pass and `--time-passes` times
them. The order is the import order at the bottom of this file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from ..ir import Program, format_program
from ..verify import verify


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Program], Program]
    doc: str


PIPELINE: list[Pass] = []


def register(name: str, doc: str):
    def wrap(fn):
        PIPELINE.append(Pass(name, fn, doc))
        return fn
    return wrap


def run_pipeline(program: Program, print_after: set[str] | None = None,
                 timings: list[tuple[str, float]] | None = None,
                 out: Callable[[str], None] = print) -> Program:
    """Run every registered pass, verifying after each."""
    names = {"elaborate"} | {p.name for p in PIPELINE}
    for name in print_after or ():
        if name not in names:
            from ..errors import ArchcError
            raise ArchcError(f"no pass named `{name}`", None,
                             f"passes: {', '.join(sorted(names))}", code="A050")
    verify(program, "elaboration")
    if print_after and "elaborate" in print_after:
        out(f"// IR after elaborate\n{format_program(program)}")
    for p in PIPELINE:
        start = time.perf_counter()
        program = verify(p.run(program), p.name)
        if timings is not None:
            timings.append((p.name, time.perf_counter() - start))
        if print_after and p.name in print_after:
            out(f"// IR after {p.name}\n{format_program(program)}")
    return program


# Registration order is pipeline order: opt-in rewrites, then unroll (so canonicalize sees
# the literal indices it exposes), cleanup, roll on the cleaned graph, the weight table
# once refs and weights are final, fusion marks, and the kv plan last (it numbers slots).
from . import widen  # noqa: E402,F401
from . import unroll  # noqa: E402,F401
from . import canonicalize  # noqa: E402,F401
from . import dce  # noqa: E402,F401
from . import reparam  # noqa: E402,F401
from . import roll  # noqa: E402,F401
from . import share  # noqa: E402,F401
from . import fuse  # noqa: E402,F401
from . import kvplan  # noqa: E402,F401
