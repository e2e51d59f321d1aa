"""The public Python API: load a spec, compile it, build the module.

`load` never imports torch, so a search loop can check thousands of candidates cheaply;
`build` imports torch and runs the generated source (ours, not the spec's) in a fresh
module namespace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import syntax
from .frontend import Budget, elaborate
from .errors import ArchcError, Source, Span, register_source
from .ir import ParamInfo, Program
from .sourcefile import read_spec

if TYPE_CHECKING:
    from .passes import PassOptions


@dataclass
class Spec:
    """A parsed, checked spec with its params bound."""

    file: str
    text: str
    program: Program
    overrides: dict[str, Any]
    compiled: dict[PassOptions, Program] = field(default_factory=dict)
    budget: Budget | None = None

    @property
    def name(self) -> str:
        return self.program.name

    @property
    def params(self) -> dict[str, ParamInfo]:
        return self.program.params

    @property
    def warnings(self) -> list:
        """Diagnostics that do not stop compilation (archc.diagnostic.SpecWarning), such
        as W001 for a value nothing reads; `archc check` prints them."""
        from .analysis.live import unused_values

        return unused_values(self.program)


def _read(spec: str | Path) -> tuple[str, str]:
    if isinstance(spec, os.PathLike):
        spec = Path(spec)
    elif not isinstance(spec, str):
        raise ArchcError(f"expected a spec, got {type(spec).__name__}", None,
                         "pass a path to a .arch file (str or Path), the spec text itself, "
                         "or a Spec from archc.load", code="A002")
    if isinstance(spec, Path) or ("\n" not in spec and not spec.lstrip().startswith("model")):
        return str(spec), read_spec(spec)
    return "<spec>", spec


@lru_cache(maxsize=32)
def _parsed(text: str, file: str) -> syntax.Model:
    """The AST of a spec's text (immutable, so shared): a search loop or a test that loads,
    builds and prices one spec many times parses it once."""
    return syntax.parse(text, file)


def _check_size(file: str, text: str, budget: Budget) -> None:
    """Refuse a spec too long to parse within the budget, before parsing it."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > budget.max_source_bytes:
        raise ArchcError(f"the spec is {size:,} bytes long, over the budget of "
                         f"{budget.max_source_bytes:,} bytes of spec text",
                         Span(file, 1, 1, 1, 2),
                         "write repeated layers as a `for` or `loop`, or raise the budget: "
                         "`--max-source-bytes N` on the command line, `archc.load(spec, "
                         "budget=archc.Budget(max_source_bytes=N))` in Python", code="A040")


def load(spec: "str | Path | Spec", budget: Budget | None = None, **params: Any) -> Spec:
    """Parse, check and bind params. Raises ArchcError for any problem in the spec."""
    if isinstance(spec, Spec):
        if not params and budget is None:
            return spec
        file, text = spec.file, spec.text
        params = {**spec.overrides, **params}
        budget = budget or spec.budget
    else:
        file, text = _read(spec)
    _check_size(file, text, budget or Budget())
    register_source(Source(file, text))  # errors quote this text, even on a cached parse
    program = elaborate(_parsed(text, file), params, budget)
    return Spec(file, text, program, dict(params), budget=budget)


def compile_program(spec: Spec, mode: str = "train", rewrites: tuple[str, ...] = (),
                    unroll: bool = False) -> Program:
    """The IR after the pass pipeline: what the backends read. mode "infer" resolves
    train-time choices to the spec's inference map and drops what that leaves dead;
    `rewrites` turns on opt-in rewrite passes such as "widen". Cached per PassOptions."""
    from .passes import default_pipeline

    pipeline = default_pipeline(mode, rewrites, unroll)  # A002 for a bad mode or rewrite
    if pipeline.options not in spec.compiled:
        # spec_ops records the elaborated graphs (for archc.hash); the passes rewrite them
        spec.compiled[pipeline.options] = pipeline.run(
            spec.program.model_copy(update={"spec_ops": None}))
    return spec.compiled[pipeline.options]


def compile_artifacts(spec: "str | Path | Spec", mode: str = "train", rewrites=(),
                      backend: str = "torch", **params: Any) -> dict[str, str]:
    """Every file a backend generates for a spec: {file name: text}."""
    from .codegen.backend import generate

    return generate(compile_program(load(spec, **params), mode, tuple(rewrites)), backend, mode)


def compile_source(spec: "str | Path | Spec", mode: str = "train", rewrites=(),
                   backend: str = "torch", **params: Any) -> str:
    """The generated module for a spec, as text (a backend's main file)."""
    files = compile_artifacts(spec, mode, rewrites, backend, **params)
    return next(iter(files.values()))


def build(spec: "str | Path | Spec", mode: str = "train", rewrites=(), backend: str = "torch",
          **params: Any):
    """Compile a spec and return its torch.nn.Module (in train mode). mode="infer" builds
    the inference form: train-time choices fixed to the inference map, dead weights gone.
    `backend` names the backend that builds it (`archc backends`). Weights that would not
    fit in memory are an ArchcError before any tensor exists (archc/memory.py;
    `archc.load(spec, budget=archc.Budget(max_bytes=N))` sets the limit)."""
    from .codegen import backend as backends
    from .memory import check_build_memory

    chosen = backends.get(backend)
    if chosen.build is None:
        raise ArchcError(f"the {chosen.name} backend writes files but builds no module", None,
                         f"use archc.compile_source(spec, backend={chosen.name!r}) or "
                         "build with backend=\"torch\"", code="A002")
    loaded = load(spec, **params)
    program = backends.prepare(compile_program(loaded, mode, tuple(rewrites)), chosen, mode)
    check_build_memory(program, loaded.budget.max_bytes if loaded.budget else None)
    model = chosen.build(program, loaded)
    model.archc_spec = loaded
    if mode == "infer":
        model.eval()
    return model


# ----------------------------------------------------------------------------- analysis
# Exported as archc.cost, archc.hash and archc.format. None of them imports torch.


def spec_cost(spec: "str | Path | Spec", seq: int = 2048, batch: int = 1, **params: Any):
    """Parameters, FLOPs per token at `seq`, KV-cache bytes per token and training
    activation bytes at `batch` x `seq`, from the IR (see archc/analysis/cost.py).
    Run-time loop counts are taken at their bound value: `cost(spec, r=8)`."""
    from .analysis.cost import cost_of

    return cost_of(load(spec, **params).program, seq=seq, batch=batch)


def spec_hash(spec: "str | Path | Spec", **params: Any) -> str:
    """The canonical architecture hash (64 hex digits) of a spec at one binding of its
    params: stable across formatting, comments, renaming and changes to how an op expands
    (see archc/identity/__init__.py); its format is archc.identity.VERSION."""
    from .identity import architecture_hash

    return architecture_hash(load(spec, **params).program)


def format_spec(spec: "str | Path") -> str:
    """The canonical text of a spec (text or path), comments kept (see archc/fmt.py)."""
    from .fmt import format_text

    file, text = _read(spec)
    return format_text(text, file)
