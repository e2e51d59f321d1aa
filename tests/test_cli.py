"""The archc command line, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from archc.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archc", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["check", "compile", "info", "run"])
def test_every_command_has_help(command):
    proc = run(command, "--help")
    assert proc.returncode == 0
    assert "--set" in proc.stdout


def test_top_level_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("check", "compile", "info", "run"):
        assert command in proc.stdout


def test_check_prints_a_summary(capsys):
    assert main(["check", "specs/huginn.arch"]) == 0
    assert "ok: model huginn" in capsys.readouterr().out


def test_info_reports_unique_and_applied_parameters_per_instance(capsys):
    assert main(["info", "specs/huginn.arch", "--set", "r=8"]) == 0
    out = capsys.readouterr().out
    assert "unique" in out and "applied" in out
    core = next(line for line in out.splitlines() if line.startswith("core_block"))
    unique, applied = [int(x.replace(",", "")) for x in core.split()[-2:]]
    assert applied == 8 * unique
    assert "r = 8" in out or "r: int = 8" in out


def test_compile_writes_a_file_and_prints_ir(tmp_path, capsys):
    assert main(["compile", "specs/huginn.arch", "-o", str(tmp_path), "--print-ir"]) == 0
    out = capsys.readouterr().out
    assert "loop it in r (default 4, max 64)" in out
    assert (tmp_path / "huginn.py").exists()


def test_info_lists_shared_and_tied_weights(capsys):
    assert main(["info", "specs/huginn.arch"]) == 0
    out = capsys.readouterr().out
    assert "shared Huginn.core_block: Recur <- Recur :48 x r" in out
    assert "tied Huginn.emb" in out


def test_compile_unroll_turns_a_stack_into_straight_line_code(tmp_path):
    assert main(["compile", "specs/transformer.arch", "--set", "depth=3", "-o",
                 str(tmp_path / "rolled")]) == 0
    assert main(["compile", "specs/transformer.arch", "--set", "depth=3", "--unroll", "-o",
                 str(tmp_path / "unrolled")]) == 0
    rolled = (tmp_path / "rolled" / "transformer.py").read_text()
    unrolled = (tmp_path / "unrolled" / "transformer.py").read_text()
    assert "for i, layer in enumerate(self.layers):" in rolled
    assert "enumerate(self.layers)" not in unrolled
    assert [f"self.layers[{i}](x, rope, cache, {i})" in unrolled for i in range(3)] == [True] * 3


def test_compile_rejects_an_unknown_pass_name(tmp_path, capsys):
    assert main(["compile", "specs/huginn.arch", "-o", str(tmp_path),
                 "--print-after", "nonsense"]) == 1
    assert "no pass named" in capsys.readouterr().err


def test_run_reports_a_forward_pass():
    proc = run("run", "specs/transformer.arch", "--set", "depth=2")
    assert proc.returncode == 0, proc.stderr
    assert "forward       [2, 16] -> [2, 16, 256]" in proc.stdout
    assert "finite        True" in proc.stdout


def test_bad_set_value_is_a_usage_error():
    proc = run("check", "specs/huginn.arch", "--set", "r")
    assert proc.returncode == 2
