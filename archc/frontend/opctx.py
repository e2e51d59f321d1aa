"""OpCtx: the op-author API, what an op's `expand` (archc/ops/*.py) sees.

An op reads its inputs' types and makes weights (`leaf`, `linear`, `norm`, `bias`) and
primitive nodes (`emit`) through it. Where an instance's weights are untied per iteration
or adapted by lora (`with` on a call inside a loop), this is where that happens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import fail
from ..init import DEFAULT_STD, weight_init, zero_bias
from ..ir import Group, Leaf, Module, Ref, Stack, TensorType, Weight
from ..ops.adapters import lora_scale
from .consteval import _number
from .values import Inst, RuntimeParam, RuntimeScalar, TensorVal, _tree

if TYPE_CHECKING:
    from .builder import ClassBuilder


class OpCtx:
    """What an op's `expand` sees: its inputs' types, and ways to make weights and nodes."""

    def __init__(self, cb: ClassBuilder, opdef, inst: Inst | None, span, spans,
                 tensors: dict[str, Any] | None = None):
        self.cb = cb
        self.opdef = opdef
        self.inst = inst
        self.span = span
        self.spans = spans
        self.tensors = tensors or {}
        self.sigma = False
        self._self_leaf: Module | None = None
        self._children: list[tuple[str, Module]] = []

    def fail(self, message: str, hint: str | None = None, at: str | None = None):
        fail(message, self.spans.get(at, self.span) if at else self.span, hint, code="A031")

    def module(self) -> Module:
        if self._self_leaf is not None:
            return self._self_leaf
        return Group(children=tuple(self._children), op=self.opdef.name, span=self.inst.span)

    def _untied(self, names_: tuple[str, ...]) -> bool:
        adapt = self.cb.adapt
        if adapt is None or not adapt.untie:
            return False
        hit = [n for n in names_ if n in adapt.untie]
        self.cb.untie_hits.update(hit)
        return bool(hit)

    def leaf(self, name: str | None, op: str, args: dict, weights: list[Weight]) -> Ref:
        """Declare weights: the instance itself (name None) or a named child of it."""
        leaf = Leaf(op=op, args=tuple(args.items()), weights=tuple(weights),
                    span=self.inst.span)
        adapt = self.cb.adapt
        untie = self._untied((op, self.inst.name) if name is None else (op, name))
        module: Module = Stack(items=(leaf,) * adapt.count) if untie else leaf
        idx = adapt.var if untie else None
        if name is not None:
            self._children.append((name, module))
            return self.inst.ref.child(name, idx)
        self._self_leaf = module
        if idx is None:
            return self.inst.ref
        last, old = self.inst.ref.path[-1]
        if old is not None:
            self.fail("an element of an instance array cannot be untied",
                      "untie the ops inside the block instead")
        return Ref(path=self.inst.ref.path[:-1] + ((last, idx),))

    def emit(self, prim: str, inputs, out_type: TensorType, attrs=None, ref=None, hint=""):
        return self.cb.emit(prim, inputs, [out_type], attrs, ref=ref, span=self.span,
                            hint=hint)[0]

    def emit_many(self, prim: str, inputs, types, attrs=None, ref=None, hint=""):
        return tuple(self.cb.emit(prim, inputs, list(types), attrs, ref=ref, span=self.span,
                                  hint=hint))

    def fields(self, out: TensorVal, **fields: TensorVal) -> TensorVal:
        out.fields.update(fields)
        return out

    def binary(self, op: str, x: TensorVal, y: TensorVal) -> TensorVal:
        return self.cb.binary(op, x, y, self.span)

    def linear(self, x: TensorVal, name: str | None, out: int, bias: bool, hint: str = "y",
               bias_init: float | None = None, init: str = "normal",
               std: float = DEFAULT_STD) -> TensorVal:
        d = x.type.width
        w_init = weight_init(init, std)
        b_init = ("const", bias_init) if bias_init is not None else zero_bias(init)
        if self.sigma:  # sigma-Reparam: the op asked for spectrally reparameterized weights
            return self._sigma_linear(x, name, out, bias, hint, w_init, b_init)
        weights = [Weight(name="weight", shape=(out, d), init=w_init)]
        args = {"in": d, "out": out, "bias": bias}
        if bias:
            weights.append(Weight(name="bias", shape=(out,), init=b_init))
            if bias_init is not None:
                args["bias_init"] = bias_init
        ref = self.leaf(name, "linear", args, weights)
        out_t = TensorType(shape=x.type.shape[:-1] + (out,))
        y = self.emit("linear", [x], out_t, ref=ref, hint=hint)
        return self._lora(x, y, name, ref, hint)

    def _sigma_linear(self, x: TensorVal, name: str | None, out: int, bias: bool, hint: str,
                      w_init, b_init) -> TensorVal:
        """The linear as sigma-Reparam weights (an op's `sigma=true`); lora skips it."""
        d = x.type.width
        weights = [Weight(name="weight", shape=(out, d), init=w_init),
                   Weight(name="gamma", shape=())]
        if bias:
            weights.append(Weight(name="bias", shape=(out,), init=b_init))
        ref = self.leaf(name, "sigma_linear", {"in": d, "out": out, "bias": bias}, weights)
        return self.emit("sigma_linear", [x], TensorType(shape=x.type.shape[:-1] + (out,)),
                         ref=ref, hint=hint)

    def _lora(self, x: TensorVal, y: TensorVal, name: str | None, ref: Ref,
              hint: str) -> TensorVal:
        """y plus the low-rank delta of this iteration, when the block is called `with
        lora(...)` and the linear is one of its targets (every linear if none are named);
        the adapters' weights are one Stack per class (ClassBuilder.finish)."""
        adapt = self.cb.adapt
        if adapt is None or adapt.lora is None:
            return y
        d, out, out_t = x.type.width, y.type.width, y.type
        path = ".".join(n for n, _ in ref.path)
        leaf_name = name or self.inst.name
        targets = adapt.lora.targets
        hits = [t for t in targets if t in (leaf_name, path)]
        if targets and not hits:
            return y
        self.cb.lora_hits.update(hits)
        self.cb.lora_refs.add(ref.path)
        key = path.replace(".", "_")
        r = adapt.lora.rank
        self.cb.lora[key] = Leaf(op="lora", args=(("in", d), ("out", out), ("rank", r),
                                                  ("scale", lora_scale(adapt.lora))),
                                 weights=(Weight(name="A", shape=(r, d)),
                                          Weight(name="B", shape=(out, r),
                                                 init=("const", 0.0))),
                                 span=self.span)
        lref = Ref(path=(("lora", adapt.var), (key, None)))
        delta = self.emit("lora", [x], out_t, ref=lref, hint="d")
        return self.emit("add", [y, delta], out_t, hint=hint)

    def norm(self, x: TensorVal, name: str | None, op: str, eps: float,
             bias: bool = True) -> TensorVal:
        d = x.type.width
        weights = [Weight(name="weight", shape=(d,), init=("const", 1.0))]
        args = {"dim": d, "eps": eps}
        if op == "layernorm":
            args["bias"] = bias
            if bias:
                weights.append(Weight(name="bias", shape=(d,), init=("const", 0.0)))
        ref = self.leaf(name, op, args, weights)
        return self.emit(op, [x], x.type, ref=ref, hint="h")

    def bias(self, x: TensorVal, name: str, shape: tuple[int, ...]) -> TensorVal:
        ref = self.leaf(name, "bias", {"shape": shape},
                        [Weight(name="bias", shape=shape, init=("const", 0.0))])
        return self.emit("bias", [x], x.type, ref=ref, hint=name.split("_")[0])

    def rope_table(self, head_dim: int, theta: float) -> str:
        key = (head_dim, float(theta))
        self.cb.el.rope[key] = f"rope_{head_dim}_{int(theta)}"
        return f"rope:{head_dim}:{float(theta)!r}"

    def tied_embed(self, inst: Any) -> tuple[Ref, dict]:
        """The ref and constructor args of the embed a head is tied to."""
        if not isinstance(inst, Inst) or inst.template != "embed":
            self.fail("`tied=` names an embed instance", "write `let emb = embed(...)` and "
                      "`lm_head(x, tied=emb)`", at="tied")
        if inst.state.module is None:
            self.fail(f"embed `{inst.name}` is tied before it is used", "call the embed first",
                      at="tied")
        return inst.ref, dict(inst.state.module.args)

    def attention_of(self, inst: Any) -> tuple[Ref, dict]:
        """The ref and settings of an attention instance another op works with."""
        if not isinstance(inst, Inst) or inst.template != "attention":
            self.fail("`attn=` names an attention instance",
                      "write `let attn = attention(heads=...)` and pass attn=attn", at="attn")
        if inst.state.module is None:
            self.fail(f"attention `{inst.name}` must run before it is looped",
                      "call it first: a = attn(norm(x))", at="attn")
        kw = inst.kwargs
        for option in ("alibi", "qk_norm", "qk_bias", "kv_p"):
            if kw.get(option):
                self.fail(f"head loops do not support attention option `{option}`",
                          "loop a plain RoPE attention", at="attn")
        group = inst.state.module
        q = dict(group.get("q").args)
        k = dict(group.get("k").args)
        heads = kw["heads"]
        dh = q["out"] // heads
        return inst.ref, {"name": inst.name, "heads": heads, "kv_heads": k["out"] // dh,
                          "head_dim": dh, "rope": kw.get("rope", True),
                          "rope_theta": kw.get("rope_theta", 10000.0)}

    def scalar(self, value: Any, at: str) -> float | tuple:
        """A static number, or a run-time scalar's tree (loop index, schedule, param)."""
        if isinstance(value, (RuntimeParam, RuntimeScalar)):
            return _tree(value)
        return float(_number(value, self.spans.get(at, self.span)))
