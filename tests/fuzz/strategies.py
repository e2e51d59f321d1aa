"""Hypothesis strategies for generated specs: tests/fuzz/specgen.py driven by hypothesis,
so a failing case shrinks to a small spec (fewer statements, default options)."""

from __future__ import annotations

from hypothesis import strategies as st

from specgen import Case, generate


class HypothesisDraw:
    """specgen's Draw over hypothesis: integers shrink to their low end, choices to the
    first option, booleans to False (the rarer construct left out)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options):
        return self.draw(st.sampled_from(list(options)))

    def boolean(self, p: float = 0.5) -> bool:
        return self.draw(st.integers(0, 99)) >= 100 - round(p * 100)


@st.composite
def specs(draw, avoid=frozenset()) -> Case:
    """A valid generated spec without the constructs named in `avoid`."""
    return generate(HypothesisDraw(draw), avoid)
