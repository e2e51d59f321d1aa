"""archc.reparam: inference latency of the train-time module (in eval) vs its folded form.

    .venv/bin/python bench/reparam.py [--specs reparam_vit,slab,sigma_reparam,dsformer,transformer]
                                      [--batch 8 --seq 128 --d 256 --depth 2 --branches 4]
                                      [--threads N] [--iters 20 --warmup 2] [--profile]

For each spec: `archc.build` the train module, make it look trained (every 0/1-d parameter,
i.e. norm gains and shifts, biases, RepBN's alpha, sigma-Reparam's gamma, gets N(0, 0.1)
noise, so folding an identity affine proves nothing; then --train-forwards no_grad forwards
in train mode so BatchNorm running statistics and sigma-Reparam's power-iteration vector u
move off their initial values), put it in eval, and build the folded module with
`archc.reparam(model)`. Before timing, the logits are compared: max|train - folded| divided by
max|train logits| (the output scale) must be <= --tol.

Reported per spec, in one table:
  params    parameters of the module before / after folding (buffers not counted)
  linears   nn.Linear-like modules (nn.Linear, SigmaLinear, DSLinear) before / after
  ops       top-level aten ops of one forward (torch.profiler: aten ops not called from
            another aten op, i.e. the ops the generated Python issues) before / after
  GFLOP     FLOPs of one forward (torch.utils.flop_counter, SDPA counted as math)
  latency   medians of an eval, torch.no_grad forward of the [B, T] batch: both modules live
            in one process and are timed in rounds, alternating which goes first (AB, BA,
            ...; with a third module each goes first in turn), after --warmup untimed rounds
  ratio     folded / train median, the per-round median of folded / train (robust to drift),
            the ratio of the minima (least disturbed by other processes), the ratio of the
            process CPU time medians (time.process_time: time spent descheduled by other
            processes does not count; with --threads 1 the least noisy), and two
            predictions: "flop" = GFLOP after / before (a FLOP-bound forward) and "ops" =
            ops after / before (a forward bound by per-op overhead). A measured ratio
            near the flop prediction with ops cut much more means the saving is op overhead
            that the matmuls hide at this size.

reparam_vit with b branches trains b attention and b FFN branches per layer; in eval they
all read the layer input, and the fold merges them into one attention with b times the heads
and one FFN with b times the hidden units (the norms' affines go into the projections, and
the b affine-free LayerNorms on one input become one). The matmul FLOPs stay the same, so the
expected saving is the b-1 removed attention/FFN launches, LayerNorms and branch adds per
layer, not a b-fold cut of the layer. Unless --no-vit-baseline, the train module with one
branch of the merged width (branches=1, heads*b, hidden*b) is also built and timed in the same
rounds: that is what perfect merging can reach, and the share of that saving the folded
module achieves is printed.

What the fold changes in the others: slab drops the LayerNorm half of each LN/RepBN blend and
folds the eval RepBN (a per-channel affine) into the next linears; sigma_reparam bakes
gamma / sigma(W) W into plain linears (no spectral-norm estimate per linear per forward);
dsformer keeps its two factors but stores S already projected to its top-nnz entries (no
topk/scatter per forward; S stays a dense matrix, so the matmuls are unchanged); transformer
folds the RMSNorm gains into the linears after them (one multiply per norm).

Minor page faults per forward (getrusage) are printed for both modules: merging branches makes
the intermediates b times larger (reparam_vit's FFN hidden activation is [B, T, b*hidden]),
and once they pass glibc's mmap/trim thresholds every forward maps and zeroes fresh pages,
which can cost more than the merge saves. Running with MALLOC_MMAP_THRESHOLD_=1000000000
MALLOC_TRIM_THRESHOLD_=1000000000 in the environment (glibc keeps freed memory) shows the
latency without that effect.

The machine may be shared: the 1-minute load average is printed before and after, and a
warning when a measurement's interquartile range exceeds 5% of its median. With more
threads than free CPUs, every parallel op waits for a descheduled worker, so latency follows
the op count rather than the FLOPs (the merged forms then look much faster than they are
on an idle machine); --threads 1 suffers least.

--profile prints, for each spec, the aten ops whose counts differ and the top of
torch.profiler's self-CPU table for both modules.
"""

from __future__ import annotations

import argparse
import contextlib
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

SPECS = ("reparam_vit", "slab", "sigma_reparam", "dsformer", "transformer")


def spec_params(name: str, a) -> dict:
    """Params for a spec at width d: head size 32, FFN widths in the specs' own ratios."""
    d, depth = a.d, a.depth
    heads = a.heads or max(1, d // 32)
    hidden_172 = a.hidden or max(1, round(d * 172 / 64))  # the specs' 172 at d=64
    if name == "reparam_vit":
        # spec default d=64, heads=2, head_dim=16, hidden=96 per branch: a branch is half
        # the width in attention and 1.5x in FFN; keep those ratios
        return dict(d=d, depth=depth, branches=a.branches, heads=a.heads or max(1, d // 64),
                    head_dim=32, hidden=a.hidden or d * 3 // 2, vocab=a.vocab)
    if name == "transformer":
        return dict(d=d, depth=depth, heads=heads, kv_heads=max(1, heads // 2),
                    hidden=hidden_172, vocab=a.vocab)
    if name == "dsformer":
        return dict(d=d, depth=depth, heads=heads, hidden=hidden_172, vocab=a.vocab,
                    rank=a.rank or max(1, d // 2), nnz=4)
    return dict(d=d, depth=depth, heads=heads, hidden=hidden_172, vocab=a.vocab)


def make_trained(model: torch.nn.Module, tokens: torch.Tensor, forwards: int, seed: int):
    """Noise on 0/1-d parameters and a few train-mode forwards (BatchNorm stats, sigma's u)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        model.train()
        for _ in range(forwards):
            model(tokens)
    model.eval()


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def n_linears(m) -> int:
    return sum(1 for x in m.modules() if isinstance(x, torch.nn.Linear)
               or type(x).__name__ in ("SigmaLinear", "DSLinear"))


@contextlib.contextmanager
def quiet_stderr():
    """Silence the profiler's native start/stop lines (written to fd 2 by kineto)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def op_profile(m, tokens):
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        m(tokens)
    counts: dict[str, int] = {}
    top = 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        counts[e.name] = counts.get(e.name, 0) + 1
        parent = e.cpu_parent
        if parent is None or not parent.name.startswith("aten::"):
            top += 1
    return top, counts, prof


def gflops(m, tokens) -> float:
    """Counted with SDPA's math backend, two matmuls torch's counter sees (it has no
    formula for the fused CPU kernel, and archc no longer adds one on import)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(tokens)
    return fc.get_total_flops() / 1e9


def minflt() -> int:
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_rounds(fns, n: int, warmup: int):
    """Wall and process-CPU times (s) and minor page faults of n rounds of each fn, rotating
    which runs first, after warmup rounds."""
    wall, cpu, faults = [[] for _ in fns], [[] for _ in fns], [[] for _ in fns]
    k = len(fns)
    for i in range(warmup + n):
        order = [(i + j) % k for j in range(k)]  # A B, B A, ... (each goes first in turn)
        for j in order:
            f, c, t = minflt(), time.process_time(), time.perf_counter()
            fns[j]()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            df = minflt() - f
            if i >= warmup:
                wall[j].append(dt)
                cpu[j].append(dc)
                faults[j].append(df)
    return wall, cpu, faults


def iqr(xs) -> float:
    if len(xs) < 4:
        return max(xs) - min(xs)
    q = statistics.quantiles(xs, n=4)
    return q[2] - q[0]


def fwd(m, tokens):
    def run():
        with torch.no_grad():
            m(tokens)
    return run


def load_note(ncpu: int, threads: int) -> str:
    try:
        l1, l5, l15 = os.getloadavg()
    except (AttributeError, OSError):
        return "load average unavailable"
    busy = l1 + threads > ncpu + 0.5
    return (f"load average {l1:.2f} {l5:.2f} {l15:.2f} on {ncpu} CPUs"
            + ("  (other processes compete with our threads: expect noise; with more than one"
               " thread every parallel op then waits for a descheduled worker, which inflates"
               " per-op cost: --threads 1 suffers least)" if busy else ""))


def main(argv=None) -> int:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", default=",".join(SPECS),
                    help=f"comma-separated subset of {','.join(SPECS)}")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--branches", type=int, default=4, help="reparam_vit branches")
    ap.add_argument("--heads", type=int, default=0, help="0: derived from d (see spec_params)")
    ap.add_argument("--hidden", type=int, default=0, help="0: derived from d")
    ap.add_argument("--rank", type=int, default=0, help="dsformer rank (0: d/2)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--threads", type=int, default=ncpu, help=f"torch threads (default {ncpu})")
    ap.add_argument("--iters", type=int, default=20, help="timed rounds per spec")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds per spec")
    ap.add_argument("--train-forwards", type=int, default=3,
                    help="train-mode forwards before folding (BatchNorm stats, sigma's u)")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="max |diff| / max |logits| allowed between train and folded")
    ap.add_argument("--no-vit-baseline", action="store_true",
                    help="skip the one-branch merged-width reparam_vit baseline")
    ap.add_argument("--profile", action="store_true", help="per-op profiles of both modules")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    names = [s.strip() for s in a.specs.split(",") if s.strip()]
    for s in names:
        if s not in SPECS:
            ap.error(f"unknown spec {s!r}; choose from {', '.join(SPECS)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    print(f"archc.reparam: train module (eval) vs folded, B={a.batch} T={a.seq} d={a.d} "
          f"depth={a.depth}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{a.iters} rounds after {a.warmup} warm-up")
    print(f"  before: {load_note(ncpu, a.threads)}")
    g = torch.Generator().manual_seed(a.seed)
    tokens = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)

    rows, ok = [], True
    t_start = time.perf_counter()
    for name in names:
        params = spec_params(name, a)
        path = ROOT / "specs" / f"{name}.arch"
        torch.manual_seed(a.seed)
        train = archc.build(path, **params)
        make_trained(train, tokens, a.train_forwards, a.seed)
        folded = archc.reparam(train)
        train.eval(), folded.eval()
        with torch.no_grad():
            ya, yb = train(tokens), folded(tokens)
        scale = ya.abs().max().item()
        rel = (ya - yb).abs().max().item() / max(scale, 1e-30)
        good = rel <= a.tol
        ok &= good
        print(f"\n{name} {params}")
        print(f"  logits max|train - folded| / max|train| = {rel:.2e} (scale {scale:.3g}) "
              f"{'OK' if good else f'MISMATCH > {a.tol:g}'}")

        ops_a, cnt_a, prof_a = op_profile(train, tokens)
        ops_b, cnt_b, prof_b = op_profile(folded, tokens)
        fl_a, fl_b = gflops(train, tokens), gflops(folded, tokens)

        fns = [fwd(train, tokens), fwd(folded, tokens)]
        base = None
        if name == "reparam_vit" and not a.no_vit_baseline and a.branches > 1:
            wide = dict(params, branches=1, heads=params["heads"] * a.branches,
                        hidden=params["hidden"] * a.branches)
            base = archc.build(path, **wide).eval()
            fns.append(fwd(base, tokens))
        times, cpu, faults = timed_rounds(fns, a.iters, a.warmup)
        fa_, fb_ = statistics.median(faults[0]), statistics.median(faults[1])
        ta, tb = times[0], times[1]
        cpu_ratio = statistics.median(cpu[1]) / statistics.median(cpu[0])
        ma, mb = statistics.median(ta), statistics.median(tb)
        per_round = statistics.median(y / x for x, y in zip(ta, tb))
        noise = max(iqr(ta) / ma, iqr(tb) / mb)
        print(f"  train  {ma * 1e3:8.2f} ms [{min(ta) * 1e3:.1f}..{max(ta) * 1e3:.1f}]   "
              f"folded {mb * 1e3:8.2f} ms [{min(tb) * 1e3:.1f}..{max(tb) * 1e3:.1f}]   "
              f"ratio {mb / ma:.3f} (per-round {per_round:.3f}, min/min {min(tb) / min(ta):.3f})")
        print(f"  process CPU time: train {statistics.median(cpu[0]) * 1e3:.2f} ms, folded "
              f"{statistics.median(cpu[1]) * 1e3:.2f} ms, ratio {cpu_ratio:.3f}; minor page "
              f"faults per forward: train {fa_:.0f}, folded {fb_:.0f}")
        print(f"  predictions: flop {fl_b / fl_a:.3f}  ops {ops_b / ops_a:.3f}")
        if base is not None:
            tc = times[2]
            mc = statistics.median(tc)
            possible = ma - mc
            share = (ma - mb) / possible if abs(possible) > 1e-9 else float("nan")
            print(f"  one-branch module of the merged width (heads={wide['heads']}, "
                  f"hidden={wide['hidden']}): {mc * 1e3:.2f} ms, ratio to train {mc / ma:.3f}; "
                  f"folded achieves {share:.0%} of that saving "
                  f"({(ma - mb) * 1e3:.2f} of {possible * 1e3:.2f} ms)")
            b = a.branches
            print(f"  {b} attention + {b} FFN branches per layer -> 1 + 1: branch launches "
                  f"cut {(b - 1) / b:.0%}; a purely op-bound layer would drop toward "
                  f"ops ratio {ops_b / ops_a:.3f}, a FLOP-bound one stays at {fl_b / fl_a:.3f}")
        if noise > 0.05:
            print(f"  WARNING: noisy (interquartile range {noise:.0%} of the median)")
        rows.append((name, n_params(train), n_params(folded), n_linears(train),
                     n_linears(folded), ops_a, ops_b, fl_a, fl_b, ma, mb, per_round,
                     min(tb) / min(ta), cpu_ratio, fa_, fb_, rel))

        if a.profile:
            print(f"  aten ops per forward: train {sum(cnt_a.values())}, "
                  f"folded {sum(cnt_b.values())}")
            for k in sorted(set(cnt_a) | set(cnt_b)):
                if cnt_a.get(k, 0) != cnt_b.get(k, 0):
                    print(f"    {k:<44} train {cnt_a.get(k, 0):5d}  folded {cnt_b.get(k, 0):5d}")
            for label, prof in (("train", prof_a), ("folded", prof_b)):
                print(f"  --- profile of one forward: {label}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))

    print(f"\n  after:  {load_note(ncpu, a.threads)}   ({time.perf_counter() - t_start:.0f} s)")
    print(f"\n{'spec':<14} {'params before/after':>21} {'linears':>9} {'top ops':>11} "
          f"{'GFLOP':>13} {'train ms':>9} {'folded ms':>9} {'ratio':>6} {'per-rnd':>7} "
          f"{'min':>6} {'cpu':>6} {'faults':>11} {'flop':>6} {'ops':>6} {'rel err':>8}")
    for (name, pa, pb, la, lb, oa, ob, fa, fb, ma, mb, pr, mm, cr, pfa, pfb, rel) in rows:
        print(f"{name:<14} {pa / 1e6:9.3f}M/{pb / 1e6:8.3f}M {la:4d}/{lb:<4d} {oa:5d}/{ob:<5d} "
              f"{fa:6.2f}/{fb:<6.2f} {ma * 1e3:9.2f} {mb * 1e3:9.2f} {mb / ma:6.3f} {pr:7.3f} "
              f"{mm:6.3f} {cr:6.3f} {pfa:5.0f}/{pfb:<5.0f} {fb / fa:6.3f} {ob / oa:6.3f} "
              f"{rel:8.1e}")
    print("ratio = folded/train latency (medians), per-rnd = median of per-round ratios, min = "
          "min/min, cpu = process CPU time medians,\nfaults = minor page faults per forward "
          "(median) train/folded;\nflop, ops = the ratios predicted by FLOPs and by top-level op "
          "counts; linears count SigmaLinear/DSLinear as one")
    print("RESULT:", "all outputs match" if ok else "some outputs do NOT match")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
