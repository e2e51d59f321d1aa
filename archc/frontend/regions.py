"""`for` and `loop` as regions.

- `for` is unrolled in meaning (distinct weights per iteration). Its body is elaborated
  once per iteration; when every iteration gives the same graph, the region stays rolled
  (`for layer in self.layers`), otherwise the iterations are spliced in one after another.
  A body that never reads its variable is elaborated once (`_for_uniform`); one with depth
  references runs inline (`_for_inline`), each iteration's values kept for `layers[j].x`.
- `loop` is a recurrence with shared weights. Its body is elaborated once with the index
  as a run-time value; instances made inside it are one per iteration (stacked).
"""

from __future__ import annotations

from typing import Any

from .. import loopvars, names, syntax as S
from ..errors import fail
from ..graph_ops import graph_shape, substitute
from ..ir import Count, Graph, Group, Halt, Loop, Node, Stack
from .consteval import _number
from .scopes import (Env, GraphBuilder, LoopFrame, ModuleScope, _collapse, _collapse_fix,
                     _map_graph, _ref_attrs, _rewrite_refs)
from .values import (DepthFrame, DepthStack, Inst, InstArray, Returned, RuntimeParam,
                     RuntimeScalar, TensorVal, _show)


class Regions:
    """Elaborating `for` and `loop`; mixed into the ClassBuilder."""

    def for_(self, st: S.For, env: Env) -> None:
        items = self.el.static(st.iter, env, "what `for` iterates over")
        if not isinstance(items, tuple):
            fail(f"`for` iterates over a range or a list, got {_show(items)}", st.iter.span,
                 "write `for i in 0..n`", code="A031")
        for v in st.vars:
            names.check(v, st.span, "loop variable")
        var = st.vars[0]
        sym = self._ir_var(var)
        # Rollable when the variable is the iteration position: `for i in 0..n`.
        rollable = (isinstance(st.iter, S.Range) and len(st.vars) == 1
                    and bool(items) and items[0] == 0)
        label = self._label(st.label, "layers", st.span)
        if not rollable or _mentions_depth(self.ast, label):
            self._for_inline(st, env, label, items)
            return
        if len(items) > 1 and not _mentions_name(st.body, var) and \
                self._assigns_only_tensors(st.body, env) and \
                self._for_uniform(st, env, label, len(items), sym):
            return  # every iteration elaborates to the same graph: done once
        inits = self._carried(st.body, env)
        current = dict(inits)
        iterations = []
        for k, item in enumerate(items):
            body_env, gb = self._open_body(env, current, label, sym)
            _bind_for_vars(body_env, st, item)
            self.loops.append(self.el.index_frame(LoopFrame(var, len(items), "for", sym)))
            try:
                _no_return(self.body(st.body, body_env), st)
            finally:
                self.loops.pop()
            scope = self.scope
            outs = self._close_body(gb, body_env, list(current), st)
            iterations.append((gb, scope))
            current = {name: TensorVal(o.id, o.type, gb.level) for name, o in zip(current, outs)}
            for name, value in body_env.vars.items():  # statics flow to the next iteration
                if name not in st.vars and not isinstance(value, TensorVal) and \
                        env.find(name) is not None:
                    env.set(name, value, body_env.spans.get(name))
        self._finish_for(st, env, label, inits, iterations, rollable, sym)

    def _for_inline(self, st: S.For, env: Env, label: str, items: tuple) -> None:
        """Run the iterations one after another in the enclosing graph. Values bound in
        iteration j stay reachable as label[j].name (depth references)."""
        var = st.vars[0]
        stack = DepthStack(label, [], st.span, st.body)
        if st.label is not None:
            if env.find(label) is not None:
                fail(f"the label `{label}` is already a name here", st.span,
                     "labels name a stack's depths; pick another", code="A011")
            env.set(label, stack, st.span)
        modules = []
        for k, item in enumerate(items):
            body_env = Env(env, self.gb.level)
            _bind_for_vars(body_env, st, item)
            self.scope_stack.append(self.scope)
            self.scope = ModuleScope(self.scope.ref(label, k))
            first = self.gb.graph.next_key
            self.loops.append(LoopFrame(var, len(items), "for", None))
            try:
                _no_return(self.body(st.body, body_env), st)
            finally:
                self.loops.pop()
            scope = self.scope
            self.scope = self.scope_stack.pop()
            fix = _collapse_fix(scope)
            if fix is not None:
                self.gb.graph.rewrite_from(first, lambda n: n.model_copy(
                    update={"ref": fix(n.ref), "attrs": _ref_attrs(n, fix),
                            "body": _map_graph(n.body, fix) if n.body is not None else None}))
            modules.append(_collapse(scope, st.span))
            values = {}
            for name, value in body_env.vars.items():
                if name in st.vars:
                    continue
                values[name] = value
                if env.find(name) is not None and not isinstance(value, (Inst, InstArray)):
                    env.set(name, value, body_env.spans.get(name))
            stack.frames.append(DepthFrame(label, k, values))
        self._place_stack(label, modules, st.span)

    def _place_stack(self, label: str, modules: list, span) -> None:
        """A `for`'s per-iteration modules as one Stack under its label (an iteration
        without modules holds an empty group); no stack when no iteration has any."""
        if any(m is not None for m in modules):
            self.scope.modules[label] = Stack(
                items=tuple(m if m is not None else Group(children=()) for m in modules),
                span=span)
        else:
            del self.scope.modules[label]

    def _assigns_only_tensors(self, body, env: Env) -> bool:
        """No outer static is reassigned in the body (so iterations cannot differ)."""
        for name in _assigned(body):
            found = env.find(name)
            if found is not None and not isinstance(found[0], TensorVal):
                return False
        return True

    def _for_uniform(self, st: S.For, env: Env, label: str, n: int, sym: str) -> bool:
        """A `for` whose body never reads its variable: one elaboration, n iterations.
        False (and nothing emitted) if the body changes a carried width: then the
        iterations differ after all and are elaborated one by one."""
        var = st.vars[0]
        before = self.el.nodes
        inits = self._carried(st.body, env)
        body_env, gb = self._open_body(env, inits, label, sym)
        body_env.set(var, 0, st.span)
        self.loops.append(self.el.index_frame(LoopFrame(var, n, "for", sym)))
        try:
            _no_return(self.body(st.body, body_env), st)
        finally:
            self.loops.pop()
        scope = self.scope
        self._close_body(gb, body_env, list(inits), st)
        graph = _rewrite_refs(gb.graph, scope)
        types = [graph.types[o] for o in graph.outputs]
        if types != [v.type for v in inits.values()]:
            self.el.nodes = before  # elaborated again, one iteration at a time
            return False
        ops = self.el.nodes - before
        self.el.count_repeats(n - 1, ops, st.span,
                              f"this stack of {n:,} iterations of {ops:,} ops")
        module = _collapse(scope, st.span)
        if module is not None:
            self.scope.modules[label] = Stack(items=(module,) * n, span=st.span)
        else:
            del self.scope.modules[label]
        loop = Loop(kind="for", var=sym, count=Count(value=n), label=label)
        outs = self.emit("loop", [inits[k] for k in inits] + self._captured(gb), types,
                         span=st.span, hint=",".join(inits), body=graph, loop=loop)
        self._rebind(env, list(inits), outs)
        return True

    def _finish_for(self, st, env, label, inits, iterations, rollable, var) -> None:
        modules = [_collapse(scope, st.span) for _, scope in iterations]
        graphs = [_rewrite_refs(gb.graph, scope) for gb, scope in iterations]
        self._place_stack(label, modules, st.span)
        if rollable and len(iterations) > 1 and len({graph_shape(g) for g in graphs}) == 1:
            gb0 = iterations[0][0]
            inputs = [inits[n] for n in inits] + self._captured(gb0)
            types = [gb0.graph.types[o] for o in gb0.graph.outputs]
            loop = Loop(kind="for", var=var, count=Count(value=len(graphs)), label=label)
            outs = self.emit("loop", inputs, types, span=st.span, hint=",".join(inits),
                             body=graphs[0], loop=loop)
            self._rebind(env, list(inits), outs)
            return
        # Otherwise the iterations run one after another in the enclosing graph.
        values = dict(inits)
        for k, ((gb, _scope), graph) in enumerate(zip(iterations, graphs)):
            mapping = {vid: values[name].id for (vid, _t), name in
                       zip(graph.inputs, list(inits))}
            mapping.update({inner: outer for outer, inner in gb.captures.items()})
            for node in graph.nodes:
                if rollable:  # elaborated with the symbolic index: iteration k's value
                    node = substitute(node, var, k)
                node = node.model_copy(update={"inputs": tuple(mapping.get(i, i)
                                                               for i in node.inputs)})
                self.gb.graph.add(node)  # counted when its iteration was elaborated
                for o in node.outs:
                    if o in graph.names:
                        self.gb.graph.names.setdefault(o, graph.names[o])
            for name, out in zip(list(inits), graph.outputs):
                out = mapping.get(out, out)
                values[name] = TensorVal(out, self.gb.graph.types[out], self.gb.level)
        for name in inits:
            env.set(name, values[name])

    def loop(self, st: S.Loop, env: Env) -> None:
        count = self._count(st, env)
        if st.var is not None:
            names.check(st.var, st.span, "loop variable")
        var = self._ir_var(st.var)
        label = self._label(st.label, "loop", st.span)
        inits = self._carried(st.body, env)
        if not inits:
            fail("this loop changes nothing", st.span,
                 "assign to a value defined before the loop, e.g. `s = core(s)`", code="A031")
        if count.bound == 0:  # no iteration runs (as `for` over an empty range): no body
            self.scope.modules.pop(label, None)
            return
        before = self.el.nodes
        body_env, gb = self._open_body(env, inits, label, var)
        if st.var is not None:
            body_env.set(st.var, RuntimeScalar(("var", var)), st.span)
        self.loops.append(self.el.index_frame(LoopFrame(st.var, count.bound, "loop", var)))
        try:
            _no_return(self.body(st.body, body_env), st)
        finally:
            self.loops.pop()
        ops = self.el.nodes - before
        self.el.count_repeats(count.bound - 1, ops, st.span,
                              f"this loop of up to {count.bound:,} iterations of {ops:,} ops")
        for name in body_env.vars:
            if name not in inits and name != st.var and env.find(name) is not None:
                fail(f"`{name}` is reassigned inside a loop body", body_env.spans.get(name),
                     "a loop body runs as one shared body; only tensors can be carried",
                     code="A031")
        scope = self.scope
        outs = self._close_body(gb, body_env, list(inits), st)
        for name, out in zip(inits, outs):
            if out.type != inits[name].type:
                fail(f"the loop changes `{name}` from {inits[name].type} to {out.type}",
                     st.span, "a loop-carried value must keep its shape", code="A013")
        module = _collapse(scope, st.span)
        if module is not None:
            self.scope.modules[label] = Stack(items=(module,) * count.bound, span=st.span)
        else:
            del self.scope.modules[label]
        halt = self._halt(st, list(inits), env) if st.until is not None else None
        loop = Loop(kind="loop", var=var, count=count, label=label, halt=halt)
        inputs = [inits[n] for n in inits] + self._captured(gb)
        outs = self.emit("loop", inputs, [v.type for v in inits.values()], span=st.span,
                         hint=",".join(inits), body=_rewrite_refs(gb.graph, scope), loop=loop)
        self._rebind(env, list(inits), outs)

    def _count(self, st: S.Loop, env: Env) -> Count:
        value = self.el.eval_static(st.count, env)
        runtime = isinstance(value, (RuntimeParam, RuntimeScalar))
        if not runtime and (not isinstance(value, int) or isinstance(value, bool)):
            fail(f"a loop count must be an int, got {_show(value)}", st.count.span,
                 "e.g. `loop 4 { ... }` or `loop r max 64 { ... }`", code="A031")
        mx = None
        if st.max is not None:
            mx = self.el.static(st.max, env, "a loop max")
            if not isinstance(mx, int) or isinstance(mx, bool) or mx < 1:
                fail(f"a loop max must be a positive int, got {_show(mx)}", st.max.span,
                     "e.g. `loop r max 64`", code="A031")
        if isinstance(value, RuntimeScalar):
            if mx is None:
                fail("a loop whose count is known only at run time needs a max", st.count.span,
                     "write `loop COUNT max N { ... }`; the max sizes per-iteration weights",
                     code="A024")
            count = Count(value=self.el.default_of(value.tree, mx), max=mx, expr=value.tree)
        elif runtime:
            if mx is None:
                fail(f"the run-time loop over `{value.name}` needs a max", st.count.span,
                     f"write `loop {value.name} max N {{ ... }}`; the max sizes "
                     "per-iteration weights", code="A024")
            if value.default > mx:
                fail(f"{value.name} = {value.default} is over the loop max {mx}", st.max.span,
                     f"raise the max or lower `{value.name}`", code="A022")
            count = Count(value=value.default, param=value.name, max=mx,
                          expr=("param", value.name))
        else:
            if value < 0:
                fail(f"a loop count must not be negative, got {value}", st.count.span,
                     "check the count expression", code="A031")
            if mx is not None and value > mx:
                fail(f"loop count {value} is over its max {mx}", st.count.span,
                     "raise the max or lower the count", code="A022")
            count = Count(value=value)
        if count.bound > self.el.budget.max_nodes:
            fail(f"a loop of {count.bound:,} iterations is over the size budget",
                 st.count.span, "the budget is --max-nodes", code="A040")
        return count

    def _halt(self, st: S.Loop, carried: list[str], env: Env) -> Halt:
        u = st.until
        if not (isinstance(u, S.Call) and isinstance(u.func, S.Name)
                and u.func.id == "converged" and len(u.args) == 1
                and isinstance(u.args[0], S.Name)):
            fail('a halting rule reads `until converged(s, tol=1e-3, per="token")`', u.span,
                 "s is a value the loop carries", code="A035")
        state = u.args[0].id
        if state not in carried:
            fail(f"`{state}` is not carried by this loop", u.args[0].span,
                 f"the loop carries: {', '.join(carried)}", code="A035")
        opts: dict[str, Any] = {"tol": 1e-3, "per": "sequence"}
        for kw in u.kwargs:
            if kw.name not in opts:
                fail(f"converged() has no argument `{kw.name}`", kw.span,
                     "its arguments: tol, per", code="A035")
            opts[kw.name] = self.el.static(kw.value, env, "a halting option")
        if opts["per"] not in ("token", "sequence"):
            fail(f'per must be "token" or "sequence", got {_show(opts["per"])}', u.span,
                 'per="token" freezes each position; per="sequence" whole sequences',
                 code="A035")
        tol = _number(opts["tol"], u.span)
        if tol <= 0:
            fail("tol must be positive", u.span, "e.g. tol=1e-3 (relative change)", code="A035")
        return Halt(state=carried.index(state), tol=float(tol), per=opts["per"])

    def _label(self, label: str | None, default: str, span) -> str:
        if label is not None:
            names.check(label, span, "label")
            return self.scope.claim(label, span)
        return self.scope.claim(self.scope.fresh(default), span)

    def _carried(self, body, env: Env) -> dict[str, TensorVal]:
        """Values assigned in a body that exist before it: the loop-carried state."""
        out = {}
        for name in _assigned(body):
            found = env.find(name)
            if found is not None and isinstance(found[0], TensorVal):
                out[name] = found[0]
        return out

    def _ir_var(self, name: str | None) -> str:
        """The IR name of a region's variable: free among the enclosing regions' (see
        archc/loopvars.py), so an inner `for i` cannot take an outer loop's index."""
        taken = {f.sym for f in self.loops if f.sym is not None}
        if self.adapt is not None:
            taken.add(self.adapt.var)
        return loopvars.ir_var(name, taken, self.el.param_info)

    def _open_body(self, env: Env, carried: dict[str, TensorVal], label: str, index):
        """Start a region body: a closed graph whose first inputs are the carried values."""
        gb = GraphBuilder(self.gb.level + 1, self.gb)
        body_env = Env(env, gb.level)
        for name, v in carried.items():
            vid = self.fresh()
            gb.graph.inputs.append((vid, v.type))
            gb.graph.types[vid] = v.type
            gb.graph.names[vid] = name
            body_env.set(name, TensorVal(vid, v.type, gb.level), None)
        self.scope_stack.append(self.scope)
        self.scope = ModuleScope(self.scope.ref(label, index))
        self.gb = gb
        return body_env, gb

    def _close_body(self, gb: GraphBuilder, body_env: Env, carried: list[str], st):
        outs = []
        for name in carried:
            v = body_env.vars.get(name)
            if not isinstance(v, TensorVal):
                fail(f"`{name}` must stay a tensor in the loop body", st.span,
                     "assign it a tensor in every iteration", code="A031")
            v = self.capture(v)
            gb.graph.outputs.append(v.id)
            outs.append(v)
        self.gb = gb.outer
        self.scope = self.scope_stack.pop()
        return outs

    def _captured(self, gb: GraphBuilder) -> list[TensorVal]:
        """Outer values a body read, in the order they became its inputs."""
        return [self.capture(TensorVal(outer, gb.graph.types[inner], self.gb.level))
                for outer, inner in gb.captures.items()]

    def _rebind(self, env: Env, carried: list[str], outs: list[TensorVal]) -> None:
        for name, v in zip(carried, outs):
            env.set(name, v)
            self.gb.graph.names.setdefault(v.id, name)


def _bind_for_vars(env: Env, st: S.For, item: Any) -> None:
    """`for i in ...` binds the item; `for b, n in [(0, 3), ...]` unpacks it."""
    if len(st.vars) == 1:
        env.set(st.vars[0], item, st.span)
        return
    if not isinstance(item, tuple) or len(item) != len(st.vars):
        fail(f"cannot unpack {_show(item)} into {len(st.vars)} names", st.iter.span,
             "each item needs one value per name, e.g. `for b, n in [(0, 3), (1, 5)]`",
             code="A031")
    for name, v in zip(st.vars, item):
        env.set(name, v, st.span)


def _mentions_name(node: Any, name: str) -> bool:
    """Does any expression under `node` read `name`?"""
    if isinstance(node, S.Name):
        return node.id == name
    if isinstance(node, tuple):
        return any(_mentions_name(x, name) for x in node)
    if hasattr(node, "__dataclass_fields__"):
        return any(_mentions_name(getattr(node, f), name)
                   for f in node.__dataclass_fields__ if f != "span")
    return False


def _mentions_depth(node: Any, label: str) -> bool:
    """Does any expression under `node` index `label` (a depth reference)?"""
    if isinstance(node, S.Index) and isinstance(node.value, S.Name) and node.value.id == label:
        return True
    if isinstance(node, tuple):
        return any(_mentions_depth(x, label) for x in node)
    if hasattr(node, "__dataclass_fields__"):
        return any(_mentions_depth(getattr(node, f), label)
                   for f in node.__dataclass_fields__ if f != "span")
    return False


def _no_return(result: Any, st) -> None:
    if isinstance(result, Returned):
        fail("`return` inside a loop body", st.span,
             "assign the value instead; the loop's carried values are its result", code="A030")


def _assigned(stmts) -> list[str]:
    out: list[str] = []
    for st in stmts:
        if isinstance(st, S.Assign):
            out.append(st.target)
        elif isinstance(st, S.Unpack):
            out.extend(st.targets)
        elif isinstance(st, (S.For, S.Loop)):
            out.extend(_assigned(st.body))
        elif isinstance(st, S.If):
            out.extend(_assigned(st.then) + _assigned(st.orelse))
    seen: dict[str, None] = {}
    for n in out:
        seen.setdefault(n, None)
    return list(seen)
