"""Initialisation as part of the spec: the inits an op's `init=` names, and the LM default.

Every op with weight matrices takes `init` and `std`; ops whose output writes into the
residual stream (attention, mlp, swiglu, moe, linear_attention) also take `out_init` for
that output projection. The default is the scheme GPT-2, nanoGPT and torchtitan use:

- embeddings and linears: normal(0, 0.02); biases: zeros;
- residual output projections (attention's `o`, the mlp/swiglu `down`, the MoE experts'
  `w_out`): normal(0, 0.02 / sqrt(2 * n_layers)).

`2 * n_layers` is counted, not guessed: it is the number of *residual writes* of one
forward, each application of a residual output projection counting once, through block
calls, with every `for` and `loop` counted at its trip count (a run-time count at its
`max`, the most it can run). A plain pre-norm transformer of L layers has an attention
and an MLP per layer, so 2 * L writes, as in GPT-2. The count is resolved into each
residual weight's init in the IR (`("residual", std, writes)`), so the architecture hash
covers it: changing the depth changes the init of every residual projection.

Weight inits in the IR (`Weight.init`):
  ("normal", std)           N(0, std^2)
  ("trunc_normal", std)     N(0, std^2) cut at 3 std
  ("residual", std)         normal(0, std / sqrt(writes)); resolved to
  ("residual", std, writes)   by `resolve_residual` once the model is elaborated
  ("xavier",)               Glorot uniform, per matrix
  ("const", v)              every entry v ("zeros" is ("const", 0.0))
  ("default",)              the runtime module's own init (`init="torch"`: torch's own)
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from .ir import BlockDef, Group, Leaf, Module, Program, Stack, resolve

# What `init=` accepts, in the order the hint lists them.
InitName = Literal["normal", "trunc_normal", "residual", "zeros", "xavier", "torch"]
INITS: tuple[str, ...] = InitName.__args__
DEFAULT_STD = 0.02
# Inits whose spread `std` sets; for the others `std` is refused rather than ignored.
USES_STD = frozenset({"normal", "trunc_normal", "residual"})


def weight_init(init: str, std: float = DEFAULT_STD) -> tuple[Any, ...]:
    """The IR init of a weight matrix that a spec's `init=` / `std=` describe."""
    if init in USES_STD:
        return (init, float(std))
    if init == "zeros":
        return ("const", 0.0)
    if init == "xavier":
        return ("xavier",)
    return ("default",)


def zero_bias(init: str) -> tuple[Any, ...]:
    """Biases start at zero, except with `init="torch"`, which keeps torch's own."""
    return ("default",) if init == "torch" else ("const", 0.0)


def check_std(std: float, inits: list[str]) -> float:
    """Refuse a `std` that no init of the op would use (it would be silently ignored)."""
    if inits and not any(n in USES_STD for n in inits):
        raise ValueError(f"std sets the spread of a normal, trunc_normal or residual init, "
                         f"not of init={inits[0]!r}")
    return std


def choices_hint(error: dict) -> str | None:
    """The hint for a bad `init=`: the inits there are."""
    if error.get("type") != "literal_error" or not error.get("loc"):
        return None
    if str(error["loc"][0]) not in ("init", "out_init"):
        return None
    close = difflib.get_close_matches(str(error.get("input")), INITS, n=1, cutoff=0.6)
    guess = f"did you mean \"{close[0]}\"? " if close else ""
    return (f"{guess}init is one of: {', '.join(INITS)} (\"torch\" keeps PyTorch's own "
            "init, kaiming uniform for a linear)")


# ----------------------------------------------------------------------------- depth rule


def is_residual(leaf: Leaf) -> bool:
    return any(w.init[:1] == ("residual",) for w in leaf.weights)


def residual_writes(program: Program) -> int:
    """Applications of residual output projections in one forward (loops at their bound)."""
    memo: dict[str, int] = {}
    return _writes(program.model, program, memo)


def _writes(block: BlockDef, program: Program, memo: dict[str, int]) -> int:
    if block.cls in memo:
        return memo[block.cls]
    memo[block.cls] = 0  # a block never calls itself; this only guards the walk
    total = _graph_writes(block.graph, block, program, memo)
    memo[block.cls] = total
    return total


def _graph_writes(graph, block: BlockDef, program: Program, memo: dict[str, int]) -> int:
    total = 0
    for node in graph.nodes:
        if node.op == "call":
            total += _writes(program.classes[node.call.cls], program, memo)
        elif node.body is not None:
            times = node.loop.count.bound
            total += times * _graph_writes(node.body, block, program, memo)
        elif node.ref is not None:
            module = resolve(block, node.ref, program.classes)
            if isinstance(module, Leaf) and is_residual(module):
                total += 1
    return total


def resolve_residual(program: Program) -> Program:
    """Write the model's residual-write count into every residual weight's init."""
    writes = residual_writes(program)
    if writes == 0:
        return program
    memo: dict[int, Module] = {}
    classes = dict(program.classes)
    for cls, block in program.classes.items():
        modules = tuple((n, _with_writes(m, writes, memo)) for n, m in block.modules)
        if any(new is not old for (_, new), (_, old) in zip(modules, block.modules)):
            classes[cls] = block.model_copy(update={"modules": modules})
    return program.model_copy(update={"classes": classes})


def _with_writes(m: Module, writes: int, memo: dict[int, Module]) -> Module:
    """The module with `writes` appended to its residual inits; a subtree without any is
    returned as it is (and shared items stay shared)."""
    key = id(m)
    if key in memo:
        return memo[key]
    out: Module = m
    if isinstance(m, Leaf):
        if is_residual(m):
            weights = tuple(w.model_copy(update={"init": w.init[:2] + (writes,)})
                            if w.init[:1] == ("residual",) else w for w in m.weights)
            out = m.model_copy(update={"weights": weights})
    elif isinstance(m, Group):
        children = tuple((n, _with_writes(c, writes, memo)) for n, c in m.children)
        if any(new is not old for (_, new), (_, old) in zip(children, m.children)):
            out = m.model_copy(update={"children": children})
    elif isinstance(m, Stack):
        items = tuple(_with_writes(i, writes, memo) for i in m.items)
        if any(new is not old for new, old in zip(items, m.items)):
            out = m.model_copy(update={"items": items})
    memo[key] = out
    return out


# ----------------------------------------------------------------------------- codegen


# Leaf ops whose runtime module draws its weights in its constructor (torch's own init):
# the generated module sets every weight of theirs that the IR gives an init. Other leaves
# (norms, LayerScale, LoRA, biases, ...) are built at their IR constants by their module.
SET_BY_INIT = frozenset({"linear", "embed", "moe", "sigma_linear"})


def runtime_inits(leaf: Leaf) -> list[tuple[str, str]]:
    """(parameter, Python expression) for `rt.init_`; [] keeps the module's own init."""
    if leaf.op not in SET_BY_INIT:
        return []
    out = []
    for w in leaf.weights:
        expr = _init_expr(w.init)
        if expr is not None:
            out.append((w.name, expr))
    return out


def _init_expr(init: tuple) -> str | None:
    kind = init[0]
    if kind in ("normal", "trunc_normal"):
        return f'("{kind}", {float(init[1])!r})'
    if kind == "residual":
        std, writes = float(init[1]), int(init[2]) if len(init) > 2 else 1
        if writes == 1:
            return f'("normal", {std!r})'
        return f'("normal", {std!r} / {writes} ** 0.5)'
    if kind == "xavier":
        return '"xavier"'
    if kind == "const":
        value = float(init[1])
        return '"zeros"' if value == 0.0 else f'("const", {value!r})'
    return None

