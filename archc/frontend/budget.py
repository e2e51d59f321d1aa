"""The size and work budgets, and counting the ops of a spec against them.

A NAS loop may sample huge specs, so a spec is refused before anything is allocated:
`nodes` counts every op of the model (repeats of a stack or of a block class at full
size), `built` the ops actually elaborated one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Span, fail


@dataclass
class Budget:
    """Limits checked before anything is allocated (a NAS loop may sample huge specs)."""

    max_nodes: int = 200_000
    max_params: int = 20_000_000_000
    max_bytes: int | None = None  # for archc.build's weights; None: the memory available
    # Ops elaborated one by one (repeats of a uniform stack or of a block class are not
    # elaborated again): about 10 µs each here, so every check within budget takes < 5 s.
    max_built: int = 20_000
    # Spec text, checked before parsing: lark parses about 4,000 statements a second here,
    # so this keeps every check within the budget under 5 s; written specs are a few KiB
    # (depth comes from `for` and `loop`, not from copied lines).
    max_source_bytes: int = 128 * 1024


BUDGET_HINT = ("lower the depth, or raise the budget: `--max-nodes N` on the command line, "
               "`archc.load(spec, budget=archc.Budget(max_nodes=N))` in Python")


class OpCounting:
    """Counting ops against the budget; mixed into the Elaborator (which holds `budget`,
    `nodes` and `built`)."""

    def count_node(self, span: Span | None) -> None:
        self.nodes += 1
        self.built += 1
        if self.nodes > self.budget.max_nodes:
            fail(f"the model has more than {self.budget.max_nodes:,} ops, over the size budget",
                 span, BUDGET_HINT, code="A040")
        if self.built > self.budget.max_built:
            fail(f"elaborating the spec builds more than {self.budget.max_built:,} ops one by "
                 "one, over the work budget", span,
                 "a stack whose iterations differ (its body reads the index, or a depth "
                 "reference) is built iteration by iteration; make the layers alike so it is "
                 "built once, lower the depth, or raise `archc.Budget(max_built=N)`",
                 code="A040")

    def count_repeats(self, times: int, ops: int, span: Span | None, what: str) -> None:
        """Count `times` more runs of `ops` ops elaborated once (the other iterations of a
        stack, another call of a block class), so nested stacks count at their full size,
        the product of their trip counts, and are refused before any of it is built."""
        self.nodes += max(times, 0) * ops
        if self.nodes > self.budget.max_nodes:
            fail(f"{what} brings the model to {self.nodes:,} ops, over the size budget "
                 f"of {self.budget.max_nodes:,}", span, BUDGET_HINT, code="A040")
