"""archc/passes/decompose.py: a composite primitive rewritten into simple ones computes
what the composite computes, with the same weights under the same state-dict keys.

One contract over a table of cases: compile a small spec that uses the composite, build
the normal module and the decomposed one (`decompose(program)` after the pipeline, then
the torch backend), load the normal build's random weights into the decomposed one
(strictly: the keys are the same) and compare logits in eval, in training where the
model is deterministic there, and through a KV cache where the spec decodes. The
decomposed build's IR types are checked against the run-time shapes as well.
"""

from __future__ import annotations

import types

import pytest
import torch

import archc
from archc import api, runtime as rt
from archc.codegen.torch import generate, root_class
from archc.ir import walk
from archc.passes.decompose import COMPOSITE, decompose

SEQ = 7

# SGT's layer with a GQA attention (kv_heads < heads, RoPE) whose projections have
# biases: the head loop's kv rows and bias rows follow its chosen heads.
GQA_LOOP = """model gqa_loop(vocab: int = 64, d: int = 32, step: int = 0 runtime)
block layer(x) {
  let attn = attention(heads=4, kv_heads=2, bias=true)
  let looped = head_loop(attn=attn, heads=3)
  a = attn(rmsnorm(x))
  o = a.heads
  loop 2 {
    a, o = looped(rmsnorm(x + a), a, o)
  }
  return x + a
}
x = embed(tokens, vocab=vocab, dim=d)
for i in 0..2 as layers { x = layer(x) }
return lm_head(rmsnorm(x), vocab=vocab)
"""


# A Recurrent Transformer layer (attention over the block's own past output, run as a
# scan) with composites before and after its attention: their subgraphs are cut into the
# scan's per-position pieces like any other nodes.
SCAN_BLOCK = """model scan_block(vocab: int = 64, d: int = 32)
block layer(x) {
  let attn = attention(heads=4, rope=false, alibi=true, past="output")
  m, w = width_route(x, groups=4, shared=1, k=2)
  h = layernorm(x) * m
  u = delta(x, attn(h), h)
  xs = streams(u, n=2)
  g, c = hyper_read(xs, n=2)
  xs = hyper_write(xs, c, w * group_fuse(swiglu(layernorm(g), hidden=48), groups=4), n=2)
  return stream_merge(xs, n=2)
}
x = embed(tokens, vocab=vocab, dim=d)
for i in 0..2 as layers { x = layer(x) }
return lm_head(layernorm(x), vocab=vocab)
"""

# spec, params, the composites it must lose, (eval exact?, train compared?, decode?,
# the training step to run at: SGT's head loops run from a layer's onset on)
CASES = {
    "delta": ("specs/hyper.arch", dict(residual="delta", d=32, depth=2, heads=4, hidden=48),
              {"delta"}, dict(exact=True, train=True, decode=True)),
    "hyper": ("specs/hyper.arch", dict(residual="hyper", d=32, depth=2, heads=4, hidden=48,
                                       n=3),
              {"hyper", "hyper_write"}, dict(exact=True, train=True, decode=True)),
    "widenet": ("specs/widenet.arch", dict(d=32, depth=2, heads=4, hidden=48, experts=4),
                {"moe"}, dict(exact=False, train=False, decode=True)),
    "sgt": ("specs/sgt.arch", dict(d=32, depth=2, heads=4, hidden=48, loop_heads=2, loops=2),
            {"head_loop"}, dict(exact=False, train=True, decode=True, step=10**6)),
    "gqa-loop": (GQA_LOOP, dict(vocab=64), {"head_loop"}, dict(exact=False, train=True, decode=True)),
    "scan-block": (SCAN_BLOCK, dict(vocab=64),
                   {"width_route", "delta", "hyper", "hyper_write", "group_fuse"},
                   dict(exact=False, train=True, decode=True, keep={"scan_attend"})),
    "mohd": ("specs/mohd.arch", dict(d=32, depth=2, heads=4, hidden=48),
             {"width_route", "group_fuse"}, dict(exact=True, train=True, decode=True)),
    "mohd-unweighted": ("specs/mohd.arch", dict(d=32, depth=1, heads=4, hidden=48,
                                                weighted=False, shared=0, k=2),
                        {"width_route", "group_fuse"}, dict(exact=True, train=True,
                                                            decode=False)),
}


def _keep(case: str) -> frozenset[str]:
    return frozenset(CASES[case][3].get("keep", ()))


def _module(program, check_shapes: bool = False):
    source = generate(program, check_shapes=check_shapes)
    module = types.ModuleType(f"decompose_test_{program.name}")
    exec(compile(source, f"<decompose {program.name}>", "exec"), module.__dict__)
    return getattr(module, root_class(program))()


def _randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights near each parameter's start, so no zero/one init hides a step."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _pair(case: str, mode: str):
    path, params, _, _ = CASES[case]
    program = api.compile_program(api.load(path, **params), mode)
    normal = _module(program)
    _randomize_(normal)
    decomposed_program = decompose(program, _keep(case), mode)
    decomposed = _module(decomposed_program)
    decomposed.load_state_dict(normal.state_dict(), strict=True)
    step = CASES[case][3].get("step")
    if step is not None:
        normal.set_step(step)
        decomposed.set_step(step)
    return normal, decomposed, decomposed_program, params


def _tokens(params) -> torch.Tensor:
    return torch.randint(0, params.get("vocab", 256), (2, SEQ),
                         generator=torch.Generator().manual_seed(1))


def _same(a, b, exact: bool, what: str) -> None:
    if exact:
        assert torch.equal(a, b), f"{what}: max diff {(a - b).abs().max().item()}"
    else:
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_decomposed_program_has_no_composite_left(case):
    path, params, gone, _ = CASES[case]
    program = api.compile_program(api.load(path, **params), "infer")
    before = {n.op for b in program.classes.values() for n in walk(b.graph)}
    assert gone <= before, f"the spec no longer uses {gone - before}"
    after = decompose(program, _keep(case), "infer")
    left = {n.op for b in after.classes.values() for n in walk(b.graph)}
    assert not (left & set(COMPOSITE)), left & set(COMPOSITE)
    assert generate(program) == generate(api.compile_program(api.load(path, **params),
                                                             "infer")), "not pure"


@pytest.mark.parametrize("case", sorted(CASES))
def test_decomposed_eval_logits_equal(case):
    normal, decomposed, _, params = _pair(case, "infer")
    toks = _tokens(params)
    with torch.no_grad():
        _same(normal.eval()(toks), decomposed.eval()(toks), CASES[case][3]["exact"], case)
    state = decomposed.state_dict()  # and the same state after it (a head loop's choice)
    for name, value in normal.state_dict().items():
        assert torch.equal(state[name], value), name


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][3]["train"]))
def test_decomposed_train_logits_and_grads_equal(case):
    normal, decomposed, _, params = _pair(case, "train")
    toks = _tokens(params)
    torch.manual_seed(0)
    a = normal.train()(toks)
    torch.manual_seed(0)
    b = decomposed.train()(toks)
    _same(a, b, CASES[case][3]["exact"], f"{case} train")
    a.square().mean().backward()
    b.square().mean().backward()
    grads = dict(decomposed.named_parameters())
    for name, p in normal.named_parameters():
        if p.grad is None:  # an unweighted router only decides: no gradient reaches it
            assert grads[name].grad is None, name
            continue
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", sorted(c for c in CASES if CASES[c][3]["decode"]))
def test_decomposed_decode_equals_normal_decode(case):
    normal, decomposed, _, params = _pair(case, "infer")
    toks = _tokens(params)
    outs = []
    with torch.no_grad():
        for model in (normal.eval(), decomposed.eval()):
            cache = model.new_cache(batch=2, max_len=SEQ)
            steps = [model(toks[:, :3], cache=cache)]
            steps += [model(toks[:, t:t + 1], cache=cache) for t in range(3, SEQ)]
            outs.append(torch.cat(steps, dim=1))
        _same(outs[0], outs[1], CASES[case][3]["exact"], f"{case} decode")
        torch.testing.assert_close(outs[1], decomposed(toks), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_decomposed_ir_types_are_the_run_time_shapes(case):
    """Every value of the decomposed graph has the shape its IR type says (weights
    included: a `weight` node's type is the tensor's shape)."""
    _, _, program, params = _pair(case, "infer")
    model = _module(program, check_shapes=True).eval()
    for sub in model.modules():
        if hasattr(sub, "scan_mode"):
            sub.scan_mode = "naive"  # one position per call: T binds to 1 in `finish`
    rt.TYPE_LOG = []
    try:
        with torch.no_grad():
            model(_tokens(params))
        log = rt.TYPE_LOG
    finally:
        rt.TYPE_LOG = None
    envs: dict[str, dict] = {}  # a symbol binds once per method (a scan's own T)
    bad = []
    for where, ir_type, kind, shape in log:
        env = envs.setdefault(where.split()[0], {"B": 2} if envs else {"B": 2, "T": SEQ})
        dims = [d.strip() for d in ir_type.split("[", 1)[1].rstrip("]").split(",") if d.strip()]
        ok = shape is not None and len(shape) == len(dims)
        for d, n in zip(dims, shape or ()):
            ok = ok and (int(d) == n if d.isdigit() else env.setdefault(d, n) == n)
        if not ok:
            bad.append((where, ir_type, shape))
    assert not bad, bad[:5]


def test_keep_leaves_a_composite_as_it_is():
    path, params, _, _ = CASES["delta"]
    program = api.compile_program(api.load(path, **params), "train")
    kept = decompose(program, keep=frozenset({"delta"}))
    assert generate(kept) == generate(program)


def test_keep_names_prims():
    """A misspelt prim in `keep` is an error, not a composite quietly decomposed."""
    program = api.compile_program(api.load(CASES["delta"][0], **CASES["delta"][1]), "infer")
    with pytest.raises(archc.ArchcError) as e:
        decompose(program, keep=frozenset({"detla"}))
    assert "detla" in e.value.message


def test_moe_in_a_training_program_is_refused_not_run_differently():
    """moe's decomposition is the eval computation; training drops tokens over capacity
    and adds a load-balance loss, so a train-mode program keeps moe or is an error."""
    path, params, _, _ = CASES["widenet"]
    program = api.compile_program(api.load(path, **params), "train")
    with pytest.raises(archc.ArchcError) as e:
        decompose(program)
    assert e.value.code == "A055" and "`moe`" in e.value.message
    assert e.value.span is not None and e.value.span.line == 23
    kept = decompose(program, keep=frozenset({"moe"}))
    assert any(n.op == "moe" for b in kept.classes.values() for n in walk(b.graph))


def test_the_own_output_scan_is_refused_unless_kept():
    """No decomposition of the scan yet: asking for one is an error naming it, and
    keeping it leaves the block's scan as the torch backend runs it."""
    program = api.compile_program(api.load("specs/recurrent_transformer.arch", d=32,
                                           heads=4, hidden=48), "infer")
    with pytest.raises(archc.ArchcError) as e:
        decompose(program, mode="infer")
    assert e.value.code == "A055" and "`scan_attend`" in e.value.message
    assert e.value.span is not None
    kept = decompose(program, keep=frozenset({"scan_attend"}), mode="infer")
    assert generate(kept) == generate(program)


def test_a_decomposed_moe_refuses_to_train():
    """The inference build computes moe as evaluated; put in training mode it raises
    rather than train without capacity drops and the load-balance loss."""
    _, decomposed, _, params = _pair("widenet", "infer")
    with pytest.raises(archc.ArchcError) as e:
        decomposed.train()(_tokens(params))
    assert e.value.code == "A055" and "moe" in e.value.message
    assert e.value.span is not None and e.value.span.line == 23


def test_every_composite_prim_is_decomposed_or_refused():
    """The op table marks composites; each has a decomposition here or a refusal."""
    from archc.ops import PRIMS
    from archc.passes.decompose import UNDECOMPOSED

    composite = {name for name, prim in PRIMS.items() if prim.composite}
    assert composite == set(COMPOSITE) | set(UNDECOMPOSED)


def test_every_composite_has_a_case():
    """A decomposition without a test case here is an untested rewrite."""
    covered = set().union(*(gone for _, _, gone, _ in CASES.values()))
    assert set(COMPOSITE) <= covered, set(COMPOSITE) - covered
