"""Mutation fuzzing (issue 8 item 7): mutants of specs/*.arch and of generated specs are
refused with an ArchcError or succeed (load, check, build, one forward); never another
exception, never a hang. A fixed-seed budget runs here (`ARCHC_FUZZ_SCALE` multiplies
it); bench/fuzz.py runs the long campaign.

Every failure class the fuzz found is in mutate.FOUND with a reproducer, a regression test
here. Classes still open go in mutate.KNOWN too (xfail, not strict; bench/fuzz.py tags
them): the budget test tolerates them and fails on anything else.
"""

from __future__ import annotations

import os
import random

import pytest

from mutate import FOUND, KNOWN, SHALLOW, judge, known_class, mutant, seeds

SCALE = float(os.environ.get("ARCHC_FUZZ_SCALE", "1"))
CASES = int(1500 * SCALE)  # about 12 s on an idle machine
TIMEOUT = 10.0  # generous: the CI machine is shared; a real hang runs far longer

def test_mutants_raise_only_archc_errors():
    rng = random.Random(8)
    sources = seeds(generated=22)
    unexpected, known = [], {}
    for k in range(CASES):
        text = mutant(rng.choice(sources), rng, depths=SHALLOW)
        outcome, detail = judge(text, timeout=TIMEOUT)
        if outcome in ("ok", "ok-big", "archc-error"):
            continue
        name = known_class(outcome, detail)
        if name:
            known[name] = known.get(name, 0) + 1
        else:
            unexpected.append((k, outcome, detail, text))
    if unexpected:
        k, outcome, detail, text = unexpected[0]
        pytest.fail(f"{len(unexpected)} mutants failed outside archc errors "
                    f"(known classes seen: {known}); first, case {k}: {outcome} {detail}\n"
                    f"{text}")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=False, reason=KNOWN[n][3]))
    if n in KNOWN else n for n in sorted(FOUND)])
def test_found_failure_class(name):
    """The reproducer of each class the fuzz found raises an ArchcError or succeeds."""
    outcome, detail = judge(FOUND[name][2], timeout=TIMEOUT)
    assert outcome in ("ok", "ok-big", "archc-error"), (outcome, detail)
