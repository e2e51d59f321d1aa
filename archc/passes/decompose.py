"""Decompose composite primitives into simple ones, for backends without their lowering.

A composite primitive (a delta residual, a hyper-connection, width routing, ...) calls
one runtime module that does many tensor operations at once. A backend that lowers only
simple operations (a matmul, a softmax, a sum) gets them here as a subgraph of the
simple primitives in `archc/ops/simple_prims.py` that computes the same thing.

The weights stay where they are: the composite's leaf keeps its place in the module tree,
with its weights (names, shapes, inits), and the subgraph reads them by name with
`weight` nodes (`self.delta.beta.weight`). So a decomposed build has the composite
build's state-dict keys and its initial weights; `load_state_dict` moves between them.

`COMPOSITE` maps each composite primitive to its decomposition; `decompose(program,
keep)` rewrites every node whose primitive is composite and not in `keep` (what a backend
lowers itself). It runs after the pass pipeline, on the IR a backend reads.
"""

from __future__ import annotations

from typing import Callable

from ..errors import ArchcError
from ..ir import (BlockDef, Graph, Leaf, Node, Program, Stack, TensorType, next_value_id,
                  resolve)
from ..ops import PRIMS, simple_prims  # noqa: F401  (simple_prims: what subgraphs use)
from ..verify import verify


class Subgraph:
    """Adds the simple nodes that replace one composite node to the new graph, each with
    a fresh value name, the composite's span (its generated code keeps the spec line) and
    a hint for the local it lands in."""

    def __init__(self, graph: Graph, counter: list[int], node: Node, program: Program,
                 block: BlockDef, mode: str):
        self.graph = graph
        self.counter = counter
        self.node = node
        self.program = program
        self.block = block
        self.program_mode = mode
        self.leaf = _leaf(program, block, node.ref)

    def op(self, prim: str, inputs: list[str], shape: tuple, attrs: dict | None = None,
           hint: str = "t", ref=None, dtype: str = "float") -> str:
        value = f"%{self.counter[0]}"
        self.counter[0] += 1
        t = TensorType(shape=tuple(shape), dtype=dtype)
        self.graph.add(Node(op=prim, outs=(value,), types=(t,),
                            inputs=tuple(inputs), attrs=tuple(sorted((attrs or {}).items())),
                            ref=ref, span=self.node.span, hint=hint))
        return value

    def type(self, value: str) -> tuple:
        return self.graph.types[value].shape

    def weight(self, name: str, view: tuple | None = None, ref=None,
               item: int | None = None) -> str:
        """A weight of the composite's leaf (or of the leaf at `ref`, such as the
        attention a head loop reads), or its entry `item`, viewed to `view` if given.

        One node per use: a weight value never outlives the node reading it, so a
        block cut into a scan (archc/analysis/scan.py) never saves one per position."""
        ref = ref if ref is not None else self.node.ref
        leaf = self.leaf if ref == self.node.ref else _leaf(self.program, self.block, ref)
        shape = next(w.shape for w in leaf.weights if w.name == name)
        if item is not None:
            shape = shape[1:]
        attrs = {"name": name, "item": item, "view": None if view is None else tuple(view)}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        hint = "_".join([p for p, _ in ref.path[-1:]] + name.split(".")[:1])
        return self.op("weight", [], view if view is not None else shape, attrs, hint,
                       ref=ref)

    def leaf_at(self, ref) -> Leaf | None:
        return _leaf(self.program, self.block, ref)

    def split(self, value: str, sizes: list[int], hint: str = "t") -> list[str]:
        """Pieces of the last dim: one `split` node with several outputs."""
        lead = self.type(value)[:-1]
        outs = []
        for _ in sizes:
            outs.append(f"%{self.counter[0]}")
            self.counter[0] += 1
        types = tuple(TensorType(shape=lead + (s,)) for s in sizes)
        self.graph.add(Node(op="split", outs=tuple(outs), types=types, inputs=(value,),
                            attrs=(("sizes", tuple(sizes)),), span=self.node.span,
                            hint=",".join([hint] * len(sizes))))
        return outs


Decomposition = Callable[[Subgraph, list[str]], list[str]]


# ----------------------------------------------------------------------------- delta


def _delta(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.DeltaResidual: x + beta (v - k.x) k, k = f / |f|, beta = 2 sigmoid(W_b ctx + b_b),
    v = W_v x + b_v; the same operations in the same order, so the same bits."""
    x, f, ctx = ins
    lead = s.type(x)[:-1]
    one = lead + (1,)
    k = s.op("normalize", [f], s.type(f), {"eps": 1e-6}, "k")
    beta = s.op("affine", [ctx, s.weight("beta.weight"), s.weight("beta.bias")], one,
                hint="beta")
    beta = s.op("scale", [s.op("sigmoid", [beta], one, hint="beta")], one, {"by": 2.0},
                "beta")
    v = s.op("affine", [x, s.weight("value.weight"), s.weight("value.bias")], one, hint="v")
    kx = s.op("reduce", [s.op("mul", [k, x], s.type(x), hint="kx")], one,
              {"how": "sum", "dims": (-1,), "keepdim": True}, "kx")
    step = s.op("mul", [beta, s.op("sub", [v, kx], one, hint="step")], one, hint="step")
    step = s.op("mul", [step, k], s.type(x), hint="step")
    return [s.op("add", [x, step], s.type(x), hint="x")]


# ----------------------------------------------------------------------------- hyper-connections


def _hyper(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.HyperConnection: z = W_phi RMSNorm(X); H_pre = sigmoid(a_pre z_pre + b_pre),
    H_post = 2 sigmoid(a_post z_post + b_post), H_res = Sinkhorn(a_res z_res + b_res);
    returns h = H_pre X and the packed (H_post, H_res). The same operations in the same
    order; the Sinkhorn iterations are unrolled."""
    xs, = ins
    a = dict(s.leaf.args)
    n, d = a["n"], a["dim"]
    lead = s.type(xs)[:-1]
    ones = (1,) * len(lead)
    z = s.op("rms_norm", [xs, s.weight("norm.weight")], s.type(xs),
             {"dim": n * d, "eps": 1e-6}, "z")
    z = s.op("affine", [z, s.weight("proj.weight")], lead + (2 * n + n * n,), hint="z")
    z_pre, z_post, z_res = s.split(z, [n, n, n * n], "z")

    def alpha(i: int) -> str:
        return s.weight("alpha", view=ones + (1,), item=i)

    def gate(i: int, z_part: str, bias: str) -> str:
        t = s.op("mul", [alpha(i), z_part], lead + (n,), hint="gate")
        t = s.op("add", [t, s.weight(bias, view=ones + (n,))], lead + (n,), hint="gate")
        return s.op("sigmoid", [t], lead + (n,), hint="gate")

    pre = gate(0, z_pre, "b_pre")
    post = s.op("scale", [gate(1, z_post, "b_post")], lead + (n,), {"by": 2.0}, "post")
    res = s.op("mul", [alpha(2), z_res], lead + (n * n,), hint="res")
    res = s.op("unflatten", [res], lead + (n, n), {"sizes": (n, n)}, "res")
    res = s.op("add", [res, s.weight("b_res", view=ones + (n, n))], lead + (n, n),
               hint="res")
    res = _sinkhorn(s, res, a["iters"])
    streams = s.op("unflatten", [xs], lead + (n, d), {"sizes": (n, d)}, "streams")
    pre = s.op("unflatten", [pre], lead + (n, 1), {"sizes": (n, 1)}, "pre")
    h = s.op("mul", [pre, streams], lead + (n, d), hint="h")
    h = s.op("reduce", [h], lead + (d,), {"how": "sum", "dims": (-2,), "keepdim": False},
             "h")
    res = s.op("flatten", [res], lead + (n * n,), hint="res")
    return [h, s.op("concat", [post, res], lead + (n + n * n,), hint="c")]


def _sinkhorn(s: Subgraph, logits: str, iters: int) -> str:
    """rt.sinkhorn: exp(L - max L), then `iters` times rows and columns to sum 1."""
    shape = s.type(logits)
    lead = shape[:-2]
    top = s.op("reduce", [logits], lead + (1, 1),
               {"how": "amax", "dims": (-2, -1), "keepdim": True}, "top")
    m = s.op("exp", [s.op("sub", [logits, top], shape, hint="res")], shape, hint="res")
    for _ in range(iters):
        for dim, kept in ((-1, lead + (shape[-2], 1)), (-2, lead + (1, shape[-1]))):
            total = s.op("reduce", [m], kept, {"how": "sum", "dims": (dim,), "keepdim": True},
                         "total")
            m = s.op("div", [m, total], shape, hint="res")
    return m


def _hyper_write(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.hyper_write: X' = H_res X + H_post^T f over the n streams."""
    xs, coeffs, f = ins
    n = s.node.attr("n")
    lead, d = s.type(f)[:-1], s.type(f)[-1]
    post, res = s.split(coeffs, [n, n * n], "c")
    res = s.op("unflatten", [res], lead + (n, n), {"sizes": (n, n)}, "res")
    streams = s.op("unflatten", [xs], lead + (n, d), {"sizes": (n, d)}, "streams")
    mixed = s.op("matmul", [res, streams], lead + (n, d), hint="mixed")
    post = s.op("unflatten", [post], lead + (n, 1), {"sizes": (n, 1)}, "post")
    f = s.op("unflatten", [f], lead + (1, d), {"sizes": (1, d)}, "f")
    written = s.op("mul", [post, f], lead + (n, d), hint="written")
    mixed = s.op("add", [mixed, written], lead + (n, d), hint="mixed")
    return [s.op("flatten", [mixed], s.type(xs), hint="streams")]


# ----------------------------------------------------------------------------- width routing


def _width_route(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.WidthRouter: router probabilities over the routed groups, the top-k of them as
    a 0/1 mask and as their kept probabilities, the shared groups' ones in front, the
    D / D_active scaling, each group's value repeated over its dims."""
    x, = ins
    a = dict(s.leaf.args)
    groups, shared, k = a["groups"], a["shared"], a["k"]
    lead, routed = s.type(x)[:-1], groups - shared
    probs = s.op("affine", [x, s.weight("router.weight")], lead + (routed,), hint="route")
    probs = s.op("softmax", [probs], lead + (routed,), hint="route")
    mask = s.op("topk_mask", [probs], lead + (routed,), {"k": k}, "mask")
    weight = s.op("topk", [probs], lead + (routed,), {"k": k}, "weight") \
        if a["weighted"] else mask
    if shared:
        ones = s.op("fill", [x], lead + (shared,), {"width": shared, "value": 1.0}, "ones")
        mask = s.op("concat", [ones, mask], lead + (groups,), hint="mask")
        weight = s.op("concat", [ones, weight], lead + (groups,), hint="weight")
    if a["scaling"]:
        weight = s.op("scale", [weight], lead + (groups,), {"by": groups / (shared + k)},
                      "weight")
    size = {"repeats": s.type(x)[-1] // groups}
    return [s.op("repeat_interleave", [mask], s.type(x), size, "m"),
            s.op("repeat_interleave", [weight], s.type(x), size, "w")]


def _group_fuse(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.GroupFusion: the groups x groups mixing matrix applied over the width groups."""
    y, = ins
    groups = dict(s.leaf.args)["groups"]
    lead, width = s.type(y)[:-1], s.type(y)[-1]
    parts = s.op("unflatten", [y], lead + (groups, width // groups),
                 {"sizes": (groups, width // groups)}, "parts")
    mixed = s.op("einsum", [s.weight("mix"), parts], s.type(parts),
                 {"equation": "gh,...hd->...gd"}, "mixed")
    return [s.op("flatten", [mixed], s.type(y), hint="m")]


# ----------------------------------------------------------------------------- mixture of experts


def _moe(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.MoE as evaluated: every token weighs its top-k experts by its router
    probabilities renormalised over them. Dense: each expert runs on every token and a
    gate that is 0 off the top-k mixes them, so the result equals the routed sum up to
    the order of additions (within float rounding, not bit for bit).

    Training differs (capacity drops, router noise, the load-balance loss in model.aux)
    and stays the composite's: a train-mode program is refused, and an inference build
    put in training mode raises (`eval_only`), never runs differently."""
    if s.program_mode != "infer":
        raise refuse(s.node, "its decomposition is the eval computation (no capacity "
                     "drops, no router noise, no load-balance loss), and this program "
                     "trains", "decompose the inference program (mode=\"infer\"), or keep "
                     "moe composite: decompose(program, keep=frozenset({\"moe\"}))")
    x = s.op("eval_only", ins, s.type(ins[0]), {"what": "moe", "where": _where(s.node)},
             "x")
    a = dict(s.leaf.args)
    e, hidden, k = a["experts"], a["hidden"], a["k"]
    lead = s.type(x)[:-1]
    probs = s.op("affine", [x, s.weight("router")], lead + (e,), hint="route")
    probs = s.op("softmax", [probs], lead + (e,), hint="route")
    gate = s.op("topk", [probs], lead + (e,), {"k": k}, "gate")
    total = s.op("reduce", [gate], lead + (1,), {"how": "sum", "dims": (-1,),
                                                  "keepdim": True}, "total")
    gate = s.op("div", [gate, total], lead + (e,), hint="gate")
    h = s.op("einsum", [x, s.weight("w_in")], lead + (e, hidden),
             {"equation": "...d,ehd->...eh"}, "h")
    h = s.op(a["act"], [h], lead + (e, hidden), hint="h")
    y = s.op("einsum", [h, s.weight("w_out")], lead + (e, s.type(x)[-1]),
             {"equation": "...eh,edh->...ed"}, "y")
    return [s.op("einsum", [y, gate], s.type(x), {"equation": "...ed,...e->...d"}, "m")]


# ----------------------------------------------------------------------------- head loops


def _head_loop(s: Subgraph, ins: list[str]) -> list[str]:
    """rt.HeadLoop: rerun the chosen heads of attention `attn` on h and update its
    output a and per-head outputs o. The choice (entropy at the first run, then kept in
    the leaf's buffers) is the one stateful prim, `head_select`, fed every head's q and
    k; the chosen heads' q and k are taken from those, their v and the output projection
    use only the chosen heads' rows, as the composite does."""
    h, a, o = ins
    attn, table = s.node.attr("attn"), s.node.attr("table")
    cfg = dict(s.leaf.args)
    heads, kv_heads, dh, count = cfg["heads"], cfg["kv_heads"], cfg["head_dim"], cfg["count"]
    lead = s.type(h)[:-1]
    b, t = lead

    def all_heads(name: str, n: int) -> str:
        x = s.op("linear", [h], lead + (n * dh,), hint=name, ref=attn.child(name))
        x = s.op("heads", [x], (b, n, t, dh), {"n": n}, name)
        return s.op("rope", [x], (b, n, t, dh), {"table": table}, name) if table else x

    q_all, k_all = all_heads("q", heads), all_heads("k", kv_heads)
    sel = s.op("head_select", [q_all, k_all], (count,), hint="sel", ref=s.node.ref,
               dtype="long")
    kv_sel = sel if heads == kv_heads else s.op("floordiv", [sel], (count,),
                                                {"by": heads // kv_heads}, "kv_sel",
                                                dtype="long")
    per_head = (b, count, t, dh)
    q = s.op("index_select", [q_all, sel], per_head, {"dim": 1}, "q")
    k = s.op("index_select", [k_all, kv_sel], per_head, {"dim": 1}, "k")
    v_rows = s.op("head_rows", [kv_sel], (count * dh,), {"dh": dh}, "rows", dtype="long")
    v_ref = attn.child("v")
    project = [h, s.op("index_select", [s.weight("weight", ref=v_ref), v_rows],
                       (count * dh, s.type(h)[-1]), {"dim": 0}, "v_weight")]
    if dict(s.leaf_at(v_ref).args).get("bias"):
        project.append(s.op("index_select", [s.weight("bias", ref=v_ref), v_rows],
                            (count * dh,), {"dim": 0}, "v_bias"))
    v = s.op("affine", project, lead + (count * dh,), hint="v")
    v = s.op("heads", [v], per_head, {"n": count}, "v")
    k, v = _kv_cache(s, k, v, per_head)
    out = s.op("attend", [q, k, v], per_head, hint="out")
    old = s.op("index_select", [o, sel], per_head, {"dim": 1}, "old")
    change = s.op("merge_heads", [s.op("sub", [out, old], per_head, hint="change")],
                  lead + (count * dh,), hint="change")
    rows = v_rows if heads == kv_heads else s.op("head_rows", [sel], (count * dh,),
                                                 {"dh": dh}, "rows", dtype="long")
    w_o = s.op("index_select", [s.weight("weight", ref=attn.child("o")), rows],
               (s.type(a)[-1], count * dh), {"dim": 1}, "o_weight")
    a = s.op("add", [a, s.op("affine", [change, w_o], s.type(a), hint="a")], s.type(a),
             hint="a")
    return [a, s.op("index_copy", [o, sel, out], s.type(o), {"dim": 1}, "o")]


def _kv_cache(s: Subgraph, k: str, v: str, shape: tuple) -> tuple[str, str]:
    """The head loop's own cache slot (kvplan numbered it on the composite)."""
    outs = (f"%{s.counter[0]}", f"%{s.counter[0] + 1}")
    s.counter[0] += 2
    t = TensorType(shape=shape)
    s.graph.add(Node(op="kv_cache", outs=outs, types=(t, t), inputs=(k, v),
                     meta=(("slot", s.node.annotation("slot")),), span=s.node.span, hint="k,v"))
    return outs


# ----------------------------------------------------------------------------- the table


COMPOSITE: dict[str, Decomposition] = {
    "delta": _delta,
    "hyper": _hyper,
    "hyper_write": _hyper_write,
    "width_route": _width_route,
    "group_fuse": _group_fuse,
    "moe": _moe,
    "head_loop": _head_loop,
}


# Composites without a decomposition yet: a backend that lacks them cannot run the model,
# which decompose says rather than leaving a prim the backend will not find.
UNDECOMPOSED = {
    "scan_attend": ("the attention over a block's own past output runs the block as a scan "
                    "over positions, and the IR has no loop over positions to write it in",
                    "run it on a backend that lowers the scan (torch), or keep it: "
                    "decompose(program, keep=frozenset({\"scan_attend\"}))"),
}


def decompose(program: Program, keep: frozenset[str] = frozenset(),
              mode: str = "train") -> Program:
    """The program with every composite node whose prim is not in `keep` rewritten into
    simple prims; `mode` is the mode the program was compiled for (PassOptions.mode). Module trees (weights, state-dict keys, inits) are unchanged. A
    composite it cannot rewrite (UNDECOMPOSED) and not kept is an ArchcError."""
    unknown = sorted(set(keep) - set(PRIMS) - set(UNDECOMPOSED))
    if unknown:
        raise ArchcError(f"decompose(keep=...) names no prim: {', '.join(unknown)}", None,
                         "keep lists the prims a backend lowers itself (archc/ops/prims.py)",
                         code="A002")
    classes = {}
    for cls, block in program.classes.items():
        counter = [next_value_id(block.graph)]
        graph = _graph(program, block, block.graph, keep, counter, mode)
        classes[cls] = block.model_copy(update={"graph": graph})
    return verify(program.model_copy(update={"classes": classes}), "decompose")


def _graph(program: Program, block: BlockDef, graph: Graph, keep: frozenset[str],
           counter: list[int], mode: str) -> Graph:
    out = Graph(graph.inputs)
    out.names = dict(graph.names)
    rename: dict[str, str] = {}
    for node in graph.nodes:
        node = node.model_copy(update={"inputs": tuple(rename.get(v, v) for v in node.inputs)})
        if node.body is not None:
            body = _graph(program, block, node.body, keep, counter, mode)
            node = node.model_copy(update={"body": body})
        name = node.op
        if name in UNDECOMPOSED and name not in keep:
            raise refuse(node, *UNDECOMPOSED[name], prim=name)
        rule = COMPOSITE.get(name)
        if rule is None or name in keep:
            out.add(node)
            continue
        sub = Subgraph(out, counter, node, program, block, mode)
        results = rule(sub, list(node.inputs))
        for old, new in zip(node.outs, results, strict=True):
            rename[old] = new
            if old in graph.names:
                out.names[new] = graph.names[old]
    out.outputs = [rename.get(v, v) for v in graph.outputs]
    return out


def _where(node: Node) -> tuple | None:
    """A node's span as plain data, for an error the generated module may raise."""
    span = node.span
    return None if span is None else (span.file, span.line, span.col, span.end_line,
                                      span.end_col)


def _leaf(program: Program, block: BlockDef, ref) -> Leaf | None:
    """The weights a ref names (any item of a per-iteration stack: they share a shape)."""
    if ref is None:
        return None
    module = resolve(block, ref, program.classes)
    if isinstance(module, Stack):
        module = module.items[0]
    return module if isinstance(module, Leaf) else None


def refuse(node: Node, message: str, hint: str, prim: str | None = None) -> ArchcError:
    """A composite that decompose cannot rewrite here without computing something else."""
    return ArchcError(f"cannot decompose `{prim or node.op}`: {message}", node.span, hint,
                      code="A055")
