"""Diagnostics: every problem with a spec is an `ArchcError` that points into the source.

A diagnostic carries a code, a primary span, optional labelled secondary spans and a hint,
the way rustc and Elm report errors. `render()` prints it for people (file:line:col, the
source line and a caret); `to_json()` gives the same data to tools such as NAS drivers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Source:
    """The text a span points into, kept so errors can quote it."""

    name: str
    text: str

    @cached_property
    def lines(self) -> list[str]:
        """Split once (codegen quotes a line per statement; a split per quote was
        quadratic in the spec's length), at newlines only, as the parser counts lines."""
        return self.text.split("\n")  # as the parser counts lines (not at U+2028 etc.)

    def line(self, n: int) -> str:
        lines = self.lines
        return lines[n - 1] if 0 < n <= len(lines) else ""


# Sources registered by the parser, so an error raised deep in the compiler can still
# quote its line. Keyed by file name; small, and replaced when a file is parsed again.
_SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> None:
    _SOURCES[source.name] = source


def source_line(file: str, line: int) -> str:
    """The text of one line of a parsed spec ('' if unknown)."""
    source = _SOURCES.get(file)
    return source.line(line) if source else ""


@dataclass
class ArchcError(Exception):
    """A located, explained error in a spec (or in how the compiler was asked to run)."""

    message: str
    span: Span | None = None
    hint: str | None = None
    code: str = "A000"
    labels: list[tuple[Span, str]] = field(default_factory=list)
    label: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        out = [f"error[{self.code}]: {self.message}"]
        spans = ([(self.span, self.label or "")] if self.span else []) + list(self.labels)
        width = max((len(str(s.line)) for s, _ in spans), default=1)
        for i, (span, label) in enumerate(spans):
            arrow = "-->" if i == 0 else "..."
            out.append(f"{' ' * width} {arrow} {span}")
            out.extend(_quote(span, label, width))
        if self.hint:
            out.append(f"{' ' * width} = hint: {self.hint}")
        return "\n".join(out)

    def to_json(self) -> str:
        def loc(s: Span) -> dict:
            return {"file": s.file, "line": s.line, "col": s.col,
                    "end_line": s.end_line, "end_col": s.end_col}

        return json.dumps({
            "code": self.code,
            "message": self.message,
            "span": loc(self.span) if self.span else None,
            "label": self.label,
            "labels": [{"span": loc(s), "label": text} for s, text in self.labels],
            "hint": self.hint,
        })


def _quote(span: Span, label: str, width: int) -> list[str]:
    source = _SOURCES.get(span.file)
    if source is None:
        return []
    text = source.line(span.line).rstrip("\n").expandtabs(1)
    end = span.end_col if span.end_line == span.line else len(text) + 1
    carets = "^" * max(1, end - span.col)
    gutter = " " * width
    lines = [f"{gutter} |", f"{span.line:>{width}} | {text}"]
    lines.append(f"{gutter} | {' ' * (span.col - 1)}{carets}" + (f" {label}" if label else ""))
    return lines


def fail(message: str, span: Span | None, hint: str | None = None, code: str = "A000",
         labels: list[tuple[Span, str]] | None = None, label: str | None = None):
    """Raise an ArchcError; a helper so call sites stay one line."""
    raise ArchcError(message, span, hint, code, labels or [], label)
