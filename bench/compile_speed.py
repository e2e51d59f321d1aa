"""How fast archc turns specs/transformer.arch into an IR, Python source and an nn.Module.

    .venv/bin/python bench/compile_speed.py [--depth 48] [--repeat 50] [--build-repeat 5]
                                            [--threads N]

Model params: d=512, heads=8, kv_heads=4, hidden=1376 (vocab default), depth from --depth.

Columns: wall-clock median and minimum (time.perf_counter), and the median process CPU time
(time.process_time, all threads). On an idle machine wall ~ CPU for the single-threaded rows;
on a busy one wall time includes waiting for a CPU, and the CPU-time column is the steadier
measure of the work done. Verdicts use the wall median.

Rows:
  import archc              the first `import archc` in this process (no torch)
  spec->IR cold             the first archc.load(text) in this process: builds the parser
  spec->IR warm             archc.load(text) afterwards (parse + check + elaborate)
  spec->source              archc.compile_source(text) (the above + codegen); run interleaved
                            with spec->IR, so "codegen alone" is a median of paired differences
  spec->module (cpu)        archc.build(text): load + codegen + compile/exec of the
                            generated module + construction, with real parameter allocation
                            and torch's default init. archc.build caches the exec'd module in
                            sys.modules by source digest; this script removes that entry
                            before each run, so every run pays compile+exec ("fresh"). The
                            cached path is reported as its own row.
  hand-written ref (cpu)    constructing bench/reference_transformer.py's Transformer with the
                            same params: the floor for building this model in torch by hand
  param alloc+init          allocating tensors of the same shapes as the built module's
                            parameters and buffers and running torch's default initialisers
                            on them (Linear: kaiming_uniform_, Embedding: normal_, norms:
                            ones_) -- the cost any model of this size pays
  spec->module - alloc+init median over rounds of (spec->module (cpu) - param alloc+init):
                            a difference of two ~1 s numbers, noisy on a busy machine
  spec->module, init skipped  archc.build with every nn.Module's reset_parameters made a no-op
                            (as torch.nn.utils.skip_init does): parameters are torch.empty,
                            i.e. address space only, never touched. This is spec->module minus
                            parameter allocation/init measured directly, and is the row checked
                            against the 100 ms target. The hand-written model, built the same
                            way, is shown beside it, and "archc extra" is the median of the
                            per-round differences.
  spec->module (meta)       archc.build under `with torch.device('meta')`: no real allocation
                            or init. torch's device mode intercepts every tensor-creating call
                            (and runs uniform_ through a Python decomposition), which adds a
                            fixed overhead that the hand-written model pays too: see the
                            "reference (meta)" rows. The first meta build in a process pays a
                            one-off torch cost (importing its meta decompositions); that run is
                            shown separately and not counted.

All repeated measurements run their variants interleaved (rotating order each round) so that
machine noise hits them alike.

Targets: spec->IR warm < 50 ms; spec->module excluding parameter allocation < 100 ms (checked
on the "init skipped" row; the "meta" rows carry torch's device-mode overhead, which the
hand-written model pays too, so they are not checked against the target).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "specs" / "transformer.arch"
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


class Timed:
    """Wall and CPU times (ms) of repeated runs."""

    is_diff = False  # a series of paired differences: its minimum means nothing

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, fn):
        c, t = time.process_time(), time.perf_counter()
        r = fn()
        self.wall.append((time.perf_counter() - t) * 1e3)
        self.cpu.append((time.process_time() - c) * 1e3)
        return r

    @property
    def med(self) -> float:
        return statistics.median(self.wall)


def once(fn) -> Timed:
    t = Timed()
    t.run(fn)
    return t


def interleaved(fns: dict, n: int) -> dict[str, Timed]:
    """Run each fn n times, interleaved, rotating the order every round."""
    names = list(fns)
    out = {k: Timed() for k in names}
    for i in range(n):
        for k in names[i % len(names):] + names[:i % len(names)]:
            out[k].run(fns[k])
    return out


def paired_diff(a: Timed, b: Timed) -> Timed:
    d = Timed()
    d.is_diff = True
    d.wall = [x - y for x, y in zip(a.wall, b.wall)]
    d.cpu = [x - y for x, y in zip(a.cpu, b.cpu)]
    return d


@contextlib.contextmanager
def skip_init():
    """Make every nn.Module subclass's reset_parameters a no-op (what torch.nn.utils.skip_init
    does for one module): parameters are then torch.empty -- a malloc whose pages are never
    touched -- so construction runs without the cost of allocating (faulting in) and
    initialising them."""
    import torch.nn as nn

    seen, stack, patched = set(), [nn.Module], []
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                if "reset_parameters" in sub.__dict__:
                    patched.append((sub, sub.__dict__["reset_parameters"]))
    try:
        for cls, _ in patched:
            cls.reset_parameters = lambda self, *a, **k: None
        yield
    finally:
        for cls, fn in patched:
            cls.reset_parameters = fn


def forget_generated_modules() -> None:
    for name in [k for k in sys.modules if k.startswith("archc_generated")]:
        del sys.modules[name]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=48)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1376)
    ap.add_argument("--repeat", type=int, default=50,
                    help="runs for spec->IR, spec->source and the builds without real "
                         "parameter init (default 50)")
    ap.add_argument("--build-repeat", type=int, default=5,
                    help="runs for builds that allocate and initialise real parameters "
                         "(default 5; ~140 M params each at the default size)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads before building (default: torch's default)")
    a = ap.parse_args(argv)
    params = dict(d=a.d, depth=a.depth, heads=a.heads, kv_heads=a.kv_heads, hidden=a.hidden)
    text = SPEC_PATH.read_text()
    rows: list[tuple[str, Timed | None, str, str]] = []  # (name, times, how, verdict)

    def verdict(ms: float, limit: float) -> str:
        return f"{'PASS' if ms < limit else 'FAIL'} (< {limit:g})"

    sys.path.insert(0, str(ROOT))
    t = Timed()
    archc = t.run(lambda: __import__("archc"))
    rows.append(("import archc", t, "once", ""))
    rows.append(("spec->IR cold (first load)", once(lambda: archc.load(text, **params)), "once", ""))
    torch_loaded_by_load = "torch" in sys.modules  # load is documented not to import torch

    archc.compile_source(text, **params)
    t = interleaved({"load": lambda: archc.load(text, **params),
                     "source": lambda: archc.compile_source(text, **params)}, a.repeat)
    how = f"median of {a.repeat}"
    rows.append(("spec->IR warm", t["load"], how, verdict(t["load"].med, 50)))
    rows.append(("spec->source", t["source"], how, ""))
    rows.append(("  codegen alone (paired diff)", paired_diff(t["source"], t["load"]), how, ""))

    tt = Timed()
    torch = tt.run(lambda: __import__("torch"))
    from torch import nn
    rows.append(("import torch", tt, "once", ""))
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    def build_fresh():
        forget_generated_modules()
        return archc.build(text, **params)

    first = Timed()
    model = first.run(build_fresh)
    rows.append(("spec->module (cpu), first", first, "once", ""))
    n_params = sum(p.numel() for p in model.parameters())
    ref_params = dict(params, vocab=model.emb.weight.shape[0])
    shapes = []
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            shapes.append((type(mod), p.shape, p.dtype))
        for b in mod.buffers(recurse=False):
            shapes.append((None, b.shape, b.dtype))
    del model

    def alloc_init():
        out = []
        with torch.no_grad():
            for kind, shape, dtype in shapes:
                x = torch.empty(shape, dtype=dtype)
                if kind is not None and issubclass(kind, nn.Linear) and x.dim() == 2:
                    nn.init.kaiming_uniform_(x, a=math.sqrt(5))
                elif kind is not None and issubclass(kind, nn.Embedding):
                    nn.init.normal_(x)
                elif kind is not None:
                    nn.init.ones_(x)
                else:
                    x.zero_()  # buffers (rope tables): just touch them
                out.append(x)
        return out

    sys.path.insert(0, str(ROOT / "bench"))
    from reference_transformer import ModelArgs, Transformer as Reference

    ref_args = ModelArgs(**ref_params)

    def build_meta():
        with torch.device("meta"):
            return build_fresh()

    def build_noinit():
        with skip_init():
            return build_fresh()

    def ref_noinit():
        with skip_init():
            return Reference(ref_args)

    def ref_meta():
        with torch.device("meta"):
            return Reference(ref_args)

    # Builds that allocate ~0.5 GB are slow and noisy: few runs, interleaved.
    t = interleaved({"build": build_fresh, "cached": lambda: archc.build(text, **params),
                     "alloc": alloc_init, "ref": lambda: Reference(ref_args)}, a.build_repeat)
    how = f"median of {a.build_repeat}"
    rows.append(("spec->module (cpu), fresh exec", t["build"], how, ""))
    rows.append(("spec->module (cpu), cached exec", t["cached"], how, ""))
    rows.append(("hand-written reference (cpu)", t["ref"], how, ""))
    rows.append((f"param alloc+init ({n_params / 1e6:.1f} M params)", t["alloc"], how, ""))
    rows.append(("spec->module - alloc+init", paired_diff(t["build"], t["alloc"]),
                 "paired diffs", "(noisy)"))

    t = interleaved({"build": build_noinit, "ref": ref_noinit}, a.repeat)
    how = f"median of {a.repeat}"
    rows.append(("spec->module, init skipped", t["build"], how, verdict(t["build"].med, 100)))
    rows.append(("hand-written reference, init skipped", t["ref"], how, ""))
    rows.append(("  archc extra (paired diff)", paired_diff(t["build"], t["ref"]), how, ""))

    rows.append(("spec->module (meta), first [torch warmup]", once(build_meta), "once", ""))
    ref_meta()
    t = interleaved({"meta": build_meta, "ref": ref_meta}, a.repeat)
    rows.append(("spec->module (meta)", t["meta"], how, "(info: see docstring)"))
    rows.append(("hand-written reference (meta)", t["ref"], how, ""))
    rows.append(("  archc extra (paired diff)", paired_diff(t["meta"], t["ref"]), how, ""))

    print(f"archc compile speed: transformer.arch {params}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    try:
        load1 = os.getloadavg()[0]
        print(f"1-minute load average {load1:.1f} on {os.cpu_count()} CPUs"
              + (" (busy machine: wall times include waiting for a CPU)" if load1 > 1 else ""))
    except (AttributeError, OSError):
        pass
    if torch_loaded_by_load:
        print("NOTE: archc.load imported torch")
    w = max(len(r[0]) for r in rows)
    print(f"{'stage'.ljust(w)}  {'wall ms':>9}  {'min ms':>8}  {'cpu ms':>8}  {'how':<14}  target")
    for name, tm, how, verd in rows:
        lo = "-" if tm.is_diff else f"{min(tm.wall):.1f}"
        print(f"{name.ljust(w)}  {tm.med:9.1f}  {lo:>8}  "
              f"{statistics.median(tm.cpu):8.1f}  {how:<14}  {verd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
