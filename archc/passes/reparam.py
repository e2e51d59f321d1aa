"""reparam: fold the training form into the inference form (inference builds only).

Train-time structure that is algebraically equal to something cheaper at inference is
rewritten, exactly:

- `training(a, b)` values become b; scales by 1 vanish and branches scaled by 0 drop out
  (a finished join schedule, SLAB's LN -> RepBN blend);
- sigma-Reparam weights are baked (W_hat = gamma / sigma(W) W) into a plain linear;
  DSFormer's S is projected once to its top-nnz form and D S kept as two plain linears
  (cheaper than the product whenever rank < out * in / (out + in), the reason to factor);
- a norm's affine (LayerNorm, RMSNorm gains) and an eval-mode BatchNorm/RepBN (a
  per-channel affine) fold into the linears that read it;
- LayerScale folds into the linear before it;
- parallel linear branches on one input sum into one linear, an identity branch into its
  diagonal;
- parallel FFN branches on one input become one wider FFN, parallel attention branches
  one attention with all their heads;
- a LoRA update merges into its linear (W + s B A) only where its loop runs once: with
  more iterations every iteration would need its own W, and the sharing would be lost.

Each rewrite records how the new weights come from the old ones (`Program.folds`, small
tensor expressions per class); `archc.reparam(model)` evaluates them on a trained
model's state dict. Patterns are matched in each class's top-level graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import scalar
from ..ir import (BlockDef, Graph, Group, Leaf, Module, Node, Program, Ref, Stack, TensorType,
                  Weight, class_order)
from .pipeline import DEFAULTS, Pass, PassOptions
from .dce import prune_block, sweep

_NORMS = {"layernorm", "rmsnorm", "batchnorm", "repbn"}


@dataclass
class _Class:
    """One class being rewritten: its nodes, modules and the folds recorded so far."""

    block: BlockDef
    nodes: list[Node]
    modules: dict[str, Module]
    recipes: dict[str, tuple] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)

    def p(self, ref: Ref, weight: str) -> tuple:
        """A trained weight, or what earlier folds already made of it."""
        key = _key(ref, weight)
        return self.recipes.get(key, ("p", key))

    def fold(self, target: str, recipe: tuple) -> None:
        self.recipes[target] = recipe

    def producer(self, value: str) -> Node | None:
        for n in self.nodes:
            if value in n.outs:
                return n
        return None

    def users(self, value: str) -> list[Node]:
        return [n for n in self.nodes if value in n.inputs] + \
            ([None] if value in self.block.graph.outputs else [])

    def ref_uses(self, ref: Ref) -> int:
        return sum(1 for n in self.nodes if n.ref == ref)

    def module(self, ref: Ref) -> Module | None:
        current: Module | None = None
        for depth, (name, idx) in enumerate(ref.path):
            if depth == 0:
                current = self.modules.get(name)
            elif isinstance(current, Group):
                current = current.get(name)
            else:
                return None
            if idx is not None:
                if not isinstance(current, Stack) or not isinstance(idx, int):
                    return None
                current = current.items[idx]
            if current is None:
                return None
        return current

    def set_module(self, ref: Ref, module: Module) -> None:
        top = ref.path[0][0]
        self.modules[top] = _replace(self.modules[top], ref.path, 0, module)

    def replace_node(self, old: Node, new: Node | None) -> None:
        i = self.nodes.index(old)
        if new is None:
            del self.nodes[i]
        else:
            self.nodes[i] = new

    def sweep(self) -> None:
        """Drop nodes nothing reads any more (a folded branch's leftovers)."""
        changed = True
        while changed:
            used = {v for n in self.nodes for v in n.inputs} | set(self.block.graph.outputs)
            used |= {self.alias.get(v, v) for v in self.block.graph.outputs}
            keep = [n for n in self.nodes if n.op in ("loop", "kv_cache")
                    or any(o in used for o in n.outs)]
            changed = len(keep) != len(self.nodes)
            self.nodes = keep

    def forward(self, value: str, to: str) -> None:
        """Every reader of `value` reads `to` instead."""
        self.nodes = [n.model_copy(update={"inputs": tuple(to if v == value else v
                                                           for v in n.inputs)})
                      for n in self.nodes]
        self.alias[value] = to


def _replace(module: Module, path, depth: int, new: Module) -> Module:
    """`module` is the one path[depth] names; put `new` where the whole path points."""
    last = depth == len(path) - 1
    idx = path[depth][1]
    if idx is not None:
        items = list(module.items)
        items[idx] = new if last else _descend(items[idx], path, depth + 1, new)
        return module.model_copy(update={"items": tuple(items)})
    return new if last else _descend(module, path, depth + 1, new)


def _descend(group: Module, path, depth: int, new: Module) -> Module:
    name = path[depth][0]
    return group.model_copy(update={"children": tuple(
        (n, _replace(m, path, depth, new) if n == name else m) for n, m in group.children)})


def _key(ref: Ref, weight: str) -> str:
    parts = []
    for name, idx in ref.path:
        parts.append(name)
        if idx is not None:
            parts.append(str(idx))
    return ".".join(parts + [weight])


def _concrete(ref: Ref | None) -> bool:
    return ref is not None and all(idx is None or isinstance(idx, int) for _, idx in ref.path)


def _linear_leaf(d_in: int, d_out: int, bias: bool, span) -> Leaf:
    weights = [Weight(name="weight", shape=(d_out, d_in))]
    if bias:
        weights.append(Weight(name="bias", shape=(d_out,)))
    return Leaf(op="linear", args=(("in", d_in), ("out", d_out), ("bias", bias)),
                weights=tuple(weights), span=span)


def _plain_linear(c: _Class, node: Node | None) -> Leaf | None:
    """The leaf of a linear node whose weights nothing else uses (safe to change)."""
    if node is None or node.op != "linear" or not _concrete(node.ref):
        return None
    leaf = c.module(node.ref)
    if not isinstance(leaf, Leaf) or dict(leaf.args).get("bias_init") is not None:
        return None
    return leaf if c.ref_uses(node.ref) == 1 else None


def _bias(c: "_Class", leaf: Leaf, ref: Ref) -> tuple | None:
    return c.p(ref, "bias") if dict(leaf.args)["bias"] else None


def _add(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None:
        return b
    if b is None:
        return a
    return ("add", a, b)


# ----------------------------------------------------------------------------- rewrites


def _resolve_scales(c: _Class) -> bool:
    """training(a, b) -> b; scale by 1 -> identity; a + 0*y -> a."""
    changed = False
    for node in list(c.nodes):
        if node.op != "scale":
            continue
        by = node.attr("by")
        if isinstance(by, tuple):
            value = scalar.constant(scalar.resolve_training(by, False))
            if value is not None:
                new = node.model_copy(update={"attrs": tuple(
                    (k, float(value) if k == "by" else v) for k, v in node.attrs)})
                c.replace_node(node, new)
                node, by, changed = new, float(value), True
        if by == 1.0:
            c.forward(node.outs[0], node.inputs[0])
            c.replace_node(node, None)
            changed = True
        elif by == 0.0:
            for user in [u for u in c.users(node.outs[0]) if u is not None and u.op == "add"]:
                other = [v for v in user.inputs if v != node.outs[0]]
                if len(other) == 1 and user.types[0] == c.block.graph.types.get(other[0]):
                    c.forward(user.outs[0], other[0])
                    c.replace_node(user, None)
                    changed = True
    return changed


def _bake_weights(c: _Class) -> bool:
    """sigma-Reparam and DSFormer linears become plain linears with folded weights."""
    changed = False
    for node in list(c.nodes):
        if node.op not in ("sigma_linear", "ds_linear") or not _concrete(node.ref):
            continue
        leaf = c.module(node.ref)
        if c.ref_uses(node.ref) != 1:
            continue
        a = dict(leaf.args)
        prefix = _key(node.ref, "")[:-1]
        if node.op == "sigma_linear":
            c.set_module(node.ref, _linear_leaf(a["in"], a["out"], a["bias"], leaf.span))
            c.fold(_key(node.ref, "weight"), ("sigma_weight", prefix))
            c.replace_node(node, node.model_copy(update={"op": "linear"}))
        else:  # keep the factors (see the module docstring); S is sparse once
            group = Group(children=(
                ("sparse", _linear_leaf(a["in"], a["rank"], False, leaf.span)),
                ("dense", _linear_leaf(a["rank"], a["out"], a["bias"], leaf.span))),
                op="ds_linear", span=leaf.span)
            c.set_module(node.ref, group)
            sref, dref = node.ref.child("sparse"), node.ref.child("dense")
            c.fold(_key(sref, "weight"), ("ds_sparse", prefix, a["nnz"]))
            c.fold(_key(dref, "weight"), ("p", prefix + ".dense"))
            if a["bias"]:
                c.fold(_key(dref, "bias"), ("p", prefix + ".bias"))
            mid = node.outs[0] + ".s"
            rank_t = TensorType(shape=node.types[0].shape[:-1] + (a["rank"],))
            first = node.model_copy(update={"op": "linear", "ref": sref, "outs": (mid,),
                                            "types": (rank_t,)})
            second = node.model_copy(update={"op": "linear", "ref": dref, "inputs": (mid,)})
            i = c.nodes.index(node)
            c.nodes[i:i + 1] = [first, second]
        changed = True
    return changed


def _fold_norms(c: _Class) -> bool:
    """A norm read only by linears: its affine (or BatchNorm's eval affine) goes into them."""
    changed = False
    for node in list(c.nodes):
        if node.op not in _NORMS or not _concrete(node.ref) or c.ref_uses(node.ref) != 1:
            continue
        leaf = c.module(node.ref)
        if not isinstance(leaf, Leaf) or not leaf.weights:
            continue
        users = c.users(node.outs[0])
        linears = [_plain_linear(c, u) for u in users]
        if not users or any(x is None for x in linears):
            continue
        prefix = _key(node.ref, "")[:-1]
        if node.op in ("layernorm", "rmsnorm"):
            scale = c.p(node.ref, "weight")
            shift = c.p(node.ref, "bias") if dict(leaf.args).get("bias") and \
                node.op == "layernorm" else None
        else:
            scale = ("bn_scale", prefix, node.op == "repbn")
            shift = ("bn_shift", prefix)
        for user, lin in zip(users, linears):
            w = c.p(user.ref, "weight")
            c.fold(_key(user.ref, "weight"), ("mul_cols", w, scale))
            if shift is not None:
                c.fold(_key(user.ref, "bias"),
                                _add(_bias(c, lin, user.ref), ("matvec", w, shift)))
                a = dict(lin.args)
                c.set_module(user.ref, _linear_leaf(a["in"], a["out"], True, lin.span))
        if node.op in ("batchnorm", "repbn"):
            c.forward(node.outs[0], node.inputs[0])
            c.replace_node(node, None)
        else:
            args = dict(leaf.args)
            args["affine"] = False
            c.set_module(node.ref, leaf.model_copy(update={"args": tuple(args.items()),
                                                           "weights": ()}))
        changed = True
    return changed


def _share_plain_norms(c: _Class) -> bool:
    """Norms left without weights (their affines folded away) compute the same thing on
    the same input: keep one, so the branches reading them meet on one value."""
    seen: dict[tuple, Node] = {}
    for node in list(c.nodes):
        if node.op not in ("layernorm", "rmsnorm") or not _concrete(node.ref):
            continue
        leaf = c.module(node.ref)
        if not isinstance(leaf, Leaf) or leaf.weights:
            continue
        key = (node.op, node.inputs, leaf.args)
        if key in seen:
            c.forward(node.outs[0], seen[key].outs[0])
            c.replace_node(node, None)
            return True
        seen[key] = node
    return False


def _fold_layerscale(c: _Class) -> bool:
    changed = False
    for node in list(c.nodes):
        if node.op != "layerscale" or not _concrete(node.ref) or c.ref_uses(node.ref) != 1:
            continue
        prev = c.producer(node.inputs[0])
        lin = _plain_linear(c, prev)
        if lin is None or len(c.users(prev.outs[0])) != 1:
            continue
        gamma = c.p(node.ref, "gamma")
        c.fold(_key(prev.ref, "weight"), ("mul_rows", c.p(prev.ref, "weight"), gamma))
        if dict(lin.args)["bias"]:
            c.fold(_key(prev.ref, "bias"), ("mul", c.p(prev.ref, "bias"), gamma))
        c.forward(node.outs[0], prev.outs[0])
        c.replace_node(node, None)
        changed = True
    return changed


def _single_use(c: _Class, node: Node | None) -> bool:
    return node is not None and len(c.users(node.outs[0])) == 1


def _merge_linear_branches(c: _Class) -> bool:
    """y = A x + B x -> (A + B) x;  y = A x + x -> (A + I) x."""
    for node in list(c.nodes):
        if node.op != "add" or node.inputs[0] == node.inputs[1]:  # y + y is not two branches
            continue
        a, b = (c.producer(v) for v in node.inputs)
        la, lb = _plain_linear(c, a), _plain_linear(c, b)
        if la is not None and lb is not None and a.inputs == b.inputs and \
                a.types == b.types and _single_use(c, a) and _single_use(c, b):
            c.fold(_key(a.ref, "weight"),
                            ("add", c.p(a.ref, "weight"), c.p(b.ref, "weight")))
            bias = _add(_bias(c, la, a.ref), _bias(c, lb, b.ref))
            if bias is not None:
                c.fold(_key(a.ref, "bias"), bias)
            aa = dict(la.args)
            c.set_module(a.ref, _linear_leaf(aa["in"], aa["out"], bias is not None, la.span))
            c.forward(node.outs[0], a.outs[0])
            c.replace_node(node, None)
            c.replace_node(b, None)
            return True
        for lin_node, leaf, other in ((a, la, node.inputs[1]), (b, lb, node.inputs[0])):
            if leaf is not None and lin_node.inputs[0] == other and _single_use(c, lin_node) \
                    and dict(leaf.args)["in"] == dict(leaf.args)["out"]:
                c.fold(_key(lin_node.ref, "weight"),
                                ("add", c.p(lin_node.ref, "weight"),
                                 ("eye", dict(leaf.args)["in"])))
                c.forward(node.outs[0], lin_node.outs[0])
                c.replace_node(node, None)
                return True
    return False


def _merge_lora(c: _Class) -> bool:
    """y = W x + s B A x -> (W + s B A) x, only where the adapter's loop runs once: with more
    iterations each would need its own copy of W, and the shared weights would be lost."""
    if c.block.iterations != 1:
        return False
    for node in list(c.nodes):
        if node.op != "add" or node.inputs[0] == node.inputs[1]:
            continue
        a, b = (c.producer(v) for v in node.inputs)
        if b is not None and b.op == "linear":
            a, b = b, a
        leaf = _plain_linear(c, a)
        if leaf is None or b is None or b.op != "lora" or b.inputs != a.inputs \
                or not (_single_use(c, a) and _single_use(c, b)) or c.ref_uses(b.ref) != 1:
            continue
        only = b.ref.substitute(c.block.iteration, 0)  # the one iteration there is
        adapter = c.module(only)
        if not isinstance(adapter, Leaf):
            continue
        scale = dict(adapter.args)["scale"]
        c.fold(_key(a.ref, "weight"), ("add", c.p(a.ref, "weight"),
                                       ("lowrank", c.p(only, "B"), c.p(only, "A"), scale)))
        c.forward(node.outs[0], a.outs[0])
        c.replace_node(node, None)
        c.replace_node(b, None)
        return True
    return False


@dataclass
class _Ffn:
    up: Node
    act: Node
    down: Node


def _ffn(c: _Class, value: str) -> _Ffn | None:
    """value = down(act(up(h))), each step used once, weights unshared."""
    down = c.producer(value)
    if _plain_linear(c, down) is None or not _single_use(c, down):
        return None
    act = c.producer(down.inputs[0])
    if act is None or act.op not in ("gelu", "relu", "silu") or not _single_use(c, act):
        return None
    up = c.producer(act.inputs[0])
    if _plain_linear(c, up) is None or not _single_use(c, up):
        return None
    return _Ffn(up, act, down)


def _merge_ffn_branches(c: _Class) -> bool:
    """f1(h) + f2(h) for two FFNs on the same input -> one FFN with both hidden layers."""
    for node in list(c.nodes):
        if node.op != "add" or node.inputs[0] == node.inputs[1]:
            continue
        f1, f2 = (_ffn(c, v) for v in node.inputs)
        if f1 is None or f2 is None or f1.up.inputs != f2.up.inputs or \
                f1.act.op != f2.act.op or f1.down.types != f2.down.types:
            continue
        u1, u2 = c.module(f1.up.ref), c.module(f2.up.ref)
        d1, d2 = c.module(f1.down.ref), c.module(f2.down.ref)
        if dict(u1.args)["bias"] != dict(u2.args)["bias"]:
            continue
        h1, h2 = dict(u1.args)["out"], dict(u2.args)["out"]
        width = dict(u1.args)["in"]
        hidden = h1 + h2
        c.set_module(f1.up.ref, _linear_leaf(width, hidden, dict(u1.args)["bias"], u1.span))
        out_bias = dict(d1.args)["bias"] or dict(d2.args)["bias"]
        c.set_module(f1.down.ref, _linear_leaf(hidden, dict(d1.args)["out"], out_bias,
                                               d1.span))
        c.fold(_key(f1.up.ref, "weight"),
                        ("cat", 0, (c.p(f1.up.ref, "weight"), c.p(f2.up.ref, "weight"))))
        if dict(u1.args)["bias"]:
            c.fold(_key(f1.up.ref, "bias"),
                            ("cat", 0, (c.p(f1.up.ref, "bias"), c.p(f2.up.ref, "bias"))))
        c.fold(_key(f1.down.ref, "weight"),
                        ("cat", 1, (c.p(f1.down.ref, "weight"), c.p(f2.down.ref, "weight"))))
        if out_bias:
            c.fold(_key(f1.down.ref, "bias"),
                            _add(_bias(c, d1, f1.down.ref), _bias(c, d2, f2.down.ref)))
        wide = TensorType(shape=f1.up.types[0].shape[:-1] + (hidden,))
        c.replace_node(f1.up, f1.up.model_copy(update={"types": (wide,)}))
        c.replace_node(f1.act, f1.act.model_copy(update={"types": (wide,)}))
        for n in (f2.up, f2.act, f2.down):
            c.replace_node(n, None)
        c.forward(node.outs[0], f1.down.outs[0])
        c.replace_node(node, None)
        return True
    return False


@dataclass
class _Attention:
    nodes: dict[str, Node]  # role -> node: q, k, v (linears), hq, hk, hv, rq, rk, cache,
    group: Ref              # attend, merge, o


def _attention(c: _Class, value: str) -> _Attention | None:
    """value = o(merge(attend(q, k, v))) with q/k/v projections of one input."""
    o = c.producer(value)
    if _plain_linear(c, o) is None or len(o.ref.path) < 2 or not _single_use(c, o):
        return None
    group = Ref(path=o.ref.path[:-1])
    merge = c.producer(o.inputs[0])
    if merge is None or merge.op != "merge_heads" or not _single_use(c, merge):
        return None
    attend = c.producer(merge.inputs[0])
    if attend is None or attend.op != "attend" or attend.attr("alibi") \
            or not _single_use(c, attend):
        return None
    roles = {"o": o, "merge": merge, "attend": attend}
    q_in, k_in, v_in = attend.inputs
    cache = c.producer(k_in)
    if cache is not None and cache.op == "kv_cache":
        roles["cache"] = cache
        k_in, v_in = cache.inputs
    for role, value_in in (("q", q_in), ("k", k_in), ("v", v_in)):
        n = c.producer(value_in)
        if n is not None and n.op == "rope":
            roles["r" + role] = n
            n = c.producer(n.inputs[0])
        if n is None or n.op != "heads":
            return None
        roles["h" + role] = n
        lin = c.producer(n.inputs[0])
        if _plain_linear(c, lin) is None or Ref(path=lin.ref.path[:-1]) != group:
            return None
        roles[role] = lin
    if not (roles["q"].inputs == roles["k"].inputs == roles["v"].inputs):
        return None
    return _Attention(roles, group)


def _same_attention(c: _Class, n1: dict, n2: dict) -> bool:
    """Can two attentions become one? Same head size, causal mask, positions (rope table),
    biases, and the same number of query heads per key/value head (so each query head
    keeps its key/value head after the heads are stacked)."""
    if n1["hq"].types[0].shape[-1] != n2["hq"].types[0].shape[-1]:
        return False
    if n1["attend"].attrs != n2["attend"].attrs:
        return False
    if ("rq" in n1) and n1["rq"].attr("table") != n2["rq"].attr("table"):
        return False
    if n1["hq"].attr("n") * n2["hk"].attr("n") != n2["hq"].attr("n") * n1["hk"].attr("n"):
        return False
    return all(dict(c.module(n1[r].ref).args)["bias"] == dict(c.module(n2[r].ref).args)["bias"]
               for r in ("q", "k", "v"))


def _widen_type(t: TensorType, heads: int) -> TensorType:
    return TensorType(shape=(t.shape[0], heads) + t.shape[2:])


def _merge_attention_branches(c: _Class) -> bool:
    """a1(h) + a2(h) for two attentions on the same input -> one with both sets of heads:
    sum_b W_o^b o_b = [W_o^1 ... W_o^m] [o_1; ...; o_m]."""
    for node in list(c.nodes):
        if node.op != "add" or node.inputs[0] == node.inputs[1]:
            continue
        a1, a2 = (_attention(c, v) for v in node.inputs)
        if a1 is None or a2 is None or a1.nodes["q"].inputs != a2.nodes["q"].inputs or \
                set(a1.nodes) != set(a2.nodes):
            continue
        n1, n2 = a1.nodes, a2.nodes
        if not _same_attention(c, n1, n2):
            continue
        hq = n1["hq"].attr("n") + n2["hq"].attr("n")
        hkv = n1["hk"].attr("n") + n2["hk"].attr("n")
        dh = n1["hq"].types[0].shape[-1]
        for role in ("q", "k", "v"):
            leaf1, leaf2 = c.module(n1[role].ref), c.module(n2[role].ref)
            a = dict(leaf1.args)
            out = a["out"] + dict(leaf2.args)["out"]
            c.set_module(n1[role].ref, _linear_leaf(a["in"], out, a["bias"], leaf1.span))
            c.fold(_key(n1[role].ref, "weight"), ("cat", 0, (
                c.p(n1[role].ref, "weight"), c.p(n2[role].ref, "weight"))))
            if a["bias"]:
                c.fold(_key(n1[role].ref, "bias"), ("cat", 0, (
                    c.p(n1[role].ref, "bias"), c.p(n2[role].ref, "bias"))))
            wide = TensorType(shape=n1[role].types[0].shape[:-1] + (out,))
            c.replace_node(n1[role], n1[role].model_copy(update={"types": (wide,)}))
        o1, o2 = c.module(n1["o"].ref), c.module(n2["o"].ref)
        ao = dict(o1.args)
        o_bias = ao["bias"] or dict(o2.args)["bias"]
        c.set_module(n1["o"].ref, _linear_leaf(ao["in"] + dict(o2.args)["in"], ao["out"],
                                               o_bias, o1.span))
        c.fold(_key(n1["o"].ref, "weight"), ("cat", 1, (
            c.p(n1["o"].ref, "weight"), c.p(n2["o"].ref, "weight"))))
        if o_bias:
            c.fold(_key(n1["o"].ref, "bias"),
                            _add(_bias(c, o1, n1["o"].ref), _bias(c, o2, n2["o"].ref)))
        heads = {"hq": hq, "hk": hkv, "hv": hkv, "rq": hq, "rk": hkv, "attend": hq}
        for role, n in heads.items():
            if role not in n1:
                continue
            x = n1[role]
            update = {"types": tuple(_widen_type(t, n) for t in x.types)}
            if x.op == "heads":
                update["attrs"] = tuple((k, n if k == "n" else v) for k, v in x.attrs)
            if x.op == "attend":
                update["attrs"] = tuple((k, hq != hkv if k == "gqa" else v) for k, v in x.attrs)
            c.replace_node(x, x.model_copy(update=update))
        if "cache" in n1:
            x = n1["cache"]
            c.replace_node(x, x.model_copy(update={"types": tuple(
                _widen_type(t, hkv) for t in x.types)}))
        merged = n1["merge"]
        c.replace_node(merged, merged.model_copy(update={"types": (TensorType(
            shape=merged.types[0].shape[:-1] + (hq * dh,)),)}))
        for x in n2.values():
            c.replace_node(x, None)
        c.forward(node.outs[0], n1["o"].outs[0])
        c.replace_node(node, None)
        return True
    return False


_REWRITES = (_resolve_scales, _bake_weights, _fold_layerscale, _fold_norms, _share_plain_norms,
             _merge_lora, _merge_linear_branches, _merge_ffn_branches, _merge_attention_branches)


def _rewrite(block: BlockDef) -> tuple[BlockDef, tuple]:
    c = _Class(block, list(block.graph.nodes), dict(block.modules))
    progress = True
    while progress:
        progress = False
        for rewrite in _REWRITES:
            while rewrite(c):
                c.sweep()
                progress = True
    graph = Graph(block.graph.inputs)
    for node in c.nodes:
        graph.add(node)
    graph.outputs = [c.alias.get(v, v) for v in block.graph.outputs]
    while any(o in c.alias for o in graph.outputs):
        graph.outputs = [c.alias.get(v, v) for v in graph.outputs]
    graph.names = dict(block.graph.names)
    changed = True
    while changed:
        graph, changed = sweep(graph)
    new = block.model_copy(update={"graph": graph,
                                   "modules": tuple(c.modules.items())})
    return prune_block(new), tuple(c.recipes.items())


def reparam(program: Program, options: PassOptions = DEFAULTS) -> Program:
    if options.mode != "infer":
        return program
    classes = dict(program.classes)
    folds = []
    for cls in class_order(program):
        block, recorded = _rewrite(classes[cls])
        classes[cls] = block
        folds.extend((cls, target, recipe) for target, recipe in recorded)
    return program.model_copy(update={"classes": classes, "folds": tuple(folds)})


PASS = Pass("reparam", fn=reparam,
            doc="inference builds: fold train-time structure into its deploy form")
