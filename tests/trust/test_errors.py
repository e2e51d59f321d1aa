"""Every bad input is an archc error (issue 8, item 4): a located `ArchcError` with a code,
a caret and a hint, never a Python traceback, a hang, or a generated module that does not
compile. Each case here was a crash found by fuzzing (RecursionError, TypeError,
OverflowError, ValueError, AssertionError, IndexError, UnicodeDecodeError, an internal
error, a SyntaxError from compile()); the inputs that are valid now build and run."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import archc
from archc import limits, syntax
from archc.cli import main
from archc.errors import ArchcError

HEAD = "model m(vocab: int = 64, d: int = 32, heads: int = 4, r: int = 2 runtime)\n"
EMBED = "x = embed(tokens, vocab=vocab, dim=d)\n"
BIG = "9" * 401


def edited(spec: str, old: str, new: str) -> str:
    text = Path(f"specs/{spec}.arch").read_text()
    assert old in text, old
    return text.replace(old, new)


def nested(n: int, opening: str, inner: str, closing: str) -> str:
    return opening * n + inner + closing * n


def loops(n: int, head: str, body: str) -> str:
    return "".join(head.format(k=k) + " { " for k in range(n)) + body + " }" * n + "\n"


def block_chain(n: int, body: str = "return b{next}(x)") -> str:
    out = [f"block b{k}(x) {{ {body.format(next=k + 1)} }}\n" for k in range(n)]
    return "".join(out) + f"block b{n}(x) {{ return rmsnorm(x) }}\n"


def run_time_chain(n: int, step: str) -> str:
    return "s = r\n" + step * n + "x = x * s\nreturn x\n"


# name: (spec text, code, line, column, words the message must contain)
ERRORS = {
    # nesting: each was a RecursionError in the AST builder or the elaborator
    "unary_minus_1000": (HEAD + "h = " + "-" * 1000 + "1\n" + EMBED + "return x\n",
                         "A041", 2, 68, "nesting deeper than 64"),
    "list_1000": (HEAD + "h = " + nested(1000, "[", "", "]") + "\n" + EMBED + "return x\n",
                  "A041", 2, 68, "nesting deeper than 64"),
    "call_1000": (HEAD + "h = " + nested(1000, "min(", "1", ")") + "\n" + EMBED + "return x\n",
                  "A041", 2, 257, "nesting deeper than 64"),
    "tensor_call_1000": (HEAD + EMBED + "x = " + nested(1000, "rmsnorm(", "x", ")") + "\n"
                         "return x\n", "A041", 3, 509, "nesting deeper than 64"),
    "plus_1000_terms": (HEAD + "h = " + " + ".join(["1"] * 1000) + "\n" + EMBED + "return x\n",
                        "A041", 2, 3753, "nesting deeper than 64"),
    "for_99": (HEAD + EMBED + loops(99, "for i{k} in 0..1", "x = rmsnorm(x)") + "return x\n",
               "A041", 3, 279, "loops nested deeper than 16"),
    "loop_21": (HEAD + EMBED + loops(21, "loop j{k} in 1", "x = rmsnorm(x)") + "return x\n",
                "A041", 3, 247, "loops nested deeper than 16"),
    "block_calls_200": (HEAD + block_chain(200) + EMBED + "return b0(x)\n",
                        "A041", 33, 23, "block calls nested deeper than 32"),
    "block_calls_with_deep_bodies": (HEAD + block_chain(31, "return " + nested(
        20, "rmsnorm(", "b{next}(x)", ")")) + EMBED + "return b0(x)\n", "A041", 9, 46,
        "counting through block calls"),
    # a 200-deep run-time expression printed as Python: too many nested parentheses
    "run_time_scale_200_deep": (HEAD + EMBED + run_time_chain(200, "s = s + r\n"),
                                "A041", 35, 5, "run-time expression nests deeper than 32"),
    "run_time_scale_doubling": (HEAD + EMBED + run_time_chain(40, "s = s + s\n"),
                                "A041", 12, 5, "more than 1000 terms"),
    "run_time_scale_200_terms": (HEAD + EMBED + "x = x * (" + " + ".join(["r"] * 200) + ")\n"
                                 "return x\n", "A041", 3, 562, "nesting deeper than 64"),
    # numbers
    "int_domain_bound_is_a_string": ('model m(n: int = 5 in 1..="")\n'
                                     "return embed(tokens, vocab=8, dim=8)\n", "A031", 1, 27,
                                     'expected a number, got ""'),
    "range_domain_on_a_choice": ('model m(s: choice = "a" in 1..3)\n'
                                 "return embed(tokens, vocab=8, dim=8)\n", "A022", 1, 28,
                                 "range domain needs an int or float"),
    "float_param_of_401_digits": (f"model m(f: float = {BIG})\n"
                                  "return embed(tokens, vocab=8, dim=8)\n", "A031", 1, 20,
                                  "integer is too large"),
    "sqrt_of_401_digits": (HEAD + f"h = sqrt({BIG})\n" + EMBED + "return x\n", "A031", 2, 10,
                           "integer is too large"),
    "int_literal_of_4301_digits": ("model m(n: int = " + "7" * 4301 + ")\n"
                                   "return embed(tokens, vocab=8, dim=8)\n", "A031", 1, 18,
                                   "integer is too large"),
    "float_literal_overflows": ("model m(f: float = 1e999)\n"
                                "return embed(tokens, vocab=8, dim=8)\n", "A031", 1, 20,
                                "too large for a float"),
    "float_literal_underflows": ("model m(f: float = 1e-999)\n"
                                 "return embed(tokens, vocab=8, dim=8)\n", "A031", 1, 20,
                                 "too small for a float"),
    "int_of_huge_float": (HEAD + "h = int(1e300)\n" + EMBED + "return x\n", "A031", 2, 5,
                          "too large"),
    # tensors
    "norm_of_token_ids": ("model m()\nx = rmsnorm(tokens)\n"
                          "return embed(tokens, vocab=8, dim=8)\n", "A031", 2, 13,
                          "`rmsnorm` takes activations"),
    "sum_of_an_empty_depth_range": (HEAD + "block layer(x) {\n  return x + rmsnorm(x)\n}\n"
                                    + EMBED + "for i in 0..3 as layers {\n"
                                    "  x = layer(x) + sum(layers[0..i].x)\n}\nreturn x\n",
                                    "A031", 7, 18, "`sum` got an empty list"),
    "relaxed_recursive_n_1": (edited("relaxed_recursive", "n: int = 6", "n: int = 1"),
                              "A036", 25, 5, "instance `shared` is never called"),
    # run time: ZeroDivisionError, OverflowError, RuntimeError in the forward
    "ramp_that_ends_where_it_starts": (edited("slab", "total: int = 1000", "total: int = 0"),
                                       "A031", 19, 51, "ends where it starts"),
    "ramp_to_the_step_itself": (edited("reparam_vit", "ramp(join_start, join_end)",
                                       "ramp(join_start, step)"), "A031", 22, 36,
                                "not the training step itself"),
    "ramp_of_one_instance_value": (HEAD.replace("r: int = 2 runtime", "step: int = 0 runtime")
                                   + "block b(x, onset: int runtime) {\n"
                                   "  return x * ramp(onset, onset)\n}\n" + EMBED +
                                   "return b(x, onset=3)\n", "A031", 3, 14,
                                   "ramp ends where it starts"),
    # a RuntimeError (view of the wrong size) in the forward
    "hyper_write_given_the_stream_as_coefficients": (
        edited("hyper", "hyper_write(xs, c, attention", "hyper_write(xs, x, attention"),
        "A031", 22, 10, "coefficients of 4 streams have width 20"),
    "run_time_division_by_zero": (HEAD + EMBED + "x = x * (r / 0)\nreturn x\n", "A031", 3, 10,
                                  "division by zero"),
    "float_attr_past_float32": (edited("dense", "slope=0.2", "slope=1e308"), "A031", 27, 45,
                                "past the range of float32"),
    "moe_capacity_past_float32": (edited("widenet", "capacity: float = 1.25",
                                         "capacity: float = 1e308"), "A031", 19, 52,
                                  "past the range of float32"),
    # a TypeError (unhashable) keying the block's class
    "instance_as_block_param": (HEAD + "block b(x, h: int = 4) {\n  return rmsnorm(x)\n}\n"
                                "let emb = embed(vocab=vocab, dim=d)\n"
                                "return b(emb(tokens), tied=emb)\n", "A032", 6, 8,
                                "block `b` has no param `tied`"),
    "run_time_value_as_static_block_param": (HEAD + "block b(x, h: float = 4) {\n"
                                             "  return x * h\n}\n" + EMBED +
                                             "return b(x, h=r * 2)\n", "A031", 6, 8,
                                             "param `h` takes a number"),
    "moe_capacity_past_int64_slots": (edited("widenet", "capacity: float = 1.25",
                                             "capacity: float = 1e30"), "A031", 19, 52,
                                      "less than or equal to 1000000"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_bad_input_is_a_located_archc_error(name):
    text, code, line, col, words = ERRORS[name]
    with pytest.raises(ArchcError) as info:
        archc.load(text)
    e = info.value
    assert (e.code, words in e.message) == (code, True), e.render()
    assert (e.span.line, e.span.col) == (line, col), e.render()
    assert e.hint, e.render()
    assert "^" in e.render()


@pytest.mark.parametrize("name", ["unary_minus_1000", "for_99", "block_calls_200",
                                  "norm_of_token_ids", "int_literal_of_4301_digits"])
def test_check_exits_1_with_the_diagnostic(name, tmp_path, capsys):
    text, code, line, col, _ = ERRORS[name]
    path = tmp_path / "bad.arch"
    path.write_text(text)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"error[{code}]" in err and f"bad.arch:{line}:{col}" in err, err


# name: (spec text, overrides, code, words)
OVERRIDES = {
    "float_param_given_401_digits": ("model m(f: float = 1.0)\n", {"f": int(BIG)}, "A031",
                                     "too large"),
    "int_param_given_401_digits": ("model m(n: int = 1)\nh = sqrt(n)\n", {"n": int(BIG)},
                                   "A031", "too large"),
    "float_param_given_inf": ("model m(f: float = 1.0)\n", {"f": float("inf")}, "A031",
                              "finite"),
    "float_param_given_nan": ("model m(f: float = 1.0)\n", {"f": float("nan")}, "A031",
                              "finite"),
}


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_bad_override_is_an_archc_error(name):
    head, overrides, code, words = OVERRIDES[name]
    with pytest.raises(ArchcError) as info:
        archc.load(head + "return embed(tokens, vocab=8, dim=8)\n", **overrides)
    assert info.value.code == code and words in info.value.message, info.value.render()


# ----------------------------------------------------------------------------- valid now


def _embedded(m: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
    (weight,) = [p for n, p in m.named_parameters() if n.endswith("weight") and p.dim() == 2
                 and p.shape[0] == 64]
    return weight[t]


def _linear_weights(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p for n, p in m.named_parameters() if p.dim() == 2 and p.shape == (32, 32)]


def _residual_linears(m, t):
    x = _embedded(m, t)
    for w in _linear_weights(m):
        x = x + x @ w.T
    return x


# name: (spec text, the expected output from the module's own weights)
VALID = {
    # an internal error in the verifier: a stack of zero per-iteration linears
    "loop_0_with_weights": (HEAD + EMBED + "loop 0 { x = x + linear(x, out=d) }\nreturn x\n",
                            _embedded),
    # generated `for` with an empty body did not compile (IndentationError)
    "empty_loop_body": (HEAD + EMBED + "loop 2 { x = x }\nreturn x\n", _embedded),
    "empty_run_time_loop_body": (HEAD + EMBED + "loop r max 4 { x = x }\nreturn x\n",
                                 _embedded),
    # 16 nested loops (Python refuses more than 20 statically nested blocks)
    "16_nested_loops": (HEAD + EMBED + loops(16, "loop j{k} in 1", "x = x + linear(x, out=d)")
                        + "return x\n", _residual_linears),
    "16_nested_fors": (HEAD + EMBED + loops(16, "for j{k} in 0..1", "x = x + linear(x, out=d)")
                       + "return x\n", _residual_linears),
    # a run-time scale 31 levels deep still prints as valid Python: s = 4 - 2 / 2**15
    "run_time_scale_31_deep": (HEAD + EMBED + run_time_chain(15, "s = s * 0.5 + r\n"),
                               lambda m, t: _embedded(m, t) * (4 - 2 * 0.5 ** 15)),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_edge_case_builds_and_computes_the_spec(name):
    text, expected = VALID[name]
    torch.manual_seed(0)
    m = archc.build(text)
    t = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        assert torch.allclose(m(t), expected(m, t), atol=1e-5)


def test_relaxed_recursive_with_a_full_recursion_still_builds():
    m = archc.build("specs/relaxed_recursive.arch", n=2)
    assert m(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 256)


def test_limits_leave_room_for_the_python_that_runs_them():
    """The nested-loop limit keeps generated code under Python's 20 nested blocks, and
    the run-time scalar limit under its 200 nested parentheses."""
    assert limits.MAX_LOOP_NESTING <= 18
    assert 2 * limits.MAX_SCALAR_DEPTH < 200


# ----------------------------------------------------------------------------- files, API


def test_non_utf8_file_is_located(tmp_path, capsys):
    path = tmp_path / "latin1.arch"
    path.write_bytes(b"model m()\n# caf\xe9\nreturn embed(tokens, vocab=8, dim=8)\n")
    with pytest.raises(ArchcError) as info:
        archc.load(path)
    e = info.value
    assert (e.code, e.span.line, e.span.col) == ("A002", 2, 6), e.render()
    assert "not UTF-8" in e.message and "0xe9" in e.message
    for command in ("check", "fmt", "hash"):
        assert main([command, str(path)]) == 1
        assert "latin1.arch:2:6" in capsys.readouterr().err


def test_line_endings_read_as_text_mode_reads_them(tmp_path):
    path = tmp_path / "crlf.arch"
    path.write_bytes(b"model m()\r\nreturn embed(tokens, vocab=8, dim=8)\r\n")
    assert archc.load(path).name == "m"
    assert syntax.parse_file(path).name == "m"


@pytest.mark.parametrize("bad", [None, 3, b"model m()\n", ["specs/dense.arch"]])
def test_load_of_a_non_spec_says_what_load_takes(bad):
    for entry in (archc.load, archc.build, archc.cost, archc.hash, archc.format):
        with pytest.raises(ArchcError) as info:
            entry(bad)
        assert info.value.code == "A002" and "path to a .arch file" in info.value.hint


def test_a_one_line_text_with_a_nul_is_an_unreadable_path_not_a_traceback():
    """A one-line string that does not start with `model` is read as a path; a NUL in it
    was a ValueError from open() (found by bench/fuzz.py)."""
    for entry in (archc.load, archc.cost, archc.format):
        with pytest.raises(ArchcError) as info:
            entry("# Wide Att\0ention")
        assert info.value.code == "A002" and "cannot read spec" in info.value.message


def test_fmt_prints_floats_that_parse_back_to_the_same_value():
    values = ["1e300", "1.7976931348623157e308", "5e-324", "2.5e-08", "0.1", "1e16", "3.0"]
    text = "model m(" + ", ".join(f"f{k}: float = {v}" for k, v in enumerate(values)) + ")\n" \
        "return embed(tokens, vocab=8, dim=8)\n"
    again = syntax.parse(archc.format(text))
    assert [p.default.value for p in again.params] == [float(v) for v in values]
    assert archc.format(archc.format(text)) == archc.format(text)


def test_fmt_refuses_a_float_it_could_not_print(tmp_path, capsys):
    path = tmp_path / "inf.arch"
    path.write_text("model m(f: float = 1e999)\nreturn embed(tokens, vocab=8, dim=8)\n")
    assert main(["fmt", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error[A031]" in err and "inf.arch:1:20" in err


# ----------------------------------------------------------------------------- forward


@pytest.fixture(scope="module")
def sgt():
    return archc.build("specs/sgt.arch")


# tokens given -> (exception type, message fragment)
BAD_TOKENS = {
    "float_3d": (lambda: torch.zeros(2, 3, 4), TypeError, "got float32 [2, 3, 4]"),
    "long_3d": (lambda: torch.zeros(2, 3, 4, dtype=torch.long), ValueError,
                "got int64 [2, 3, 4]"),
    "long_1d": (lambda: torch.zeros(3, dtype=torch.long), ValueError, "got int64 [3]"),
    "float_2d": (lambda: torch.zeros(2, 3), TypeError, "got float32 [2, 3]"),
    "list": (lambda: [[1, 2, 3]], TypeError, "got list"),
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_forward_says_what_input_it_expects(sgt, name):
    make, error, words = BAD_TOKENS[name]
    with pytest.raises(error) as info:
        sgt(make())
    message = str(info.value)
    assert "sgt expects tokens as an integer tensor [batch, seq]" in message and words in message


def test_forward_takes_int32_and_int64_tokens(sgt):
    t = torch.randint(0, 256, (2, 4))
    with torch.no_grad():
        assert torch.equal(sgt(t), sgt(t.to(torch.int32)))


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv", [
    ["run", "specs/transformer.arch", "--batch", "-1"],
    ["run", "specs/transformer.arch", "--seq", "0"],
    ["run", "specs/transformer.arch", "--seed", "-1"],
    ["info", "specs/transformer.arch", "--seq", "0"],
    ["check", "specs/transformer.arch", "--max-nodes", "-1"],
    ["check", "specs/transformer.arch", "--max-params", "0"],
    ["cost", "specs/transformer.arch", "--seq", "0"],
    ["cost", "specs/transformer.arch", "--batch", "two"],
])
def test_bad_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err, err


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "archc", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_closed_pipe_ends_quietly():
    """`archc cost ... | head`: the reader is gone before archc writes."""
    proc = _cli("cost", "specs/transformer.arch")
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert err.decode() == "" and proc.returncode == 141


def _boom(*args, **kwargs):
    raise ZeroDivisionError("a bug in an op")


@pytest.fixture
def buggy_rmsnorm(monkeypatch):
    """An internal compiler bug: rmsnorm's expansion raises."""
    from archc.ops import library

    monkeypatch.setitem(library.OPS, "rmsnorm",
                        dataclasses.replace(library.OPS["rmsnorm"], expand=_boom))


def _write_spec(tmp_path) -> Path:
    path = tmp_path / "spec.arch"
    path.write_text(HEAD + EMBED + "x = x + rmsnorm(x)\nreturn x\n")
    return path


def test_internal_error_is_reported_with_its_spec_location(buggy_rmsnorm, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.delenv("ARCHC_BACKTRACE", raising=False)
    assert main(["check", str(_write_spec(tmp_path))]) == 3
    err = capsys.readouterr().err
    assert "internal error in archc, please report it: ZeroDivisionError: a bug in an op" in err
    assert "spec.arch:3:9" in err and "ARCHC_BACKTRACE=1" in err
    assert "Traceback" not in err


def test_internal_error_is_the_real_exception_for_tests_and_the_api(buggy_rmsnorm, tmp_path):
    assert os.environ.get("ARCHC_BACKTRACE") == "1"  # tests/conftest.py
    path = _write_spec(tmp_path)
    with pytest.raises(ZeroDivisionError) as info:
        main(["check", str(path)])
    assert any("spec.arch:3:9" in note for note in info.value.__notes__)
    with pytest.raises(ZeroDivisionError):
        archc.load(path)


def test_internal_error_in_a_real_process_has_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ARCHC_BACKTRACE"}
    code = ("import sys, dataclasses; from archc.ops import library; from archc.cli import main\n"
            "def boom(*a): raise ZeroDivisionError('a bug')\n"
            "library.OPS['rmsnorm'] = dataclasses.replace(library.OPS['rmsnorm'], expand=boom)\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "check", str(_write_spec(tmp_path))],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert re.search(r"error\[A900\]: internal error in archc", proc.stderr), proc.stderr


def test_unwritable_output_is_an_archc_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["compile", "specs/dense.arch", "-o", str(blocker / "out")]) == 1
    assert "error[A002]: cannot write" in capsys.readouterr().err


def test_verifier_bug_exits_3_like_any_internal_error(tmp_path, capsys, monkeypatch):
    import archc.verify

    def broken(program, after="elaboration"):
        raise ArchcError("internal compiler error after elaboration: a broken graph", None,
                         "this is a bug in archc, not in the spec; please report it",
                         code="A900")

    monkeypatch.setattr(archc.verify, "verify", broken)
    assert main(["check", str(_write_spec(tmp_path))]) == 3
    assert "error[A900]" in capsys.readouterr().err


def test_error_quotes_its_own_line_after_a_unicode_line_separator():
    text = HEAD + "# a comment\u2028with a line separator\n" + EMBED + "return y\n"
    with pytest.raises(ArchcError) as info:
        archc.load(text)
    assert info.value.span.line == 4
    assert "4 | return y" in info.value.render()
