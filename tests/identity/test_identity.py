"""The architecture hash survives refactoring: it is taken over a normal form in which each
spec-level op application is one line, so an op that expands into other primitives,
computing the same thing with the same weights, keeps every hash; a change to what the
spec means still changes it. The normal form carries its format version and prints with
`archc hash --explain`."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

import archc
from archc.cli import main
from archc.frontend.opctx import OpCtx
from archc.identity import VERSION, architecture_hash, explain, normal_form, program_hash
from archc.ir import walk
from archc.ops import OPS

SPECS = sorted(Path("specs").glob("*.arch"))
TRANSFORMER = Path("specs/transformer.arch").read_text()


def _swiglu_rewritten(c, x, a):
    """swiglu as g * sigmoid(g) * u instead of silu(g) * u, its weights made in another
    order (up before gate): other primitives, the same function, the same weights."""
    d = x.type.width
    u = c.linear(x, "up", a.hidden, False, hint="u", init=a.init, std=a.std)
    g = c.linear(x, "gate", a.hidden, False, hint="g", init=a.init, std=a.std)
    s = c.emit("sigmoid", [g], g.type, hint="g")
    g = c.emit("mul", [g, s], g.type, hint="g")
    h = c.emit("mul", [u, g], g.type, hint="m")
    return c.linear(h, "down", d, False, hint="m", init=a.out_init, std=a.std)


def _rmsnorm_rewritten(c, x, a):
    """rmsnorm followed by a scale by one: an extra primitive that changes nothing."""
    y = c.norm(x, None, "rmsnorm", a.eps)
    return c.emit("scale", [y], y.type, {"by": 1.0}, hint="h")


@pytest.fixture
def rewritten(monkeypatch):
    """The op library with two macros expanding differently."""
    for name, expand in (("swiglu", _swiglu_rewritten), ("rmsnorm", _rmsnorm_rewritten)):
        monkeypatch.setitem(OPS, name, dataclasses.replace(OPS[name], expand=expand))


def _prims(program) -> list[str]:
    return [n.op for cls in program.classes.values() for n in walk(cls.graph)]


def _programs(spec, **params):
    return archc.load(spec, **params).program


USES_REWRITTEN = [p for p in SPECS if "swiglu(" in p.read_text() or "rmsnorm(" in p.read_text()]


@pytest.mark.parametrize("path", USES_REWRITTEN, ids=[p.stem for p in USES_REWRITTEN])
def test_rewriting_an_expansion_keeps_the_hash(path, monkeypatch):
    before = _programs(path)
    with monkeypatch.context() as m:
        for name, expand in (("swiglu", _swiglu_rewritten), ("rmsnorm", _rmsnorm_rewritten)):
            m.setitem(OPS, name, dataclasses.replace(OPS[name], expand=expand))
        after = _programs(path)
    assert _prims(after) != _prims(before)  # the IR did change ...
    assert program_hash(after) != program_hash(before)  # ... and so did its expanded form
    assert architecture_hash(after) == architecture_hash(before)  # the architecture did not


def _padded(emit):
    """OpCtx.emit that follows every float primitive with a scale by one: every op's
    expansion gets other primitives, computing exactly the same thing."""
    def padded(self, prim, inputs, out_type, attrs=None, ref=None, hint=""):
        y = emit(self, prim, inputs, out_type, attrs, ref, hint)
        if out_type.dtype != "float":
            return y
        return emit(self, "scale", [y], out_type, {"by": 1.0}, hint=hint)
    return padded


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_padding_every_expansion_keeps_the_hash(path, monkeypatch):
    """All ops at once, on every spec: attention, moe, LoRA adapters, head loops, ..."""
    before = _programs(path)
    with monkeypatch.context() as m:
        m.setattr(OpCtx, "emit", _padded(OpCtx.emit))
        after = _programs(path)
    assert len(_prims(after)) > len(_prims(before))
    assert program_hash(after) != program_hash(before)
    assert architecture_hash(after) == architecture_hash(before)


def test_the_rewrite_computes_the_same_thing(rewritten, monkeypatch):
    """The rewritten library is a refactor, not another model: same state dict, same
    logits (so the hash is right to stay)."""
    import torch

    text = TRANSFORMER.replace("depth: int = 4", "depth: int = 2")
    new = archc.build(text)
    monkeypatch.undo()
    old = archc.build(text)
    assert sorted(new.state_dict()) == sorted(old.state_dict())
    new.load_state_dict(old.state_dict())
    tokens = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(new.eval()(tokens), old.eval()(tokens), rtol=1e-5, atol=1e-5)


def test_meaning_still_changes_the_hash_under_a_rewritten_library(rewritten):
    t = TRANSFORMER
    variants = {
        "base": archc.hash(t),
        "hidden": archc.hash(t, hidden=96),  # an attribute
        "d": archc.hash(t, d=32),  # a shape
        "eps": archc.hash(t.replace("x + mlp(rmsnorm(x))", "x + mlp(rmsnorm(x, eps=1e-5))")),
        "std": archc.hash(t.replace("swiglu(hidden=hidden)", "swiglu(hidden=hidden, std=0.01)")),
        "shared": archc.hash(t.replace("x = emb(tokens)\n", "x = emb(tokens)\nlet core = layer()\n")
                             .replace("  x = layer(x)\n", "  x = core(x)\n")),  # sharing
        "untied": archc.hash(t.replace("tied=emb", "vocab=vocab")),
        "order": archc.hash(t.replace("x = x + mlp(rmsnorm(x))", "x = mlp(rmsnorm(x)) + x")),
        "op": archc.hash(t.replace("swiglu(hidden=hidden)", "mlp(hidden=hidden)")),
    }
    assert len(set(variants.values())) == len(variants), variants


def test_tensor_arithmetic_hashes_like_the_op_it_is():
    plain = TRANSFORMER.replace("x = x + mlp(rmsnorm(x))", "x = x + 0.5 * mlp(rmsnorm(x))")
    op = TRANSFORMER.replace("x = x + mlp(rmsnorm(x))", "x = add(x, scale(mlp(rmsnorm(x)), 0.5))")
    assert archc.hash(plain) == archc.hash(op) != archc.hash(TRANSFORMER)


def test_the_hashed_text_carries_the_version():
    form = normal_form(_programs("specs/huginn.arch"))
    assert VERSION == "archc-hash/2"
    assert form.root.splitlines()[0] == VERSION
    assert form.digest == hashlib.sha256(form.root.encode()).hexdigest()
    assert form.digest == archc.hash("specs/huginn.arch")
    assert len(form.digest) == 64 and int(form.digest, 16) >= 0  # still 64 hex digits
    # every block text is hashed into its callers: its digest appears in the model's text
    for digest, text in form.blocks:
        assert digest == hashlib.sha256(text.encode()).hexdigest()
        assert f"@{digest}" in form.root + "".join(t for _d, t in form.blocks)


def test_explain_prints_the_normal_form_then_the_hash(capsys):
    assert main(["hash", "specs/huginn.arch", "--explain"]) == 0
    out = capsys.readouterr().out
    assert main(["hash", "specs/huginn.arch", "--explain"]) == 0
    assert capsys.readouterr().out == out  # deterministic
    lines = out.splitlines()
    assert lines[-1] == archc.hash("specs/huginn.arch")
    form = normal_form(_programs("specs/huginn.arch"))
    assert form.root in out and VERSION in lines
    assert out == explain(_programs("specs/huginn.arch"))
    # one line per op application, named by the spec op, not its primitives
    assert any(" = attention(" in line for line in lines)
    assert not any(" = attend(" in line or " = merge_heads(" in line for line in lines)
    # local names do not appear: the spec's instance and value names are positions
    assert "core_block" not in out and "prelude" not in out


def test_a_compiled_program_has_no_architecture_hash():
    """The passes rewrite the graphs the record of op applications describes: hashing
    their output would fold the wrong nodes, so it is refused (its expanded form is not)."""
    spec = archc.load("specs/huginn.arch")
    compiled = archc.api.compile_program(spec)
    with pytest.raises(ValueError, match="compiled program"):
        architecture_hash(compiled)
    assert len(program_hash(compiled)) == 64
    expanded = normal_form(spec.program, contract=False)
    assert expanded.root.splitlines()[0] != VERSION  # never mistaken for the normal form
    assert expanded.digest != architecture_hash(spec.program)


ADAPTED_STACK = """model lr(d: int = 16)

block blk(x) {
  for i in 0..2 as stack {
    x = x + linear(x, out=d)
  }
  return x
}

let emb = embed(vocab=32, dim=d)
x = emb(tokens)
let core = blk()
loop j in 2 {
  x = core(x) with lora(rank=1)
}
return lm_head(x, vocab=32)
"""


def test_lora_on_a_stack_inside_a_block_renames_freely():
    """A LoRA adapter is named by the linear it adapts, whose ref here is indexed by the
    block's own loop variable (found by bench/fuzz.py's generator, seed 878)."""
    out = explain(_programs(ADAPTED_STACK))
    assert "?" not in out and "lora of m0:" in out
    renamed = (ADAPTED_STACK.replace("for i in", "for k in").replace("as stack", "as deep")
               .replace("core", "c2").replace("loop j", "loop q"))
    assert archc.hash(renamed) == archc.hash(ADAPTED_STACK)
