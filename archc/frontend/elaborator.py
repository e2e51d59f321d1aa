"""The Elaborator: one spec, its params bound, turned into an IR Program.

It registers the blocks, binds the params (params.py), runs the root through a
ClassBuilder (builder.py) and memoizes one class per block specialization. Static
expressions (consteval.py) and the budgets (budget.py) are mixins of it.
"""

from __future__ import annotations

import re
from typing import Any

from .. import limits, names, syntax as S
from ..scan import plan_scan
from ..errors import Span, fail
from ..init import resolve_residual
from ..identity.record import SpecOps
from ..ir import TOKENS, BlockDef, ParamInfo, Program, TensorType
from ..ops import OPS
from .budget import Budget, OpCounting
from .builder import ClassBuilder
from .consteval import StaticEval
from .params import ParamBinding, _check_block_kwargs
from .values import AdaptCfg, Returned, TensorVal


class Elaborator(StaticEval, ParamBinding, OpCounting):
    """One spec being elaborated: its blocks, bound params, classes and op counts."""

    def __init__(self, model: S.Model, params: dict[str, Any], budget: Budget,
                 param_spans: dict[str, Span] | None = None):
        self.model = model
        self.budget = budget
        self.blocks: dict[str, S.Block] = {}
        self.classes: dict[str, BlockDef] = {}
        self.class_keys: dict[Any, str] = {}
        self.class_names: set[str] = set()
        self.block_stack: list[tuple[str, Span | None]] = []
        self.nodes = 0  # ops of the model, every iteration counted (the size budget)
        self.built = 0  # ops actually elaborated (the work budget)
        self.class_sizes: dict[str, int] = {}  # ops one call of a class stands for
        self.rope: dict[tuple[int, float], str] = {}
        self.globals: dict[str, Any] = {}
        self.param_info: dict[str, ParamInfo] = {}
        self.index_bounds: dict[str, tuple[int, str]] = {}  # loop index -> (count, name)
        self.spec_ops = SpecOps()  # each op application, for the architecture hash
        self._register_blocks()
        self._bind_params(params, param_spans or {})

    def _register_blocks(self) -> None:
        for b in self.model.blocks:
            names.check(b.name, b.name_span, "block")
            if b.name in self.blocks:
                fail(f"duplicate block `{b.name}`", b.name_span, "rename one of them",
                     code="A011", labels=[(self.blocks[b.name].name_span, "first defined here")])
            if b.name in OPS:
                fail(f"block `{b.name}` has the name of a built-in op", b.name_span,
                     f"rename it, e.g. `{b.name}_block`", code="A011")
            self.blocks[b.name] = b

    def run(self) -> Program:
        cls = _camel(self.model.name)
        self.class_names.add(cls)
        cb = ClassBuilder(self, cls, self.model.name, None, self.model.span)
        env = cb.root_env(self.globals)
        tok = cb.input("tokens", TOKENS)
        env.set("tokens", tok)
        cb.ast = self.model.body
        out = cb.body(self.model.body, env)
        if isinstance(out, Returned):
            if out.named:
                fail("named outputs are for blocks; the model returns one tensor",
                     self.model.span, "return the logits only", code="A030")
            out = out.value
        if out is None:
            fail("the model computes nothing", self.model.span,
                 "end the model with `return logits`", code="A030")
        block = cb.finish([out], inputs=(("tokens", TOKENS),))
        for node in block.graph.nodes:
            if node.op == "scan_attend":
                fail("an attention over its own past output belongs in a block", node.span,
                     "the block's output feeds the keys; write it as `block layer(x)`",
                     code="A015")
        self.classes[cls] = block
        program = Program(name=self.model.name, file=self.model.span.file if self.model.span
                          else "<spec>", params=self.param_info, classes=self.classes,
                          root=cls, rope=tuple(sorted(self.rope)), spec_ops=self.spec_ops)
        program = resolve_residual(program)  # residual projections' std from the depth
        self._check_params(program)
        return program

    def _check_params(self, program: Program) -> None:
        from ..param_count import unique_params

        total = unique_params(program)
        if total > self.budget.max_params:
            fail(f"the model has {total:,} parameters, over the budget of "
                 f"{self.budget.max_params:,}", self.model.span,
                 "lower the widths or depth, or raise the budget (--max-params)", code="A040")

    def block_class(self, block: S.Block, kwargs: dict[str, Any], inputs: list[TensorVal],
                    adapt: AdaptCfg | None, span: Span | None) -> tuple[str, TensorType]:
        """The class for one specialization of a block; elaborated once and memoized.
        Run-time block params are not part of it: they live on each instance."""
        runtime = {p.name for p in block.params if p.runtime}
        kwargs = {k: v for k, v in kwargs.items() if k not in runtime}
        _check_block_kwargs(block, kwargs, span)
        key = (block.name, tuple(sorted(kwargs.items())), tuple(x.type for x in inputs),
               adapt.key() if adapt else None)
        if key in self.class_keys:
            cls = self.class_keys[key]
            return cls, self.classes[cls].graph.types[self.classes[cls].graph.outputs[0]]
        for name, at in self.block_stack:
            if name == block.name:
                fail(f"block `{block.name}` calls itself", span,
                     "blocks cannot recurse; use `for` or `loop` for depth", code="A033",
                     labels=[(block.name_span, "defined here")])
        if len(self.block_stack) >= limits.MAX_BLOCK_DEPTH:
            fail(f"block calls nested deeper than {limits.MAX_BLOCK_DEPTH} levels", span,
                 "a chain of blocks calling blocks this deep is a stack: write it as a "
                 "`for` over one block", code="A041")
        self.block_stack.append((block.name, span))
        before = self.nodes
        try:
            cls = self._class_name(block.name)
            cb = ClassBuilder(self, cls, block.name, adapt, block.span)
            env = cb.root_env(self.globals)
            self._bind_block_params(block, kwargs, env)
            graph_inputs = []
            for inp, x in zip(block.inputs, inputs):
                names.check(inp.name, inp.span, "input")
                graph_inputs.append((inp.name, x.type))
                env.set(inp.name, cb.input(inp.name, x.type), inp.span)
            cb.ast = block.body
            out = cb.body(block.body, env)
            if out is None:
                fail(f"block `{block.name}` computes nothing", block.name_span,
                     "end it with `return x`", code="A030")
            if not isinstance(out, (TensorVal, Returned)):
                fail(f"block `{block.name}` must return one tensor", block.name_span,
                     "end it with `return x`", code="A030")
            if adapt is not None:
                cb.check_adapters(adapt)
            named = out.named if isinstance(out, Returned) else {}
            out = out.value if isinstance(out, Returned) else out
            self.classes[cls] = cb.finish([out] + list(named.values()), tuple(graph_inputs),
                                          tuple(named))
            self.classes[cls] = self.classes[cls].model_copy(
                update={"attrs": tuple(p.name for p in block.params if p.runtime)})
            plan_scan(self.classes[cls])  # checks a block that reads its own past output
        finally:
            self.block_stack.pop()
        self.class_keys[key] = cls
        self.class_sizes[cls] = self.nodes - before
        return cls, out.type

    def _class_name(self, block: str) -> str:
        base = _camel(block)
        name, n = base, 1
        while name in self.class_names:
            n += 1
            name = f"{base}{n}"
        self.class_names.add(name)
        return name


def _camel(name: str) -> str:
    parts = [p for p in re.split(r"_+", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return out if not out[0].isdigit() else "M" + out


def elaborate(model: S.Model, params: dict[str, Any] | None = None,
              budget: Budget | None = None, param_spans: dict[str, Span] | None = None
              ) -> Program:
    """Bind params and build the IR Program, or raise a located ArchcError."""
    return Elaborator(model, params or {}, budget or Budget(), param_spans).run()
