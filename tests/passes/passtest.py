"""Helpers for pass tests: run one pass alone, compare IR text with a golden file, build
a module from a given Program.

Golden files live in tests/passes/golden/<pass>/<case>.txt and hold `format_program` of
the IR after the pass. To (re)write them after an intended change, run

    ARCHC_UPDATE_GOLDEN=1 .venv/bin/pytest tests/passes

and review `git diff tests/passes/golden` before committing.
"""

from __future__ import annotations

import os
from pathlib import Path

import archc
from archc.ir import Program, format_program
from archc.passes import DEFAULTS, PASSES, PassOptions, default_pipeline
from archc.verify import verify

GOLDEN = Path(__file__).parent / "golden"


UNROLL = PassOptions(unroll=True)


def run_pass(name: str, program: Program, options: PassOptions = DEFAULTS) -> Program:
    """One pass of the default pipeline on its own, followed by the verifier (as the
    pipeline does)."""
    step = next(p for p in PASSES if p.name == name)
    return verify(step.run(program, options), name)


def check_golden(pass_name: str, case: str, program: Program) -> str:
    text = format_program(program)
    path = GOLDEN / pass_name / f"{case}.txt"
    if os.environ.get("ARCHC_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return text
    assert path.exists(), f"no golden file {path}; run with ARCHC_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"IR after {pass_name} differs from {path}"
    return text


def pipeline_without(program: Program, *skip: str) -> Program:
    """The default pipeline with some passes left out."""
    return default_pipeline().without(*skip).run(program)


def build_program(spec: "archc.api.Spec", program: Program, mode: str = "train"):
    """archc.build for a Program made here (e.g. a pipeline with a pass left out)."""
    spec.compiled[PassOptions(mode)] = program
    return archc.build(spec, mode=mode)


def run_both(model, ref, vocab: int, length: int):
    """Give `ref` the weights of `model` and run both on one random batch from the same
    random state (specs that draw, such as huginn's initial state, draw alike)."""
    import torch

    ref.load_state_dict(model.state_dict())
    tokens = torch.randint(0, vocab, (2, length))
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(tokens)
        torch.manual_seed(0)
        return a, ref(tokens)


def source(program: Program) -> str:
    from archc.codegen.torch import generate

    return generate(program)
