"""Small pieces of generated source that a careful author would write by hand.

A cache layout of 260 equal slots reads `[(4, 16)] * 260`, not 2,357 characters of
tuples; a module imports only what its code uses; slot arithmetic has names
(`self.CODA_SLOT + i`, not `258 + i`); a loop that runs once or not at all is an `if`.
Each helper returns source text that evaluates to exactly what the naive form did, so
numerics cannot change (bench/logits_digest.py shows it).
"""

from __future__ import annotations

import re

from ... import scalar
from ..escape import literal
from ..namespace import Namespace

# The imports a generated module may need, by the name each binds, in file order.
IMPORTS = (
    ("torch", "import torch"),
    ("F", "import torch.nn.functional as F"),
    ("nn", "from torch import nn"),
)
RUNTIME_IMPORT = ("rt", "from archc import runtime as rt")


def repeated_list(items: list) -> str:
    """A list literal with its repetitions folded: `[(4, 16)] * 260` for one repeated
    item, `[(4, 16), (1, 16)] * 4` for a repeated pattern, otherwise runs of three or
    more equal items as `[x] * n` joined with `+` to lists of the rest."""
    if not items:
        return "[]"
    period = _period(items)
    if period < len(items):
        return f"{_plain(items[:period])} * {len(items) // period}"
    parts, loose = [], []
    for item, count in _runs(items):
        if count >= 3:
            if loose:
                parts.append(_plain(loose))
                loose = []
            parts.append(f"{_plain([item])} * {count}")
        else:
            loose += [item] * count
    if loose:
        parts.append(_plain(loose))
    return " + ".join(parts)


def _period(items: list) -> int:
    """The length of the shortest pattern that, repeated, gives `items`."""
    n = len(items)
    for p in range(1, n // 2 + 1):
        if n % p == 0 and items[:p] * (n // p) == items:
            return p
    return n


def _runs(items: list) -> list[tuple[object, int]]:
    """Consecutive equal items as (item, how many)."""
    out: list[tuple[object, int]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out


def _plain(items: list) -> str:
    return f"[{', '.join(literal(item) for item in items)}]"


def imports(body: str) -> list[str]:
    """The import lines of a module whose code (everything after the imports) is `body`:
    only those whose name the code reads. The names are the generated globals
    (emit.GENERATED_GLOBALS), which no spec name can take, and the code reads each one
    as `name.attribute`; comment lines (spec text) are skipped, so what is left is code
    and the string literals of messages, where a stray match costs an import at most."""
    code = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("#"))
    used = set(_GLOBAL_READ.findall(code))
    lines = [line for name, line in IMPORTS if name in used]
    if RUNTIME_IMPORT[0] in used:
        lines += ([""] if lines else []) + [RUNTIME_IMPORT[1]]
    return lines


_GLOBAL_READ = re.compile(r"(?<![\w.])(torch|F|nn|rt)\.")


class SlotConstants:
    """The KV-cache slot arithmetic of one generated class, with names.

    `self.core_block(s, e, rope, cache, self.CORE_BLOCK_SLOT + it * self.CORE_BLOCK_STRIDE)`
    says where the slots come from; `2 + it * 4` does not. The names are class attributes
    (constants of the class, as a hand-written module keeps them), so no local of any
    method can shadow them; they are kept apart from the class's other attributes
    (instances, labels, block params) by a namespace. The same (name, value) is one
    constant, asked for twice."""

    def __init__(self, taken: set[str], relative: bool):
        self.relative = relative  # a block: offsets count from the `slot` its caller gives
        self.ns = Namespace(taken)
        self.defined: list[tuple[str, int, str]] = []

    def ref(self, hint: str, value: int, note: str) -> str:
        """`self.NAME` for a constant holding `value`; `note` says what it counts."""
        key = (hint, value)
        if key not in self.ns:
            self.defined.append((self.ns.create(hint, key), value, note))
        return f"self.{self.ns[key]}"

    def lines(self, indent: str) -> list[str]:
        """The class-body statements that define the constants (none if none is used)."""
        if not self.defined:
            return []
        head = ("# KV-cache slots, counted from `slot` (the first one the caller gives "
                "this block)" if self.relative else
                "# KV-cache slots (the layout of new_cache) that forward addresses")
        return ([f"{indent}{head}"]
                + [f"{indent}{name} = {value}  # {note}" for name, value, note in self.defined]
                + [""])


def slot_hint(path) -> str:
    """The constant name stem for a module path: `core_block` -> CORE_BLOCK,
    `blocks[1]` -> BLOCKS_1, `shared[b]` -> SHARED (the index is the loop's)."""
    parts = []
    for name, idx in path:
        parts.append(name)
        if isinstance(idx, int):
            parts.append(str(idx))
    stem = "_".join(parts).upper()
    return stem if stem.isidentifier() and stem.isascii() else "KV"


def path_text(path) -> str:
    """A module path for a comment: `blocks[1]`; `shared` for `shared[b]` (a loop's)."""
    return ".".join(f"{name}[{idx}]" if isinstance(idx, int) else name for name, idx in path)


# ----------------------------------------------------------------------------- loop counts


def count_code(count, names: dict) -> str:
    """A loop's trip count as Python: `4`, `r`, `2 if step >= self.onset else 0` for a
    whole number of iterations switched by `after(...)`, else `int(...)` of the tree."""
    if count.expr is None:
        return str(count.value)
    if count.param is not None:
        return names[("param", count.param)]
    expr = count.expr
    switched = gated(expr)
    if switched is not None:
        times, cmp = switched
        return f"{times} if {condition_code(cmp, names)} else 0"
    if expr[0] == "call" and expr[1] == "float":  # after(onset) as a count: 0 or 1
        expr = expr[2]
    return f"int({scalar.code(expr, names)})"


def condition(count) -> tuple | None:
    """The comparison of a count that is 1 or 0 (`loop after(onset)`), else None."""
    expr = count.expr
    if expr is not None and expr[0] == "call" and expr[1] == "float" and expr[2][0] == "cmp":
        return expr[2]
    return None


def gated(expr: tuple) -> tuple[int, tuple] | None:
    """(n, comparison) for a count `n * after(...)` with a whole, static n."""
    if expr[0] != "bin" or expr[1] != "*":
        return None
    for times, flag in ((expr[2], expr[3]), (expr[3], expr[2])):
        if times[0] == "num" and type(times[1]) is int and flag[0] == "call" \
                and flag[1] == "float" and flag[2][0] == "cmp":
            return times[1], flag[2]
    return None


def condition_code(cmp: tuple, names: dict) -> str:
    """`step >= self.onset`: a comparison without the parentheses scalar.code adds."""
    _, op, left, right = cmp
    return f"{scalar.code(left, names)} {op} {scalar.code(right, names)}"
