"""Metamorphic relations over generated specs: properties that need no oracle (issue 8
item 7). Each takes a `Case` from tests/fuzz/specgen.py and raises `Violation` when the
relation does not hold; an `ArchcError` from a generated (valid) spec propagates, since a
valid spec that archc refuses is a finding too.

- rolled_unrolled: the default build (loops kept rolled) and the `unroll` pipeline
  (`archc compile --unroll`) have the same state-dict names and, with one set of weights,
  the same logits.
- infer_reparam: the train build in eval, `archc.reparam(model)` and the inference build
  (`mode="infer"`) loaded with reparam's weights compute the same logits; the inference
  build's state-dict names are reparam's.
- decode_prefill: feeding a prompt token by token (and in two chunks) through a cache gives
  the logits of the full forward.
- format_hash: `archc.format` is idempotent and keeps `archc.hash`.
- cost_params: `archc.cost(...).params` equals the built module's parameter count.
- cost_flops: `archc.cost(...).flops` equals torch's FlopCounterMode over one forward, as
  tests/analysis/test_cost.py measures it (math SDPA backend so attention is counted).
- same_source: the generated source is byte-identical in two fresh processes with
  different PYTHONHASHSEED (`sources_in_subprocess`).

Weights are perturbed away from their init before comparing (LoRA B, LayerScale and norm
gains start at values that would hide a wrong fold or a dropped adapter).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import archc
from archc.errors import ArchcError

ROOT = Path(__file__).resolve().parents[2]
# Relative tolerances (of the largest logit). Relations that compare two builds of the same
# arithmetic run in float64, where reordered sums agree to ~1e-12, so a tight bound tells
# a real difference from roundoff; reparam's folded weights are made in float32.
TOL = {"float32": 1e-3, "float64": 1e-7}
BATCH = 2


class Violation(AssertionError):
    """A metamorphic relation that does not hold, with what differed."""

    def __init__(self, relation: str, detail: str):
        super().__init__(f"{relation}: {detail}")
        self.relation = relation
        self.detail = detail


class NotApplicable(Exception):
    """The relation has nothing to compare for this spec (e.g. no cache to decode with)."""


def _torch():
    import torch

    return torch


def tokens_for(case, seq: int = 5, seed: int = 0):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, case.vocab, (BATCH, seq), generator=g)


def perturb(model, seed: int = 0):
    """Move every weight off its init, reproducibly."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def run(model, tokens, case, runtime=None, **kw):
    """One forward at the case's run-time params (or `runtime`), from a fixed seed."""
    torch = _torch()
    with torch.no_grad():
        torch.manual_seed(0)
        return model(tokens, **(case.runtime if runtime is None else runtime), **kw)


def bindings(case) -> list[dict[str, int]]:
    """The run-time bindings a relation tries: the case's, and each run-time count at
    1 and at its max (3), where a rolled loop and its unrolled or cached twin part ways."""
    out = [dict(case.runtime)]
    for name in case.runtime:
        out += [{**case.runtime, name: 1}, {**case.runtime, name: 3}]
    return out


def close(relation: str, a, b, what: str) -> None:
    torch = _torch()
    if a.shape != b.shape:
        raise Violation(relation, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}")
    if not torch.isfinite(a).all():  # the reference itself overflows: nothing to compare
        raise NotApplicable(f"{what}: the spec overflows {a.dtype} (no norm holds it)")
    if not torch.isfinite(b).all():
        raise Violation(relation, f"{what}: non-finite logits where the reference is finite")
    diff = (a - b).abs().max().item()
    scale = max(1.0, a.abs().max().item())
    if diff > TOL[str(a.dtype).removeprefix("torch.")] * scale:
        raise Violation(relation, f"{what}: max |diff| {diff:.3g}")


@functools.lru_cache(maxsize=4)
def _loaded(text: str):
    return archc.load(text)


def loaded(case):
    """The case's spec, loaded once: the relations of one case share it (and its compiled
    programs, cached per pass options), as a user's loop over builds of one spec would.
    A relation that changes what a Spec caches loads its own (rolled_unrolled)."""
    return _loaded(case.text)


def built(case, mode: str = "train", double: bool = False):
    """The module with reproducible weights: its init draws from the global generator,
    so that is seeded too (otherwise a case passes or fails with the process's history)."""
    torch = _torch()
    torch.manual_seed(0)
    model = perturb(archc.build(loaded(case), mode=mode))
    return model.to(torch.float64) if double else model


# ---------------------------------------------------------------------------- relations

def rolled_unrolled(case) -> None:
    from archc.api import compile_program
    from archc.passes import PassOptions

    rolled = built(case, double=True).eval()
    flat_spec = archc.load(case.text)
    flat_spec.compiled[PassOptions()] = compile_program(flat_spec, "train", (), unroll=True)
    flat = archc.build(flat_spec).to(_torch().float64)
    names_a, names_b = list(rolled.state_dict()), list(flat.state_dict())
    if names_a != names_b:
        only = sorted(set(names_a) ^ set(names_b))[:4]
        raise Violation("rolled_unrolled", f"state-dict names differ: {only}")
    flat.load_state_dict(rolled.state_dict())
    flat.eval()
    x = tokens_for(case)
    for rt in bindings(case):
        close("rolled_unrolled", run(rolled, x, case, rt), run(flat, x, case, rt), f"logits {rt}")


def infer_reparam(case) -> None:
    model = built(case).eval()
    deploy = archc.reparam(model)
    infer = archc.build(loaded(case), mode="infer")
    if sorted(infer.state_dict()) != sorted(deploy.state_dict()):
        raise Violation("infer_reparam", "inference build and reparam differ in weights")
    infer.load_state_dict(deploy.state_dict())
    infer.eval()
    x = tokens_for(case)
    for rt in bindings(case):
        want = run(model, x, case, rt)
        close("infer_reparam", want, run(deploy, x, case, rt), f"train-eval vs reparam {rt}")
        close("infer_reparam", want, run(infer, x, case, rt), f"train-eval vs infer build {rt}")


def decode_prefill(case, seq: int = 5) -> None:
    torch = _torch()
    model = built(case, double=True).eval()
    if not hasattr(model, "new_cache"):
        raise NotApplicable("no attention keeps a cache")
    x = tokens_for(case, seq)
    cut = seq // 2
    for rt in bindings(case):  # one binding for the whole decode (a change is an error)
        full = run(model, x, case, rt)
        try:
            cache = model.new_cache(batch=BATCH, max_len=seq)
            steps = [run(model, x[:, t:t + 1], case, rt, cache=cache) for t in range(seq)]
        except ArchcError as e:
            raise NotApplicable(f"refused: {e.message}") from None
        close("decode_prefill", full, torch.cat(steps, 1), f"token by token {rt}")
        cache = model.new_cache(batch=BATCH, max_len=seq)
        parts = [run(model, x[:, :cut], case, rt, cache=cache),
                 run(model, x[:, cut:], case, rt, cache=cache)]
        close("decode_prefill", full, torch.cat(parts, 1), f"chunks {cut}+{seq - cut} {rt}")


def format_hash(case) -> None:
    once = archc.format(case.text)
    if archc.format(once) != once:
        raise Violation("format_hash", "format is not idempotent")
    if archc.hash(once) != archc.hash(case.text):
        raise Violation("format_hash", "format changed the hash")


def cost_params(case) -> None:
    model = archc.build(loaded(case))
    counted = sum(p.numel() for p in model.parameters())
    predicted = archc.cost(loaded(case)).params
    if counted != predicted:
        raise Violation("cost_params", f"cost says {predicted}, module has {counted}")


def measured_flops(model, tokens, runtime) -> int:
    torch = _torch()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
            FlopCounterMode(display=False) as counter:
        torch.manual_seed(0)
        model(tokens, **runtime)
    return counter.get_total_flops()


def cost_flops(case) -> None:
    model = archc.build(loaded(case))
    runs = [(3, rt) for rt in bindings(case)] + [(6, case.runtime)]
    # In training an MoE's capacity drops tokens (cost prices every token at its top-k
    # experts) and sigma-Reparam runs a power iteration: measure those in eval, where no
    # token is dropped. sigma(W) is still work per forward, not per token: a constant excess.
    if {"moe", "sigma"} & case.features:
        model.eval()
    if "head_loop" in case.features:
        # the first forward of each head loop picks its heads by entropy (once, kept as
        # state); a loop's later iterations run first at a larger count
        for rt in bindings(case):
            measured_flops(model, tokens_for(case, 3), rt)
    excess: dict[str, int] = {}
    for seq, rt in runs:  # two lengths pin both the per-token matmuls and attention's seq term
        c = archc.cost(loaded(case), seq=seq, batch=BATCH, **rt)
        total = measured_flops(model, tokens_for(case, seq), rt)
        if "halting" in case.features:
            # an early exit runs fewer iterations than the count
            ok = total <= c.flops or "sigma" in case.features
        elif "sigma" in case.features:
            extra = total - c.flops
            ok = extra >= 0 and excess.setdefault(json.dumps(rt, sort_keys=True), extra) == extra
        else:
            ok = total == c.flops
        if not ok:
            raise Violation("cost_flops", f"seq {seq} {rt}: cost says {c.flops}, "
                            f"torch counts {total}")
        if c.flops != c.flops_per_token * seq * BATCH:
            raise Violation("cost_flops", "flops != flops_per_token * seq * batch")


def simple_backend():
    """The torch backend as a backend without composite prims would be: what it lacks
    is decomposed (archc/codegen/backend.py prepare), so it runs what a plain one would."""
    from dataclasses import replace

    from archc.codegen import backend as backends
    from archc.ops.prims import PRIMS

    torch_backend = backends.get("torch")
    lowerings = {k: v for k, v in torch_backend.lowerings.items() if not PRIMS[k].composite}
    return replace(torch_backend, name="simple", lowerings=lowerings, complete=False)


def decomposed_composite(case) -> None:
    """backend == torch: an inference build through a backend that lowers no composite
    prim (each decomposed into simple prims) computes the torch build's logits."""
    from archc.api import compile_program
    from archc.codegen import backend as backends

    spec = loaded(case)
    program = compile_program(spec, "infer")
    simple = simple_backend()
    if not simple.unsupported(program):
        raise NotApplicable("no composite prim to decompose")
    try:
        program = backends.prepare(program, simple, "infer")
    except ArchcError as e:
        if e.code == "A055":  # a composite without a decomposition yet: refused, not run
            raise NotApplicable(f"refused: {e.message}") from None
        raise
    torch = _torch()
    torch.manual_seed(0)
    model = perturb(archc.build(spec, mode="infer")).eval()
    other = simple.build(program, spec).eval()
    other.load_state_dict(model.state_dict())
    x = tokens_for(case)
    for rt in bindings(case):
        close("decomposed_composite", run(model, x, case, rt), run(other, x, case, rt),
              f"composite vs decomposed {rt}")


RELATIONS = {
    "rolled_unrolled": rolled_unrolled,
    "decomposed_composite": decomposed_composite,
    "infer_reparam": infer_reparam,
    "decode_prefill": decode_prefill,
    "format_hash": format_hash,
    "cost_params": cost_params,
    "cost_flops": cost_flops,
}


# ------------------------------------------------------------------- two processes

_SOURCE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from relations import source_digest
json.dump([source_digest(text) for text in json.load(sys.stdin)], sys.stdout)
"""


def source_digest(text: str) -> str:
    """sha256 of the generated train and inference sources of a spec."""
    digest = hashlib.sha256()
    try:
        for mode in ("train", "infer"):
            digest.update(archc.compile_source(text, mode=mode).encode())
    except ArchcError as e:
        return "archc-error " + e.code
    return digest.hexdigest()


def sources_in_subprocess(texts: list[str], hashseed: str) -> list[str]:
    """The sha256 of each spec's generated source, computed in a fresh interpreter."""
    env = {**os.environ, "PYTHONHASHSEED": hashseed,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", _SOURCE_SCRIPT, here], input=json.dumps(texts),
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"source subprocess failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def same_source(texts: list[str]) -> list[int]:
    """Indices of specs whose generated source differs between two processes (hash seeds
    0 and 4242) or between them and this process."""
    a = sources_in_subprocess(texts, "0")
    b = sources_in_subprocess(texts, "4242")
    here = [source_digest(text) for text in texts]
    return [k for k, (x, y, z) in enumerate(zip(a, b, here)) if not x == y == z]


# ------------------------------------------------------------------- known failures
# Generated constructs that break a relation while their fix is open. The CI tests keep
# the generator away from them (specgen's `avoid`) and pin each with an xfail reproducer
# in test_metamorphic.py; once the fix lands, delete the entry and the fuzz covers the
# construct again. feature: (relations it breaks, "*" for all, why)
KNOWN: dict[str, tuple] = {}


def known_for(relation: str) -> frozenset:
    """The features to keep out of the generator when testing `relation`."""
    return frozenset(f for f, (rels, _) in KNOWN.items() if "*" in rels or relation in rels)


def known_reason(case, relation: str, violation: bool = True) -> str | None:
    """Why a failure of `relation` on `case` is expected today, if it is. A violation is
    blamed first on a feature known to break this relation, an error (refusal,
    traceback) first on one known to break every relation."""
    specific, general = (lambda rels: relation in rels), (lambda rels: "*" in rels)
    for wanted in ((specific, general) if violation else (general, specific)):
        for feature in sorted(case.features):
            if wanted(KNOWN.get(feature, ((), ""))[0]):
                return f"{feature}: {KNOWN[feature][1]}"
    return None
