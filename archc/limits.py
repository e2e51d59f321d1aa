"""How deeply a spec may nest, and how large its numbers may be, checked before anything
recurses over it.

lark's LALR parser is iterative, but everything after it walks the tree recursively: the
AST builder, the elaborator, the formatter, the printer of run-time scalars. Python itself
refuses generated code that nests too deeply (more than 20 statically nested loops, more
than 200 nested parentheses). So a spec past these limits is refused with a located
`ArchcError` (code A041) instead of a RecursionError, or a generated module that does not
compile. The limits are far beyond what an architecture needs: a real spec nests
expressions a few levels deep and loops two or three.
"""

from __future__ import annotations

import functools
import math
import threading

from .errors import ArchcError, Span

# Expressions and statements inside one another, in one parse tree (a chain of `+` terms
# counts one level per term: the tree of `a + b + c` is ((a + b) + c)).
MAX_NESTING = 64
# `for`/`loop` bodies inside one another. Python allows 20 statically nested loops per
# function; a pass may add a loop level (roll), so the spec keeps a margin.
MAX_LOOP_NESTING = 16
# Block bodies being elaborated inside one another (a block calling a block ...).
MAX_BLOCK_DEPTH = 32
# Statements and expressions being elaborated inside one another, counted through block
# calls: bounds the elaborator's Python recursion whatever the mix of nesting.
MAX_ELABORATION_DEPTH = 160
# A run-time scalar (a loop count, a scale read at run time) is printed as one Python
# expression with a pair of parentheses per level, and every analysis walks it.
MAX_SCALAR_DEPTH = 32
MAX_SCALAR_NODES = 1000
# Static numbers fit in 64 bits (the elaborator refuses larger arithmetic results).
MAX_INT = 2 ** 63

# Parse-tree rules that wrap a level rather than add one.
_TRANSPARENT = frozenset({"start", "body", "pos_arg", "kw_arg", "with"})
_LOOPS = frozenset({"for", "loop"})


def check_tree(tree, filename: str) -> None:
    """Refuse a lark parse tree that nests expressions or loops past the limits.
    Walks with an explicit stack, so it works on trees of any depth."""
    from lark import Tree

    stack = [(tree, 0, 0)]
    while stack:
        node, depth, loops = stack.pop()
        if node.data not in _TRANSPARENT:
            depth += 1
        if node.data in _LOOPS:
            loops += 1
        if depth > MAX_NESTING:
            raise ArchcError(f"nesting deeper than {MAX_NESTING} levels", _span(node, filename),
                             "name an inner part (`h = ...`) and use the name, or split a "
                             "long chain of terms into several statements", code="A041",
                             label=f"level {depth}")
        if loops > MAX_LOOP_NESTING:
            raise ArchcError(f"loops nested deeper than {MAX_LOOP_NESTING} levels",
                             _span(node, filename),
                             "move the inner loops into a block and call it from the loop",
                             code="A041", label=f"loop {loops} inside the others")
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth, loops))


def _span(node, filename: str) -> Span:
    m = node.meta
    if getattr(m, "empty", True):
        return Span(filename, 1, 1, 1, 1)
    return Span(filename, m.line, m.column, m.line,
                m.end_column if m.end_line == m.line else m.column + 1)


# ----------------------------------------------------------------------------- literals


def int_literal(text: str, span: Span) -> int:
    """The value of an integer literal, refused past 64 bits (before Python's own
    4,300-digit limit on int(), which is a ValueError)."""
    digits = text.lstrip("0")
    if len(digits) > 19 or int(digits or "0") >= MAX_INT:
        raise ArchcError("this integer is too large", span,
                         "static numbers fit in 64 bits; write a float such as 1e30 if a "
                         "large value is meant", code="A031")
    return int(digits or "0")


def float_literal(text: str, span: Span) -> float:
    """The value of a float literal; one that overflows to inf or underflows to 0 is
    refused, so `archc fmt` always prints a literal that reads back as the same value."""
    value = float(text)
    if math.isinf(value):
        raise ArchcError("this number is too large for a float", span,
                         "floats are at most about 1.8e308", code="A031")
    if value == 0.0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        raise ArchcError("this number is too small for a float: it would be 0", span,
                         "floats are at least about 5e-324; write 0.0 if zero is meant",
                         code="A031")
    return value


# ----------------------------------------------------------------------------- elaboration

_state = threading.local()


def elaboration_guard(method):
    """Count how deeply the elaborator is inside statements and expressions (through
    block calls too) and refuse, at the node's span, past MAX_ELABORATION_DEPTH.

    An unexpected exception passing through keeps its type and traceback; it gains a note
    with the innermost spec location, so an internal error can say where it happened."""

    @functools.wraps(method)
    def guarded(self, node, *args, **kwargs):
        depth = getattr(_state, "depth", 0)
        span = getattr(node, "span", None)
        if depth >= MAX_ELABORATION_DEPTH:
            raise ArchcError(f"nesting deeper than {MAX_ELABORATION_DEPTH} levels, counting "
                             "through block calls", span,
                             "name inner parts of deep expressions, or flatten a chain of "
                             "blocks calling blocks", code="A041")
        _state.depth = depth + 1
        try:
            return method(self, node, *args, **kwargs)
        except ArchcError:
            raise
        except Exception as err:
            if span is not None and getattr(err, "archc_span", None) is None:
                err.archc_span = span
                err.add_note(f"archc: while elaborating the spec at {span}")
            raise
        finally:
            _state.depth = depth
    return guarded


def check_scalar(tree: tuple, span: Span | None) -> tuple:
    """Refuse a run-time scalar tree past MAX_SCALAR_DEPTH levels or MAX_SCALAR_NODES
    nodes (counting a shared subtree once per use, as printing it does). Stops early, so
    a tree that doubles per statement costs no more than the limit to check."""
    nodes = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCALAR_DEPTH or nodes > MAX_SCALAR_NODES:
            what = (f"nests deeper than {MAX_SCALAR_DEPTH} levels" if depth > MAX_SCALAR_DEPTH
                    else f"has more than {MAX_SCALAR_NODES} terms")
            raise ArchcError(f"this run-time expression {what}", span,
                             "a value known only at run time is computed as one expression "
                             "in the generated module; simplify it", code="A041")
        for part in node[1:]:
            if isinstance(part, tuple):
                stack.append((part, depth + 1))
    return tree
