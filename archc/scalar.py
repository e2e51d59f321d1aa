"""Run-time scalars: numbers known only when the model runs.

A loop index, a run-time param (`r`, the training `step`), a block's run-time param
(`onset`, kept on each instance) and arithmetic or schedules over them (`after(onset)`,
`ramp(a, b)`) form a small expression tree. The backend prints it as Python; the cost and
parameter analyses evaluate it for given values. Trees are tuples, so they hash, compare
and print deterministically, and nothing from a spec is ever evaluated as code.

    ("num", 3.0)  ("var", "i")  ("param", "step")  ("attr", "onset")
    ("bin", "+", a, b)  ("cmp", ">=", a, b)  ("neg", a)  ("call", "min", a, b)
"""

from __future__ import annotations

import math
from typing import Any

Tree = tuple

_BINARY = {"+", "-", "*", "/", "//", "%"}
_COMPARE = {"<", "<=", ">", ">=", "==", "!="}
_CALLS = {"min": 2, "max": 2, "float": 1, "int": 1}
# Every kind of tree node (the first item of each tuple above).
KINDS = frozenset({"num", "var", "param", "attr", "bin", "cmp", "neg", "call"})


def num(x: float | int) -> Tree:
    return ("num", x)


def lift(x: Any) -> Tree:
    return x if isinstance(x, tuple) and x and isinstance(x[0], str) else num(x)


def binary(op: str, a: Any, b: Any) -> Tree:
    """a op b, with the identities x*1, 1*x, x+0, 0+x, x-0, x/1 folded away."""
    assert op in _BINARY
    a, b = lift(a), lift(b)
    if op == "*" and a == ("num", 1):
        return b
    if op in ("*", "/") and b == ("num", 1):
        return a
    if op == "+" and a == ("num", 0):
        return b
    if op in ("+", "-") and b == ("num", 0):
        return a
    return ("bin", op, a, b)


def compare(op: str, a: Any, b: Any) -> Tree:
    assert op in _COMPARE
    return ("cmp", op, lift(a), lift(b))


def call(name: str, *args: Any) -> Tree:
    return ("call", name, *(lift(a) for a in args))


def after(step: Tree, onset: Any) -> Tree:
    """1 from `onset` on, else 0."""
    return call("float", compare(">=", step, onset))


def ramp(step: Tree, start: Any, end: Any) -> Tree:
    """0 before `start`, 1 after `end`, linear between."""
    frac = binary("/", binary("-", step, start), binary("-", end, start))
    return call("min", call("max", frac, num(0.0)), num(1.0))


def training(train: Any, infer: Any) -> Tree:
    """`train` while the module trains, `infer` in eval: an explicit inference form."""
    return ("train", lift(train), lift(infer))


def resolve_training(tree: Tree, is_training: bool) -> Tree:
    """The tree with every training(a, b) replaced by a (training) or b (inference)."""
    if tree[0] == "train":
        return resolve_training(tree[1] if is_training else tree[2], is_training)
    return tuple(resolve_training(p, is_training) if isinstance(p, tuple) else p for p in tree)


def constant(tree: Tree) -> float | None:
    """The tree's value if it reads nothing known only at run time."""
    if free(tree, "var") or free(tree, "param") or free(tree, "attr") or _has(tree, "train"):
        return None
    return evaluate(tree, {})


def _has(tree: Tree, kind: str) -> bool:
    return tree[0] == kind or any(isinstance(p, tuple) and _has(p, kind) for p in tree[1:])


def free(tree: Tree, kind: str) -> set[str]:
    """Names of the given kind ("var", "param", "attr") a tree reads."""
    if tree[0] == kind:
        return {tree[1]}
    out: set[str] = set()
    for part in tree[1:]:
        if isinstance(part, tuple):
            out |= free(part, kind)
    return out


def code(tree: Tree, names: dict[str, str] | None = None) -> str:
    """Python source for the tree; `names` maps ("var", name) and ("param", name) to the
    Python name the backend gave it (the spec name where absent)."""
    names = names or {}
    kind = tree[0]
    if kind == "num":
        return repr(tree[1])
    if kind in ("var", "param"):
        return names.get((kind, tree[1]), tree[1])
    if kind == "attr":
        return f"self.{tree[1]}"
    if kind == "neg":
        return f"(-{code(tree[1], names)})"
    if kind in ("bin", "cmp"):
        return f"({code(tree[2], names)} {tree[1]} {code(tree[3], names)})"
    if kind == "call":
        return f"{tree[1]}({', '.join(code(a, names) for a in tree[2:])})"
    if kind == "train":
        return f"({code(tree[1], names)} if self.training else {code(tree[2], names)})"
    raise AssertionError(tree)


def evaluate(tree: Tree, env: dict[str, Any]) -> float | int:
    """The tree's value; env maps var/param/attr names to numbers."""
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind in ("var", "param", "attr"):
        return env[tree[1]]
    if kind == "neg":
        return -evaluate(tree[1], env)
    if kind == "bin":
        a, b = evaluate(tree[2], env), evaluate(tree[3], env)
        op = tree[1]
        if op in ("/", "//", "%") and b == 0:
            return math.inf
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op == "//":
            return a // b
        return a % b
    if kind == "cmp":
        a, b = evaluate(tree[2], env), evaluate(tree[3], env)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                "!=": a != b}[tree[1]]
    if kind == "call":
        args = [evaluate(a, env) for a in tree[2:]]
        return {"min": min, "max": max, "float": float, "int": int}[tree[1]](*args)
    if kind == "train":
        return evaluate(tree[1] if env.get("training", True) else tree[2], env)
    raise AssertionError(tree)
