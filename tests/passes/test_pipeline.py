"""The pass pipeline as a whole: its order, the CLI's view of it, and what the passes of
issue #5 do to the generated code of every spec (marking passes: nothing; rewriting
passes: only what folds or rolls, with the same outputs)."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

import archc
from archc.api import compile_program
from archc.cli import main
from archc.passes import default_pipeline
from passtest import build_program, pipeline_without, run_both, source

SPECS = sorted(glob.glob("specs/*.arch"))
PASSES = default_pipeline().passes


def test_order():
    names = [p.name for p in PASSES]
    mine = [n for n in names if n in {"widen", "unroll", "canonicalize", "dce", "roll", "share",
                                      "fuse", "kvplan"}]
    assert mine == ["widen", "unroll", "canonicalize", "dce", "roll", "share", "fuse", "kvplan"]
    assert names[-1] == "kvplan"
    assert all(p.doc for p in PASSES)


@pytest.mark.parametrize("name", ["canonicalize", "unroll", "roll", "share", "fuse"])
def test_print_after_and_time_passes(name, tmp_path, capsys):
    assert main(["compile", "specs/huginn.arch", "-o", str(tmp_path), "--print-after", name,
                 "--time-passes"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"// IR after {name}" in text
    assert all(p.name in text for p in PASSES)


@pytest.mark.parametrize("spec", SPECS)
def test_marking_passes_leave_the_code_as_it_was(spec):
    loaded = archc.load(spec)
    assert source(compile_program(loaded)) == \
        source(pipeline_without(loaded.program, "share", "fuse", "unroll"))


@pytest.mark.parametrize("spec", SPECS)
def test_rewrites_keep_outputs_and_weights(spec):
    loaded = archc.load(spec)
    changed = compile_program(loaded)
    plain = pipeline_without(loaded.program, "canonicalize", "roll")
    if source(changed) == source(plain):
        return
    m = archc.build(loaded).eval()
    ref = build_program(archc.load(spec), plain).eval()
    assert list(m.state_dict()) == list(ref.state_dict())
    a, b = run_both(m, ref, vocab=32, length=6)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_widenet_loses_its_no_op_drop_path():
    # drop_path with p = 0 (the spec's default `drop`) is the identity: canonicalize drops
    # it; any p > 0 keeps it
    assert "rt.drop_path" not in archc.compile_source("specs/widenet.arch")
    assert "rt.drop_path" in archc.compile_source("specs/widenet.arch", drop=0.1)


def test_goldens_have_no_strays():
    golden = Path(__file__).parent / "golden"
    passes = {p.name for p in PASSES}
    assert {d.name for d in golden.iterdir()} <= passes
