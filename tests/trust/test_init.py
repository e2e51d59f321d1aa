"""Init is part of the spec (issue 8 item 6): every spec starts near ln(vocab), the init
options set the weights they declare, residual output projections are scaled by the
model's depth (archc/init.py's rule), bad options are located errors, and a seed fixes
the weights of `archc run`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import archc
from archc.cli import main

SPECS = sorted(Path("specs").glob("*.arch"))


def _vocab(spec) -> int:
    return spec.params["vocab"].value


def _initial_loss(spec, seed: int = 0) -> float:
    torch.manual_seed(seed)
    model = archc.build(spec)
    vocab = _vocab(spec)
    tokens = torch.randint(0, vocab, (8, 64))
    with torch.no_grad():
        logits = model(tokens)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1)).item()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_starts_near_ln_vocab(path):
    spec = archc.load(path)
    loss = _initial_loss(spec)
    target = math.log(_vocab(spec))
    assert abs(loss - target) < 0.15 * target, f"initial loss {loss:.2f}, ln vocab {target:.2f}"


def _spec(body: str, d: int = 64, vocab: int = 64) -> str:
    return (f"model m(vocab: int = {vocab}, d: int = {d})\n"
            "let emb = embed(vocab=vocab, dim=d)\n"
            "x = emb(tokens)\n" + body + "\nreturn lm_head(rmsnorm(x), tied=emb)\n")


def _params(text: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(archc.build(text).named_parameters())


def test_std_and_zeros_set_the_weights():
    p = _params(_spec("x = x + linear(x, out=d, std=0.05)\n"
                      "x = x + linear(x, out=d, init=\"zeros\", bias=true)\n"
                      "x = x + linear(x, out=d, bias=true)", d=512))
    big, zero, default = (p[k] for k in ("linear.weight", "linear_1.weight", "linear_2.weight"))
    assert abs(big.std().item() - 0.05) < 0.002 and abs(big.mean().item()) < 0.001
    assert torch.count_nonzero(zero) == 0 and torch.count_nonzero(p["linear_1.bias"]) == 0
    assert abs(default.std().item() - 0.02) < 0.001  # the LM default
    assert torch.count_nonzero(p["linear_2.bias"]) == 0  # zero biases
    assert abs(p["emb.weight"].std().item() - 0.02) < 0.002


def test_other_inits_draw_as_declared():
    p = _params(_spec("x = x + linear(x, out=d, init=\"trunc_normal\", std=0.1)\n"
                      "x = x + linear(x, out=d, init=\"xavier\")\n"
                      "x = x + linear(x, out=d, init=\"torch\")\n"
                      "x = x + gate(x, per=\"channel\", units=d, bias=true, bias_init=-3.0, "
                      "init=\"zeros\")\n"
                      "x = gated_mix(x, x, std=0.01)", d=256))
    trunc, xavier, torch_default = (p[f"linear{s}.weight"] for s in ("", "_1", "_2"))
    assert trunc.abs().max() <= 0.3 + 1e-6 and abs(trunc.std().item() - 0.1) < 0.005
    bound = math.sqrt(6 / (256 + 256))
    assert xavier.abs().max() <= bound and xavier.abs().max() > 0.95 * bound
    assert torch_default.abs().max() <= 1 / 16 and torch_default.std() > 0.03  # kaiming
    assert torch.count_nonzero(p["gate.weight"]) == 0
    assert torch.equal(p["gate.bias"], torch.full((256,), -3.0))
    assert abs(p["gated_mix.gate.weight"].std().item() - 0.01) < 0.001
    assert torch.equal(p["gated_mix.gate.bias"], torch.full((256,), 2.0))


def _residual_init(spec):
    """(q init, o init, down init) in the IR of the transformer's first layer."""
    program = spec.program
    layer = next(b for c, b in program.classes.items() if c != program.root)
    attn, mlp = layer.module("attn"), layer.module("mlp")
    return (attn.get("q").weights[0].init, attn.get("o").weights[0].init,
            mlp.get("down").weights[0].init)


@pytest.mark.parametrize("depth", [2, 6])
def test_residual_projections_are_scaled_by_depth(depth):
    spec = archc.load("specs/transformer.arch", depth=depth)
    q, o, down = _residual_init(spec)
    assert q == ("normal", 0.02)
    assert o == down == ("residual", 0.02, 2 * depth)  # GPT-2's 2 * n_layers writes
    torch.manual_seed(0)
    model = archc.build(spec)
    want = 0.02 / math.sqrt(2 * depth)
    for layer in model.layers:
        for w in (layer.attn.o.weight, layer.mlp.down.weight):
            assert abs(w.std().item() - want) / want < 0.1
        assert abs(layer.attn.q.weight.std().item() - 0.02) < 0.002
    source = archc.compile_source(spec)
    assert f'o=rt.init_(nn.Linear(64, 64, bias=False), weight=("normal", 0.02 / ' \
           f'{2 * depth} ** 0.5)),' in source


def test_loops_count_at_their_bound_and_overrides_win():
    text = ("model m(vocab: int = 64, d: int = 32, r: int = 2 in 1..=8 runtime)\n"
            "block layer(x) {\n  x = x + attention(rmsnorm(x), heads=2)\n"
            "  x = x + mlp(rmsnorm(x), hidden=64, out_init=\"zeros\")\n  return x\n}\n"
            "let emb = embed(vocab=vocab, dim=d)\nx = emb(tokens)\nlet core = layer()\n"
            "x = layer(x)\nloop r max 8 { x = core(x) }\n"
            "return lm_head(rmsnorm(x), tied=emb)\n")
    spec = archc.load(text)
    layer = next(b for c, b in spec.program.classes.items() if c != spec.program.root)
    # residual writes: one attention per application, 1 + 8 applications (loop at its max);
    # the mlp's zero-init output does not count
    assert layer.module("attention").get("o").weights[0].init == ("residual", 0.02, 9)
    assert layer.module("mlp").get("down").weights[0].init == ("const", 0.0)
    # a run-time count's binding does not change the weights
    layer = next(b for c, b in archc.load(text, r=5).program.classes.items() if c != "M")
    assert layer.module("attention").get("o").weights[0].init == ("residual", 0.02, 9)
    model = archc.build(text)
    assert torch.count_nonzero(model.core.mlp.down.weight) == 0


def test_init_options_are_in_the_hash():
    base = _spec("x = x + attention(rmsnorm(x), heads=4)")
    assert archc.hash(base) != archc.hash(base.replace("heads=4", "heads=4, std=0.01"))
    assert archc.hash(base) != archc.hash(base.replace("heads=4", "heads=4, out_init=\"normal\""))


def test_a_seed_fixes_the_weights():
    text = _spec("x = x + swiglu(rmsnorm(x), hidden=96)")
    a, b, c = _params(text, 3), _params(text, 3), _params(text, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["swiglu.up.weight"], c["swiglu.up.weight"])


def test_sigma_linear_starts_at_its_init():
    text = _spec("x = x + linear(x, out=d, sigma=true, std=0.05)", d=128)
    torch.manual_seed(0)
    layer = archc.build(text).linear
    assert abs(layer.weight.std().item() - 0.05) < 0.003
    layer.eval()
    assert torch.allclose(layer.effective_weight(), layer.weight, atol=1e-5)  # gamma = sigma(W)


@pytest.mark.parametrize("call, at, words", [
    ('linear(x, out=d, init="kaiming_uniform")', 'init="kaiming_uniform"',
     "normal, trunc_normal, residual, zeros, xavier, torch"),
    ('attention(x, heads=4, out_init="zero")', 'out_init="zero"', "normal, trunc_normal"),
    ('linear(x, out=d, init="zeros", std=0.1)', "std=0.1", "value error"),
    ('gate(x, per="token", bias_init=1.0)', "bias_init=1.0", "bias=true"),
])
def test_bad_init_options_are_located_errors(call, at, words):
    text = _spec(f"x = x + {call}")
    with pytest.raises(archc.ArchcError) as err:
        archc.load(text)
    e = err.value
    line = text.splitlines()[e.span.line - 1]
    assert line[e.span.col - 1:].startswith(at), (str(e), at)
    assert words in str(e)


def test_a_tied_head_has_no_init_of_its_own():
    text = _spec("").replace("tied=emb)", "tied=emb, std=0.1)")
    with pytest.raises(archc.ArchcError, match="set it on the embed"):
        archc.load(text)


def _cli_loss(capsys, *args) -> float:
    assert main(["run", "specs/transformer.arch", *args]) == 0
    return float(re.search(r"loss\s+([\d.]+)", capsys.readouterr().out).group(1))


def test_archc_run_seed_fixes_the_weights(capsys):
    torch.rand(5)  # whatever the generator's state before, the seed decides
    first = _cli_loss(capsys, "--seed", "7")
    torch.rand(11)
    assert _cli_loss(capsys, "--seed", "7") == first
    assert _cli_loss(capsys, "--seed", "8") != first
    spec = archc.load("specs/transformer.arch")
    torch.manual_seed(7)
    model = archc.build(spec)
    torch.manual_seed(7)
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256),
                                             tokens[:, 1:].reshape(-1)).item()
    assert f"{loss:.4f}" == f"{first:.4f}"
    assert abs(first - math.log(256)) < 0.15 * math.log(256)
