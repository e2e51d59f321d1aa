"""The pass manager: an explicit list of passes, the options they read, and instruments.

A `Pipeline` is plain data: its passes in order (each a named `Pass` whose `run(program,
options)` is a pure function), one `PassOptions` handed to every pass, and instruments
the pipeline calls around each pass (printing, timing, verifying), in the spirit of the
pass managers of MLIR and TVM. The options travel beside the program, not on it: the
Program is what is compiled, the options say how, and a spec's compile cache keys on them.

`default_pipeline` (archc/passes/__init__.py) is the order archc compiles with; a test
that wants a pass more or less builds its own pipeline with `inserted` or `without`
rather than editing a shared list.

Instrument order: before-hooks run first to last, after-hooks last to first, so the
first instrument wraps the others (as MLIR's PassInstrumentation does). The verifier
comes first by default: a timer added later times the pass alone, and `--print-after`
shows a pass's output even when the verifier then rejects it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Literal

from ..errors import ArchcError
from ..ir import Program, format_program
from ..verify import verify

MODES = ("train", "infer")
REWRITES = ("widen",)  # opt-in rewrite passes, each turned on by its name


@dataclass(frozen=True)
class PassOptions:
    """How to compile, the same for every pass. mode "infer" resolves train-time choices
    (dce) and folds train-time structure (reparam); `rewrites` turns on opt-in rewrites
    such as "widen"; `unroll` splices static loops into straight-line code (and keeps roll
    from rolling them back). Frozen and hashable: the compile cache keys on it."""

    mode: Literal["train", "infer"] = "train"
    rewrites: tuple[str, ...] = ()
    unroll: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ArchcError(f"mode must be \"train\" or \"infer\", got {self.mode!r}", None,
                             "infer builds the deploy form", code="A002")
        rewrites = tuple(self.rewrites)
        for r in rewrites:
            if not isinstance(r, str) or r not in REWRITES:
                raise ArchcError(f"unknown rewrite {r!r}", None,
                                 f"rewrites: {', '.join(REWRITES)}", code="A002")
        object.__setattr__(self, "rewrites", rewrites)  # a list would not hash
        object.__setattr__(self, "unroll", bool(self.unroll))


DEFAULTS = PassOptions()


@dataclass(frozen=True)
class Pass:
    """One named pass. `fn` is pure: it returns a new Program and reads nothing but its
    arguments, so a pipeline can run, skip or repeat it freely."""

    name: str
    doc: str
    fn: Callable[[Program, PassOptions], Program]

    def run(self, program: Program, options: PassOptions) -> Program:
        return self.fn(program, options)


class Instrument:
    """Hooks a pipeline calls around its passes; each does nothing unless overridden.
    Instruments watch: they see every program and may raise, but cannot change one."""

    def before_pipeline(self, pipeline: Pipeline, program: Program) -> None:
        """Called once, with the input (the IR after elaboration)."""

    def before_pass(self, step: Pass, program: Program) -> None:
        """Called with the program `step` is about to read."""

    def after_pass(self, step: Pass, program: Program) -> None:
        """Called with the program `step` returned."""


class VerifyEach(Instrument):
    """The IR verifier on the input and after every pass, so a broken invariant is blamed
    on the pass that broke it. On by default; a search loop compiling many candidates
    through a trusted pipeline may turn it off (`default_pipeline(verify=False)`)."""

    def before_pipeline(self, pipeline: Pipeline, program: Program) -> None:
        verify(program, "elaboration")

    def after_pass(self, step: Pass, program: Program) -> None:
        verify(program, step.name)


@dataclass
class PrintAfter(Instrument):
    """`archc compile --print-after=PASS`: the IR after each named pass; "elaborate"
    names the input. A name that no pass of the pipeline has is an A050 error, raised
    before any pass runs."""

    names: frozenset[str]
    out: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.names = frozenset(self.names)  # the CLI hands over its list of flags

    def before_pipeline(self, pipeline: Pipeline, program: Program) -> None:
        check_names(self.names, ("elaborate",) + pipeline.names)
        if "elaborate" in self.names:
            self.out(f"// IR after elaborate\n{format_program(program)}")

    def after_pass(self, step: Pass, program: Program) -> None:
        if step.name in self.names:
            self.out(f"// IR after {step.name}\n{format_program(program)}")


@dataclass
class TimePasses(Instrument):
    """`archc compile --time-passes`: seconds per pass, in run order. Only the pass is
    timed, not the instruments around it (the verifier included)."""

    timings: list[tuple[str, float]] = field(default_factory=list)
    _start: float = field(default=0.0, init=False, repr=False)

    def before_pass(self, step: Pass, program: Program) -> None:
        self._start = time.perf_counter()

    def after_pass(self, step: Pass, program: Program) -> None:
        self.timings.append((step.name, time.perf_counter() - self._start))

    def report(self) -> str:
        return "\n".join(f"pass {name:<14} {seconds * 1e3:8.3f} ms"
                         for name, seconds in self.timings)


def check_names(names: Iterable[str], known: tuple[str, ...]) -> None:
    """A050 for the first (in sorted order) of `names` that is not in `known`."""
    for name in sorted(set(names) - set(known)):
        raise ArchcError(f"no pass named `{name}`", None,
                         f"passes: {', '.join(sorted(known))}", code="A050")


@dataclass(frozen=True)
class Pipeline:
    """Passes in run order, the options they all read, and the instruments that watch."""

    passes: tuple[Pass, ...]
    options: PassOptions = DEFAULTS
    instruments: tuple[Instrument, ...] = field(default_factory=lambda: (VerifyEach(),))

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.passes:
            if step.name in seen or step.name == "elaborate":
                raise ArchcError(f"two passes named `{step.name}` in one pipeline", None,
                                 "--print-after and `without` name passes: give each its "
                                 "own name ('elaborate' names the input)", code="A050")
            seen.add(step.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.passes)

    def without(self, *names: str) -> Pipeline:
        """This pipeline with the named passes left out (each must be in it)."""
        check_names(names, self.names)
        return replace(self, passes=tuple(p for p in self.passes if p.name not in names))

    def inserted(self, step: Pass, *, after: str) -> Pipeline:
        """This pipeline with `step` run right after the pass named `after`."""
        check_names((after,), self.names)
        at = self.names.index(after) + 1
        return replace(self, passes=self.passes[:at] + (step,) + self.passes[at:])

    def instrumented(self, *instruments: Instrument) -> Pipeline:
        """This pipeline with more instruments, after (so inside) the ones it has."""
        return replace(self, instruments=self.instruments + instruments)

    def run(self, program: Program) -> Program:
        for instrument in self.instruments:
            instrument.before_pipeline(self, program)
        for step in self.passes:
            for instrument in self.instruments:
                instrument.before_pass(step, program)
            program = step.run(program, self.options)
            for instrument in reversed(self.instruments):
                instrument.after_pass(step, program)
        return program
