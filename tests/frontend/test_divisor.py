"""A run-time divisor made of loop indices is checked at every index the loop can take
(bench/fuzz.py --seed 13 case 18019: `1 / (j3 + -1)` raised ZeroDivisionError, an A900,
from the built module). Divisors that stay non-zero, or read run-time params, build."""

import pytest
import torch

import archc

HEAD = """model m(vocab: int = 16, d: int = 8, r: int = 2 in 1..=3 runtime)
let emb = embed(vocab=vocab, dim=d)
x = emb(tokens)
let lin = linear(out=8)
"""
TAIL = "return lm_head(x, tied=emb)\n"


@pytest.mark.parametrize("body, where", [
    ("loop j in r max 3 {\n  x = x + scale(lin(x), 1 / (j + -1))\n}\n", "j = 1"),
    ("loop k in r max 3 {\n  x = x + lin(x) / (k - 2)\n}\n", "k = 2"),
    # a `for` index is static in each iteration: the static evaluator catches it
    ("for i in 0..3 {\n  x = x + scale(lin(x), 1 / (i - 1))\n}\n", None),
])
def test_a_divisor_that_is_zero_at_some_index_is_refused(body, where):
    with pytest.raises(archc.ArchcError) as e:
        archc.load(HEAD + body + TAIL)
    want = "division by zero" + (f" when {where}" if where else "")
    assert e.value.code == "A031" and e.value.message == want
    assert e.value.span is not None


def test_divisors_that_stay_nonzero_build():
    body = ("loop j in r max 3 {\n  x = x + scale(lin(x), 1 / (j + 1))\n}\n"
            "loop k in r max 3 {\n  x = x + lin(x) / (k + r)\n}\n")
    m = archc.build(HEAD + body + TAIL)
    with torch.no_grad():
        assert torch.isfinite(m(torch.randint(0, 16, (1, 4)), r=3)).all()
