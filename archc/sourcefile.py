"""Reading a spec file: its bytes become text, or a located error.

One reader for the API, the CLI and `fmt`, so a file that is missing, a directory, or not
UTF-8 gives the same `ArchcError` everywhere (never a UnicodeDecodeError). Line endings
are read as Python's text mode reads them ("\\r\\n" and "\\r" become "\\n").
"""

from __future__ import annotations

from pathlib import Path

from .errors import ArchcError, Source, Span, register_source


def read_spec(path: str | Path) -> str:
    """The text of a spec file, or an ArchcError (code A002) saying why not."""
    try:
        data = Path(path).read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        reason = getattr(e, "strerror", None) or e
        raise ArchcError(f"cannot read spec {str(path)!r}: {reason}", None,
                         "pass a path to a .arch file, or the spec text itself",
                         code="A002") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(str(path), data, e.start) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _not_utf8(name: str, data: bytes, start: int) -> ArchcError:
    """Point at the first byte that is not UTF-8, quoting its line as far as it reads."""
    line_start = data.rfind(b"\n", 0, start) + 1
    line = data.count(b"\n", 0, start) + 1
    col = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
    register_source(Source(name, data.decode("utf-8", errors="replace")))
    return ArchcError(f"the spec is not UTF-8 text: byte 0x{data[start]:02x} cannot be read",
                      Span(name, line, col, line, col + 1),
                      "save the file as UTF-8 (specs are UTF-8 text)", code="A002")
