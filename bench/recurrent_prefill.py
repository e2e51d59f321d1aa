"""Recurrent Transformer prefill on CPU: the exact tiled scan vs the per-position (naive) scan.

    .venv/bin/python bench/recurrent_prefill.py [--threads 1] [--d 64 --depth 2 --heads 4
                                                 --hidden 172 --batch 1]
                                                [--lengths 128,256,512,1024,2048]
                                                [--repeats 5 --budget 8] [--profile [--profile-len 512]]

specs/recurrent_transformer.arch: each layer's keys/values at earlier positions come from the
layer's own output there, so the layer runs as a scan over positions (archc/runtime/scan.py
recurrent_scan). Each generated layer has an attribute `scan_mode`:
  naive  at every position, concatenate all earlier keys/values and attend over them
  tiled  (default) exact tiled prefill: after step t the keys [t+1-L, t] (L = lowbit(t+1))
         are added to queries [t+1, t+L] as one dense block with online softmax
Both are the same computation; one model is built (the spec's own defaults: d=64, depth=2,
heads=4, hidden=172) and every layer's scan_mode is switched between runs, so the two modes
use the same weights.

For each length T: the full-sequence forward (prefill, no cache) of a [batch, T] token batch,
in eval mode under torch.no_grad(), timed with time.perf_counter. Rounds alternate which mode
goes first (AB, BA, ...); a length gets --repeats rounds, fewer once its rounds so far took
more than --budget seconds (at least 1): naive's cost grows as T^2 and the defaults should run
in ~1-2 minutes on 2 cores. The first round's logits of the two modes are compared
(max |naive - tiled|, tolerance 1e-4: online softmax sums in another order). Reported: ms per
prefill (median), and naive/tiled (> 1: tiled faster). Target: tiled beats naive from 512
tokens on.

Threads default to 1: the scan is a chain of ~40-70 small ops per position (one position,
d=64), which intra-op threads cannot speed up; with 2 threads on a busy 2-core machine the
scan ran up to 20x slower (thread wake-ups/spinning while the other core is taken).

--profile (also run automatically when the target is missed, at the first length >= 512 that
misses it, or --profile-len): where one prefill's time goes in each mode, under
torch.profiler. Top-level aten ops are grouped into matmul work
(linear/matmul/mm/bmm), bookkeeping (cat/split/slice/views/copies/allocations) and other
(elementwise, norms, softmax pieces); time outside aten ops is Python (the scan loop, module
calls, runtime helpers; the profiler's per-op cost inflates both sides, so op counts are
printed too). The matmul FLOPs (counted from the shapes, the same in both modes) are set
against this machine's measured GEMM rate to show how long the arithmetic itself would take.
"""

from __future__ import annotations

import argparse
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

SPEC = ROOT / "specs" / "recurrent_transformer.arch"
MODES = ("naive", "tiled")

MATMUL = {"aten::linear", "aten::matmul", "aten::mm", "aten::bmm", "aten::addmm"}
BOOKKEEPING = {"aten::cat", "aten::split", "aten::split_with_sizes", "aten::slice",
               "aten::select", "aten::view", "aten::reshape", "aten::transpose", "aten::t",
               "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::contiguous",
               "aten::clone", "aten::copy_", "aten::_unsafe_view", "aten::as_strided",
               "aten::alias", "aten::stack", "aten::new_zeros", "aten::new_full",
               "aten::zeros", "aten::full", "aten::empty", "aten::empty_like",
               "aten::detach", "aten::lift_fresh", "aten::narrow", "aten::chunk"}


def set_mode(model, mode: str) -> int:
    n = 0
    for mod in model.modules():
        if hasattr(mod, "scan_mode"):
            mod.scan_mode = mode
            n += 1
    return n


@torch.no_grad()
def run(model, mode: str, tokens):
    set_mode(model, mode)
    t = time.perf_counter()
    out = model(tokens)
    return time.perf_counter() - t, out


def gemm_rate() -> float:
    """FLOP/s of a 512^3 float32 matmul on this machine (best of 5)."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 512 ** 3 / best


def matmul_flops(cfg: dict, batch: int, t_len: int) -> float:
    """Matmul FLOPs of one prefill (2 per multiply-add), the same in both modes: per layer
    and position q, k, v of the input, k, v of the output, o, and the SwiGLU; the attention
    meets each earlier key once plus the diagonal, for logits and values; then the lm_head.
    (Agrees with torch.utils.flop_counter to 1% at the defaults.)"""
    d, hidden, depth, vocab = cfg["d"], cfg["hidden"], cfg["depth"], cfg["vocab"]
    proj = 2 * d * d * 6 + 2 * d * hidden * 3
    attn = 2 * 2 * d * (t_len * (t_len + 1) / 2)
    return batch * (depth * (proj * t_len + attn) + 2 * d * vocab * t_len)


def top_level_ops(trace_events) -> list[tuple[str, float]]:
    """(name, us) of the aten ops not nested in another op, from a chrome trace."""
    ops = sorted((e for e in trace_events if e.get("cat") == "cpu_op"
                  and e.get("ph") == "X"), key=lambda e: (e["ts"], -e["dur"]))
    top, end = [], float("-inf")
    for e in ops:
        if e["ts"] >= end - 1e-3:
            top.append((e["name"], e["dur"]))
            end = e["ts"] + e["dur"]
    return top


def profile_prefill(model, tokens, walls: dict[str, float], n_layers: int, cfg: dict) -> None:
    """torch.profiler over one prefill per mode. The trace is read back from its chrome JSON
    export: at T=512 a prefill is ~250k profiler events, which torch's own Python event tree
    (prof.events(), key_averages()) takes about a minute to build; the JSON takes seconds."""
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    t_len = tokens.shape[1]
    steps = n_layers * t_len
    rate = gemm_rate()
    flops = matmul_flops(cfg, tokens.shape[0], t_len)
    rows: dict[str, dict[str, float]] = {}
    for mode in MODES:
        set_mode(model, mode)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            model(tokens)
            wall = (time.perf_counter() - t) * 1e3
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                trace = json.load(f)
        events = trace["traceEvents"] if isinstance(trace, dict) else trace
        top = top_level_ops(events)
        cat = {"matmul": 0.0, "bookkeeping": 0.0, "other": 0.0}
        for name, us in top:
            k = "matmul" if name in MATMUL else "bookkeeping" if name in BOOKKEEPING \
                else "other"
            cat[k] += us / 1e3
        aten = sum(cat.values())
        cats = [us for name, us in top if name == "aten::cat"]
        rows[mode] = {
            "wall, no profiler (ms)": walls[mode] * 1e3,
            "wall under profiler (ms)": wall,
            "top-level aten ops": len(top),
            "  per scan step": len(top) / steps,
            "time in aten ops (ms)": aten,
            "  matmul: linear/matmul/mm/bmm": cat["matmul"],
            "  bookkeeping: cat/split/views": cat["bookkeeping"],
            "    of which aten::cat": sum(cats) / 1e3,
            "    aten::cat calls": len(cats),
            "  other: elementwise/norms": cat["other"],
            "outside aten: Python (ms)": wall - aten,
            "  per scan step (us)": (wall - aten) / steps * 1e3,
        }
    print(f"\n  profile of one prefill, T={t_len} ({n_layers} layers x {t_len} positions = "
          f"{steps} scan steps), torch.profiler, top-level aten ops:")
    print(f"    {'':<34}{'naive':>12}{'tiled':>12}")
    for key in rows["naive"]:
        a, b = rows["naive"][key], rows["tiled"][key]
        fmt = (lambda v: f"{v:12.0f}") if "ops" in key or "calls" in key else \
            (lambda v: f"{v:12.1f}")
        print(f"    {key:<34}{fmt(a)}{fmt(b)}")
    print(f"    matmul work: {flops / 1e9:.3f} GFLOP in either mode = {flops / rate * 1e3:.1f} ms at "
          f"this machine's GEMM rate ({rate / 1e9:.1f} GFLOP/s, 512^3 fp32)")
    for mode in MODES:
        r = rows[mode]
        w = r["wall under profiler (ms)"]
        print(f"    {mode}: of the profiled wall, matmul ops "
              f"{100 * r['  matmul: linear/matmul/mm/bmm'] / w:.0f}%, bookkeeping "
              f"{100 * r['  bookkeeping: cat/split/views'] / w:.0f}% (cat "
              f"{100 * r['    of which aten::cat'] / w:.0f}%), other ops "
              f"{100 * r['  other: elementwise/norms'] / w:.0f}%, Python "
              f"{100 * r['outside aten: Python (ms)'] / w:.0f}%")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=172)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lengths", default="128,256,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=5, help="rounds per length (at most)")
    ap.add_argument("--budget", type=float, default=8.0,
                    help="no further rounds of a length once its rounds took this long (s)")
    ap.add_argument("--from-len", type=int, default=512, help="target applies from this length")
    ap.add_argument("--profile", action="store_true", help="profile even if the target is met")
    ap.add_argument("--profile-len", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    lengths = [int(x) for x in a.lengths.split(",")]
    cfg = dict(vocab=a.vocab, d=a.d, depth=a.depth, heads=a.heads, hidden=a.hidden)
    print(f"recurrent_transformer.arch prefill, scan_mode naive vs tiled: {cfg}, batch {a.batch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f}")
    torch.manual_seed(a.seed)
    model = archc.build(SPEC, **cfg).eval()
    n_layers = set_mode(model, "tiled")
    if n_layers == 0:
        raise SystemExit("no layer with a scan_mode attribute")
    g = torch.Generator().manual_seed(a.seed)
    warm = torch.randint(0, a.vocab, (a.batch, 64), generator=g)
    for mode in MODES:
        run(model, mode, warm)

    t_start = time.perf_counter()
    print(f"  {n_layers} scanned layers; ms per prefill, median over rounds (AB/BA order):")
    print(f"    {'T':>6} {'naive ms':>11} {'tiled ms':>11} {'naive/tiled':>12} {'per-round':>10} "
          f"{'rounds':>7} {'max|diff|':>10}  target")
    ok, missed, walls_at = True, [], {}
    for t_len in lengths:
        tokens = torch.randint(0, a.vocab, (a.batch, t_len), generator=g)
        times = {m: [] for m in MODES}
        diff = None
        for r in range(a.repeats):
            order = MODES if r % 2 == 0 else MODES[::-1]
            outs = {}
            for mode in order:
                dt, outs[mode] = run(model, mode, tokens)
                times[mode].append(dt)
            if diff is None:
                diff = (outs["naive"] - outs["tiled"]).abs().max().item()
            if sum(times["naive"]) + sum(times["tiled"]) > a.budget:
                break
        med = {m: statistics.median(times[m]) for m in MODES}
        walls_at[t_len] = med
        ratio = med["naive"] / med["tiled"]
        per_round = statistics.median(x / y for x, y in zip(times["naive"], times["tiled"]))
        same = diff <= 1e-4
        ok &= same
        verdict = ""
        if t_len >= a.from_len:
            hit = ratio > 1.0
            verdict = "PASS" if hit else "FAIL"
            if not hit:
                missed.append(t_len)
        print(f"    {t_len:>6} {med['naive'] * 1e3:>11.1f} {med['tiled'] * 1e3:>11.1f} "
              f"{ratio:>12.3f} {per_round:>10.3f} {len(times['naive']):>7} {diff:>10.2g}"
              f"{'' if same else ' MISMATCH'}  {verdict}")
    judged = [t for t in lengths if t >= a.from_len]
    verdict = ("not measured (no length >= {})".format(a.from_len) if not judged
               else "PASS" if not missed else "FAIL at T = " + ", ".join(map(str, missed)))
    print(f"  target (tiled faster than naive for T >= {a.from_len}): {verdict}"
          f"   [timing took {time.perf_counter() - t_start:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f}]")

    if a.profile or missed:
        t_len = a.profile_len or (missed[0] if missed else a.from_len)
        tokens = torch.randint(0, a.vocab, (a.batch, t_len), generator=g)
        if t_len in walls_at:
            walls = walls_at[t_len]
        else:
            walls = {m: run(model, m, tokens)[0] for m in MODES}
        profile_prefill(model, tokens, walls, n_layers, cfg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
