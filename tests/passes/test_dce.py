"""dce: an inference build fixes train-time choices to the inference map and drops the
ops and weights that leaves dead."""

from __future__ import annotations

import torch

import archc
from archc.api import compile_program
from archc.ir import walk


def ops(program) -> list[str]:
    return [n.op for b in program.classes.values() for n in walk(b.graph)]


def test_infer_mode_removes_dead_kv_projections_and_their_weights():
    spec = archc.load("specs/stochastic_kv.arch")
    train = compile_program(spec, "train")
    infer = compile_program(spec, "infer")
    assert "select_kv" in ops(train) and "select_kv" not in ops(infer)
    assert ops(train).count("linear") - ops(infer).count("linear") == 2 * 2  # k, v of 2 layers
    m_train = archc.build("specs/stochastic_kv.arch").eval()
    m_infer = archc.reparam(m_train)  # the infer build, weights folded from the train one
    assert not m_infer.training
    names_train = set(dict(m_train.named_parameters()))
    names_infer = set(dict(m_infer.named_parameters()))
    dead = {f"layers.{i}.attention.{w}.weight" for i in (1, 3) for w in ("k", "v")}
    assert dead <= names_train - names_infer and not dead & names_infer
    t = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(m_train(t), m_infer(t), atol=1e-4)


def test_kv_infer_own_keeps_the_layer_cache():
    spec = archc.load("specs/stochastic_kv.arch")
    infer = compile_program(spec, "infer")
    # layers 0 and 2 keep their own cache, 1 and 3 read their predecessor's
    assert len(infer.kv_layout) == 2


def test_unused_values_are_dropped_in_any_mode():
    text = ("model m()\nx = embed(tokens, vocab=8, dim=8)\ny = linear(x, out=8)\n"
            "return rmsnorm(x)\n")
    p = compile_program(archc.load(text))
    assert "linear" not in ops(p)
    assert [name for name, _ in p.model.modules] == ["embed", "rmsnorm"]


def test_dce_keeps_the_model_unchanged_when_nothing_is_dead():
    spec = archc.load("specs/transformer.arch")
    p = compile_program(spec, "infer")
    assert ops(p) == ops(spec.program) or len(ops(p)) == len(ops(spec.program))
