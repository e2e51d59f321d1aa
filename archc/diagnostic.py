"""Warnings: diagnostics that do not stop compilation.

A warning points into the source like an `ArchcError` (code, span, caret, hint) but the
spec still compiles; `archc check` prints them on stderr and `Spec.warnings` hands them to
API users. Codes are W001, W002, ...; each names one kind of finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import Span, _quote


@dataclass(frozen=True)
class SpecWarning:
    message: str
    span: Span | None = None
    hint: str | None = None
    code: str = "W000"

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        out = [f"warning[{self.code}]: {self.message}"]
        if self.span is not None:
            width = len(str(self.span.line))
            out.append(f"{' ' * width} --> {self.span}")
            out.extend(_quote(self.span, "", width))
        if self.hint:
            width = len(str(self.span.line)) if self.span is not None else 1
            out.append(f"{' ' * width} = hint: {self.hint}")
        return "\n".join(out)

    def to_json(self) -> str:
        s = self.span
        span = None if s is None else {"file": s.file, "line": s.line, "col": s.col,
                                       "end_line": s.end_line, "end_col": s.end_col}
        return json.dumps({"severity": "warning", "code": self.code,
                           "message": self.message, "span": span, "hint": self.hint})
