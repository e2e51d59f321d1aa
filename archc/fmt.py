"""The canonical form of a spec: what `archc fmt` prints and `archc.format` returns.

The printer works from the AST (`archc.syntax`), so the layout of the input does not
matter: two specs with the same AST print the same text (`parse(print(x)) == x`, checked
by a property test). The canonical layout:

- the `model` header with one param per line (trailing comma), then the blocks, then the
  top-level statements; one blank line between these sections and between blocks;
- one statement per line, two spaces of indent per nesting level, `{` at the end of the
  line that opens a body and `}` on its own line (`} else {` for an else branch);
- single spaces around binary operators, `=` and `with`; none inside brackets, around
  `=` of keyword arguments, around `.`, `..` and `..=`, or after a unary minus;
- parentheses only where the grammar needs them; numbers as Python prints them
  (`1e-06`, `0.5`), strings in double quotes.

Comments are kept. A comment on a line of its own stays before the statement (block,
param) that follows it in the source, at that statement's indent; a comment after code
stays at the end of that line. Blank lines inside bodies are kept where the source has
them, at most one in a row. Formatting is idempotent: `format(format(t)) == format(t)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import syntax as S

INDENT = "  "

# Binding strength of each expression form (higher binds tighter), following the grammar.
RANGE, OR, AND, NOT, CMP, SUM, PROD, UNARY, POW, POSTFIX, ATOM = range(1, 12)


def _prec(e) -> int:
    if isinstance(e, S.Range):
        return RANGE
    if isinstance(e, S.Logic):
        return OR if e.op == "or" else AND
    if isinstance(e, S.Not):
        return NOT
    if isinstance(e, S.Compare):
        return CMP
    if isinstance(e, S.BinOp):
        if e.op == "**":
            return POW
        return SUM if e.op in ("+", "-") else PROD
    if isinstance(e, S.Neg):
        return UNARY
    if isinstance(e, (S.Call, S.Attr, S.Index)):
        return POSTFIX
    return ATOM


def expr(e, need: int = RANGE) -> str:
    """An expression as canonical text, parenthesized if it binds looser than `need`."""
    text = _expr(e)
    return f"({text})" if _prec(e) < need else text


def _expr(e) -> str:
    if isinstance(e, S.Num):
        return repr(e.value) if isinstance(e.value, float) else str(e.value)
    if isinstance(e, S.Str):
        return f'"{e.value}"'
    if isinstance(e, S.Bool):
        return "true" if e.value else "false"
    if isinstance(e, S.Name):
        return e.id
    if isinstance(e, S.Range):
        op = "..=" if e.inclusive else ".."
        return f"{expr(e.lo, OR)}{op}{expr(e.hi, OR)}"
    if isinstance(e, S.Logic):
        level = OR if e.op == "or" else AND
        first, *rest = e.items
        return f" {e.op} ".join([expr(first, level)] + [expr(i, level + 1) for i in rest])
    if isinstance(e, S.Not):
        return f"not {expr(e.value, NOT)}"
    if isinstance(e, S.Compare):
        return f"{expr(e.left, SUM)} {e.op} {expr(e.right, SUM)}"
    if isinstance(e, S.BinOp):
        if e.op == "**":
            return f"{expr(e.left, POSTFIX)} ** {expr(e.right, UNARY)}"
        level = _prec(e)
        return f"{expr(e.left, level)} {e.op} {expr(e.right, level + 1)}"
    if isinstance(e, S.Neg):
        return f"-{expr(e.value, UNARY)}"
    if isinstance(e, S.Call):
        args = [expr(a) for a in e.args] + [f"{k.name}={expr(k.value)}" for k in e.kwargs]
        return f"{expr(e.func, POSTFIX)}({', '.join(args)})"
    if isinstance(e, S.Attr):
        return f"{expr(e.value, POSTFIX)}.{e.name}"
    if isinstance(e, S.Index):
        return f"{expr(e.value, POSTFIX)}[{expr(e.index)}]"
    if isinstance(e, S.TupleLit):
        inner = ", ".join(expr(i) for i in e.items)
        return f"({inner},)" if len(e.items) == 1 else f"({inner})"
    if isinstance(e, S.ListLit):
        return "[" + ", ".join(expr(i) for i in e.items) + "]"
    raise TypeError(f"not an expression: {e!r}")


# ----------------------------------------------------------------------------- layout


@dataclass
class _Line:
    """One printed line. `first`..`last` are the source lines it stands for (None when
    printing an AST without source): comments are placed by them. `inner` is the depth at
    which comments that come before this line are printed (deeper before a `}`)."""

    depth: int
    text: str
    first: int | None = None
    last: int | None = None
    inner: int | None = None
    blank_before: int | None = None  # source line of a blank line to keep before this one


class _Printer:
    def __init__(self, source: "_Source | None"):
        self.src = source
        self.lines: list[_Line] = []

    def emit(self, depth: int, text: str, first=None, last=None, inner=None, blank=None):
        self.lines.append(_Line(depth, text, first, last, depth if inner is None else inner,
                                blank))

    def model(self, m: S.Model) -> None:
        line = _line(m.span)
        if not m.params:
            self.emit(0, f"model {m.name}()", line, line)
        else:
            self.emit(0, f"model {m.name}(", line, line)
            for p in m.params:
                pl = _line(p.span)
                self.emit(1, param(p) + ",", pl, pl)
            end = _end(m.span)
            self.emit(0, ")", end, end, inner=1)
        for b in m.blocks:
            self.blank()
            self.block(b)
        if m.body:
            self.blank()
            self.body(m.body, 0)

    def blank(self) -> None:
        self.lines.append(_Line(0, ""))

    def block(self, b: S.Block) -> None:
        args = [i.name for i in b.inputs] + [param(p) for p in b.params]
        line = _line(b.span)
        self.emit(0, f"block {b.name}({', '.join(args)}) {{", line, line)
        self.body(b.body, 1)
        end = _end(b.span)
        self.emit(0, "}", end, end, inner=1)

    def body(self, stmts, depth: int) -> None:
        prev = None
        for st in stmts:
            blank = None
            if prev is not None and self.src is not None and st.span and prev.span:
                blank = self.src.blank_between(prev.span.end_line, st.span.line)
            self.stmt(st, depth, blank)
            prev = st

    def stmt(self, st, depth: int, blank=None) -> None:
        first, last = _line(st.span), _end(st.span)
        if isinstance(st, (S.Assign, S.Unpack, S.Let, S.Return)):
            self.emit(depth, simple(st), first, last, blank=blank)
            return
        if isinstance(st, S.For):
            head = f"for {', '.join(st.vars)} in {expr(st.iter)}"
            if st.label is not None:
                head += f" as {st.label}"
            self.emit(depth, head + " {", first, first, blank=blank)
            self.body(st.body, depth + 1)
            self.emit(depth, "}", last, last, inner=depth + 1)
            return
        if isinstance(st, S.Loop):
            head = "loop "
            if st.var is not None:
                head += f"{st.var} in "
            head += expr(st.count)
            if st.max is not None:
                head += f" max {expr(st.max)}"
            if st.until is not None:
                head += f" until {expr(st.until, POSTFIX)}"
            if st.label is not None:
                head += f" as {st.label}"
            self.emit(depth, head + " {", first, first, blank=blank)
            self.body(st.body, depth + 1)
            self.emit(depth, "}", last, last, inner=depth + 1)
            return
        if isinstance(st, S.If):
            self.emit(depth, f"if {expr(st.cond)} {{", first, first, blank=blank)
            self.if_rest(st, depth)
            return
        raise TypeError(f"not a statement: {st!r}")

    def if_rest(self, st: S.If, depth: int) -> None:
        self.body(st.then, depth + 1)
        last = _end(st.span)
        if not st.orelse:
            self.emit(depth, "}", last, last, inner=depth + 1)
            return
        at = None
        if self.src is not None:
            after = _end(st.then[-1].span) if st.then and st.then[-1].span else _line(st.span)
            at = self.src.find_else(after)
        if len(st.orelse) == 1 and isinstance(st.orelse[0], S.If):
            inner = st.orelse[0]
            self.emit(depth, f"}} else if {expr(inner.cond)} {{", at, at, inner=depth + 1)
            self.if_rest(inner, depth)
            return
        self.emit(depth, "} else {", at, at, inner=depth + 1)
        self.body(st.orelse, depth + 1)
        self.emit(depth, "}", last, last, inner=depth + 1)


def param(p: S.Param) -> str:
    text = f"{p.name}: {p.type}"
    if p.default is not None:
        text += f" = {expr(p.default)}"
    if p.domain is not None:
        if isinstance(p.domain, tuple):
            text += " in {" + ", ".join(expr(d) for d in p.domain) + "}"
        else:
            text += f" in {expr(p.domain)}"
    if p.runtime:
        text += " runtime"
    return text


def _with(calls) -> str:
    return " with " + ", ".join(expr(c, POSTFIX) for c in calls) if calls else ""


def simple(st) -> str:
    """A one-line statement."""
    if isinstance(st, S.Assign):
        return f"{st.target} = {expr(st.value)}{_with(st.with_)}"
    if isinstance(st, S.Unpack):
        return f"{', '.join(st.targets)} = {expr(st.value)}"
    if isinstance(st, S.Let):
        count = f"[{expr(st.count)}]" if st.count is not None else ""
        return f"let {st.name}{count} = {expr(st.value)}"
    if isinstance(st, S.Return):
        outs = "".join(f", {k.name}={expr(k.value)}" for k in st.outputs)
        return f"return {expr(st.value)}{_with(st.with_)}{outs}"
    raise TypeError(st)


def _line(span) -> int | None:
    return span.line if span is not None else None


def _end(span) -> int | None:
    return span.end_line if span is not None else None


# ----------------------------------------------------------------------------- comments


@dataclass(frozen=True)
class _Comment:
    line: int
    text: str
    own_line: bool  # nothing but whitespace before it on its line


class _Source:
    """The comments and blank lines of the source text."""

    def __init__(self, text: str):
        # Lines as the parser counts them: only "\n" ends a line (str.splitlines would also
        # split at characters such as "\x1e" that a string literal may hold).
        self.lines = [line.rstrip("\r") for line in text.split("\n")]
        self.code: list[str] = []  # each line with its comment removed
        self.comments: list[_Comment] = []
        for n, line in enumerate(self.lines, start=1):
            at = _comment_start(line)
            if at is None:
                self.code.append(line)
                continue
            self.code.append(line[:at])
            text_ = line[at:].rstrip()
            self.comments.append(_Comment(n, text_, not line[:at].strip()))

    def blank_between(self, end: int, start: int) -> int | None:
        """The first blank source line strictly between two lines that have only blank
        lines and comments between them (nothing that the printer moves), if any."""
        gap = range(end + 1, start)
        if any(self.code[n - 1].strip() for n in gap):
            return None
        for n in gap:
            if not self.lines[n - 1].strip():
                return n
        return None

    def find_else(self, after: int | None) -> int | None:
        if after is None:
            return None
        for n in range(after, len(self.code) + 1):
            if re.search(r"\belse\b", _strip_strings(self.code[n - 1])):
                return n
        return None


def _comment_start(line: str) -> int | None:
    """Where a `#` comment starts on a line (strings hold no `#` comment)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return i
    return None


def _strip_strings(code: str) -> str:
    return re.sub(r'"[^"]*"', '""', code)


def _weave(lines: list[_Line], src: _Source) -> list[str]:
    """Printed lines with the source's comments and kept blank lines put back."""
    anchored = [(ln.first, k) for k, ln in enumerate(lines) if ln.first is not None]
    before: dict[int, list[_Comment]] = {}
    after: dict[int, list[_Comment]] = {}
    tail: list[_Comment] = []
    for c in src.comments:
        if not c.own_line:
            owner = None
            for k, ln in enumerate(lines):
                if ln.first is not None and ln.first <= c.line <= (ln.last or ln.first):
                    owner = k
            if owner is not None:
                after.setdefault(owner, []).append(c)
                continue
        # The next line in source order that the printer emitted.
        nxt = min(((first, k) for first, k in anchored if first > c.line), default=None)
        if nxt is None:
            tail.append(c)
        else:
            before.setdefault(nxt[1], []).append(c)
    out: list[str] = []
    for k, ln in enumerate(lines):
        lead = before.get(k, [])
        blank_at = ln.blank_before
        for i, c in enumerate(lead):
            if blank_at is not None and c.line > blank_at:
                out.append("")
                blank_at = None
            elif i and src.blank_between(lead[i - 1].line, c.line) is not None:
                out.append("")
            out.append(INDENT * ln.inner + c.text)
        if blank_at is not None:
            out.append("")
        text = INDENT * ln.depth + ln.text if ln.text else ""
        for c in after.get(k, []):
            text += "  " + c.text
        out.append(text)
    if tail:
        if out and out[-1]:
            out.append("")
        out.extend(c.text for c in tail)
    return out


# ----------------------------------------------------------------------------- entry points


def print_model(model: S.Model) -> str:
    """The canonical text of an AST (no comments: the AST holds none)."""
    p = _Printer(None)
    p.model(model)
    return "\n".join(INDENT * ln.depth + ln.text if ln.text else "" for ln in p.lines) + "\n"


def format_text(text: str, filename: str = "<spec>") -> str:
    """The canonical text of a spec, comments kept. Raises ArchcError on a syntax error."""
    model = S.parse(text, filename)
    src = _Source(text)
    p = _Printer(src)
    p.model(model)
    out = _weave(p.lines, src)
    # Comments that came before the model header stay at the top, then one blank line.
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"
