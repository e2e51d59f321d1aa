"""ClassBuilder: elaborates the body of one block specialization (or the root) into a
BlockDef. It holds the graph being built, the module scopes and the loop frames; its
statements, expressions, calls and regions are the mixins it is made of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import Span
from ..ir import BlockDef, Call, Graph, Group, Leaf, Loop, Node, Ref, Stack, TensorType
from .calls import Calls
from .expressions import Expressions
from .regions import Regions
from .scopes import Env, GraphBuilder, LoopFrame, ModuleScope, _check_called
from .statements import Statements
from .values import AdaptCfg, TensorVal

if TYPE_CHECKING:
    from .elaborator import Elaborator


class ClassBuilder(Statements, Expressions, Calls, Regions):
    """Elaborates the body of one block specialization (or the root) into a BlockDef."""

    def __init__(self, el: Elaborator, cls: str, name: str, adapt: AdaptCfg | None,
                 span: Span | None):
        self.el = el
        self.cls = cls
        self.name = name
        self.adapt = adapt
        self.span = span
        self.root_scope = ModuleScope(None, {"lora"} if adapt and adapt.lora else set())
        self.scope = self.root_scope
        self.gb = GraphBuilder(0, None)
        self.loops: list[LoopFrame] = []
        self.scope_stack: list[ModuleScope] = []
        self.lora: dict[str, Leaf] = {}
        self.lora_hits: set[str] = set()
        self.lora_refs: set[tuple] = set()  # ref paths of the linears lora adapts
        self.untie_hits: set[str] = set()
        self.ids = 0
        self.ast: tuple = ()  # the statements of this class, for depth-reference scans

    def root_env(self, globals_: dict[str, Any]) -> Env:
        top = Env(None, 0)
        top.vars.update(globals_)
        return Env(top, 0)

    def input(self, name: str, t: TensorType) -> TensorVal:
        vid = self.fresh(name)
        self.gb.graph.inputs.append((vid, t))
        self.gb.graph.types[vid] = t
        self.gb.graph.names[vid] = name
        return TensorVal(vid, t, self.gb.level)

    def fresh(self, hint: str = "v") -> str:
        self.ids += 1
        return f"%{self.ids}"

    def emit(self, op: str, inputs: list[TensorVal], types: list[TensorType], attrs=None,
             ref: Ref | None = None, span: Span | None = None, hint: str = "",
             body: Graph | None = None, loop: Loop | None = None,
             call: Call | None = None) -> list[TensorVal]:
        self.el.count_node(span)
        args = [self.capture(x) for x in inputs]
        outs = [self.fresh() for _ in types]
        node = Node(op=op, outs=tuple(outs), types=tuple(types), inputs=tuple(a.id for a in args),
                    attrs=tuple(sorted((attrs or {}).items())), ref=ref, span=span, hint=hint,
                    body=body, loop=loop, call=call)
        self.gb.graph.add(node)
        return [TensorVal(o, t, self.gb.level, span) for o, t in zip(outs, types)]

    def capture(self, x: TensorVal) -> TensorVal:
        """Make an outer value available in the current region body (closed graphs)."""
        if x.level == self.gb.level:
            return x
        chain = []
        gb = self.gb
        while gb.level > x.level:
            chain.append(gb)
            gb = gb.outer
        value = x
        for body in reversed(chain):
            if value.id not in body.captures:
                vid = self.fresh()
                body.captures[value.id] = vid
                body.graph.inputs.append((vid, value.type))
                body.graph.types[vid] = value.type
            value = TensorVal(body.captures[value.id], value.type, body.level, value.span,
                              value.fields)
        return value

    def finish(self, outputs: list[TensorVal], inputs, output_names=()) -> BlockDef:
        graph = self.gb.graph
        graph.outputs = [self.capture(o).id for o in outputs]
        modules = []
        for name, m in self.root_scope.modules.items():
            _check_called(name, m, self.root_scope.spans.get(name) or self.span)
            modules.append((name, m))
        if self.adapt is not None and self.adapt.lora is not None:
            group = Group(children=tuple(self.lora.items()), op="lora")
            modules.append(("lora", Stack(items=(group,) * self.adapt.count)))
        return BlockDef(cls=self.cls, name=self.name, inputs=tuple(inputs), graph=graph,
                        modules=tuple(modules), span=self.span, output_names=output_names,
                        iteration=self.adapt.var if self.adapt else None,
                        iterations=self.adapt.count if self.adapt else None)
