"""Python names for the values of a generated forward."""

from __future__ import annotations

from ..namespace import PYTHON_RESERVED


class Namer:
    """Python names for values: spec names first, reused only once the old value is dead;
    never a name of the method's namespace (`reserved`)."""

    def __init__(self, reserved: set[str]):
        self.reserved = set(reserved)
        self.holder: dict[str, str] = {}
        self.name: dict[str, str] = {}
        self.last: dict[str, int] = {}

    def free(self, candidate: str, pos: int) -> bool:
        if candidate in self.reserved or candidate in PYTHON_RESERVED:
            return False
        holder = self.holder.get(candidate)
        return holder is None or self.last.get(holder, -1) <= pos

    def assign(self, value: str, hint: str, pos: int) -> str:
        candidate = self.peek(hint, pos)
        self.bind(value, candidate)
        return candidate

    def peek(self, hint: str, pos: int) -> str:
        """The name `assign` would give at `pos` (the hint, mangled if taken)."""
        base = hint or "t"
        candidate, n = base, 0
        while not self.free(candidate, pos):
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def bind(self, value: str, name: str) -> None:
        self.holder[name] = value
        self.name[value] = name
