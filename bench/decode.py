"""Incremental decoding: transformer.arch (a KV cache per layer) vs stochastic_kv.arch (its
inference map shares every second layer's cache: CLA-2), tokens/s and cache bytes on CPU.

    .venv/bin/python bench/decode.py [--threads 1] [--d 256 --depth 8 --heads 8 --kv-heads 4
                                      --hidden 688 --prompt 64 --new 128 --batch 1]
                                     [--repeats 7] [--profile]

All models live in ONE process, built with the same size params (stochastic_kv's p only
matters in training). Each is run as the README's decoding API says:

    m = archc.build(spec, **params).eval(); c = m.new_cache(batch, prompt + new)
    logits = m(prompt, cache=c)                                  # prefill
    for _ in range(new): logits = m(argmax(logits[:, -1]), cache=c)   # greedy decode

in eval mode under torch.no_grad(). Variants:
  baseline   transformer.arch, archc.build(...).eval()
  shared     stochastic_kv.arch, archc.build(...).eval()  -- the README's path: the train
             build in eval mode, which still computes the shared layers' own K/V projections
             (and RoPE on their keys) and throws them away
  shared-inf stochastic_kv.arch, archc.build(..., mode="infer") -- the inference build, where
             the dce pass dropped those dead projections and their weights (only when the
             installed archc has build(mode=...)); it gets the shared model's weights, so
             its logits must equal the shared model's

Before timing: cache.nbytes of each (shared must be exactly half of baseline); and a
correctness check per model: the logits of prefill + a few decode steps equal the logits
of one full forward over the same tokens (max |diff| printed), and shared-inf's equal shared's.

Timing (time.perf_counter): each round gives every variant a fresh cache and prefills the
prompt with each, then decodes --new tokens with all variants in LOCKSTEP: at every step each
variant decodes one token, in an order rotated from round to round. So the variants share the
machine's conditions step by step (on a busy machine a burst of load hits all of them, not
one whole run); --warmup rounds are untimed. tokens/s = batch * new / (sum of a round's step
times); prefill timed separately. Reported: the median over rounds per variant, and three
shared/baseline ratios: of the medians, the median of per-round ratios, and the median over
all (round, step) pairs of baseline step time / shared step time for the same step (paired:
the most robust to load drift; the target is judged on it).
Target: the shared model with its inference map (shared-inf, the deployment build) decodes
at least as fast as the baseline (paired ratio >= 1.0); shared's ratio is printed too.

Threads default to 1: at batch 1 a decode step is a chain of ~200 tiny ops (one token,
d=256), which a second intra-op thread cannot speed up but can stall (thread wake-ups; on a
shared machine, a busy core). --threads N to change it.

--profile (also run automatically when the target is missed): where the shared model's
decode step spends its time, and what the dead K/V projections cost. torch.profiler over 16
decode steps, with the dead k/v Linear modules (layers whose inference map reads the
previous layer's K/V) wrapped in record_function("dead_kv_proj") by forward hooks, so their
time is attributed exactly; plus the aten op counts per step of each variant. The wall-clock
cost of all the dead work (projections, head split, RoPE on the dead keys) is the
shared - shared-inf step-time difference in the timing table (printed whenever shared-inf ran).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import archc  # noqa: E402
from reference_transformer import add_size_args, size_of  # noqa: E402

BASE_SPEC = ROOT / "specs" / "transformer.arch"
SHARED_SPEC = ROOT / "specs" / "stochastic_kv.arch"


def has_infer_mode() -> bool:
    return "mode" in inspect.signature(archc.build).parameters


def build(spec, seed: int, infer: bool = False, **params):
    torch.manual_seed(seed)
    if infer:
        return archc.build(spec, mode="infer", **params).eval()
    return archc.build(spec, **params).eval()


def dead_layers(spec, **params) -> list[int]:
    """Layers whose attention reads the previous layer's K/V in eval (stochastic_kv's
    inference map: odd layers), read off the generated code: the eval route of each
    select_kv. (From archc.compile_source, not inspect.getsource: the train and infer builds
    of one spec register their source in linecache under the same file name, so after the
    infer build inspect would show the infer source for the train build's class too.)"""
    import re

    src = archc.compile_source(spec, **params)
    # q = self.layers[i].attention.q(h) ... rt.select_kv(self.training, p, "shared"|"own", ...)
    layers = [int(i) for i in re.findall(r"self\.layers\[(\d+)\]\.attention\.q\(", src)]
    routes = re.findall(r'rt\.select_kv\(self\.training, [^,]+, "(\w+)"', src)
    dead = [i for i, r in zip(layers[1:], routes) if r == "shared"]
    return dead


@torch.no_grad()
def decode_round(models: dict, order: list[str], prompt: torch.Tensor, new: int):
    """One round: every model prefills the prompt (in `order`), then they decode greedily in
    lockstep, one token each in `order` per step, so all of them run under the same machine
    conditions at the same moment. Returns {name: (prefill s, [step s, ...], tokens)}."""
    caches = {k: models[k].new_cache(prompt.shape[0], prompt.shape[1] + new) for k in order}
    logits, pre, steps, toks = {}, {}, {k: [] for k in order}, {k: [] for k in order}
    for k in order:
        t = time.perf_counter()
        logits[k] = models[k](prompt, cache=caches[k])
        pre[k] = time.perf_counter() - t
    for _ in range(new):
        for k in order:
            t = time.perf_counter()
            nxt = logits[k][:, -1].argmax(-1, keepdim=True)
            logits[k] = models[k](nxt, cache=caches[k])
            steps[k].append(time.perf_counter() - t)
            toks[k].append(nxt)
    return {k: (pre[k], steps[k], torch.cat(toks[k], dim=1)) for k in order}


@torch.no_grad()
def check_incremental(model, prompt: torch.Tensor, steps: int = 8) -> float:
    """max |incremental logits - full-forward logits| over prefill + `steps` decode steps."""
    cache = model.new_cache(prompt.shape[0], prompt.shape[1] + steps)
    logits = [model(prompt, cache=cache)]
    toks = [prompt]
    for _ in range(steps):
        nxt = logits[-1][:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
        logits.append(model(nxt, cache=cache))
    inc = torch.cat(logits, dim=1)[:, : prompt.shape[1] + steps - 1]
    full = model(torch.cat(toks, dim=1)[:, :-1])
    return (inc - full).abs().max().item()


def op_counts_per_step(model, prompt, steps: int = 4) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        cache = model.new_cache(prompt.shape[0], prompt.shape[1] + steps)
        logits = model(prompt, cache=cache)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                model(nxt, cache=cache)
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name.startswith("aten::") and e.cpu_parent is None:  # top-level ops only
            counts[e.name] = counts.get(e.name, 0) + 1
    return {k: v // steps for k, v in counts.items()}


def profile_dead(model, dead: list[int], prompt, steps: int, wall_step_s: float) -> None:
    """Attribute the shared model's decode-step time, the dead K/V projections separately."""
    from torch.profiler import ProfilerActivity, profile, record_function

    handles, ctx = [], {}

    def pre(mod, args):
        ctx[id(mod)] = record_function("dead_kv_proj")
        ctx[id(mod)].__enter__()

    def post(mod, args, out):
        ctx.pop(id(mod)).__exit__(None, None, None)

    for i in dead:
        att = model.layers[i].attention
        for name in ("k", "v"):
            handles += [att[name].register_forward_pre_hook(pre),
                        att[name].register_forward_hook(post)]
    try:
        with torch.no_grad():
            cache = model.new_cache(prompt.shape[0], prompt.shape[1] + 2 * steps)
            logits = model(prompt, cache=cache)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(steps):  # warm the hooked path
                model(nxt, cache=cache)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t = time.perf_counter()
                for _ in range(steps):
                    model(nxt, cache=cache)
                prof_wall = (time.perf_counter() - t) / steps
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    dead_us = sum(e.cpu_time_total for e in events if e.key == "dead_kv_proj") / steps
    n_dead = sum(e.count for e in events if e.key == "dead_kv_proj") // steps
    # all time inside aten ops (top-level ones: children's time is inside their parent)
    top = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None
           or (e.name.startswith("aten::") and e.cpu_parent is not None
               and e.cpu_parent.name == "dead_kv_proj")]
    aten_us = sum(e.cpu_time_total for e in top) / steps
    linear_us = sum(e.cpu_time_total for e in top if e.name == "aten::linear") / steps
    n_linear = sum(1 for e in top if e.name == "aten::linear") // steps
    print(f"\n  profile of one shared decode step (torch.profiler, {steps} steps, "
          f"per step; wall under the profiler {prof_wall * 1e6:.0f} us, "
          f"without it {wall_step_s * 1e6:.0f} us):")
    print(f"    time inside aten ops          {aten_us:8.0f} us  "
          f"(the rest of the wall time is Python: module calls, runtime helpers)")
    print(f"    aten::linear, all {n_linear:3d} calls   {linear_us:8.0f} us")
    print(f"    dead K/V projections ({n_dead} calls, layers {dead}, module call incl.) "
          f"{dead_us:6.0f} us = {100 * dead_us / (prof_wall * 1e6):.1f}% of the profiled step")
    print("    top ops by self CPU time:")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    for line in table.splitlines():
        print("      " + line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    add_size_args(ap)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (prefill)")
    ap.add_argument("--new", type=int, default=128, help="decoded tokens")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    ap.add_argument("--target", type=float, default=1.0,
                    help="shared-inf/baseline tokens/s >= this")
    ap.add_argument("--profile", action="store_true",
                    help="profile the shared decode step even if the target is met")
    ap.add_argument("--no-infer", action="store_true", help="skip the mode='infer' build")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    cfg = size_of(a)
    print(f"decode: transformer.arch vs stochastic_kv.arch {cfg}, batch {a.batch}, "
          f"prompt {a.prompt}, new {a.new}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f}")

    models = {"baseline": build(BASE_SPEC, a.seed, **cfg),
              "shared": build(SHARED_SPEC, a.seed, **cfg)}
    if has_infer_mode() and not a.no_infer:
        inf = build(SHARED_SPEC, a.seed, infer=True, **cfg)
        res = inf.load_state_dict(models["shared"].state_dict(), strict=False)
        if res.missing_keys:
            raise SystemExit(f"infer build wants weights the train build lacks: "
                             f"{res.missing_keys}")
        models["shared-inf"] = inf
        print(f"  shared-inf: archc.build(mode='infer'), shared's weights less "
              f"{len(res.unexpected_keys)} dead tensors "
              f"({sum(models['shared'].state_dict()[k].numel() for k in res.unexpected_keys)}"
              f" params)")
    else:
        print("  (archc.build has no mode='infer': shared-inf skipped)")

    g = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, a.vocab, (a.batch, a.prompt), generator=g)

    # ---- cache bytes
    nbytes = {k: m.new_cache(a.batch, a.prompt + a.new).nbytes for k, m in models.items()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    half = nbytes["shared"] * 2 == nbytes["baseline"]
    print(f"  KV cache for batch {a.batch} x {a.prompt + a.new} positions (cache.nbytes):")
    for k in models:
        per_tok = nbytes[k] / (a.batch * (a.prompt + a.new))
        print(f"    {k:<10} {nbytes[k]:>10,d} bytes ({per_tok:,.0f} per token)   "
              f"{params[k] / 1e6:.3f} M params")
    print(f"    shared / baseline = {nbytes['shared'] / nbytes['baseline']:.4f}  "
          f"{'PASS' if half else 'FAIL'} (exactly half)")

    # ---- correctness
    ok = half
    for k, m in models.items():
        diff = check_incremental(m, prompt)
        good = diff <= 1e-4
        ok &= good
        print(f"  {k:<10} incremental vs full-forward logits: max|diff| = {diff:.3g} "
              f"{'ok' if good else 'MISMATCH'}")
    if "shared-inf" in models:
        with torch.no_grad():
            toks = torch.randint(0, a.vocab, (a.batch, a.prompt), generator=g)
            diff = (models["shared"](toks) - models["shared-inf"](toks)).abs().max().item()
        ok &= diff == 0.0
        print(f"  shared vs shared-inf logits: max|diff| = {diff:.3g} "
              f"{'ok' if diff == 0.0 else 'MISMATCH'}")
    dead = dead_layers(SHARED_SPEC, **cfg)
    print(f"  shared layers reading the previous layer's K/V in eval: {dead}")

    # ---- timing
    names = list(models)
    pre = {k: [] for k in names}
    dec = {k: [] for k in names}      # decode seconds per round
    steps = {k: [] for k in names}    # per-step seconds, aligned across models
    for r in range(a.warmup + a.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        res = decode_round(models, order, prompt, a.new)
        if r >= a.warmup:
            for k in names:
                pre[k].append(res[k][0])
                dec[k].append(sum(res[k][1]))
                steps[k].extend(res[k][1])
    ntok = a.batch * a.new
    tps = {k: [ntok / t for t in dec[k]] for k in names}
    print(f"\n  {a.repeats} rounds (+{a.warmup} warmup), models in lockstep (one token each "
          f"per step, order rotated each round); median [min..max] over rounds "
          f"(load average now {os.getloadavg()[0]:.2f}):")
    for k in names:
        med = statistics.median(tps[k])
        print(f"    {k:<10} decode {med:8.1f} tok/s [{min(tps[k]):.1f}..{max(tps[k]):.1f}]  "
              f"step: median {statistics.median(steps[k]) * 1e3:6.2f} ms   "
              f"prefill {a.prompt} tok {statistics.median(pre[k]) * 1e3:7.2f} ms")
    base = statistics.median(tps["baseline"])
    results = {}
    judged = "shared-inf" if "shared-inf" in names else "shared"
    for k in names[1:]:
        ratio = statistics.median(tps[k]) / base
        per_round = statistics.median(x / y for x, y in zip(tps[k], tps["baseline"]))
        # each step's baseline time over this model's time for the same step (same moment)
        paired = statistics.median(b / x for b, x in zip(steps["baseline"], steps[k]))
        results[k] = paired
        tag = f"  {'PASS' if paired >= a.target else 'FAIL'} (paired >= {a.target})"
        if k != judged:
            tag += f" [informational: the target is on {judged}]"
        print(f"    {k}/baseline tokens/s: ratio of medians {ratio:.3f}, per-round median "
              f"{per_round:.3f}, paired per-step median {paired:.3f}{tag}")
    if "shared-inf" in models:
        s_, i_ = statistics.median(steps["shared"]), statistics.median(steps["shared-inf"])
        paired = statistics.median(x - y for x, y in zip(steps["shared"], steps["shared-inf"]))
        print(f"    dead K/V work in the train build's eval path (shared - shared-inf): "
              f"{(s_ - i_) * 1e6:.0f} us per decode step by median step times, "
              f"{paired * 1e6:.0f} us paired ({100 * paired / s_:.1f}% of shared's step)")

    met = results[judged] >= a.target
    if a.profile or not met:
        profile_dead(models["shared"], dead, prompt, steps=16,
                     wall_step_s=statistics.median(steps["shared"]))
        print("\n  aten ops per decode step (top-level):")
        counts = {k: op_counts_per_step(m, prompt) for k, m in models.items()}
        keys = sorted(set().union(*counts.values()), key=lambda n: -counts["baseline"].get(n, 0))
        print("    " + f"{'op':<36}" + "".join(f"{k:>12}" for k in names))
        for n in keys:
            print("    " + f"{n:<36}" + "".join(f"{counts[k].get(n, 0):>12}" for k in names))
        print("    " + f"{'total':<36}" + "".join(f"{sum(counts[k].values()):>12}" for k in names))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
