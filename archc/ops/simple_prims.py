"""Simple primitives that decompositions of composite ones are written in.

A composite primitive (moe, hyper, delta, width_route, ...) calls a runtime module that
does several steps at once; `archc/passes/decompose.py` rewrites it into these, so a
backend that lowers only simple ops can still run the model. Each one is a single tensor
operation that every backend has (ONNX and MLIR have an op of the same name): a read of
a named weight, a matmul, a reduction, an elementwise function, a reshape of the last dim.

They join `PRIMS` when this module is imported (the last line of `prims.py`), declared
with the same traits as every other primitive. No spec expands to them, so normal builds
never contain them. Their torch lowerings are in archc/codegen/torch/lower.py.
"""

from __future__ import annotations

from .prims import NOTHING, OWN, PRIMS, FlopInput, Flops, Prim, no_flops, per_element, per_token


def _affine_flops(f: FlopInput) -> Flops:
    d_in, d_out = f.ins[0].shape[-1], f.outs[0].shape[-1]
    return Flops(2 * d_in * d_out, d_out if len(f.ins) > 2 else 0)


def _reduce_flops(f: FlopInput) -> Flops:
    return Flops(0, per_token(f.ins[0]))


def _matmul_flops(f: FlopInput) -> Flops:
    return Flops(2 * f.ins[0].shape[-1] * per_token(f.outs[0]), 0)


def _einsum_flops(f: FlopInput) -> Flops:
    """2 per multiply-add: every index of the equation ranges once over its size (the
    symbolic batch and sequence dims are per token)."""
    sizes: dict[str, int] = {}
    for letters, t in zip(f.attrs["equation"].split("->")[0].split(","), f.ins):
        for letter, dim in zip(letters, t.shape):
            if isinstance(dim, int):
                sizes[letter] = dim
    n = 1
    for size in sizes.values():
        n *= size
    return Flops(2 * n, 0)


def _pure(name: str, flops, saved=NOTHING, **traits) -> Prim:
    return Prim(name, flops, pure=True, saved=saved, **traits)


SIMPLE_PRIMS: dict[str, Prim] = {p.name: p for p in [
    # a weight tensor of a leaf the graph does not call (node.ref names the leaf)
    _pure("weight", no_flops),
    _pure("affine", _affine_flops, saved=(0,)),
    _pure("rms_norm", per_element(4), saved=(0,), row_local=True, saved_extra=lambda f: 1),
    _pure("normalize", per_element(3), saved=(0,), row_local=True),
    _pure("reduce", _reduce_flops, saved=(0,)),
    _pure("matmul", _matmul_flops, saved=(0, 1)),
    _pure("einsum", _einsum_flops, saved=("*",)),
    _pure("div", per_element(1), saved=(0, 1), elementwise=True),
    _pure("exp", per_element(4), saved=OWN, elementwise=True),
    _pure("softmax", per_element(5), saved=OWN, row_local=True),
    _pure("topk_mask", per_element(2)),
    _pure("fill", no_flops),
    _pure("repeat_interleave", no_flops),
    _pure("unflatten", no_flops),
    _pure("flatten", no_flops),
    # x itself, or an error in training (a composite decomposed as it evaluates)
    Prim("eval_only", no_flops, saved=NOTHING),
    # indexing by a long tensor of indices (a head loop's chosen heads)
    _pure("index_select", no_flops),
    _pure("index_copy", no_flops),
    _pure("floordiv", no_flops),
    _pure("head_rows", no_flops),
    # the one stateful step of a head loop: its heads, chosen by entropy over every
    # position at the first run (the growth event), then kept in the leaf's buffers
    Prim("head_select", no_flops, effects=True, mixes_positions=True, saved=NOTHING),
]}

PRIMS.update(SIMPLE_PRIMS)
