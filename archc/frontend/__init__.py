"""The front end: elaborate a parsed spec into the IR.

Elaboration binds the model params, evaluates static expressions (a small pure language:
nothing in a spec ever reaches Python eval/exec), expands spec ops into IR primitives,
makes one class per block specialization, and turns `for`/`loop` into regions:

- `for` is unrolled in meaning (distinct weights per iteration). Its body is elaborated
  once per iteration; when every iteration gives the same graph, the region stays rolled
  (`for layer in self.layers`), otherwise the iterations are spliced in one after another.
- `loop` is a recurrence with shared weights. Its body is elaborated once with the index
  as a run-time value; instances made inside it are one per iteration (stacked).

Weights live where an instance is made: an inline call `rmsnorm(x)` makes one at the call
site, `let n = rmsnorm()` names one so later calls share it.

The files, in the order a spec meets them:
- `elaborator.py`: the entry (`elaborate`), blocks and their classes;
- `params.py`: binding model and block params; `budget.py`: size and work budgets;
- `consteval.py`: the static-expression evaluator;
- `builder.py`: one block specialization into a BlockDef, made of `statements.py`,
  `expressions.py`, `calls.py` and `regions.py` (`for` and `loop`);
- `opctx.py`: the op-author API an op's expansion sees;
- `values.py` and `scopes.py`: the values and scopes all of them share.
"""

from .budget import Budget
from .elaborator import elaborate
from .opctx import OpCtx

__all__ = ["Budget", "OpCtx", "elaborate"]
