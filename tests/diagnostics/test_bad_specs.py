"""Every bad spec gets a located archc error: code, file:line:col, the source line, a caret
and a hint; `archc check` exits 1 and prints no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from archc.cli import main

HEAD = "model m(vocab: int = 64, d: int = 32, heads: int = 4)\n"
LAYER = """
block layer(x) {
  x = x + attention(rmsnorm(x), heads=heads)
  return x
}
"""

# name: (spec text, error code, line of the primary span, words the message must contain)
CASES = {
    "syntax_unclosed_paren": (HEAD + "x = rmsnorm(embed(tokens, vocab=vocab, dim=d)\n"
                              "return x\n", "A001", 3, "unexpected"),
    "syntax_bad_character": (HEAD + "x = embed(tokens, vocab=vocab, dim=d) $ 2\n", "A001", 2,
                             "unexpected character"),
    "syntax_ends_early": (HEAD + "block b(x) {\n  x = rmsnorm(x)\n", "A001", 3, "ends too early"),
    "unknown_name": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\nreturn x + y\n", "A012", 3,
                     "unknown name `y`"),
    "unknown_op": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                   "return attenton(x, heads=4)\n", "A012", 3, "unknown name `attenton`"),
    "wrong_argument": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                       "return attention(x, head=4)\n", "A032", 3, "no argument `head`"),
    "missing_argument": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                         "return attention(x)\n", "A032", 3, "needs `heads=`"),
    "type_error_argument": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                            "return attention(x, heads=2.5)\n", "A031", 3, "heads"),
    "width_mismatch": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                       "y = linear(x, out=16)\nreturn x + y\n", "A013", 4, "width mismatch"),
    "heads_not_dividing": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                           "return attention(x, heads=5)\n", "A031", 3, "do not divide"),
    "kv_heads_not_dividing": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                              "return attention(x, heads=4, kv_heads=3)\n", "A031", 3,
                              "kv_heads=3"),
    "default_outside_domain": ("model m(d: int = 48 in {32, 64})\n"
                               "return embed(tokens, vocab=8, dim=d)\n", "A022", 1,
                               "outside its domain"),
    "runtime_loop_without_max": ("model m(r: int = 4 runtime)\n"
                                 "x = embed(tokens, vocab=8, dim=8)\nlet c = rmsnorm()\n"
                                 "loop r { x = c(x) }\nreturn x\n", "A024", 4, "needs a max"),
    "runtime_param_as_width": ("model m(r: int = 4 runtime)\n"
                               "return embed(tokens, vocab=8, dim=r)\n", "A023", 2, "run-time"),
    "recursive_block": (HEAD + "block a(x) { return b(x) }\nblock b(x) { return a(x) }\n"
                        "return a(embed(tokens, vocab=vocab, dim=d))\n", "A033", 3,
                        "calls itself"),
    "duplicate_block": (HEAD + LAYER + LAYER + "return layer(embed(tokens, vocab=vocab, dim=d))\n",
                        "A011", 8, "duplicate block"),
    "duplicate_param": ("model m(d: int = 4, d: int = 8)\nreturn embed(tokens, vocab=8, dim=d)\n",
                        "A011", 1, "duplicate param"),
    "duplicate_instance": (HEAD + "let n = rmsnorm()\nlet n = rmsnorm()\n"
                           "return n(embed(tokens, vocab=vocab, dim=d))\n", "A011", 3,
                           "duplicate name `n`"),
    "size_budget_params": ("model m(d: int = 1000000)\nreturn embed(tokens, vocab=100000, dim=d)\n",
                           "A040", 1, "over the budget"),
    "size_budget_range": (HEAD + LAYER + "x = embed(tokens, vocab=vocab, dim=d)\n"
                          "for i in 0..1000000000 { x = layer(x) }\nreturn x\n", "A040", 8,
                          "size budget"),
    "loop_changes_width": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                           "loop 3 { x = linear(x, out=16) }\nreturn x\n", "A013", 3,
                           "changes `x`"),
    "python_keyword_name": (HEAD + "let lambda = rmsnorm()\n"
                            "return lambda(embed(tokens, vocab=vocab, dim=d))\n", "A010", 2,
                            "Python keyword"),
    "shared_instance_width_change": (HEAD + "let n = rmsnorm()\nx = embed(tokens, vocab=vocab, dim=d)\n"
                                     "y = n(x)\nreturn n(linear(y, out=16))\n", "A013", 5,
                                     "different input shapes"),
    "lora_outside_loop": (HEAD + LAYER + "let core = layer()\n"
                          "return core(embed(tokens, vocab=vocab, dim=d)) with lora(rank=2)\n",
                          "A034", 8, "inside a `loop`"),
    "lora_unknown_target": (HEAD + LAYER + "let core = layer()\nx = embed(tokens, vocab=vocab, dim=d)\n"
                            'loop 2 { x = core(x) with lora(rank=2, targets=["qq"]) }\nreturn x\n',
                            "A034", 9, "matches no linear"),
    "tied_to_non_embed": (HEAD + "let n = rmsnorm()\nx = n(embed(tokens, vocab=vocab, dim=d))\n"
                          "return lm_head(x, tied=n)\n", "A031", 4, "tied"),
    "param_without_default": ("model m(d: int)\nreturn embed(tokens, vocab=8, dim=d)\n", "A021", 1,
                              "needs a default"),
    "block_returns_nothing": (HEAD + "block b(x) { }\nreturn b(embed(tokens, vocab=vocab, dim=d))\n",
                              "A030", 2, "computes nothing"),
    "split_not_dividing": (HEAD + "a, b, c = split(embed(tokens, vocab=vocab, dim=d), 3)\n"
                           "return a\n", "A031", 2, "cannot split"),
    "division_by_zero": ("model m(d: int = 4)\nreturn embed(tokens, vocab=8, dim=d // 0)\n", "A031", 2,
                         "division by zero"),
    "unpack_mismatch": (HEAD + "a, b = split(embed(tokens, vocab=vocab, dim=d), 4)\nreturn a\n",
                        "A031", 2, "cannot unpack"),
    "if_on_tensor": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\nif x { x = x }\nreturn x\n",
                     "A031", 3, "static value"),
    "never_called_instance": (HEAD + "let n = rmsnorm()\nreturn embed(tokens, vocab=vocab, dim=d)\n",
                              "A036", 2, "never called"),
    "loop_changes_nothing": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                             "loop 2 { y = rmsnorm(x) }\nreturn x\n", "A031", 3, "changes nothing"),
    "for_over_number": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                        "for i in 5 { x = rmsnorm(x) }\nreturn x\n", "A031", 3,
                        "range or a list"),
    "choice_given_int": ('model m(act: choice = 3 in {"gelu", "relu"})\n'
                         "return embed(tokens, vocab=8, dim=8)\n", "A031", 1, "choice"),
    "embed_of_activation": (HEAD + "x = embed(tokens, vocab=vocab, dim=d)\n"
                            "return embed(x, vocab=vocab, dim=d)\n", "A031", 3, "token ids"),
    "huge_exponent": ("model m(d: int = 2 ** 100000)\nreturn embed(tokens, vocab=8, dim=8)\n",
                      "A031", 1, "too large"),
    "halting_on_uncarried": (HEAD + LAYER + "let core = layer()\nx = embed(tokens, vocab=vocab, dim=d)\n"
                             "loop 4 until converged(z) { x = core(x) }\nreturn x\n", "A035", 9,
                             "not carried"),
}


def _run(tmp_path: Path, name: str, text: str, capsys) -> tuple[int, str]:
    path = tmp_path / f"{name}.arch"
    path.write_text(text)
    rc = main(["check", str(path)])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_spec_is_located_and_explained(name, tmp_path, capsys):
    text, code, line, words = CASES[name]
    rc, out = _run(tmp_path, name, text, capsys)
    assert rc == 1, out
    assert "Traceback" not in out
    assert f"error[{code}]" in out, out
    assert words in out, out
    loc = re.search(rf"{name}\.arch:(\d+):(\d+)", out)
    assert loc is not None, out
    assert int(loc.group(1)) == line, out
    assert "^" in out, out
    assert "= hint:" in out, out
    source_line = text.splitlines()[line - 1].strip()
    assert source_line[:20] in out, out


def test_there_are_at_least_twenty_distinct_codes_and_cases():
    assert len(CASES) >= 20
    assert len({code for _, code, _, _ in CASES.values()}) >= 12


def test_cli_exits_1_without_traceback_in_a_real_process(tmp_path):
    path = tmp_path / "bad.arch"
    path.write_text(HEAD + "return attenton(tokens)\n")
    proc = subprocess.run([sys.executable, "-m", "archc", "check", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert re.search(r"bad\.arch:2:\d+", proc.stderr), proc.stderr


def test_json_error_format(tmp_path, capsys):
    import json

    path = tmp_path / "bad.arch"
    path.write_text(HEAD + "return attention(embed(tokens, vocab=vocab, dim=d), heads=5)\n")
    rc = main(["check", str(path), "--error-format", "json"])
    err = capsys.readouterr().err
    assert rc == 1
    data = json.loads(err)
    assert data["code"] == "A031" and data["span"]["line"] == 2 and data["hint"]


def test_set_outside_domain_names_the_param(tmp_path, capsys):
    path = tmp_path / "ok.arch"
    path.write_text("model m(r: int = 4 in 1..=8 runtime)\nx = embed(tokens, vocab=8, dim=8)\n"
                    "let c = rmsnorm()\nloop r max 8 { x = c(x) }\nreturn x\n")
    assert main(["check", str(path), "--set", "r=9"]) == 1
    err = capsys.readouterr().err
    assert "r = 9 (as given) is outside its domain 1..=8" in err
    assert main(["check", str(path), "--set", "rr=1"]) == 1
    assert "did you mean `r`" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "archc", "check"], capture_output=True,
                          text=True)
    assert proc.returncode == 2


def test_missing_file_is_an_archc_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.arch")]) == 1
    assert "no spec file" in capsys.readouterr().err


def test_error_spans_point_at_both_places_for_a_shared_instance(tmp_path, capsys):
    text, *_ = CASES["shared_instance_width_change"]
    _run(tmp_path, "shared", text, capsys)
    path = tmp_path / "shared.arch"
    main(["check", str(path)])
    err = capsys.readouterr().err
    assert "first called here" in err
    assert len(re.findall(r"shared\.arch:\d+:\d+", err)) >= 2


@pytest.mark.parametrize("snippet", [
    "", "model", "model m(", "model m()\n{", "model m() return", "}}}", "model m() x = = 1",
    "model m() x = 1 +", "model m() block b(x) { return x", "model m() loop { }",
    "\x00\x01", "model m(d: int = 4) return d", "model m() return tokens[",
])
def test_garbage_never_escapes_as_a_python_exception(snippet, tmp_path, capsys):
    path = tmp_path / "g.arch"
    path.write_text(snippet)
    rc = main(["check", str(path)])
    out = capsys.readouterr()
    assert rc == 1
    assert "error[" in out.err


def test_dedent_helper_is_not_needed():
    # The cases above are plain strings so their line numbers are exact.
    assert textwrap.dedent("a") == "a"
