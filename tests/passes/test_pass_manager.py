"""The pass manager (archc/passes/pipeline.py): pipelines as values (built, trimmed and
extended without touching a shared list), PassOptions handed to every pass instead of
flags on the Program, and the instruments for printing, timing and verification."""

from __future__ import annotations

import re

import pytest

import archc
from archc.api import compile_program
from archc.cli import main
from archc.errors import ArchcError
from archc.ir import Program, format_program
from archc.passes import (Instrument, Pass, PassOptions, Pipeline, PrintAfter, TimePasses,
                          VerifyEach, default_pipeline)

ORDER = ["widen", "unroll", "canonicalize", "dce", "reparam", "roll", "share", "fuse",
         "kvplan"]
TEXT = """model m(d: int = 8)
let emb = embed(vocab=16, dim=d)
let core = linear(out=d)
x = emb(tokens)
for i in 0..2 {
  x = x + core(relu(x))
}
return lm_head(x, tied=emb)
"""


def program() -> Program:
    return archc.load(TEXT).program


def probe(name: str, seen: list) -> Pass:
    """A pass that changes nothing and records the options it was handed."""
    def run(p: Program, options: PassOptions) -> Program:
        seen.append(options)
        return p
    return Pass(name, fn=run, doc="records its options")


def breaks(p: Program, options: PassOptions) -> Program:
    return p.model_copy(update={"root": "Missing"})


BROKEN = Pass("broken", fn=breaks, doc="loses the root class: the verifier must object")


class Recorder(Instrument):
    def __init__(self, tag: str, log: list):
        self.tag, self.log = tag, log

    def before_pass(self, step, program):
        self.log.append((self.tag, "before", step.name))

    def after_pass(self, step, program):
        self.log.append((self.tag, "after", step.name))


# ----------------------------------------------------------------------------- pipeline

def test_default_order_and_instruments():
    pipeline = default_pipeline()
    assert list(pipeline.names) == ORDER
    assert all(p.doc for p in pipeline.passes)
    assert [type(i) for i in pipeline.instruments] == [VerifyEach]
    assert default_pipeline(verify=False).instruments == ()
    assert "kvplan: last" in default_pipeline.__doc__  # the order comes with its reasons


def test_trimming_a_pipeline_leaves_the_default_alone():
    trimmed = default_pipeline().without("fuse", "share")
    assert "fuse" not in trimmed.names and "share" not in trimmed.names
    assert list(default_pipeline().names) == ORDER
    assert not trimmed.run(program()).weight_groups  # the share pass fills them
    assert default_pipeline().run(program()).weight_groups


def test_an_inserted_pass_runs_where_it_was_put():
    seen: list = []
    log: list = []
    pipeline = default_pipeline(mode="infer").inserted(probe("probe", seen), after="dce")
    assert pipeline.names[pipeline.names.index("dce") + 1] == "probe"
    pipeline.instrumented(Recorder("r", log)).run(program())
    assert seen == [PassOptions("infer")]
    ran = [name for _, when, name in log if when == "before"]
    assert ran == ORDER[:4] + ["probe"] + ORDER[4:]


@pytest.mark.parametrize("build", [
    lambda: default_pipeline().without("nonsense"),
    lambda: default_pipeline().inserted(BROKEN, after="nonsense"),
    lambda: default_pipeline().inserted(probe("dce", []), after="fuse"),
    lambda: Pipeline((probe("elaborate", []),)),
])
def test_unknown_and_duplicate_pass_names_are_a050(build):
    with pytest.raises(ArchcError) as err:
        build()
    assert err.value.code == "A050"


# ----------------------------------------------------------------------------- options

def test_options_are_checked_and_hashable():
    assert PassOptions(rewrites=["widen"]) == PassOptions(rewrites=("widen",))
    assert len({PassOptions(), PassOptions("train", (), False), PassOptions(unroll=True)}) == 2
    for bad in [dict(mode="eval"), dict(mode=["train"]), dict(rewrites=("wider",)),
                dict(rewrites=[["widen"]])]:
        with pytest.raises(ArchcError) as err:
            PassOptions(**bad)
        assert err.value.code == "A002"


def test_the_program_carries_no_compile_flags():
    fields = set(Program.model_fields)
    assert not fields & {"mode", "rewrites", "unroll"}


def test_every_pass_is_handed_the_pipelines_options():
    seen: list = []
    options = PassOptions("infer", ("widen",), True)
    pipeline = Pipeline((probe("a", seen), probe("b", seen)), options)
    pipeline.run(program())
    assert seen == [options, options]


def test_compile_program_caches_per_options():
    spec = archc.load("specs/reparam_vit.arch")
    train, infer = compile_program(spec), compile_program(spec, "infer")
    assert compile_program(spec, "train", ()) is train
    assert set(spec.compiled) == {PassOptions(), PassOptions("infer")}
    assert infer.folds and not train.folds  # mode reached reparam through the options
    flat = compile_program(spec, unroll=True)
    assert PassOptions(unroll=True) in spec.compiled and flat is not train


# ----------------------------------------------------------------------------- instruments

def test_print_after_names_passes_and_the_input():
    out: list[str] = []
    default_pipeline().instrumented(PrintAfter(frozenset({"dce", "elaborate"}), out.append)) \
        .run(program())
    assert [text.splitlines()[0] for text in out] == ["// IR after elaborate",
                                                      "// IR after dce"]
    assert out[0].endswith(format_program(program()))


def test_print_after_an_unknown_pass_fails_before_any_pass_runs():
    seen: list = []
    pipeline = Pipeline((probe("a", seen),)).instrumented(PrintAfter(frozenset({"fuse"})))
    with pytest.raises(ArchcError) as err:
        pipeline.run(program())
    assert err.value.code == "A050" and "fuse" in str(err.value) and seen == []


def test_time_passes_times_each_pass_once_in_order():
    timer = TimePasses()
    default_pipeline().instrumented(timer).run(program())
    assert [name for name, _ in timer.timings] == ORDER
    assert all(seconds >= 0 for _, seconds in timer.timings)
    assert all(re.fullmatch(r"pass \w+ +\d+\.\d{3} ms", line)
               for line in timer.report().splitlines())


def test_instruments_nest_first_outermost():
    log: list = []
    Pipeline((probe("a", []),), instruments=(Recorder("outer", log), Recorder("inner", log))) \
        .run(program())
    assert log == [("outer", "before", "a"), ("inner", "before", "a"),
                   ("inner", "after", "a"), ("outer", "after", "a")]


def test_the_verifier_blames_the_pass_and_can_be_turned_off():
    with pytest.raises(ArchcError) as err:
        default_pipeline().inserted(BROKEN, after="kvplan").run(program())
    assert err.value.code == "A900" and "after broken" in str(err.value)
    unchecked = default_pipeline(verify=False).inserted(BROKEN, after="kvplan")
    assert unchecked.run(program()).root == "Missing"


def test_print_after_shows_the_ir_the_verifier_then_rejects():
    out: list[str] = []
    pipeline = default_pipeline().inserted(BROKEN, after="kvplan")
    with pytest.raises(ArchcError):
        pipeline.instrumented(PrintAfter(frozenset({"broken"}), out.append)).run(program())
    assert [text.splitlines()[0] for text in out] == ["// IR after broken"]


def test_verifying_changes_nothing():
    checked = default_pipeline().run(program())
    assert format_program(default_pipeline(verify=False).run(program())) == \
        format_program(checked)


def test_cli_time_passes_lists_the_pipeline_in_order(tmp_path, capsys):
    assert main(["compile", "specs/transformer.arch", "--set", "depth=2", "-o", str(tmp_path),
                 "--time-passes"]) == 0
    lines = [line.split()[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("pass ")]
    assert lines == ORDER
