"""archc's compiled transformer.arch vs a hand-written PyTorch twin: speed and memory on CPU.

    .venv/bin/python bench/forward.py [--threads N] [--batch 8 --seq 256 --d 256 --depth 8
                                       --heads 8 --kv-heads 4 --hidden 688] [--compile]

Both models live in ONE process and hold the same weights (bench/reference_transformer.py
builds the twin and copies archc's weights into it by name). Before timing, the script checks
that their logits agree (max |diff| <= 1e-5).

Timing (time.perf_counter, torch.set_num_threads(--threads), default: all cores this process
may run on):
  forward   eval() + torch.no_grad(), logits for a [B, T] batch of tokens
  train     one full step: zero_grad(set_to_none=True), forward, cross-entropy over B*T
            tokens, backward, AdamW.step() (each model has its own AdamW, same settings)
  Each round times archc and the reference back to back, alternating which goes first
  (ABBA...), after --warmup untimed rounds. Reported: the median per variant, the ratio of the
  medians archc/reference (the verdict), the median of the per-round ratios (robust to drift
  on a busy machine) and the ratio of the minima. A warning is printed when the interquartile
  range exceeds 5% of the median: then the machine is too busy to resolve 3%.
  Target: ratio <= 1.03 for both.
  After the training rounds the two models' weights are compared: they run the same arithmetic
  on the same data, so they should still be identical (printed as a sanity check).

Peak memory (training step): measured with torch.profiler(profile_memory=True) around one
steady-state step (after warmup, so AdamW's state exists; gradients set to None just before
the window opens). Every allocation and free made by torch's CPU allocator inside the window
is recorded with the allocator's running total ("Total Allocated" in the trace); the peak is
the maximum of that total minus its value when the window opened. It therefore counts exactly
the tensor bytes the step needs on top of the resting state (parameters + optimizer state):
activations saved for backward, gradients, temporaries of backward and of the optimizer.
It is deterministic, immune to the other model living in the same process and to malloc/OS
page behaviour. Why not the alternatives: tracemalloc does not see torch's C++ allocations;
ru_maxrss is a process-lifetime high-water mark (needs one subprocess per variant, includes
the import of torch, and depends on glibc returning freed blocks). The resting state (params,
grads, AdamW state) is added from the tensors' sizes to give a total. The same measurement is
made for one no_grad forward (reported, not a target). Target: equal training-step peaks.
Minor page faults per forward (getrusage) are printed too: a larger live set makes glibc hand
memory back to the kernel and fault it in again, which shows up as slower elementwise ops.

--compile: both models are wrapped in torch.compile(fullgraph=True) (inductor) and measured
the same way. First torch._dynamo.explain() is run on the archc module to report graph
breaks; a graph break would make fullgraph=True fail, which is reported (the run then stops).
Inductor compiles in-process (compile_threads=1): its default worker pool keeps the CPUs busy
after the first compile and slowed the first timed steps several-fold on a 2-core machine.
Compile times are printed for information; inductor's on-disk FX graph cache (shared by the
two models when their graphs coincide, and across runs) makes them order-dependent.

--profile: print torch.profiler's per-op table of one forward for each model, and the aten op
counts, to show where the two differ.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from reference_transformer import add_size_args, archc_name_map, build_pair, size_of  # noqa: E402


def interleaved(fa, fb, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """Times (s) of n rounds of fa and fb, alternating which runs first, after warmup rounds."""
    ta, tb = [], []
    for i in range(warmup + n):
        order = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for fn, out in order:
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if i >= warmup:
                out.append(dt)
    return ta, tb


def peak_bytes(fn) -> int:
    """Peak of torch's CPU allocator total during fn(), above its value when fn started."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = sorted((e for e in events if e.get("name") == "[memory]"
                  and e.get("args", {}).get("Device Type", 0) == 0), key=lambda e: e["ts"])
    if not mem:
        return 0
    base = mem[0]["args"]["Total Allocated"] - mem[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in mem) - base


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def resting_bytes(model, opt) -> int:
    """params + grads + optimizer state."""
    ps = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return nbytes(ps) * 2 + nbytes(state)


def fmt_ms(xs) -> str:
    return f"{statistics.median(xs) * 1e3:9.2f} ms"


def report(label: str, ta, tb, target: float) -> bool:
    ma, mb = statistics.median(ta), statistics.median(tb)
    ratio = ma / mb
    per_round = statistics.median(a / b for a, b in zip(ta, tb))
    ok = ratio <= target
    spread_a = f"[{min(ta) * 1e3:.1f}..{max(ta) * 1e3:.1f}]"
    spread_b = f"[{min(tb) * 1e3:.1f}..{max(tb) * 1e3:.1f}]"
    print(f"  {label:<9} archc {fmt_ms(ta)} {spread_a:<17} reference {fmt_ms(tb)} {spread_b:<17}")
    print(f"            ratio archc/reference: {ratio:.3f} (medians)  per-round median "
          f"{per_round:.3f}  min/min {min(ta) / min(tb):.3f}  "
          f"{'PASS' if ok else 'FAIL'} (<= {target}, on the medians)")
    noise = max(_iqr(ta) / ma, _iqr(tb) / mb)
    if noise > 0.05:
        print(f"            WARNING: noisy machine (interquartile range {noise:.0%} of the median);"
              f" the ratios above are not reliable to {target - 1:.0%}")
    return ok


def _iqr(xs) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def minor_faults(fn, n: int = 5):
    """Minor page faults per call of fn (fresh pages the kernel had to map and zero)."""
    try:
        import resource
    except ImportError:
        return None
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / n


def op_counts(model, tokens) -> dict[str, int]:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(tokens)
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name.startswith("aten::"):
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def main(argv=None) -> int:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=ncpu, help=f"torch threads (default {ncpu})")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    add_size_args(ap)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per measurement")
    ap.add_argument("--iters", type=int, default=10, help="timed forward rounds")
    ap.add_argument("--train-iters", type=int, default=6, help="timed training rounds")
    ap.add_argument("--target", type=float, default=1.03)
    ap.add_argument("--compile", action="store_true",
                    help="compare both under torch.compile(fullgraph=True)")
    ap.add_argument("--profile", action="store_true", help="print per-op profiles of a forward")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    cfg = size_of(a)
    print(f"archc vs hand-written reference: transformer.arch {cfg}, B={a.batch} T={a.seq}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', torch.compile(fullgraph=True)' if a.compile else ', eager'}")
    try:
        load1 = os.getloadavg()[0]
        if load1 > 0.5:
            print(f"  note: 1-minute load average {load1:.1f} on {ncpu} CPUs before starting"
                  + ("; other processes compete for the CPUs, expect noisy timings"
                     " (--threads 1 suffers least)" if load1 + a.threads > ncpu + 0.5 else ""))
    except (AttributeError, OSError):
        pass
    A, R = build_pair(**cfg, seed=a.seed)
    n_params = sum(p.numel() for p in A.parameters())
    g = torch.Generator().manual_seed(a.seed)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    targets = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)

    A.eval(), R.eval()
    with torch.no_grad():
        diff = (A(tokens) - R(tokens)).abs().max().item()
    print(f"  {n_params / 1e6:.2f} M params; logits max|archc - reference| = {diff:.3g} "
          f"{'(OK)' if diff <= 1e-5 else '(MISMATCH > 1e-5)'}")
    if diff > 1e-5:
        return 1

    if a.profile:
        ca, cr = op_counts(A, tokens), op_counts(R, tokens)
        print(f"  aten ops per forward: archc {sum(ca.values())}, reference {sum(cr.values())}")
        for k in sorted(set(ca) | set(cr)):
            if ca.get(k, 0) != cr.get(k, 0):
                print(f"    {k:<40} archc {ca.get(k, 0):5d}  reference {cr.get(k, 0):5d}")

    fA, fR = A, R
    if a.compile:
        # Inductor's default pool of compile worker processes keeps the CPUs busy for a while
        # after the first compile, which skews timings on a small machine: compile in-process.
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = 1
        t = time.perf_counter()
        torch.compile(lambda x: (x * 2).sum(), fullgraph=True)(torch.ones(4))  # warm inductor
        print(f"  inductor warm-up: {time.perf_counter() - t:.1f} s")
        explain = torch._dynamo.explain(A)(tokens)
        print(f"  dynamo.explain(archc module): {explain.graph_count} graph(s), "
              f"{explain.graph_break_count} graph break(s)")
        for r in explain.break_reasons:
            print(f"    break: {r.reason}")
        torch._dynamo.reset()
        fA = torch.compile(A, fullgraph=True)
        fR = torch.compile(R, fullgraph=True)

    # ---------------------------------------------------------------- forward
    def fwd(m):
        def run():
            with torch.no_grad():
                m(tokens)
        return run

    if a.compile:
        for name, f in (("archc", fwd(fA)), ("reference", fwd(fR))):
            t = time.perf_counter()
            try:
                f()
            except Exception as e:  # fullgraph=True raises on a graph break
                print(f"  torch.compile(fullgraph=True) FAILED for {name}: {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}")
                return 1
            print(f"  compile (forward, no_grad) {name}: {time.perf_counter() - t:.1f} s")
    ok = True
    ta, tb = interleaved(fwd(fA), fwd(fR), a.iters, a.warmup)
    ok &= report("forward", ta, tb, a.target)
    fa, fr = minor_faults(fwd(fA)), minor_faults(fwd(fR))
    if fa is not None:
        print(f"            minor page faults per forward: archc {fa:.0f}, reference {fr:.0f}")

    # ---------------------------------------------------------------- training step
    A.train(), R.train()
    optA = torch.optim.AdamW(A.parameters(), lr=1e-3, weight_decay=0.1)
    optR = torch.optim.AdamW(R.parameters(), lr=1e-3, weight_decay=0.1)

    def step(m, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            logits = m(tokens)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
            loss.backward()
            opt.step()
            return loss.item()
        return run

    sA, sR = step(fA, optA), step(fR, optR)
    if a.compile:
        for name, f in (("archc", sA), ("reference", sR)):
            t = time.perf_counter()
            try:
                f()
            except Exception as e:
                print(f"  torch.compile(fullgraph=True) FAILED for {name} (train): "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                return 1
            print(f"  compile (train step) {name}: {time.perf_counter() - t:.1f} s")
    else:
        la, lr_ = sA(), sR()
        print(f"  first-step loss: archc {la:.6f}, reference {lr_:.6f}")
    ta, tb = interleaved(sA, sR, a.train_iters, a.warmup)
    ok &= report("train", ta, tb, a.target)

    # same weights after identical steps?
    pA, pR = dict(A.named_parameters()), dict(R.named_parameters())
    wdiff = max((pA[theirs] - pR[ours]).abs().max().item()
                for ours, theirs in archc_name_map(a.depth).items())
    print(f"  after {a.warmup + a.train_iters + 1} identical steps: max|weight diff| = {wdiff:.3g}")

    # ---------------------------------------------------------------- memory
    def window(m, opt):
        run = step(m, opt)

        def measure():
            opt.zero_grad(set_to_none=True)
            return peak_bytes(run)
        return measure

    peak_train = {}
    for name, m, opt in (("archc", fA, optA), ("reference", fR, optR)):
        peak_train[name] = window(m, opt)()
    A.eval(), R.eval()
    peak_fwd = {"archc": peak_bytes(fwd(fA)), "reference": peak_bytes(fwd(fR))}
    rest = {"archc": resting_bytes(A, optA), "reference": resting_bytes(R, optR)}
    mib = 1 / 2 ** 20
    print("  peak memory (torch CPU allocator, see docstring):")
    for label, d in (("train step", peak_train), ("forward", peak_fwd)):
        pa, pr = d["archc"], d["reference"]
        same = abs(pa - pr) <= 0.01 * max(pr, 1)
        if label == "train step":
            ok &= same  # the target; the forward peak is reported for information
        extra = (f"   resting params+grads+AdamW {rest['archc'] * mib:.1f} / "
                 f"{rest['reference'] * mib:.1f} MiB -> total {(rest['archc'] + pa) * mib:.1f} / "
                 f"{(rest['reference'] + pr) * mib:.1f} MiB") if label == "train step" else ""
        print(f"    {label:<10} archc {pa * mib:8.2f} MiB  reference {pr * mib:8.2f} MiB  "
              f"ratio {pa / max(pr, 1):.4f}  {'SAME' if same else 'DIFFERENT'}"
              f"{'' if label == 'train step' else ' (not a target)'}{extra}")

    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        for name, m in (("archc", fA), ("reference", fR)):
            with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
                m(tokens)
            print(f"\n  --- profile of one forward: {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    print("RESULT:", "all targets met" if ok else "some targets NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
