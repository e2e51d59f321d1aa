"""One namespace per generated scope, so spec names never collide with generated ones.

The generated code uses names of its own: imports (`torch`, `F`, `rt`), `self`, builtins
(`range`, `int`), locals (`cache`, `slot`, `start`, rotary tables), method names. A spec
may use any identifier for a value, loop variable, param, block or model, including
those. Rather than reject such names one by one, a backend reserves every name its code
uses first, then asks for a name for each spec-derived thing: the spec's own name when it
is free, else the name mangled (`start` -> `start_1`). This is torch.fx's `_Namespace`
idea; our own because the backends must not import torch.

A scope may have a parent (a method inside a module): a name taken in the parent is
taken in the child, since a local would shadow it.
"""

from __future__ import annotations

import builtins
import keyword
from collections.abc import Hashable, Iterable

# Names no generated scope may rebind: Python keywords, soft keywords and builtins
# (generated code may call any builtin, including checks added later).
PYTHON_RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | \
    frozenset(dir(builtins))


class Namespace:
    """Unique Python names for the things of one scope, keyed by what they name."""

    def __init__(self, reserved: Iterable[str] = (), parent: "Namespace | None" = None):
        self.parent = parent
        self._used: set[str] = set(reserved)
        self._by_key: dict[Hashable, str] = {}

    def taken(self, name: str) -> bool:
        if name in self._used or name in PYTHON_RESERVED:
            return True
        return self.parent is not None and self.parent.taken(name)

    def reserve(self, *names: str) -> None:
        """Names the generated code itself uses in this scope."""
        self._used.update(names)

    def create(self, hint: str, key: Hashable | None = None) -> str:
        """A free name for `key` (the same one if asked again): `hint`, else `hint_1`, ..."""
        if key is not None and key in self._by_key:
            return self._by_key[key]
        name, n = hint, 0
        while self.taken(name):
            n += 1
            name = f"{hint}_{n}"
        self._used.add(name)
        if key is not None:
            self._by_key[key] = name
        return name

    def __getitem__(self, key: Hashable) -> str:
        return self._by_key[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def names(self) -> set[str]:
        """Every name taken here or in a parent (builtins and keywords aside)."""
        out = set(self._used)
        if self.parent is not None:
            out |= self.parent.names()
        return out
