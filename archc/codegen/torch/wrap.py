"""Wrap the long lines of a generated module the way a careful author would.

The emitter writes each statement on one line; a few come out longer than a reader's
window (an init call with four keyword arguments, a schedule expression, a spec line
copied into a comment). `wrap_source` rewraps only the lines over the limit, and only
by moves that keep the program's syntax tree: breaking inside brackets (Python joins
such lines), moving a trailing comment above its statement, splitting a string literal
in brackets into adjacent literals (the parser joins them), and continuing a comment on
the next line. The tests compare the tree of every generated module before and after.

The shape follows black's: the widest bracket pair of a line is opened, its contents go
on their own lines one indent deeper (one argument per line if they still do not fit,
the operands of the loosest operator for an expression), and the closing bracket comes
back to the statement's indent.
"""

from __future__ import annotations

import io
import re
import tokenize
from typing import NamedTuple

LIMIT = 100
STEP = "    "
_OPEN, _CLOSE = "([{", ")]}"
# Binary operators from loosest to tightest: an expression is split before the
# occurrences of the loosest one it has at its top level.
_PRIORITIES = (("if", "else"), ("or",), ("and",),
               ("<", "<=", ">", ">=", "==", "!=", "in", "is"),
               ("+", "-"), ("*", "/", "//", "%", "@"), ("**",))
_OPERAND_END = (tokenize.NAME, tokenize.NUMBER, tokenize.STRING)
_KEYWORDS_NOT_OPERANDS = frozenset({"if", "else", "or", "and", "not", "in", "is", "lambda",
                                    "for", "return", "yield", "await"})


class Tok(NamedTuple):
    """A token of one line: its kind, text, and whether a space precedes it."""

    kind: int
    text: str
    space: bool


def wrap_source(source: str, limit: int = LIMIT) -> str:
    """`source` with every line over `limit` characters rewrapped where it can be."""
    lines = source.split("\n")
    if all(len(line) <= limit for line in lines):
        return source
    inside = _bracketed_lines(source)
    out: list[str] = []
    for row, line in enumerate(lines):
        if len(line) <= limit:
            out.append(line)
        else:
            out += wrap_line(line, limit, row in inside)
    return "\n".join(out)


def _bracketed_lines(source: str) -> set[int]:
    """Indexes of the lines that begin inside an open bracket (a call's arguments). The
    emitter writes no backslash continuation and no string over several lines, so
    counting brackets outside string literals and comments line by line is exact (the
    tests check it against the syntax tree of every spec's module)."""
    inside: set[int] = set()
    depth = 0
    for row, line in enumerate(source.split("\n")):
        if depth > 0:
            inside.add(row)
        if any(b in line for b in "()[]{}"):
            code = _STRING.sub("", line).split("#", 1)[0]
            depth += sum(code.count(b) for b in _OPEN) - sum(code.count(b) for b in _CLOSE)
    return inside


# A one-line string literal, escapes included: what _bracketed_lines must not count in.
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""")


def wrap_line(line: str, limit: int = LIMIT, inside: bool = False) -> list[str]:
    """One physical line as one or more; `inside`: it begins within brackets."""
    text = line.lstrip(" ")
    indent = line[:len(line) - len(text)]
    if text.startswith("#"):
        return _wrap_comment(indent, text, limit)
    toks = _tokens(text)
    if toks is None:
        return [line]
    above = []
    if toks and toks[-1].kind == tokenize.COMMENT:  # `self.emb = ...  # huginn.arch:39`
        above = [indent + toks[-1].text]
        toks = toks[:-1]
    if not toks:
        return [line]
    if not inside and len(toks) == 1 and toks[0].kind == tokenize.STRING:
        return [line]  # a docstring: splitting it would change what it says
    return above + _split(toks, indent, limit, inside)


def _wrap_comment(indent: str, text: str, limit: int) -> list[str]:
    """A comment over the limit continued on lines that start `#     `, broken at
    spaces (the text is escaped already, so a space is never part of an escape)."""
    width = max(limit - len(indent), 40)
    out, rest, lead = [], text, ""
    while len(lead) + len(rest) > width:
        cut = rest.rfind(" ", 0, width - len(lead) + 1)
        if cut <= len("# "):
            break
        out.append(indent + lead + rest[:cut].rstrip())
        rest, lead = rest[cut:].lstrip(" "), "#     "
    out.append(indent + lead + rest)
    return out


def _tokens(text: str) -> list[Tok] | None:
    """The tokens of one line of code, or None if it does not tokenize on its own."""
    out: list[Tok] = []
    end = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER,
                            tokenize.INDENT, tokenize.DEDENT):
                continue
            if tok.start[0] != 1 or tok.type == tokenize.ERRORTOKEN:
                return None
            out.append(Tok(tok.type, tok.string, tok.start[1] > end))
            end = tok.end[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    if any(t.text.startswith(("f", "F", "rf", "Rf", "fr", "fR")) and t.kind == tokenize.STRING
           for t in out):
        return None  # an f-string's braces hold code; leave it as it stands
    return out


def _text(toks: list[Tok]) -> str:
    return "".join((" " if t.space and i else "") + t.text for i, t in enumerate(toks))


def _split(toks: list[Tok], indent: str, limit: int, inside: bool) -> list[str]:
    """Lines for the tokens at `indent`; `inside`: a line break between any two tokens
    is legal (an enclosing bracket is open)."""
    line = indent + _text(toks)
    if len(line) <= limit:
        return [line]
    pair = _widest_pair(toks)
    if pair is not None:
        start, end = pair
        head, body, tail = toks[:start + 1], toks[start + 1:end], toks[end:]
        inner = indent + STEP
        lines = [indent + _text(head)]
        lines += _body(body, inner, limit, display=_is_display(toks, start))
        return lines + [indent + _text([tail[0]._replace(space=False)] + tail[1:])]
    if inside:
        return _delimited(toks, indent, limit)
    return [line]


def _widest_pair(toks: list[Tok]) -> tuple[int, int] | None:
    """The top-level bracket pair with the most inside (the last of equals)."""
    best, depth, opened = None, 0, 0
    for i, t in enumerate(toks):
        if t.kind != tokenize.OP:
            continue
        if t.text in _OPEN:
            if depth == 0:
                opened = i
            depth += 1
        elif t.text in _CLOSE:
            depth -= 1
            if depth == 0 and i - opened > 1 and (best is None or
                                                  i - opened >= best[1] - best[0]):
                best = (opened, i)
    return best


def _is_display(toks: list[Tok], start: int) -> bool:
    """Does the bracket at `start` open a list or tuple of data (not a call's args)?"""
    if toks[start].text == "{":
        return True
    if start == 0:
        return toks[start].text in "(["
    before = toks[start - 1]
    called = before.kind in _OPERAND_END and before.text not in _KEYWORDS_NOT_OPERANDS \
        or before.text in _CLOSE
    return not called


def _body(toks: list[Tok], indent: str, limit: int, display: bool) -> list[str]:
    """The inside of a bracket pair, one indent deeper."""
    toks = [toks[0]._replace(space=False)] + toks[1:]
    line = indent + _text(toks)
    if len(line) <= limit:
        return [line]
    return _delimited(toks, indent, limit, display)


def _delimited(toks: list[Tok], indent: str, limit: int, display: bool = False) -> list[str]:
    """Tokens in brackets split at their loosest top-level delimiter: commas (one item a
    line, or filled for a data display), else the loosest operator, else a string."""
    items = _top_level(toks, lambda t: t.kind == tokenize.OP and t.text == ",", after=True)
    comprehension = any(_is_kw(t, "for") or _is_kw(t, "lambda") for t in _top(toks))
    if len(items) > 1 and not comprehension:
        if items[-1] and not (items[-1][-1].text == ","):
            items[-1] = items[-1] + [Tok(tokenize.OP, ",", False)]
        if display:
            return _fill(items, indent, limit)
        out = []
        for item in items:
            out += _split([item[0]._replace(space=False)] + item[1:], indent, limit, True)
        return out
    for ops in _PRIORITIES:
        parts = _top_level(toks, lambda t, ops=ops: _is_operator(t, ops), after=False)
        parts = _rejoin_operands(parts)
        if len(parts) > 1:
            out = []
            for part in parts:
                out += _split([part[0]._replace(space=False)] + part[1:], indent, limit, True)
            return out
    if len(toks) == 1 and toks[0].kind == tokenize.STRING:
        return [indent + piece for piece in _split_string(toks[0].text, limit - len(indent))]
    if len(toks) == 2 and toks[0].kind == tokenize.STRING and toks[1].text == ",":
        pieces = _split_string(toks[0].text, limit - len(indent) - 1)
        return [indent + piece for piece in pieces[:-1]] + [indent + pieces[-1] + ","]
    return [indent + _text(toks)]


def _fill(items: list[list[Tok]], indent: str, limit: int) -> list[str]:
    """Items of a data display packed into as few lines as fit."""
    out, line = [], ""
    for item in items:
        text = _text([item[0]._replace(space=False)] + item[1:])
        if line and len(indent) + len(line) + 1 + len(text) > limit:
            out.append(indent + line)
            line = ""
        line = f"{line} {text}" if line else text
    return out + [indent + line]


def _top(toks: list[Tok]):
    depth = 0
    for t in toks:
        if t.kind == tokenize.OP and t.text in _CLOSE:
            depth -= 1
        if depth == 0:
            yield t
        if t.kind == tokenize.OP and t.text in _OPEN:
            depth += 1


def _top_level(toks: list[Tok], is_delim, after: bool) -> list[list[Tok]]:
    """`toks` cut at top-level delimiters: after each one (commas) or before it."""
    parts: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        at_top = depth == 0
        if t.kind == tokenize.OP and t.text in _OPEN:
            depth += 1
        elif t.kind == tokenize.OP and t.text in _CLOSE:
            depth -= 1
        if at_top and is_delim(t):
            if after:
                parts[-1].append(t)
                parts.append([])
            else:
                parts.append([t])
            continue
        parts[-1].append(t)
    return [p for p in parts if p]


def _is_kw(t: Tok, word: str) -> bool:
    return t.kind == tokenize.NAME and t.text == word


def _is_operator(t: Tok, ops: tuple[str, ...]) -> bool:
    return t.text in ops and t.kind in (tokenize.OP, tokenize.NAME)


def _rejoin_operands(parts: list[list[Tok]]) -> list[list[Tok]]:
    """Undo cuts that were not at a binary operator: a unary sign (`x * -y`) or the
    `in` of `not in` follows no operand."""
    out: list[list[Tok]] = []
    for part in parts:
        if out and not _ends_operand(out[-1]):
            out[-1] = out[-1] + part
        else:
            out.append(part)
    return out


def _ends_operand(part: list[Tok]) -> bool:
    last = part[-1]
    if last.kind == tokenize.OP:
        return last.text in _CLOSE
    if last.kind == tokenize.NAME:
        return last.text not in _KEYWORDS_NOT_OPERANDS
    return last.kind in _OPERAND_END


def _split_string(code: str, width: int) -> list[str]:
    """A plain string literal as adjacent literals of at most `width` characters, cut
    after a space (never inside an escape: an escape holds no space)."""
    quote = code[-1]
    if code[0] != quote or code.startswith(quote * 3) or width < 20:
        return [code]  # a prefixed or triple-quoted literal stays whole
    body, out = code[1:-1], []
    while len(body) + 2 > width:
        cut = body.rfind(" ", 0, width - 2)
        if cut <= 0:
            break
        out.append(f"{quote}{body[:cut + 1]}{quote}")
        body = body[cut + 1:]
    return out + [f"{quote}{body}{quote}"]
