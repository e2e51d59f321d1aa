"""Issue 8 item 3, the compile-time part of "silent wrong answers": what a spec means
must be what the built module computes and what `archc check`/`archc.cost` report.

Each case is checked against an expectation computed here independently of archc: plain
torch with the weights copied across by name, or a count made by hand.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

import archc
from archc import api
from archc import runtime as rt
from archc.cli import main
from archc.codegen.torch import generate
from archc.ir import walk

VOCAB, D = 64, 16

HEAD = f"model r(vocab: int = {VOCAB}, d: int = {D})\n" \
       "let emb = embed(vocab=vocab, dim=d)\nx = emb(tokens)\n"
TAIL = "return lm_head(x, tied=emb)\n"
LIN = "x = x + linear(x, out=d)"
SCALED = "x = x + scale(linear(x, out=d), by=i + 1)"

# ----------------------------------------------------------------------------- loop indices
# (nest, outer label, inner label, outer count, inner count): `nest` wraps a body in two
# regions; the reference runs outer x inner distinct linears in order. With the scaled
# body, where the inner region names `i`, the b-th inner linear is scaled by b + 1: the
# inner `i` hides the outer one.
NESTS = [
    ("loop 3 {{ for i in 0..2 {{ {body} }} }}", "loop", "layers", 3, 2),
    ("loop 2 {{ for i in 0..3 {{ {body} }} }}", "loop", "layers", 2, 3),
    ("for i in 0..2 {{ for i in 0..3 {{ {body} }} }}", "layers", "layers", 2, 3),
    ("loop i in 2 {{ for i in 0..3 {{ {body} }} }}", "loop", "layers", 2, 3),
    ("for i in 0..2 {{ loop 3 {{ {body} }} }}", "layers", "loop", 2, 3),
    ("for i in 0..2 {{ loop i in 3 {{ {body} }} }}", "layers", "loop", 2, 3),
    ("loop i in 2 {{ loop i in 3 {{ {body} }} }}", "loop", "loop", 2, 3),
    ("loop 2 {{ loop 3 {{ {body} }} }}", "loop", "loop", 2, 3),
]


def _nested_reference(model, tokens, outer, inner, labels, scaled):
    """outer x inner distinct linears applied in order, weights read by name."""
    p = dict(model.named_parameters())
    emb = p["emb.weight"]
    x = emb[tokens]
    for a in range(outer):
        for b in range(inner):
            w = p[f"{labels[0]}.{a}.{labels[1]}.{b}.weight"]
            y = x @ w.T
            x = x + (b + 1) * y if scaled else x + y
    return x @ emb.T


def _inner_names_i(nest: str) -> bool:
    return "i in" in nest.split("{{")[1]


CASES = [(*n, scaled) for n in NESTS for scaled in (False, True)
         if not scaled or _inner_names_i(n[0])]


@pytest.mark.parametrize("nest,outer_label,inner_label,outer,inner,scaled", CASES,
                         ids=[f"nest{NESTS.index(c[:5])}-{'scaled' if c[5] else 'plain'}"
                              for c in CASES])
def test_nested_loop_indices_are_not_shadowed(nest, outer_label, inner_label, outer, inner,
                                               scaled):
    """An inner region's variable never takes an outer loop's index: every one of the
    outer x inner linears runs, in order (the unnamed `loop 3 { for i in 0..2 }` ran 2 of
    6 and with the inner count larger failed in `share`)."""
    body = SCALED if scaled else LIN
    spec = HEAD + nest.format(body=body) + "\n" + TAIL
    torch.manual_seed(0)
    m = archc.build(spec)
    tokens = torch.randint(0, VOCAB, (2, 5))
    out = m(tokens)
    out.sum().backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, f"weights never used: {unused}"
    assert len(list(m.parameters())) == 1 + outer * inner
    with torch.no_grad():
        ref = _nested_reference(m, tokens, outer, inner, (outer_label, inner_label), scaled)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    built = sum(p.numel() for p in m.parameters())
    assert archc.cost(spec, seq=5).params == built


def test_an_unnamed_inner_loop_leaves_the_outer_i_alone():
    """`i` in an unnamed loop's body is the enclosing `for i` (the unnamed loop used to
    claim the name `i`, refused here as shadowing)."""
    spec = HEAD + "for i in 0..2 { loop 3 { " + SCALED + " } }\n" + TAIL
    torch.manual_seed(0)
    m = archc.build(spec)
    tokens = torch.randint(0, VOCAB, (2, 5))
    p = dict(m.named_parameters())
    with torch.no_grad():
        x = p["emb.weight"][tokens]
        for a in range(2):
            for b in range(3):
                x = x + (a + 1) * (x @ p[f"layers.{a}.loop.{b}.weight"].T)
        torch.testing.assert_close(m(tokens), x @ p["emb.weight"].T, rtol=1e-5, atol=1e-5)


def test_a_for_in_an_adapted_block_keeps_the_iteration_index():
    """A block called in `loop i` with per-iteration LoRA keeps that iteration's index
    as an argument; a `for i` in the block's body took it, so the LoRA of iteration 2
    never ran (and iteration k's `for` read adapter k's weights at position i)."""
    spec = HEAD + "block layer(x) {\n  for i in 0..2 { x = x + linear(x, out=d) }\n" \
        "  return x\n}\nlet core = layer()\n" \
        "loop i in 3 { x = core(x) with lora(rank=2) }\n" + TAIL
    torch.manual_seed(0)
    m = archc.build(spec)
    for p in m.parameters():  # LoRA B starts at zero: give every adapter an effect
        torch.nn.init.normal_(p, std=0.1)
    m(torch.randint(0, VOCAB, (2, 5))).sum().backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused, f"weights never used: {unused}"


def test_unnamed_loop_index_is_not_the_spec_i():
    """An unnamed loop has no index the spec can read: `i` in its body is an unknown
    name (a located error), not silently some loop's counter."""
    spec = HEAD + "loop 3 { x = scale(x, by=i) }\n" + TAIL
    with pytest.raises(archc.ArchcError) as e:
        archc.load(spec)
    assert e.value.span is not None and e.value.span.line == 4


# ----------------------------------------------------------------------------- IR types
# The IR's type of every value must be the shape torch computes for it: a shape rule that
# disagrees with the lowering sizes weights and costs for a tensor that never exists.

SPECS = sorted(Path(__file__).resolve().parents[2].glob("specs/*.arch"))
BATCH, SEQ = 2, 8


def _build_checked(path: str, mode: str):
    """archc.build, from source generated with check_shapes: each statement reports its
    values and their IR types to rt.check_types. mode "unrolled": a train build with
    static loops and stacks unrolled."""
    loaded = api.load(path)
    unroll = mode == "unrolled"
    mode = "train" if unroll else mode
    source = generate(api.compile_program(loaded, mode, unroll=unroll), check_shapes=True)
    module = types.ModuleType(f"checked_{loaded.program.name}_{mode}")
    exec(compile(source, f"<checked {Path(path).name}>", "exec"), module.__dict__)
    model = getattr(module, loaded.program.root)()
    for sub in model.modules():
        if hasattr(sub, "scan_mode"):
            sub.scan_mode = "naive"  # one position per call: T binds to 1 in `finish`
    return (model.eval() if mode == "infer" else model), loaded


def _parse_type(text: str) -> tuple[str, list]:
    dtype, rest = text.split("[", 1)
    dims = [d.strip() for d in rest.rstrip("]").split(",") if d.strip()]
    return dtype, [int(d) if d.isdigit() else d for d in dims]


def _type_mismatches(log: list, batch: int, seq: int) -> list:
    """Entries whose run-time dtype or shape differs from the IR type. A symbol binds once
    per method (B to the batch everywhere, T to the sequence in the root's forward; a
    scan's per-position methods see their own T)."""
    envs: dict[str, dict] = {}
    bad = []
    for where, ir_type, kind, shape in log:
        method = where.split()[0]
        env = envs.setdefault(method, {"B": batch} if envs else {"B": batch, "T": seq})
        dtype, dims = _parse_type(ir_type)
        ok = kind == dtype and shape is not None and len(shape) == len(dims)
        for d, n in zip(dims, shape or ()):
            ok = ok and (d == n if isinstance(d, int) else env.setdefault(d, n) == n)
        if not ok:
            bad.append((where, ir_type, kind, shape))
    return bad


@pytest.mark.parametrize("mode", ["train", "infer", "unrolled"])
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_ir_type_is_the_run_time_shape(path, mode):
    model, loaded = _build_checked(str(path), mode)
    params = loaded.program.params
    vocab = params["vocab"].value if "vocab" in params else 32
    torch.manual_seed(0)
    tokens = torch.randint(0, vocab, (BATCH, SEQ))
    rt.TYPE_LOG = []
    try:
        with torch.no_grad():
            model(tokens)
        log = rt.TYPE_LOG
    finally:
        rt.TYPE_LOG = None
    assert len(log) > 10
    bad = _type_mismatches(log, BATCH, SEQ)
    assert not bad, f"IR types that are not what runs: {bad[:5]}"


def test_the_type_check_sees_a_wrong_type():
    """The checker itself: an IR type that disagrees with the tensor is reported."""
    log = [("R.forward %2 embed", "float[B, T, 16]", "float", (2, 8, 16)),
           ("R.forward %3 concat", "float[B, T, 16]", "float", (2, 4, 8, 16))]
    assert _type_mismatches(log, 2, 8) == [log[1]]


HEADS = HEAD + "a = attention(x, heads=4)\n"


def test_concat_of_heads_is_typed_per_head():
    """concat keeps its inputs' leading dims: concat(a.heads) is [B, 4, T, 16], as
    torch.cat(..., dim=-1) computes (it was typed [B, T, 16])."""
    spec = HEADS + "c = concat(a.heads)\nx = x + a\n" + TAIL
    program = api.load(spec).program
    node = next(n for n in walk(program.model.graph) if n.op == "concat")
    assert node.types[0].shape == ("B", 4, "T", D // 4)


def test_linear_of_concat_heads_is_a_located_error():
    """`linear(concat(a.heads), out=d)` was typed [B, T, d] with 16 in-features and ran
    as [B, 4, T, d]; an op written for activations now refuses a per-head input."""
    spec = HEADS + "x = x + linear(concat(a.heads), out=d)\n" + TAIL
    with pytest.raises(archc.ArchcError) as e:
        archc.load(spec)
    assert e.value.code == "A013"
    assert (e.value.span.line, e.value.span.col) == (5, 16)
    assert "[B, 4, T, 4]" in e.value.message


def test_concat_of_unlike_shapes_is_a_located_error():
    spec = HEADS + "x = x + linear(concat(x, a.heads), out=d)\n" + TAIL
    with pytest.raises(archc.ArchcError) as e:
        archc.load(spec)
    assert e.value.span.line == 5 and "differ only in width" in e.value.message


# ----------------------------------------------------------------------------- dead code
# `archc check` and `archc.cost` count what the built module holds and runs: the program
# after `dce`. The expectations are counted by hand from the spec.

V, W = 64, 32  # vocab and width of the dead-code specs
DEAD_HEAD = f"model r(vocab: int = {V}, d: int = {W})\n" \
            "let emb = embed(vocab=vocab, dim=d)\n"
EMB = V * W
HEAD_FLOPS = 2 * W * V  # the tied head
LIN_FLOPS = 2 * W * W




DEAD = {
    # an unused linear: neither its weight nor its matmul exists
    "unused-linear": (DEAD_HEAD + "x = emb(tokens)\ny = linear(x, out=d)\n" + TAIL,
                      EMB, HEAD_FLOPS),
    # a's output is unused but b reads its K/V: a's k, v projections live, its q, o do not
    "attention-kv-read": (DEAD_HEAD + "x = emb(tokens)\na = attention(x, heads=4)\n"
                          "b = attention(x, heads=4, kv=a)\nx = x + b\n" + TAIL,
                          EMB + 4 * W * W,
                          HEAD_FLOPS + 4 * LIN_FLOPS + 2 * 4 * 16 * (8 + 8)),
    # the second application of a shared instance is dead: its weight is counted once
    # (the first application uses it) and its matmul not at all
    "dead-second-application": (DEAD_HEAD + "let f = linear(out=d)\nx = emb(tokens)\n"
                                "x = x + f(x)\ny = f(x)\n" + TAIL,
                                EMB + W * W, HEAD_FLOPS + LIN_FLOPS),
    # a dead value in a block body, in every layer of a stack
    "dead-in-block": (DEAD_HEAD + "block layer(x) {\n  y = linear(x, out=d)\n"
                      "  return x + linear(x, out=d)\n}\nx = emb(tokens)\n"
                      "for i in 0..3 { x = layer(x) }\n" + TAIL,
                      EMB + 3 * W * W, HEAD_FLOPS + 3 * LIN_FLOPS),
    # a dead value inside a loop body
    "dead-in-loop": (DEAD_HEAD + "x = emb(tokens)\nloop 3 {\n  y = linear(x, out=d)\n"
                     "  x = x + linear(x, out=d)\n}\n" + TAIL,
                     EMB + 3 * W * W, HEAD_FLOPS + 3 * LIN_FLOPS),
}


@pytest.mark.parametrize("case", list(DEAD))
def test_cost_counts_what_the_module_holds(case):
    spec, params, flops = DEAD[case]
    c = archc.cost(spec, seq=16)
    m = archc.build(spec)
    assert sum(p.numel() for p in m.parameters()) == params
    assert c.params == params
    assert c.flops_per_token == flops
    assert c.kv_bytes_per_token == m.new_cache(batch=1, max_len=16).nbytes // 16


def test_check_counts_after_dce(capsys, tmp_path):
    spec, params, _ = DEAD["unused-linear"]
    path = tmp_path / "dead.arch"
    path.write_text(spec)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr()
    assert f"({params:,} parameters" in out.out
    assert "warning[W001]: value `y` is never used" in out.err
    assert f"--> {path}:4:5" in out.err
    assert "4 | y = linear(x, out=d)" in out.err
    assert "  |     ^^^^^^^^^^^^^^^^" in out.err


def test_unused_values_are_warnings_for_api_users():
    spec, _, _ = DEAD["unused-linear"]
    warnings = archc.load(spec).warnings
    assert [(w.code, w.message, w.span.line, w.span.col) for w in warnings] == \
        [("W001", "value `y` is never used", 4, 5)]
    quiet = spec.replace("y = linear", "_y = linear")
    assert archc.load(quiet).warnings == []
    for case in ("dead-second-application", "dead-in-block", "dead-in-loop"):
        assert [w.message for w in archc.load(DEAD[case][0]).warnings] == \
            ["value `y` is never used"]


def test_a_value_read_only_by_dead_values_is_reported_as_such():
    spec = DEAD_HEAD + "x = emb(tokens)\ny = linear(x, out=d)\nz = linear(y, out=d)\n" + TAIL
    assert [(w.message, w.span.line) for w in archc.load(spec).warnings] == [
        ("value `y` is read only by values that are never used", 4),
        ("value `z` is never used", 5)]


def test_the_spec_library_has_no_unused_values():
    for path in SPECS:
        assert archc.load(str(path)).warnings == [], path.name
