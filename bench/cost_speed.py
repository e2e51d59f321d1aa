"""How fast archc prices a spec analytically, against counting the same numbers with torch.

    .venv/bin/python bench/cost_speed.py [--depth 48] [--repeat 50] [--seq 2048] [--profile]

Model: specs/transformer.arch with depth=48, d=512, heads=8, kv_heads=4, hidden=1376.

Rows (wall clock, time.perf_counter, medians, one process):
  archc.cost                 archc.cost(text, seq=..., **params): elaborate + analysis. A
                             spec's parse is cached by its text (the AST is immutable), so
                             this is what a search loop pays per candidate of one spec.
                             Timed in a run of its own after gc.collect(); the ratio uses it
  archc.cost, interleaved    the same, timed in rounds alternating with the torch count
                             (which leaves garbage behind: the cyclic GC then runs during
                             archc.cost)
    parse (uncached)         syntax.parse(text): what the first call of a spec adds
    elaborate                archc.frontend.elaborate of the parsed spec (bind, check, build the IR)
    analysis                 archc.analysis.cost.cost_of(program): the cost walk alone
  torch: meta build + count  archc.build under torch.device("meta") (no real allocation),
                             sum(p.numel()) and a forward under FlopCounterMode (attention in
                             the math backend so that it is counted) on a meta [1, seq] batch

Targets: archc.cost under 5 ms, and at least 100 times faster than the torch count. The
script checks that both sides give the same parameter count and FLOPs, and prints a
profile of archc.cost with --profile.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "specs" / "transformer.arch"
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=48)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1376)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=50, help="runs of archc.cost (default 50)")
    ap.add_argument("--torch-repeat", type=int, default=5,
                    help="runs of the torch count (default 5)")
    ap.add_argument("--profile", action="store_true", help="print a profile of archc.cost")
    a = ap.parse_args(argv)
    params = dict(d=a.d, depth=a.depth, heads=a.heads, kv_heads=a.kv_heads, hidden=a.hidden)
    text = SPEC_PATH.read_text()

    sys.path.insert(0, str(ROOT))
    import archc
    from archc import syntax
    from archc.analysis.cost import cost_of
    from archc.frontend import elaborate

    c = archc.cost(text, seq=a.seq, **params)  # warm: builds the parser, caches the parse
    assert "torch" not in sys.modules, "archc.cost imported torch"
    model_ast = syntax.parse(text)
    program = elaborate(model_ast, params)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    def torch_count() -> tuple[int, int]:
        for name in [k for k in sys.modules if k.startswith("archc_generated")]:
            del sys.modules[name]  # pay codegen + exec every time, as a fresh spec would
        with torch.device("meta"):
            m = archc.build(text, **params)
            n = sum(p.numel() for p in m.parameters())
            tokens = torch.zeros(1, a.seq, dtype=torch.long)
            with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), \
                    FlopCounterMode(display=False) as fc:
                m(tokens)
        return n, fc.get_total_flops()

    n_torch, flops_torch = torch_count()  # warm (torch's one-off meta/flop-counter setup)
    same = (n_torch == c.params, flops_torch == c.flops_per_token * a.seq)

    cost_t, torch_t = [], []
    rounds = a.torch_repeat
    per = max(1, a.repeat // rounds)
    for _ in range(rounds):  # interleave so that machine noise hits both sides alike
        cost_t += timed(lambda: archc.cost(text, seq=a.seq, **params), per)
        torch_t += timed(torch_count, 1)
    gc.collect()
    alone_t = timed(lambda: archc.cost(text, seq=a.seq, **params), a.repeat)
    parse_t = timed(lambda: syntax.parse(text), max(5, a.repeat // 5))
    elab_t = timed(lambda: elaborate(model_ast, params), a.repeat)
    walk_t = timed(lambda: cost_of(program, seq=a.seq), a.repeat)

    med = statistics.median
    cost_us, torch_us = med(alone_t), med(torch_t)
    print(f"transformer.arch, {', '.join(f'{k}={v}' for k, v in params.items())}, seq={a.seq}")
    print(f"  params {c.params:,}  flops/token {c.flops_per_token:,}  "
          f"kv bytes/token {c.kv_bytes_per_token:,}")
    print(f"  torch count agrees: params {same[0]}, flops {same[1]}")
    rows = [
        ("archc.cost", cost_us, f"median of {len(alone_t)} (min {min(alone_t):,.0f})"),
        ("archc.cost, interleaved", med(cost_t), f"median of {len(cost_t)} "
         f"(min {min(cost_t):,.0f})"),
        ("  parse (uncached)", med(parse_t), f"median of {len(parse_t)}"),
        ("  elaborate", med(elab_t), f"median of {len(elab_t)}"),
        ("  analysis (cost_of)", med(walk_t), f"median of {len(walk_t)}"),
        ("torch: meta build + count", torch_us, f"median of {len(torch_t)} "
         f"(min {min(torch_t):,.0f})"),
    ]
    for name, us, how in rows:
        print(f"  {name:<28} {us:>12,.0f} us   {how}")
    ratio = torch_us / cost_us
    print(f"  ratio torch / archc.cost   {ratio:12,.0f} x   (of minima: "
          f"{min(torch_t) / min(alone_t):,.0f} x; minima are steadier on a busy machine)")
    fast = cost_us < 5000
    print(f"  target archc.cost < 5 ms:        {'PASS' if fast else 'FAIL'} ({cost_us / 1e3:.2f} ms)")
    print(f"  target >= 100x faster than torch: {'PASS' if ratio >= 100 else 'FAIL'} "
          f"({ratio:,.0f}x)")
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            archc.cost(text, seq=a.seq, **params)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        print("\nprofile of 20 x archc.cost (cumulative):")
        print(out.getvalue())
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
