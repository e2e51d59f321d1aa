"""The `__init__` side of a generated class: the Python expression that builds each
module of a block (torch's own modules where torch has them, `rt.*` otherwise, nested
ModuleDicts and ModuleLists for groups and stacks), with the IR's weight inits applied."""

from __future__ import annotations

from ...init import runtime_inits
from ...ir import BlockInst, Group, Leaf, Module, Stack
from ..escape import file_name, literal
from .lower import leaf_expr
from .wrap import STEP as INDENT



def module_expr(m: Module, indent: str, ctx) -> str:
    """A Python expression that builds the module (possibly over several lines)."""
    if isinstance(m, BlockInst):
        names = ctx.init_args(m.cls)
        args = ", ".join(f"{names[k]}={literal(v)}" for k, v in m.args)
        return f"{ctx.class_names[m.cls]}({args})"
    if isinstance(m, Leaf):
        return _initialised(m, leaf_expr(m.op, dict(m.args)))
    if isinstance(m, Group):
        if not m.children:
            return "nn.ModuleDict()"
        inner = indent + INDENT
        items = [f"{inner}{name}={module_expr(child, inner, ctx)}," for name, child in m.children]
        return "nn.ModuleDict(dict(\n" + "\n".join(items) + f"\n{indent}))"
    if isinstance(m, Stack):
        first = m.items[0]
        if all(_same(first, item) for item in m.items):
            inner = indent + INDENT
            # Built once (a one-line expression does not depend on the indent): building
            # it again per nesting level made nested stacks exponential.
            body = module_expr(first, inner, ctx)
            if "\n" not in body and len(body) < 60:
                return f"nn.ModuleList([{body} for _ in range({len(m.items)})])"
            return (f"nn.ModuleList([\n{inner}{body}\n{inner}for _ in range({len(m.items)})"
                    f"\n{indent}])")
        inner = indent + INDENT
        items = [f"{inner}{module_expr(item, inner, ctx)}," for item in m.items]
        return "nn.ModuleList([\n" + "\n".join(items) + f"\n{indent}])"
    raise AssertionError(m)


def _same(a: Module, b: Module) -> bool:
    return a is b or a.model_dump() == b.model_dump()


def _initialised(leaf: Leaf, expr: str) -> str:
    """The leaf's module, passed through rt.init_ where the IR draws its weights."""
    inits = runtime_inits(leaf)
    if not inits:
        return expr
    return f"rt.init_({expr}, {', '.join(f'{name}={how}' for name, how in inits)})"


def span_comment(m: Module) -> str:
    span = getattr(m, "span", None)
    return f"  # {file_name(span.file)}:{span.line}" if span else ""
