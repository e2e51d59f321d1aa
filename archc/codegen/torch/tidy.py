"""Small pieces of generated source that a careful author would write by hand.

A cache layout of 260 equal slots reads `[(4, 16)] * 260`, not 2,357 characters of
tuples; a module imports only what its code uses. Each helper returns source text
that evaluates to exactly what the naive form did, so numerics cannot change.
"""

from __future__ import annotations

import ast

from ..escape import literal

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
    (emit.GENERATED_GLOBALS), which no spec name can take, so a read is a use."""
    used = {node.id for node in ast.walk(ast.parse(body))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    lines = [line for name, line in IMPORTS if name in used]
    if RUNTIME_IMPORT[0] in used:
        lines += ([""] if lines else []) + [RUNTIME_IMPORT[1]]
    return lines
