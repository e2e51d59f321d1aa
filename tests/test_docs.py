"""The README matches behaviour: its example compiles, every op is documented, its two
commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import archc
from archc.ops import OPS

README = Path("README.md").read_text()


def test_readme_example_spec_compiles():
    block = re.search(r"```\n(# specs/sgt.arch.*?)```", README, re.S).group(1)
    spec = archc.load(block)
    assert spec.params["step"].runtime
    real = archc.load("specs/sgt.arch")
    assert {k: p.value for k, p in spec.params.items()} == \
        {k: p.value for k, p in real.params.items()}


def test_every_op_is_in_the_readme_table():
    for name in OPS:
        assert f"`{name}" in README or f", `{name}`" in README or f"`{name}`" in README, name


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    assert "make test" in Path(".ci/run").read_text()
