"""How archc's compile time grows with the size of a spec, stage by stage.

    .venv/bin/python bench/check_scaling.py [--sizes 1000,2000,5000,...] [--family linears]
                                            [--limit 30]

Generated specs of n statements (default n = 1k, 2k, 5k, 10k, 20k, 50k, 100k), in three
families:
  linears   n straight-line statements `x = x + linear(x, out=d)`: n weights, 2n ops
  stack     a stack of n/2 layers of two statements each whose body reads its index
            (`x = x + linear(rmsnorm(x), out=d) * (i + 1)`), so every iteration is
            elaborated and spliced on its own: one Stack of n/2 items, 3n ops
  shared    n statements `x = core(x)` of one shared instance: what `roll` folds back
            into one loop

Each size is timed once per stage (time.process_time: CPU seconds of this process, steadier
than wall time on a shared machine; one process; the first, smallest
size also warms the parser): parse, elaborate, verify, check (what `archc check` does:
load + verify + parameter count), every pass of the pipeline (each with the verifier after
it, as the pipeline runs it; the canonicalize row includes CSE), codegen (the torch
source), cost (archc.analysis.cost) and hash (archc.identity). The budget is raised to fit
the largest size (at its default of 200,000 ops the 100k-statement specs are refused).

Python's cyclic garbage collector is a good part of every stage (about half at 10k
statements) and its full collections land on whichever stage is running: a lone spike in
one row at one size is that, not the stage's growth; the heap is collected before each
stage to keep them apart.

Columns: seconds per stage, then microseconds per statement, and the growth exponent
between consecutive sizes, log(t2 / t1) / log(n2 / n1): ~1 is linear, ~2 quadratic.
A stage that took more than --limit seconds at one size is not run at larger ones ("-"),
nor, for a pass, the passes after it. parse, elaborate and verify always run.
Speed is reported here, not asserted: tests/trust/test_scale.py checks the complexity
without timing it.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)


def spec_text(family: str, n: int) -> str:
    """A spec of n statements (the model body's, counted as written or as iterated)."""
    head = "model big(d: int = 8, vocab: int = 16)\nx = embed(tokens, vocab=vocab, dim=d)\n"
    tail = "return lm_head(x, vocab=vocab)\n"
    if family == "linears":
        return head + "x = x + linear(x, out=d)\n" * n + tail
    if family == "stack":
        body = "  h = rmsnorm(x)\n  x = x + linear(h, out=d) * (i + 1)\n"
        return head + f"for i in 0..{max(1, n // 2)} as layers {{\n{body}}}\n" + tail
    if family == "shared":
        return head + "let core = linear(out=d)\n" + "x = core(x)\n" * n + tail
    raise SystemExit(f"unknown family {family!r}")


def stage_times(text: str, skip: set[str]) -> dict[str, float]:
    """Seconds per stage for one spec; each stage runs on the previous one's output.
    Stages in `skip` are not run; a skipped pass skips the rest of the pipeline."""
    import archc
    from archc import syntax
    from archc.analysis.cost import cost_of
    from archc.param_count import count_params
    from archc.codegen.torch import generate
    from archc.frontend import Budget, elaborate
    from archc.identity import architecture_hash
    from archc.passes import default_pipeline
    from archc.verify import verify

    budget = Budget(max_nodes=10**8, max_source_bytes=10**9)
    out: dict[str, float] = {}

    def timed(name, fn):
        gc.collect()  # so a stage does not pay for the garbage of the one before
        start = time.process_time()
        value = fn()
        out[name] = time.process_time() - start
        return value

    model = timed("parse", lambda: syntax.parse(text, "<bench>"))
    program = timed("elaborate", lambda: elaborate(model, {}, budget))
    timed("verify", lambda: verify(program))
    if "check" not in skip:
        timed("check", lambda: (verify(archc.load(text, budget=budget).program),
                                count_params(program)))
    if "cost" not in skip:
        timed("cost", lambda: cost_of(program, seq=64))
    if "hash" not in skip:
        timed("hash", lambda: architecture_hash(program))
    compiled = program
    pipeline = default_pipeline()
    for p in pipeline.passes:
        if p.name in skip:
            return out
        compiled = timed(p.name, lambda: verify(p.run(compiled, pipeline.options), p.name))
    if "codegen" not in skip:
        timed("codegen", lambda: generate(compiled))
    return out


def exponent(n1: int, t1: float, n2: int, t2: float) -> float | None:
    if t1 <= 0 or t2 <= 0:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                    help="statement counts, comma-separated")
    ap.add_argument("--family", action="append", choices=("linears", "stack", "shared"),
                    help="which generated specs (repeatable; default all three)")
    ap.add_argument("--limit", type=float, default=30.0,
                    help="seconds after which a stage is not run at larger sizes")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    for family in a.family or ("linears", "stack", "shared"):
        print(f"\n{family}: {spec_text(family, 2).splitlines()[2].strip()} ...")
        rows: dict[str, list[tuple[int, float]]] = {}
        skip: set[str] = set()
        for n in sizes:
            times = stage_times(spec_text(family, n), skip)
            for name, t in times.items():
                rows.setdefault(name, []).append((n, t))
                if t > a.limit:
                    skip.add(name)
        _print(rows, sizes)
    return 0


def _print(rows: dict[str, list[tuple[int, float]]], sizes: list[int]) -> None:
    print(f"  {'stage':<12}" + "".join(f"{n:>10,}" for n in sizes) +
          "   us/stmt (largest)   growth exponents")
    for name, points in rows.items():
        times = dict(points)
        cells = "".join(f"{times[n]:>10.3f}" if n in times else f"{'-':>10}" for n in sizes)
        n_last, t_last = points[-1]
        per = 1e6 * t_last / n_last
        exps = []
        for (n1, t1), (n2, t2) in zip(points, points[1:]):
            e = exponent(n1, t1, n2, t2)
            exps.append(f"{e:.2f}" if e is not None else "?")
        print(f"  {name:<12}{cells}   {per:>8.1f}            {' '.join(exps)}")


if __name__ == "__main__":
    sys.exit(main())
