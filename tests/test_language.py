"""Semantics of the language: weight identity, for vs loop, adapters, halting, statics."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import archc
from archc import ArchcError
from archc.param_count import count_params


def build(text: str, **params):
    torch.manual_seed(0)
    return archc.build(text, **params)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def tokens(vocab=32, b=2, t=8):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(1))


def randomize(m, std=0.1):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, std)
    return m


HEAD = "model m(d: int = 16, r: int = 3 in 1..=8 runtime)\n"


def test_named_instance_shares_weights_and_inline_calls_do_not():
    shared = build(HEAD + "let n = linear(out=d)\nx = embed(tokens, vocab=32, dim=d)\n"
                   "return n(n(x))\n")
    inline = build(HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
                   "return linear(linear(x, out=d), out=d)\n")
    assert n_params(inline) - n_params(shared) == 16 * 16
    x = shared.emb if hasattr(shared, "emb") else None
    assert x is None  # inline embed is named after its op
    w = shared.n.weight
    e = shared.embed(tokens())
    assert torch.allclose(shared(tokens()), e @ w.t() @ w.t(), atol=1e-6)


def test_for_gives_distinct_weights_loop_shares_them():
    body = "block layer(x) { return x + linear(x, out=d) }\n"
    stacked = build(HEAD + body + "x = embed(tokens, vocab=32, dim=d)\n"
                    "for i in 0..4 { x = layer(x) }\nreturn x\n")
    let = "let core = layer()\n"
    looped = build(HEAD + body + let + "x = embed(tokens, vocab=32, dim=d)\n"
                   "loop 4 { x = core(x) }\nreturn x\n")
    assert n_params(stacked) - n_params(looped) == 3 * 16 * 16
    names = dict(stacked.named_parameters())
    assert "layers.3.linear.weight" in names
    # the loop applies the same weights four times
    x = looped.embed(tokens())
    w = looped.core.linear.weight
    for _ in range(4):
        x = x + x @ w.t()
    assert torch.allclose(looped(tokens()), x, atol=1e-5)


def test_instances_made_inside_a_loop_are_one_per_iteration():
    m = build(HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
              "loop r max 8 as steps { x = x + linear(x, out=d) }\nreturn x\n")
    # stacked up to the loop's max, indexed by the iteration
    assert len(m.steps) == 8
    randomize(m)
    x = m.embed(tokens())
    for i in range(5):
        x = x + m.steps[i](x)
    assert torch.allclose(m(tokens(), r=5), x, atol=1e-5)


def test_runtime_count_is_a_keyword_and_checked_against_max():
    m = build(HEAD + "let c = linear(out=d)\nx = embed(tokens, vocab=32, dim=d)\n"
              "loop r max 8 { x = x + c(x) }\nreturn x\n")
    randomize(m)
    t = tokens()
    assert not torch.allclose(m(t, r=1), m(t, r=2))
    assert torch.allclose(m(t), m(t, r=3))
    with pytest.raises(ValueError, match="max"):
        m(t, r=9)
    params = {n: p.numel() for n, p in build(HEAD + "let c = linear(out=d)\n"
              "x = embed(tokens, vocab=32, dim=d)\nloop r max 8 { x = x + c(x) }\nreturn x\n",
              r=7).named_parameters()}
    assert sum(params.values()) == n_params(m)


def test_loop_index_is_visible_in_the_body():
    m = build(HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
              "loop i in 3 { x = x + scale(x, by=1 / (i + 1)) }\nreturn x\n")
    x = m.embed(tokens())
    for i in range(3):
        x = x + x * (1 / (i + 1))
    assert torch.allclose(m(tokens()), x, atol=1e-6)


def test_lora_adapters_are_per_iteration_with_zero_b():
    spec = (HEAD + "block layer(x) { return x + linear(x, out=d) }\nlet core = layer()\n"
            "x = embed(tokens, vocab=32, dim=d)\n"
            "loop j in 4 { x = core(x) with lora(rank=2) }\nreturn x\n")
    m = build(spec)
    assert len(m.core.lora) == 4
    assert all((lo.linear.B == 0).all() for lo in m.core.lora)
    # B = 0: the same as the plain shared loop
    x = m.embed(tokens())
    for _ in range(4):
        x = x + m.core.linear(x)
    assert torch.allclose(m(tokens()), x, atol=1e-6)
    # with B != 0 each iteration adds its own low-rank term
    randomize(m)
    x = m.embed(tokens())
    for j in range(4):
        lo = m.core.lora[j].linear
        x = x + m.core.linear(x) + (x @ lo.A.t()) @ lo.B.t()
    assert torch.allclose(m(tokens()), x, atol=1e-5)
    counts = count_params(archc.load(spec).program)
    assert counts.unique == n_params(m)
    assert counts.unique - n_params(build(spec.replace(" with lora(rank=2)", ""))) == \
        4 * 2 * (16 + 16)


def test_untie_gives_per_iteration_norms():
    spec = (HEAD + "block layer(x) { return x + linear(rmsnorm(x), out=d) }\n"
            "let core = layer()\nx = embed(tokens, vocab=32, dim=d)\n"
            "loop r max 8 { x = core(x) with untie(rmsnorm) }\nreturn x\n")
    m = randomize(build(spec))
    assert len(m.core.rmsnorm) == 8
    x = m.embed(tokens())
    for i in range(3):
        x = x + m.core.linear(m.core.rmsnorm[i](x))
    assert torch.allclose(m(tokens()), x, atol=1e-5)


def test_halting_per_sequence_stops_when_the_state_stops_moving():
    spec = (HEAD + "let c = linear(out=d)\nx = embed(tokens, vocab=32, dim=d)\n"
            "loop r max 8 until converged(x, tol=TOL, per=\"sequence\") { x = x + c(x) }\n"
            "return x\n")
    never = build(spec.replace("TOL", "1e-12"))
    always = build(spec.replace("TOL", "1e6"))
    always.load_state_dict(never.state_dict())
    randomize(never)
    always.load_state_dict(never.state_dict())
    t = tokens()
    with torch.no_grad():
        assert torch.allclose(always(t, r=6), never(t, r=1), atol=1e-6)
        assert torch.allclose(never(t, r=6), never(t, r=6))
        assert not torch.allclose(never(t, r=6), never(t, r=1))


def test_halting_per_token_freezes_converged_positions():
    spec = (HEAD + "let c = linear(out=d)\nx = embed(tokens, vocab=32, dim=d)\n"
            "loop r max 8 until converged(x, tol=0.5, per=\"token\") { x = x + c(x) }\n"
            "return x\n")
    m = build(spec)
    with torch.no_grad():
        m.c.weight.zero_()
        m.c.weight[0, 0] = 1.0  # the state moves only where feature 0 is non-zero
        e = m.embed.weight
        e[:, 0] = 0.0
        e[5, 0] = 1.0
        t = torch.tensor([[5, 6, 7]])
        y = m(t, r=4)
        base = m.embed(t)
    # token 5 keeps moving (relative change 1/2 > 0.5? it doubles feature 0 at first)
    assert torch.allclose(y[0, 1:], base[0, 1:])
    assert not torch.allclose(y[0, 0], base[0, 0])


def test_instance_arrays_and_symbolic_index_roll_the_loop():
    spec = (HEAD + "block layer(x) { return x + linear(x, out=d) }\nlet blocks[3] = layer()\n"
            "x = embed(tokens, vocab=32, dim=d)\nloop 2 { for k in 0..3 { x = blocks[k](x) } }\n"
            "return x\n")
    src = archc.compile_source(spec)
    assert "for k in range(3):" in src and "self.blocks[k](" in src
    m = randomize(build(spec))
    x = m.embed(tokens())
    for _ in range(2):
        for k in range(3):
            x = x + m.blocks[k].linear(x)
    assert torch.allclose(m(tokens()), x, atol=1e-5)


def test_a_for_whose_body_changes_with_the_index_is_unrolled():
    spec = (HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
            "for i in 0..3 as grow { x = concat(x, linear(x, out=8)) }\nreturn x\n")
    m = build(spec)
    assert m(tokens()).shape[-1] == 16 + 3 * 8
    assert [layer.in_features for layer in m.grow] == [16, 24, 32]
    assert "range(3)" not in archc.compile_source(spec)


def test_static_if_and_statics_flow_through_a_for():
    spec = (HEAD + "w = d\nx = embed(tokens, vocab=32, dim=d)\n"
            "for i in 0..3 { if i == 1 { w = w * 2 } else { w = w + 0 }\n"
            "  x = linear(x, out=w) }\nreturn x\n")
    m = build(spec)
    assert m(tokens()).shape[-1] == 32


def test_split_concat_and_arithmetic():
    spec = (HEAD + "x = embed(tokens, vocab=32, dim=d)\na, b = split(x, [4, 12])\n"
            "y = concat(b, a)\nreturn 2 * y - x / 4\n")
    m = build(spec)
    x = m.embed(tokens())
    want = 2 * torch.cat([x[..., 4:], x[..., :4]], -1) - x / 4
    assert torch.allclose(m(tokens()), want, atol=1e-6)


def test_params_from_the_api_and_their_domains():
    spec = "model m(d: int = 16 in {16, 32}, vocab: int = 8)\nreturn embed(tokens, vocab=vocab, dim=d)\n"
    assert archc.load(spec, d=32).params["d"].value == 32
    assert archc.load(spec).params["d"].domain == [16, 32]
    with pytest.raises(ArchcError, match="outside its domain"):
        archc.load(spec, d=24)
    with pytest.raises(ArchcError, match="no param"):
        archc.load(spec, width=24)


def test_readable_parameter_names():
    m = archc.build("specs/transformer.arch")
    names = set(dict(m.named_parameters()))
    assert {"layers.3.attn.q.weight", "layers.0.mlp.down.weight", "emb.weight"} <= names
    m = archc.build("specs/relaxed_recursive.arch")
    assert "shared.1.lora.2.attn_q.A" in dict(m.named_parameters())


def test_load_does_not_import_torch():
    code = ("import sys, archc; archc.load('specs/huginn.arch', r=8); "
            "from archc.param_count import count_params; "
            "count_params(archc.load('specs/huginn.arch').program); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_spec_text_never_reaches_python_eval():
    # A spec that tries to smuggle Python code is just an unknown name.
    with pytest.raises(ArchcError, match="unknown name"):
        archc.load("model m()\nreturn __import__(tokens)\n")
    with pytest.raises(ArchcError, match="reserved"):
        archc.load("model m()\nlet forward = rmsnorm()\nreturn forward(embed(tokens, vocab=8, dim=8))\n")


def test_blocks_expose_named_outputs():
    spec = (HEAD + "block layer(x) {\n  a = linear(x, out=d)\n  return x + a, pre=a\n}\n"
            "x = embed(tokens, vocab=32, dim=d)\ny = layer(x)\nreturn y.pre * 2 + y\n")
    m = randomize(build(spec))
    x = m.embed(tokens())
    a = m.layer.linear(x)
    assert torch.allclose(m(tokens()), 2 * a + (x + a), atol=1e-6)
    with pytest.raises(ArchcError, match="no field `post`"):
        archc.load(spec.replace("y.pre * 2", "y.post * 2"))
    with pytest.raises(ArchcError, match="inside a loop body"):
        archc.load(HEAD + "x = embed(tokens, vocab=32, dim=d)\nfor i in 0..2 { return x }\nreturn x\n")


def test_depth_references_reach_earlier_layers_only():
    spec = (HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
            "for i in 0..3 as layers {\n"
            "  y = linear(x, out=d)\n"
            "  if i > 0 { x = x + y + layers[i - 1].y } else { x = x + y }\n"
            "}\nreturn x + layers[0].y\n")
    m = randomize(build(spec))
    x = m.embed(tokens())
    ys = []
    for i in range(3):
        y = m.layers[i](x)
        x = x + y + (ys[-1] if ys else 0)
        ys.append(y)
    assert torch.allclose(m(tokens()), x + ys[0], atol=1e-5)
    bad = spec.replace("layers[i - 1].y", "layers[i + 1].y")
    with pytest.raises(ArchcError) as err:
        archc.load(bad)
    text = err.value.render()
    assert "does not come before this one" in text
    assert text.count("<spec>:") >= 2  # the reader and the value it names


def test_depth_lists_feed_concat():
    spec = (HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
            "for i in 0..3 as dense { y = linear(concat(x, dense[0..i].y), out=4) }\n"
            "return concat(x, dense[0..3].y)\n")
    m = build(spec)
    assert [layer.in_features for layer in m.dense] == [16, 20, 24]
    assert m(tokens()).shape[-1] == 16 + 12


def test_gates_broadcast_per_head_and_per_token():
    spec = (HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
            "g = gate(x, per=\"token\", act=\"sigmoid\")\nreturn x * g\n")
    m = randomize(build(spec))
    x = m.embed(tokens())
    assert torch.allclose(m(tokens()), x * torch.sigmoid(m.gate(x)), atol=1e-6)
    with pytest.raises(ArchcError, match="width mismatch"):
        archc.load(HEAD + "x = embed(tokens, vocab=32, dim=d)\n"
                   "g = gate(x, per=\"channel\", units=3)\nreturn x * g\n")
