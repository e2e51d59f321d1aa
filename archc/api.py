"""The public Python API: load a spec, compile it, build the module.

`load` never imports torch, so a search loop can check thousands of candidates cheaply;
`build` imports torch and runs the generated source (ours, not the spec's) in a fresh
module namespace.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import syntax
from .elaborate import Budget, elaborate
from .errors import ArchcError, Source, Span, register_source
from .ir import ParamInfo, Program
from .sourcefile import read_spec


@dataclass
class Spec:
    """A parsed, checked spec with its params bound."""

    file: str
    text: str
    program: Program
    overrides: dict[str, Any]
    compiled: dict[tuple, Program] = field(default_factory=dict)
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


REWRITES = ("widen",)


def compile_program(spec: Spec, mode: str = "train", rewrites: tuple[str, ...] = (),
                    unroll: bool = False) -> Program:
    """The IR after the pass pipeline: what the backends read. mode "infer" resolves
    train-time choices to the spec's inference map and drops what that leaves dead;
    `rewrites` turns on opt-in rewrite passes such as "widen"."""
    from .passes import run_pipeline

    if mode not in ("train", "infer"):
        raise ArchcError(f"mode must be \"train\" or \"infer\", got {mode!r}", None,
                         "infer builds the deploy form", code="A002")
    for r in rewrites:
        if r not in REWRITES:
            raise ArchcError(f"unknown rewrite {r!r}", None,
                             f"rewrites: {', '.join(REWRITES)}", code="A002")
    key = (mode, tuple(rewrites)) + (("unroll",) if unroll else ())
    if key not in spec.compiled:
        # spec_ops records the elaborated graphs (for archc.hash); the passes rewrite them
        spec.compiled[key] = run_pipeline(spec.program.model_copy(
            update={"mode": mode, "rewrites": tuple(rewrites), "unroll": unroll,
                    "spec_ops": None}))
    return spec.compiled[key]


def compile_source(spec: "str | Path | Spec", mode: str = "train", rewrites=(),
                   **params: Any) -> str:
    """The generated Python module for a spec, as text."""
    from .codegen.torch import generate

    return generate(compile_program(load(spec, **params), mode, tuple(rewrites)))


def build(spec: "str | Path | Spec", mode: str = "train", rewrites=(), **params: Any):
    """Compile a spec and return its torch.nn.Module (in train mode). mode="infer" builds
    the inference form: train-time choices fixed to the inference map, dead weights gone.
    Weights that would not fit in memory are an ArchcError before any tensor exists
    (archc/memory.py; `archc.load(spec, budget=archc.Budget(max_bytes=N))` sets the limit)."""
    import types

    loaded = load(spec, **params)
    from .codegen.escape import file_name
    from .codegen.torch import generate, root_class
    from .memory import check_build_memory

    program = compile_program(loaded, mode, tuple(rewrites))
    check_build_memory(program, loaded.budget.max_bytes if loaded.budget else None)
    source = generate(program)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"archc_generated.{loaded.program.name}_{digest}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__file__ = f"<archc:{file_name(loaded.file)}:{digest}>"  # see codegen/escape.py
        code = compile(source, module.__file__, "exec")
        _remember_source(module.__file__, source)
        exec(code, module.__dict__)  # our generated source; spec text never reaches exec
        sys.modules[name] = module
    cls = getattr(module, root_class(program))
    model = cls()
    model.archc_spec = loaded
    if mode == "infer":
        model.eval()
    return model


def _remember_source(filename: str, source: str) -> None:
    """Let tracebacks and inspect show the generated code."""
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


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
