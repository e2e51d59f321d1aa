"""The long fuzz campaign of issue 8 item 7: generated valid specs checked by metamorphic
relations, and mutated specs/*.arch checked for "archc errors only".

    .venv/bin/python bench/fuzz.py [--cases 100000] [--seed 0] [--jobs 2] [--timeout 10]
                                   [--out fuzz-failures] [--mutation-share 0.5]
                                   [--relations rolled_unrolled,decode_prefill,...]
                                   [--avoid-known]

Case k of a campaign is a pure function of (--seed, k): generated from specgen's
RandomDraw, or a mutant of a spec from specs/ (tests/fuzz/mutate.py), so any case can be
replayed alone. Each generated case runs every relation of tests/fuzz/relations.py; each
chunk of 100 cases also compares its generated sources across two fresh processes with
different PYTHONHASHSEED (same_source).

Outcome counts printed at the end:
  gen ok / gen n/a              a relation held / had nothing to compare (no cache)
  gen violation:<relation>      a relation failed on a valid spec
  gen archc-error               archc refused a spec the generator thinks valid
  gen traceback:<Type>          another exception on a valid spec
  mut ok / mut ok-big           a mutant built and ran / checked but too large to build
  mut archc-error               a mutant refused with an ArchcError (the expected outcome)
  gen/mut internal-error        an ArchcError A900: archc's verifier caught its own bug
  mut traceback:<Type> / hang   a mutant raised something else / ran past --timeout
Failures are split by whether a known open issue explains them ("[known: ...]": a
generated construct in relations.KNOWN, a mutant's failure class in mutate.KNOWN). Every failing case is saved under --out as <outcome>/<case>.arch
(the spec text, exactly as run) with a .txt beside it (seed, outcome, detail, features);
at most --keep per outcome. Each worker limits its address space to --memory GiB so a
mutant that allocates terabytes fails as MemoryError rather than taking the machine.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import random
import re
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fuzz")]

CHUNK = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    p.add_argument("--out", default="fuzz-failures", help="folder for failing cases")
    p.add_argument("--keep", type=int, default=20, help="failing cases saved per outcome")
    p.add_argument("--mutation-share", type=float, default=0.5)
    p.add_argument("--relations", default="", help="comma-separated subset (default all)")
    p.add_argument("--avoid-known", action="store_true",
                   help="keep the generator away from constructs with known open bugs")
    p.add_argument("--memory", type=float, default=6.0, help="GiB of address space per job")
    args = p.parse_args(argv)
    if args.cases < 0 or args.jobs < 1 or args.timeout <= 0 or args.keep < 0:
        p.error("--cases, --keep >= 0; --jobs >= 1; --timeout > 0")
    return args


def case_seed(seed: int, k: int) -> int:
    return seed * 1_000_003 + k


def is_mutation(seed: int, k: int, share: float) -> bool:
    return random.Random(case_seed(seed, k) ^ 0x5EED).random() < share


def run_generated(k: int, args, relations) -> list[tuple[str, str, str, str]]:
    """[(outcome, detail, text, features)] of one generated case, one per relation."""
    import archc
    from mutate import Hang, on_alarm
    from relations import KNOWN, NotApplicable, Violation, known_reason
    from specgen import generate_seeded

    avoid = frozenset(KNOWN) if args.avoid_known else frozenset()
    case = generate_seeded(case_seed(args.seed, k), avoid)
    feats = ",".join(sorted(case.features))
    out = []
    for name in relations:
        fn = RELATIONS_BY_NAME[name]
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            fn(case)
            outcome, detail = "ok", ""
        except NotApplicable:
            outcome, detail = "n/a", ""
        except Violation as e:
            outcome, detail = f"violation:{name}", e.detail
        except archc.ArchcError as e:
            kind = "internal-error" if e.code == "A900" else "archc-error"
            outcome, detail = kind, f"{name}: {e.code} {e.message}"
        except Hang:
            outcome, detail = "hang", name
        except Exception as e:
            outcome, detail = f"traceback:{type(e).__name__}", f"{name}: {str(e)[:200]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if outcome not in ("ok", "n/a"):
            why = known_reason(case, name, outcome.startswith("violation"))
            if why:
                outcome += f" [known: {why.split(':')[0]}]"
        out.append((outcome, detail, case.text, feats))
    return out


def run_mutation(k: int, args, sources) -> tuple[str, str, str, str]:
    from mutate import judge, known_class, mutant

    rng = random.Random(case_seed(args.seed, k))
    text = mutant(rng.choice(sources), rng)
    outcome, detail = judge(text, timeout=args.timeout)
    known = known_class(outcome, detail)
    if known:
        outcome += f" [known: {known}]"
    return outcome, detail, text, ""


RELATIONS_BY_NAME: dict = {}


def worker(task):
    """Run one chunk of cases; returns (counts, failures)."""
    start, stop, args = task
    import torch

    torch.set_num_threads(1)
    from mutate import SPECS, seeds
    from relations import RELATIONS, same_source

    RELATIONS_BY_NAME.update(RELATIONS)
    relations = [r for r in (args.relations.split(",") if args.relations else RELATIONS)]
    sources = seeds(generated=len(SPECS))
    counts: collections.Counter = collections.Counter()
    failures = []
    texts = []
    for k in range(start, stop):
        if is_mutation(args.seed, k, args.mutation_share):
            rows = [("mut",) + run_mutation(k, args, sources)]
        else:
            rows = [("gen",) + r for r in run_generated(k, args, relations)]
            texts.append((k, rows[0][3]))
        for kind, outcome, detail, text, feats in rows:
            counts[f"{kind} {outcome}"] += 1
            if outcome not in ("ok", "ok-big", "n/a", "archc-error") or \
                    (kind == "gen" and outcome == "archc-error"):
                failures.append((k, kind, outcome, detail, text, feats))
    if texts and (not args.relations or "same_source" in args.relations):
        try:
            differ = same_source([t for _, t in texts])
        except Exception as e:  # noqa: BLE001 - a campaign reports, it does not stop
            differ = []
            counts[f"gen traceback:{type(e).__name__} (same_source)"] += 1
        counts["gen ok"] += len(texts) - len(differ)
        for j in differ:
            k, text = texts[j]
            counts["gen violation:same_source"] += 1
            failures.append((k, "gen", "violation:same_source", "sources differ", text, ""))
    return counts, failures


def limit_memory(gib: float) -> None:
    size = int(gib * 2**30)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    except (ValueError, OSError):
        pass


def save(out: Path, failures, keep: int, seed: int) -> int:
    saved: collections.Counter = collections.Counter()
    for k, kind, outcome, detail, text, feats in sorted(failures):
        folder = re.sub(r"[^A-Za-z0-9_.:-]+", "_", f"{kind}-{outcome}")
        if saved[folder] >= keep:
            continue
        saved[folder] += 1
        path = out / folder
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{k}.arch").write_text(text, errors="surrogatepass")
        (path / f"{k}.txt").write_text(
            f"case {k} of --seed {seed} ({kind})\noutcome: {outcome}\ndetail: {detail}\n"
            f"features: {feats}\n", errors="backslashreplace")
    return sum(saved.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = [(a, min(a + CHUNK, args.cases), args) for a in range(0, args.cases, CHUNK)]
    t0 = time.perf_counter()
    totals: collections.Counter = collections.Counter()
    failures = []
    with multiprocessing.get_context("fork").Pool(
            args.jobs, initializer=limit_memory, initargs=(args.memory,),
            maxtasksperchild=20) as pool:
        for done, (counts, fails) in enumerate(pool.imap_unordered(worker, tasks), 1):
            totals.update(counts)
            failures += fails
            print(f"\r{min(done * CHUNK, args.cases)}/{args.cases} cases "
                  f"{time.perf_counter() - t0:.0f} s", end="", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    print(file=sys.stderr)
    print(f"fuzz: {args.cases} cases, --seed {args.seed}, --jobs {args.jobs}, "
          f"--timeout {args.timeout} s: {elapsed:.1f} s")
    for key in sorted(totals):
        print(f"  {totals[key]:8d}  {key}")
    bad = [f for f in failures if "[known" not in f[2]]
    n = save(Path(args.out), failures, args.keep, args.seed) if failures else 0
    print(f"failures: {len(failures)} ({len(bad)} not explained by a known open issue); "
          f"{n} saved under {args.out}/")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
