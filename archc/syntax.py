"""Parse .arch text into a typed AST with a source span on every node.

The grammar lives in `grammar/arch.lark` (LALR). Syntax errors become `ArchcError`s that
say what was expected, in words, and point at the offending token. AST nodes compare by
structure only (spans are ignored), which is what `archc fmt` round-trip tests need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Union

from . import limits
from .errors import ArchcError, Source, Span, register_source

# ----------------------------------------------------------------------------- AST


def _span() -> Span:
    return field(default=None, compare=False, repr=False)  # type: ignore[return-value]


@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span = _span()


@dataclass(frozen=True)
class Str:
    value: str
    span: Span = _span()


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    id: str
    span: Span = _span()


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Neg:
    value: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Not:
    value: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Logic:
    op: str  # "and" | "or"
    items: tuple["Expr", ...]
    span: Span = _span()


@dataclass(frozen=True)
class Compare:
    op: str
    left: "Expr"
    right: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Range:
    lo: "Expr"
    hi: "Expr"
    inclusive: bool
    span: Span = _span()


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class Call:
    func: "Expr"
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Attr:
    value: "Expr"
    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Index:
    value: "Expr"
    index: "Expr"
    span: Span = _span()


@dataclass(frozen=True)
class TupleLit:
    items: tuple["Expr", ...]
    span: Span = _span()


@dataclass(frozen=True)
class ListLit:
    items: tuple["Expr", ...]
    span: Span = _span()


Expr = Union[Num, Str, Bool, Name, BinOp, Neg, Not, Logic, Compare, Range, Call, Attr,
             Index, TupleLit, ListLit]


@dataclass(frozen=True)
class Assign:
    target: str
    value: Expr
    with_: tuple[Call, ...]
    span: Span = _span()
    target_span: Span = _span()


@dataclass(frozen=True)
class Unpack:
    targets: tuple[str, ...]
    value: Expr
    span: Span = _span()


@dataclass(frozen=True)
class Let:
    name: str
    count: Expr | None
    value: Expr
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class For:
    vars: tuple[str, ...]
    iter: Expr
    label: str | None
    body: tuple["Stmt", ...]
    span: Span = _span()


@dataclass(frozen=True)
class Loop:
    var: str | None
    count: Expr
    max: Expr | None
    until: Expr | None
    label: str | None
    body: tuple["Stmt", ...]
    span: Span = _span()


@dataclass(frozen=True)
class If:
    cond: Expr
    then: tuple["Stmt", ...]
    orelse: tuple["Stmt", ...]
    span: Span = _span()


@dataclass(frozen=True)
class Return:
    value: Expr
    with_: tuple[Call, ...]
    outputs: tuple[Kwarg, ...] = ()  # named outputs: `return x, v=a.v`
    span: Span = _span()


Stmt = Union[Assign, Unpack, Let, For, Loop, If, Return]


@dataclass(frozen=True)
class Param:
    """A model parameter or a static block parameter."""

    name: str
    type: str  # int | float | bool | choice
    default: Expr | None
    domain: Range | tuple[Expr, ...] | None = None
    runtime: bool = False
    span: Span = _span()


@dataclass(frozen=True)
class TensorInput:
    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Block:
    name: str
    inputs: tuple[TensorInput, ...]
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span = _span()
    name_span: Span = _span()


@dataclass(frozen=True)
class Model:
    name: str
    params: tuple[Param, ...]
    blocks: tuple[Block, ...]
    body: tuple[Stmt, ...]
    span: Span = _span()


# ----------------------------------------------------------------------------- parser

_GRAMMAR = Path(__file__).parent / "grammar" / "arch.lark"

# Friendly names for the terminals lark reports as expected.
_TOKEN_WORDS = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "DOT": "'.'",
    "TYPE": "a type (int, float, bool, choice)", "MODEL": "'model'", "BLOCK": "'block'",
    "RANGE_OP": "'..'", "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*' or '/'", "POW_OP": "'**'", "MINUS": "'-'", "$END": "the end of the file",
}


@lru_cache(maxsize=1)
def _parser():
    from lark import Lark

    return Lark(_GRAMMAR.read_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True, cache=True)


def parse(text: str, filename: str = "<spec>") -> Model:
    """Parse spec text into a `Model` AST, or raise a located `ArchcError`."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

    register_source(Source(filename, text))
    try:
        tree = _parser().parse(text)
    except UnexpectedToken as e:
        raise _syntax_error(filename, text, e.line, e.column, e.token, e.expected) from None
    except UnexpectedCharacters as e:
        bad = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        raise ArchcError(f"unexpected character {bad!r}", _point(filename, e.line, e.column),
                         "names are letters, digits and '_'; comments start with '#'",
                         code="A001") from None
    except UnexpectedEOF as e:
        line, col = _end_position(text)
        raise _syntax_error(filename, text, line, col, None, e.expected) from None
    limits.check_tree(tree, filename)  # before the builder recurses over it
    return _Builder(filename).build(tree)


def parse_file(path: str | Path) -> Model:
    from .sourcefile import read_spec

    return parse(read_spec(path), str(path))


def _point(filename: str, line: int, col: int, length: int = 1) -> Span:
    return Span(filename, line, col, line, col + length)


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")  # as the parser counts lines (not at U+2028 etc.)
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return len(lines), len(lines[-1]) + 1


def _syntax_error(filename, text, line, col, token, expected) -> ArchcError:
    words = sorted({_TOKEN_WORDS.get(t, _keyword(t)) for t in expected or ()})
    expect = ", ".join(words[:6]) + (" or more" if len(words) > 6 else "")
    if token is None or token.type == "$END":
        line, col = _end_position(text)
        return ArchcError("the spec ends too early", _point(filename, line, col),
                          f"expected {expect}; is a '}}' or ')' missing?", code="A001")
    found = repr(str(token))
    hint = f"expected {expect}" if expect else "check the syntax just before this token"
    if "RBRACE" in (expected or ()) or "RPAR" in (expected or ()):
        hint = (hint + "; " if hint else "") + "check for an unclosed bracket before this"
    return ArchcError(f"unexpected {found}", _point(filename, line, col, len(str(token))),
                      hint, code="A001")


def _keyword(terminal: str) -> str:
    return f"'{terminal.lower().lstrip('_')}'"


class _Builder:
    """Turns the lark tree into AST nodes; one method per grammar rule."""

    def __init__(self, filename: str):
        self.filename = filename

    def span(self, node) -> Span:
        m = node.meta
        if getattr(m, "empty", True):
            return Span(self.filename, 1, 1, 1, 1)
        return Span(self.filename, m.line, m.column, m.end_line, m.end_column)

    def tok_span(self, tok) -> Span:
        return Span(self.filename, tok.line, tok.column, tok.end_line, tok.end_column)

    def build(self, tree) -> Model:
        model_node, *items = tree.children
        name, *params = model_node.children
        blocks, body = [], []
        for item in items:
            if item.data == "block":
                blocks.append(self.block(item))
            else:
                body.append(self.stmt(item))
        return Model(str(name), tuple(self.param(p) for p in params if p is not None),
                     tuple(blocks), tuple(body), self.span(model_node))

    def param(self, node) -> Param:
        name, typ, default, domain, runtime = node.children
        dom = None
        if domain is not None:
            if domain.data == "domain_set":
                dom = tuple(self.expr(c) for c in domain.children)
            else:
                dom = self.expr(domain.children[0])
        return Param(str(name), str(typ), self.expr(default) if default is not None else None,
                     dom, runtime is not None, self.tok_span(name))

    def block(self, node) -> Block:
        name, *rest = node.children
        body = rest[-1]
        inputs, params = [], []
        for p in rest[:-1]:
            if p is None:
                continue
            if p.data == "tensor_param":
                inputs.append(TensorInput(str(p.children[0]), self.tok_span(p.children[0])))
            else:
                pname, typ, default, runtime = p.children
                params.append(Param(str(pname), str(typ),
                                    self.expr(default) if default is not None else None,
                                    None, runtime is not None, self.tok_span(pname)))
        return Block(str(name), tuple(inputs), tuple(params), self.body(body),
                     self.span(node), self.tok_span(name))

    def body(self, node) -> tuple:
        return tuple(self.stmt(s) for s in node.children)

    def withs(self, node) -> tuple:
        if node is None:
            return ()
        calls = tuple(self.expr(c) for c in node.children)
        for c in calls:
            if not isinstance(c, Call):
                raise ArchcError("`with` takes adapter calls such as lora(rank=8)", c.span,
                                 "write `with lora(rank=8)` or `with untie(rmsnorm)`",
                                 code="A003")
        return calls

    def stmt(self, node):
        kind, ch, sp = node.data, node.children, self.span(node)
        if kind == "assign":
            return Assign(str(ch[0]), self.expr(ch[1]), self.withs(ch[2]), sp,
                          self.tok_span(ch[0]))
        if kind == "unpack":
            return Unpack(tuple(str(c) for c in ch[:-1]), self.expr(ch[-1]), sp)
        if kind == "let":
            count = self.expr(ch[1]) if ch[1] is not None else None
            return Let(str(ch[0]), count, self.expr(ch[2]), sp, self.tok_span(ch[0]))
        if kind == "for":
            *names, it, label, body = ch
            return For(tuple(str(n) for n in names), self.expr(it),
                       str(label) if label is not None else None, self.body(body), sp)
        if kind == "loop":
            var, count, mx, until, label, body = ch
            return Loop(str(var) if var is not None else None, self.expr(count),
                        self.expr(mx) if mx is not None else None,
                        self.expr(until) if until is not None else None,
                        str(label) if label is not None else None, self.body(body), sp)
        if kind == "if":
            cond, then, orelse = ch
            if orelse is None:
                other = ()
            elif orelse.data == "body":
                other = self.body(orelse)
            else:
                other = (self.stmt(orelse),)
            return If(self.expr(cond), self.body(then), other, sp)
        if kind == "return":
            rest = ch[2:]
            outputs = tuple(Kwarg(str(rest[i]), self.expr(rest[i + 1]), self.tok_span(rest[i]))
                            for i in range(0, len(rest), 2))
            return Return(self.expr(ch[0]), self.withs(ch[1]), outputs, sp)
        raise AssertionError(f"unknown statement {kind}")

    def expr(self, node):
        from lark import Token

        if isinstance(node, Token):  # a bare NAME from rules such as `until`
            return Name(str(node), self.tok_span(node))
        kind, ch, sp = node.data, node.children, self.span(node)
        if kind == "int":
            return Num(limits.int_literal(str(ch[0]), sp), sp)
        if kind == "float":
            return Num(limits.float_literal(str(ch[0]), sp), sp)
        if kind == "string":
            return Str(str(ch[0])[1:-1], sp)
        if kind == "true":
            return Bool(True, sp)
        if kind == "false":
            return Bool(False, sp)
        if kind == "name":
            return Name(str(ch[0]), sp)
        if kind == "binop":
            return BinOp(str(ch[1]), self.expr(ch[0]), self.expr(ch[2]), sp)
        if kind == "neg":
            return Neg(self.expr(ch[0]), sp)
        if kind == "not_":
            return Not(self.expr(ch[0]), sp)
        if kind in ("and_", "or_"):
            return Logic(kind[:-1], tuple(self.expr(c) for c in ch), sp)
        if kind == "compare":
            return Compare(str(ch[1]), self.expr(ch[0]), self.expr(ch[2]), sp)
        if kind == "range_expr":
            return Range(self.expr(ch[0]), self.expr(ch[2]), str(ch[1]) == "..=", sp)
        if kind == "call":
            func, *args = ch
            pos, kws = [], []
            for a in args:
                if a is None:
                    continue
                if a.data == "pos_arg":
                    if kws:
                        raise ArchcError("a positional argument follows a keyword argument",
                                         self.span(a), "put tensor inputs first", code="A001")
                    pos.append(self.expr(a.children[0]))
                else:
                    kws.append(Kwarg(str(a.children[0]), self.expr(a.children[1]),
                                     self.span(a)))
            return Call(self.expr(func), tuple(pos), tuple(kws), sp)
        if kind == "attr":
            return Attr(self.expr(ch[0]), str(ch[1]), sp)
        if kind == "index":
            return Index(self.expr(ch[0]), self.expr(ch[1]), sp)
        if kind == "tuple":
            return TupleLit(tuple(self.expr(c) for c in ch if c is not None), sp)
        if kind == "list":
            return ListLit(tuple(self.expr(c) for c in ch if c is not None), sp)
        raise AssertionError(f"unknown expression {kind}")
