"""reparam: each fold of the inference build, checked numerically on a small inline spec.

For every case: build the training module, give every weight (and BatchNorm statistics)
random values, fold it with archc.reparam, and compare the eval outputs (float32, within
1e-5 of the output scale); then check the folded structure on the infer program
(compile_program(..., "infer")) and on the folded module's parameters. The expected folded
weights are computed here in plain torch from the trained ones where that is short.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import archc
from archc.api import compile_program
from archc.ir import walk

HEAD = "model m(d: int = 16)\nx = embed(tokens, vocab=32, dim=d)\n"
TAIL = "return lm_head(x, vocab=32)\n"
RTOL = 1e-5


def spec_text(body: str, tail: str = TAIL) -> str:
    return HEAD + body + tail


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Constant-init parameters become c + N(0, 0.2^2); matrices N(0, 1/fan_in); other
    vectors N(0, 0.3^2). BatchNorm statistics random (mean N(0, 0.3^2), var U(0.5, 2))."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        flat = p.detach().flatten()
        noise = torch.randn(p.shape, generator=g)
        if flat.numel() and bool((flat == flat[0]).all()):
            p.copy_(flat[0] + 0.2 * noise)
        elif p.dim() >= 2:
            p.copy_(noise * p[0].numel() ** -0.5)
        else:
            p.copy_(0.3 * noise)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.3 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=g))


def toks(T: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 32, (2, T), generator=torch.Generator().manual_seed(seed))


def ops(program) -> list[str]:
    return [n.op for b in program.classes.values() for n in walk(b.graph)]


def assert_rel(actual, expected, what: str, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape, what
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs difference {err:.3e} > {rtol:g} x {scale:.3e}"


@dataclass
class Folded:
    train: torch.nn.Module           # the trained module (eval mode now)
    infer: torch.nn.Module           # archc.reparam(train)
    train_ops: list
    infer_ops: list
    tp: dict                         # trained parameters by name
    fp: dict                         # folded parameters by name
    folds: tuple


def fold(body: str, tail: str = TAIL, train_forwards: int = 0, seed: int = 0) -> Folded:
    """Build, randomize, optionally run training forwards (moving BatchNorm statistics and
    sigma-Reparam's u), fold, and check the eval outputs agree."""
    spec = archc.load(spec_text(body, tail))
    m = archc.build(spec)
    randomize(m, seed)
    with torch.no_grad():
        for i in range(train_forwards):
            m.train()(toks(seed=100 + i))
    m.eval()
    f = archc.reparam(m)
    assert not f.training
    with torch.no_grad():
        for T in (1, 9):
            x = toks(T=T, seed=7)
            assert_rel(f(x), m(x), f"folded vs trained (T={T})")
    infer = compile_program(spec, "infer")
    return Folded(m, f, ops(compile_program(spec, "train")), ops(infer),
                  {n: p.detach() for n, p in m.named_parameters()},
                  {n: p.detach() for n, p in f.named_parameters()}, infer.folds)


def n_norm_weights(params: dict) -> int:
    return sum(p.numel() for n, p in params.items() if "norm" in n or "bn" in n)


# ----------------------------------------------------------------------------- norms


@pytest.mark.parametrize("opts,shift", [("", True), ("eps=0.3", True),
                                        ("bias=false", False)])
def test_layernorm_affine_into_next_linear(opts, shift):
    r = fold(f"h = layernorm(x{', ' + opts if opts else ''})\nx = x + gelu(linear(h, out=d))\n")
    assert r.train_ops.count("layernorm") == r.infer_ops.count("layernorm") == 1
    assert n_norm_weights(r.tp) == (32 if shift else 16) and n_norm_weights(r.fp) == 0
    # W' = W diag(gamma), b' = W beta
    w, gamma = r.tp["linear.weight"], r.tp["layernorm.weight"]
    assert torch.allclose(r.fp["linear.weight"], w * gamma, atol=1e-6)
    if shift:
        assert torch.allclose(r.fp["linear.bias"], w @ r.tp["layernorm.bias"], atol=1e-6)
    else:
        assert "linear.bias" not in r.fp
    assert len(r.fp) == len(r.tp) - (2 if shift else 1) + (1 if shift else 0)


def test_rmsnorm_gain_into_next_linears():
    """One RMSNorm read by q, k and v (and one before an untied head): the gain goes into
    every reader, no bias appears."""
    r = fold("x = x + attention(rmsnorm(x), heads=2)\n", "return lm_head(rmsnorm(x), vocab=32)\n")
    assert n_norm_weights(r.tp) == 32 and n_norm_weights(r.fp) == 0
    gain = r.tp["rmsnorm.weight"]
    for p in "qkv":
        assert torch.allclose(r.fp[f"attention.{p}.weight"], r.tp[f"attention.{p}.weight"] * gain)
        assert f"attention.{p}.bias" not in r.fp
    assert torch.allclose(r.fp["lm_head.weight"], r.tp["lm_head.weight"] * r.tp["rmsnorm_1.weight"])
    for op in ("rmsnorm", "linear"):                    # same ops; only the weights moved
        assert r.train_ops.count(op) == r.infer_ops.count(op), op


@pytest.mark.parametrize("op", ["batchnorm", "repbn"])
@pytest.mark.parametrize("eps", [None, 0.5])
def test_eval_batchnorm_into_next_linears(op, eps):
    """Eval BatchNorm (and RepBN = BN + alpha x) is a per-channel affine: it disappears
    into both linears that read it, which gain biases. Statistics come from random values
    moved by three training forwards."""
    opt = f", eps={eps}" if eps else ""
    r = fold(f"h = {op}(x{opt})\nx = x + linear(h, out=d) * sigmoid(linear(h, out=d, bias=true))\n",
             train_forwards=3)
    assert op in r.train_ops and op not in r.infer_ops
    assert n_norm_weights(r.fp) == 0
    assert not any("running" in n for n, _ in r.infer.named_buffers())
    bn = r.train.get_submodule(op if op == "batchnorm" else "repbn.bn")
    assert bn.eps == (eps or 1e-5) and int(bn.num_batches_tracked) == 3
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    if op == "repbn":
        scale = scale + r.tp["repbn.alpha"]
    w = r.tp["linear.weight"]
    assert torch.allclose(r.fp["linear.weight"], w * scale, atol=1e-6)
    assert torch.allclose(r.fp["linear.bias"], w @ shift, atol=1e-5)
    assert torch.allclose(r.fp["linear_1.bias"], r.tp["linear_1.bias"] + r.tp["linear_1.weight"] @ shift,
                          atol=1e-5)


# ----------------------------------------------------------------------------- LayerScale


def test_layerscale_into_output_projections():
    """LayerScale after attention folds into o (rows scaled), after an MLP into its down
    projection (weight rows and bias scaled)."""
    r = fold("x = x + layerscale(attention(rmsnorm(x), heads=2), init=0.1)\n"
             "x = x + layerscale(mlp(rmsnorm(x), hidden=24, bias=true))\n")
    assert r.train_ops.count("layerscale") == 2 and "layerscale" not in r.infer_ops
    assert not any("gamma" in n for n in r.fp)
    g0, g1 = r.tp["layerscale.gamma"], r.tp["layerscale_1.gamma"]
    assert torch.allclose(r.fp["attention.o.weight"], r.tp["attention.o.weight"] * g0[:, None])
    assert torch.allclose(r.fp["mlp.down.weight"], r.tp["mlp.down.weight"] * g1[:, None])
    assert torch.allclose(r.fp["mlp.down.bias"], r.tp["mlp.down.bias"] * g1)


# ----------------------------------------------------------------------------- branches


def test_parallel_linear_branches_sum_into_one():
    r = fold("y = sum(linear(x, out=d), linear(x, out=d, bias=true), linear(x, out=d))\n"
             "x = x + gelu(y)\n")
    assert r.train_ops.count("linear") == 4 and r.infer_ops.count("linear") == 2
    total = r.tp["linear.weight"] + r.tp["linear_1.weight"] + r.tp["linear_2.weight"]
    assert torch.allclose(r.fp["linear.weight"], total, atol=1e-6)
    assert torch.allclose(r.fp["linear.bias"], r.tp["linear_1.bias"])


def test_identity_branch_folds_into_the_diagonal():
    r = fold("x = gelu(linear(x, out=d, bias=true) + x)\n")
    assert r.infer_ops.count("add") == r.train_ops.count("add") - 1
    assert torch.allclose(r.fp["linear.weight"], r.tp["linear.weight"] + torch.eye(16))
    assert torch.equal(r.fp["linear.bias"], r.tp["linear.bias"])


def test_identity_branch_after_layerscale():
    """layerscale(linear(x)) + x: LayerScale first, then the identity: W' = diag(g) W + I."""
    r = fold("x = gelu(layerscale(linear(x, out=d), init=0.5) + x)\n")
    g = r.tp["layerscale.gamma"]
    assert torch.allclose(r.fp["linear.weight"], r.tp["linear.weight"] * g[:, None] + torch.eye(16))


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_parallel_ffn_branches_into_one_wider_ffn(act):
    r = fold(f'h = rmsnorm(x)\ny = sum(mlp(h, hidden=8, bias=true, act="{act}"), '
             f'mlp(h, hidden=16, bias=true, act="{act}"), mlp(h, hidden=4, bias=true, act="{act}"))\n'
             "x = x + y\n")
    assert r.train_ops.count(act) == 3 and r.infer_ops.count(act) == 1
    assert r.fp["mlp.up.weight"].shape == (28, 16) and r.fp["mlp.down.weight"].shape == (16, 28)
    assert r.fp["mlp.up.bias"].shape == (28,)
    gain = r.tp["rmsnorm.weight"]
    up = torch.cat([r.tp[f"{n}.up.weight"] for n in ("mlp", "mlp_1", "mlp_2")]) * gain
    assert torch.allclose(r.fp["mlp.up.weight"], up, atol=1e-6)
    down_b = sum(r.tp[f"{n}.down.bias"] for n in ("mlp", "mlp_1", "mlp_2"))
    assert torch.allclose(r.fp["mlp.down.bias"], down_b, atol=1e-6)


def test_parallel_ffn_branches_with_own_layernorms():
    """The reparam_vit pattern: each branch has its own LayerNorm on the same input; the
    affines fold into each branch's up projection, the plain norms are shared, and the
    branches merge."""
    r = fold("y = mlp(layernorm(x), hidden=24, bias=true) + mlp(layernorm(x), hidden=8, bias=true)\n"
             "x = x + y\n")
    assert r.train_ops.count("layernorm") == 2 and r.infer_ops.count("layernorm") == 1
    assert r.fp["mlp.up.weight"].shape == (32, 16)
    assert n_norm_weights(r.fp) == 0


@pytest.mark.parametrize("a1,a2,hq,hkv", [
    ("heads=2, head_dim=8", "heads=3, head_dim=8", 5, 5),
    ("heads=4, kv_heads=2, head_dim=8", "heads=2, kv_heads=1, head_dim=8", 6, 3),
    ("heads=2, head_dim=8, bias=true", "heads=1, head_dim=8, bias=true", 3, 3),
], ids=["mha", "gqa-same-group", "bias"])
def test_parallel_attention_branches_into_one_with_more_heads(a1, a2, hq, hkv):
    r = fold(f"h = rmsnorm(x)\ny = attention(h, {a1}) + attention(h, {a2})\nx = x + y\n")
    assert r.train_ops.count("attend") == 2 and r.infer_ops.count("attend") == 1
    assert r.fp["attention.q.weight"].shape == (hq * 8, 16)
    assert r.fp["attention.k.weight"].shape == (hkv * 8, 16)
    assert r.fp["attention.v.weight"].shape == (hkv * 8, 16)
    assert r.fp["attention.o.weight"].shape == (16, hq * 8)
    assert not any(n.startswith("attention_1.") for n in r.fp)
    assert torch.allclose(r.fp["attention.o.weight"],
                          torch.cat([r.tp["attention.o.weight"], r.tp["attention_1.o.weight"]], 1))
    # the merged attention keeps one cache slot with all its kv heads; decoding agrees
    cache = r.infer.new_cache(batch=2, max_len=9)
    assert [k.shape[1] for k in cache.k] == [hkv]
    x = toks(T=9, seed=3)
    with torch.no_grad():
        full = r.infer(x)
        steps = torch.cat([r.infer(x[:, i:i + 1], cache=cache) for i in range(9)], 1)
    assert_rel(steps, full, "merged attention: decode vs prefill")


# ----------------------------------------------------------------------------- weights


def test_sigma_weights_baked():
    """sigma_linear / linear(sigma=true) become plain linears holding gamma / sigma(W) W,
    with sigma from u as the training forwards left it."""
    r = fold("x = x + linear(gelu(sigma_linear(x, out=24, bias=true)), out=d, sigma=true)\n",
             train_forwards=3)
    assert r.train_ops.count("sigma_linear") == 2 and "sigma_linear" not in r.infer_ops
    assert not any("gamma" in n for n in r.fp)
    assert not any(n.endswith(".u") or n == "u" for n, _ in r.infer.named_buffers())
    for name in ("sigma_linear", "linear"):
        mod = r.train.get_submodule(name)
        w, u = r.tp[name + ".weight"], mod.u
        v = w @ u / (w @ u).norm()
        expected = r.tp[name + ".gamma"] / (v @ w @ u) * w
        assert torch.allclose(r.fp[name + ".weight"], expected, atol=1e-6), name


def test_ds_factors_materialised():
    """ds_linear keeps two plain factors: S as the exact top-nnz projection of its shadow
    (nnz non-zeros per column, scaled per column by a preceding RMSNorm gain) and D."""
    r = fold("x = x + ds_linear(gelu(ds_linear(rmsnorm(x), out=24, rank=8, nnz=3)), out=d, "
             "rank=8, nnz=2, bias=true)\n")
    assert r.train_ops.count("ds_linear") == 2 and "ds_linear" not in r.infer_ops
    assert r.infer_ops.count("linear") == r.train_ops.count("linear") + 4
    for name, d_in, nnz in (("ds_linear", 16, 3), ("ds_linear_1", 24, 2)):
        s = r.fp[name + ".sparse.weight"]
        assert s.shape == (8, d_in)
        assert bool(((s != 0).sum(0) == nnz).all()), name
        assert torch.equal(r.fp[name + ".dense.weight"], r.tp[name + ".dense"])
        shadow = r.tp[name + ".sparse"]
        keep = shadow.abs() >= shadow.abs().sort(0, descending=True).values[nnz - 1]
        assert torch.equal(s != 0, keep), name
    assert torch.allclose(r.fp["ds_linear_1.sparse.weight"],
                          r.tp["ds_linear_1.sparse"] * (r.fp["ds_linear_1.sparse.weight"] != 0))
    assert n_norm_weights(r.fp) == 0


# ----------------------------------------------------------------------------- training()


def test_training_values_resolved_and_zero_branches_removed():
    """training(a, b) takes its eval value b: scales by 1 vanish, branches scaled by 0
    (and the ops only they read) drop out. The train build still computes a."""
    r = fold("h = scale(layernorm(x), by=training(0.3, 0.0)) + scale(rmsnorm(x), by=training(0.7, 1.0))\n"
             "x = x + linear(h, out=d)\n"
             "x = gelu(x + scale(linear(x, out=d), by=training(1.0, 0.0)))\n")
    assert r.train_ops.count("scale") == 3 and "scale" not in r.infer_ops
    assert "layernorm" not in r.infer_ops and "rmsnorm" in r.infer_ops
    assert r.infer_ops.count("linear") == r.train_ops.count("linear") - 1
    assert not any(n.startswith("layernorm.") or n.startswith("linear_1.") for n in r.fp)
    # the training form computes the blend
    m = r.train.train()
    x = toks(T=5)
    with torch.no_grad():
        e = m.embed(x)
        ln = F.layer_norm(e, (16,), r.tp["layernorm.weight"], r.tp["layernorm.bias"])
        rms = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + 1e-6) * r.tp["rmsnorm.weight"]
        h = e + F.linear(0.3 * ln + 0.7 * rms, r.tp["linear.weight"])
        h = F.gelu(h + F.linear(h, r.tp["linear_1.weight"]))
        assert_rel(m(x), F.linear(h, r.tp["lm_head.weight"]), "training form")


# ----------------------------------------------------------------------------- per instance


def test_folds_inside_a_block_use_each_instance_weights():
    r = fold("block layer(x) {\n  x = x + linear(layernorm(x), out=d, bias=true)\n  return x\n}\n"
             "for i in 0..3 {\n  x = layer(x)\n}\n")
    prefixes = sorted({n.split(".layernorm")[0] for n in r.tp if ".layernorm." in n})
    assert len(prefixes) == 3
    for p in prefixes:
        w = r.tp[p + ".linear.weight"]
        assert torch.allclose(r.fp[p + ".linear.weight"], w * r.tp[p + ".layernorm.weight"])
        assert torch.allclose(r.fp[p + ".linear.bias"],
                              r.tp[p + ".linear.bias"] + w @ r.tp[p + ".layernorm.bias"], atol=1e-6)
    assert n_norm_weights(r.fp) == 0


# ----------------------------------------------------------------------------- no fold


def test_norm_also_read_by_a_nonlinear_op_keeps_its_affine():
    """h feeds a linear and a gelu: folding the affine into the linear would change the
    gelu's input, so the LayerNorm keeps its weights (and the result stays exact)."""
    r = fold("h = layernorm(x)\nx = x + linear(h, out=d) + gelu(h)\n")
    for p in ("layernorm.weight", "layernorm.bias", "linear.weight"):
        assert torch.equal(r.fp[p], r.tp[p]), p
    assert "linear.bias" not in r.fp


def test_linear_shared_by_two_call_sites_is_not_changed():
    """A linear whose weights two call sites share cannot absorb either caller's norm."""
    r = fold("let p = linear(out=d)\nx = x + p(layernorm(x))\nx = x + p(rmsnorm(x))\n")
    assert set(r.fp) == set(r.tp)
    for n in r.tp:
        assert torch.equal(r.fp[n], r.tp[n]), n


def test_layerscale_whose_linear_output_is_read_twice_stays():
    r = fold("a = linear(x, out=d)\nx = x + layerscale(a, init=0.5) * gelu(a)\n")
    assert "layerscale" in r.infer_ops and "layerscale.gamma" in r.fp
    assert torch.equal(r.fp["linear.weight"], r.tp["linear.weight"])


def test_shared_sigma_linear_is_not_baked_and_stays_exact():
    r = fold("let s = sigma_linear(out=d)\nx = x + s(gelu(s(x)))\n", train_forwards=2)
    assert "sigma_linear" in r.infer_ops and "s.gamma" in r.fp


def test_norm_in_another_class_is_not_folded_across_the_call():
    r = fold("block f(x) {\n  return layernorm(x)\n}\nx = x + linear(f(x), out=d)\n")
    assert any(n.endswith("layernorm.weight") for n in r.fp)


# ----------------------------------------------------------------------------- not foldable
# Merges that must not happen (they once did): each stays exact.


def test_attention_branches_with_different_gqa_groups():
    fold("h = rmsnorm(x)\ny = attention(h, heads=2, kv_heads=1, head_dim=8) + "
         "attention(h, heads=4, kv_heads=1, head_dim=8)\nx = x + y\n")


@pytest.mark.parametrize("first,second", [("", ", bias=true"), (", bias=true", "")],
                         ids=["second-has-bias", "first-has-bias"])
def test_attention_branches_with_different_bias(first, second):
    fold(f"h = rmsnorm(x)\ny = attention(h, heads=2, head_dim=8{first}) + "
         f"attention(h, heads=2, head_dim=8{second})\nx = x + y\n")


def test_attention_branches_with_different_rope_theta():
    fold("h = rmsnorm(x)\ny = attention(h, heads=2, head_dim=8) + "
         "attention(h, heads=2, head_dim=8, rope_theta=500)\nx = x + y\n")


def test_sum_of_one_linear_with_itself():
    fold("h = linear(x, out=d)\nx = x + (h + h)\n")


# ----------------------------------------------------------------------------- lora

LORA_CORE = ("block layer(x) {\n  x = x + linear(rmsnorm(x), out=d)\n  return x\n}\n"
             "let core = layer()\n")


def test_lora_of_a_loop_that_runs_once_merges_into_its_linear():
    r = fold(LORA_CORE + "loop j in 1 {\n  x = core(x) with lora(rank=2, alpha=4)\n}\n")
    assert "lora" in r.train_ops and "lora" not in r.infer_ops
    w, a, b = (r.tp[f"core.{n}"] for n in ("linear.weight", "lora.0.linear.A", "lora.0.linear.B"))
    g = r.tp["core.rmsnorm.weight"]
    assert_rel(r.fp["core.linear.weight"], (w + 2.0 * b @ a) * g, "W + (alpha/rank) B A")
    assert not any(".lora." in n for n in r.fp)


def test_lora_of_a_loop_that_runs_twice_is_kept_so_the_core_stays_shared():
    r = fold(LORA_CORE + "loop j in 2 {\n  x = core(x) with lora(rank=2)\n}\n")
    assert "lora" in r.infer_ops
    assert torch.equal(r.fp["core.lora.1.linear.B"], r.tp["core.lora.1.linear.B"])
    assert r.fp["core.linear.weight"].shape == r.tp["core.linear.weight"].shape
