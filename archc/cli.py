"""The `archc` command line.

    archc check   SPEC [--set NAME=VALUE ...]       parse, check, elaborate
    archc compile SPEC [-o DIR] [--print-ir] ...    write the PyTorch module file
    archc info    SPEC [--set ...]                  parameters: unique and applied
    archc run     SPEC [--set ...]                  compile, build, run a sample batch
    archc cost    SPEC [--set ...] [--seq N] [--batch N] [--json]   params, FLOPs, KV, memory
    archc fmt     SPEC [--check | -w]               print the canonical form of the spec
    archc hash    SPEC [--set ...]                  the canonical architecture hash

Spec errors print a located diagnostic and exit 1; usage errors exit 2; an internal
error (a bug in archc) prints what it can say about where it happened and exits 3
(ARCHC_BACKTRACE=1 shows the traceback instead). Output cut off by a closed pipe
(`archc cost ... | head`) ends quietly with 141, as a shell reports a writer killed by
SIGPIPE. `check`, `info`, `cost`, `fmt` and `hash` never import torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import ArchcError


def _parse_value(text: str):
    """A --set value: int, float, true/false, or a string (for choice params)."""
    low = text.strip()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(low)
        except ValueError:
            pass
    if len(low) >= 2 and low[0] == low[-1] and low[0] in "\"'":
        return low[1:-1]
    return low


def _settings(items: list[str], parser: argparse.ArgumentParser) -> dict:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            parser.error(f"--set takes NAME=VALUE, got {item!r}")
        out[name.strip()] = _parse_value(value)
    return out


def _positive(text: str) -> int:
    """An argparse type: a positive int (sizes, lengths, budgets)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value


def _seed(text: str) -> int:
    """An argparse type: a random seed, 0 .. 2**64 - 1 (what torch.manual_seed takes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
    if not 0 <= value < 2 ** 64:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**64 - 1, got {value}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to a .arch file")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="override a model param (repeatable)")
    p.add_argument("--error-format", choices=("human", "json"), default="human",
                   help="how to print spec errors (json: one object per line, for tools)")
    p.add_argument("--max-params", type=_positive, default=None,
                   help="refuse specs with more parameters than this")
    p.add_argument("--max-nodes", type=_positive, default=None,
                   help="refuse specs with more IR ops than this")
    p.add_argument("--max-bytes", type=_positive, default=None,
                   help="refuse to build weights of more bytes than this "
                   "(default: the memory available)")
    p.add_argument("--max-source-bytes", type=_positive, default=None,
                   help="refuse spec files longer than this (default 131072)")


def _mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("train", "infer"), default="train",
                   help="train (default) keeps train-time choices; infer fixes them to the "
                   "spec's inference map and drops what that leaves dead")
    p.add_argument("--rewrite", action="append", default=[], choices=("widen",),
                   help="apply an opt-in rewrite: widen turns a stack of n layers of h heads "
                   "into one layer of n*h heads (Wide Attention)")


def _backend_names() -> list[str]:
    from .codegen.backend import names

    return names()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archc", description="Compile .arch depth-topology specs to PyTorch modules.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="parse and check a spec",
                       description="Parse, check and elaborate a spec; print a one-line "
                       "summary. Does not import torch.")
    _common(p)

    p = sub.add_parser("compile", help="write the PyTorch module for a spec",
                       description="Compile a spec to one readable Python file holding its "
                       "nn.Module. The same spec and options give byte-identical output.")
    _common(p)
    p.add_argument("-o", "--output", default="out", metavar="DIR",
                   help="directory for the generated file (default: out)")
    p.add_argument("--print-ir", action="store_true", help="print the IR after elaboration")
    p.add_argument("--print-after", action="append", default=[], metavar="PASS",
                   help="print the IR after a pass (repeatable; 'elaborate' for the input)")
    p.add_argument("--time-passes", action="store_true", help="print how long each pass took")
    p.add_argument("--unroll", action="store_true",
                   help="unroll static loops and stacks into straight-line code")
    p.add_argument("--backend", default="torch", choices=_backend_names(),
                   help="the backend that generates the files (default torch; "
                   "`archc backends` lists them)")
    _mode(p)

    p = sub.add_parser("info", help="parameter counts and KV-cache bytes",
                       description="Print the model's params, its parameter counts (unique: "
                       "each weight once; applied: once per use, so a loop of r counts r "
                       "times) and its KV-cache bytes per token with and without the kv "
                       "plan, and forward FLOPs per token (for a model with a training "
                       "step, what its schedules add at that step). Does not import torch.")
    _common(p)
    _mode(p)
    p.add_argument("--seq", type=_positive, default=2048,
                   help="sequence length for the FLOP count (default 2048)")

    p = sub.add_parser("run", help="compile, build and run a spec on a sample batch",
                       description="Compile a spec, build the module, run a forward pass "
                       "on a random token batch and print a short report.")
    _common(p)
    p.add_argument("--batch", type=_positive, default=2, help="batch size (default 2)")
    p.add_argument("--seq", type=_positive, default=16, help="sequence length (default 16)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="also write the generated file here")

    p = sub.add_parser("cost", help="parameters, FLOPs per token, KV-cache and activation "
                       "memory", description="Price a spec analytically from its IR: "
                       "parameters (unique and applied), forward FLOPs per token at --seq "
                       "(matmuls and attention, as torch's FlopCounterMode counts them), "
                       "KV-cache bytes per token, and activation memory for a training step "
                       "at --batch x --seq. Run-time loop counts are taken at their value "
                       "(--set r=8). Does not import torch.")
    _common(p)
    p.add_argument("--seq", type=_positive, default=2048, help="sequence length (default 2048)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")

    p = sub.add_parser("fmt", help="print the canonical form of a spec",
                       description="Print the spec in canonical form: one param per line, "
                       "blocks, then statements; one statement per line, two-space indent, "
                       "normalized spacing and parentheses. Comments are kept. Does not "
                       "import torch.")
    p.add_argument("spec", help="path to a .arch file")
    p.add_argument("--check", action="store_true",
                   help="print nothing; exit 1 if the file is not in canonical form")
    p.add_argument("-w", "--write", action="store_true",
                   help="rewrite the file in place instead of printing")
    p.add_argument("--error-format", choices=("human", "json"), default="human",
                   help="how to print spec errors (json: one object per line, for tools)")

    p = sub.add_parser("hash", help="the canonical architecture hash of a spec",
                       description="Print the spec's architecture hash (SHA-256 of its "
                       "normal form: each op application with its resolved options, every "
                       "local name replaced by its position): formatting, comments, renaming "
                       "and how the compiler expands an op do not change it; any change to "
                       "the architecture does. Does not import torch.")
    p.add_argument("--explain", action="store_true",
                   help="print the normal form that is hashed (its first line is the "
                   "format version), then the hash")
    _common(p)

    p = sub.add_parser("backends", help="the backends and which prims each lowers",
                       description="List each backend with its coverage of the op table: "
                       "how many IR primitives it lowers, whether it claims them all, and "
                       "which it lacks (those a backend lacks are decomposed into simpler "
                       "prims where a decomposition exists, else refused).")
    p.add_argument("-v", "--verbose", action="store_true", help="list the prims each lowers")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        print(f"archc {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        code = _COMMANDS[args.command](args, parser)
        sys.stdout.flush()  # a closed pipe shows up here rather than at exit
        return code
    except ArchcError as e:
        _report(e, args)
        return 3 if e.code == INTERNAL else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except Exception as e:
        if os.environ.get("ARCHC_BACKTRACE"):
            raise
        _report(internal_error(e, getattr(args, "spec", "")), args)
        return 3


INTERNAL = "A900"  # the code of every internal error (the verifier's too)


def _report(e: ArchcError, args) -> None:
    if getattr(args, "error_format", "human") == "json":
        print(e.to_json(), file=sys.stderr)
    else:
        print(e.render(), file=sys.stderr)


def internal_error(e: BaseException, spec: str) -> ArchcError:
    """A bug in archc, said as one: what broke, where in the spec if the elaborator knew
    (see archc.limits.elaboration_guard), and how to get the traceback."""
    span = getattr(e, "archc_span", None)
    where = "" if span is not None else f" while compiling {spec}"
    return ArchcError(f"internal error in archc{where}, please report it: "
                      f"{type(e).__name__}: {e}", span,
                      "this is a bug in archc, not in the spec; please report it with the "
                      "spec. Run with ARCHC_BACKTRACE=1 for the traceback", code=INTERNAL,
                      label="while compiling this")


def _write(path: Path, text: str) -> None:
    """Write an output file (making its folder); a path that cannot be written is the
    user's to fix, so it is an archc error rather than an internal one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise ArchcError(f"cannot write {str(path)!r}: {e.strerror or e}", None,
                         "check the output path (-o DIR)", code="A002") from None


def _silence_stdout() -> None:
    """The reader went away (`| head`): send what is left to /dev/null, so the flush at
    exit does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file (an in-process caller captured it)


def _load(args, parser):
    from . import api
    from .frontend import Budget

    budget = Budget()
    if args.max_params is not None:
        budget.max_params = args.max_params
    if args.max_nodes is not None:
        budget.max_nodes = args.max_nodes
    if args.max_bytes is not None:
        budget.max_bytes = args.max_bytes
    if args.max_source_bytes is not None:
        budget.max_source_bytes = args.max_source_bytes
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise ArchcError(f"no spec file at {args.spec!r}", None,
                         "pass the path of a .arch file, e.g. specs/transformer.arch",
                         code="A002")
    return api.load(spec_path, budget=budget, **_settings(args.set, parser))


def _check(args, parser) -> int:
    from .analysis.live import live_program, unused_values
    from .param_count import count_params
    from .verify import verify

    spec = _load(args, parser)
    verify(spec.program)
    live = live_program(spec.program)
    for warning in unused_values(spec.program, live):
        print(warning.to_json() if args.error_format == "json" else warning.render(),
              file=sys.stderr)
    n = count_params(live).unique
    print(f"ok: model {spec.name} ({n:,} parameters, {len(spec.program.classes)} classes)")
    return 0


def _compile(args, parser) -> int:
    from .codegen.backend import generate
    from .ir import format_program
    from .passes import PrintAfter, TimePasses, default_pipeline

    spec = _load(args, parser)
    if args.print_ir:
        print(format_program(spec.program))
    timer = TimePasses()
    pipeline = default_pipeline(args.mode, args.rewrite, args.unroll)
    program = pipeline.instrumented(PrintAfter(args.print_after), timer).run(
        spec.program)
    if args.time_passes:
        print(timer.report())
    for name, text in generate(program, args.backend, args.mode).items():
        path = Path(args.output) / name
        _write(path, text)
        print(f"wrote {path}")
    return 0


def _backends(args, parser) -> int:
    """Each backend, what it lowers of the op table, and what it lacks."""
    import textwrap

    from .codegen import backend as backends
    from .ops.prims import PRIMS

    for name in backends.names():
        b = backends.get(name)
        lowered = sorted(p for p in PRIMS if b.lowers(p))
        missing = b.missing()
        claim = "complete" if b.complete else "partial"
        print(f"{name}: {b.summary}")
        print(f"  coverage: {len(lowered)}/{len(PRIMS)} prims ({claim})")
        if missing:
            print(f"  missing: {', '.join(missing)}")
        if args.verbose:
            print(textwrap.fill(", ".join(lowered), 88, initial_indent="  lowers: ",
                                subsequent_indent=" " * 10))
    return 0


def _info(args, parser) -> int:
    from .param_count import count_params

    spec = _load(args, parser)
    program = spec.program
    print(f"model {program.name}  ({Path(spec.file).name})")
    print("params:")
    for p in program.params.values():
        extra = " (run-time)" if p.runtime else ""
        dom = f"  in {p.domain_text}" if p.domain_text else ""
        print(f"  {p.name}: {p.type} = {p.value!r}{extra}{dom}")
    from .api import compile_program

    counts = count_params(compile_program(spec, args.mode, tuple(args.rewrite)))
    print()
    rows = [("instance", "kind", "unique", "applied")]
    rows += [(name, kind, f"{u:,}", f"{a:,}") for name, kind, u, a in counts.rows]
    rows.append(("total", "", f"{counts.unique:,}", f"{counts.applied:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, row in enumerate(rows):
        if k == len(rows) - 1:
            print("  ".join("-" * w for w in widths))
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w)
                        in enumerate(zip(row, widths))))
    from .analysis.kv import planned_bytes_per_token, unplanned_bytes_per_token

    planned = compile_program(spec, args.mode, tuple(args.rewrite))
    with_plan = planned_bytes_per_token(planned)
    without = unplanned_bytes_per_token(planned)
    print(f"\nKV cache per token (float32): {with_plan:,} bytes with the kv plan "
          f"({len(planned.kv_layout)} caches), {without:,} if every attention kept its own")
    _info_flops(spec, args.seq)
    if planned.weight_groups:
        print("\nweights applied more than once (shared) or read by another op (tied):")
        for group in planned.weight_groups:
            print(f"  {group}")
    runtime = [p.name for p in program.params.values() if p.runtime]
    if runtime:
        print(f"\napplied counts use the default of run-time params: "
              f"{', '.join(f'{n}={program.params[n].value}' for n in runtime)}")
    return 0


def _info_flops(spec, seq: int) -> None:
    """Forward FLOPs per token; for a model with a training step, what its schedules add
    at this step over step 0 (e.g. SGT's looped heads)."""
    from . import api
    from .analysis.cost import cost_of

    flops = cost_of(spec.program, seq=seq).flops_per_token
    print(f"forward matmul FLOPs per token at seq {seq}: {flops:,}")
    step = spec.params.get("step")
    if step is not None and step.runtime:
        base = cost_of(api.load(spec, step=0).program, seq=seq).flops_per_token
        extra = flops - base
        print(f"  at step {step.value}: {extra:+,} over step 0 "
              f"({100.0 * extra / base:+.2f}%), from schedules")


def _run(args, parser) -> int:
    from .param_count import count_params
    from .codegen.backend import generate

    import torch

    from . import api

    t0 = time.perf_counter()
    spec = _load(args, parser)
    files = generate(api.compile_program(spec), "torch")
    if args.output:
        for name, text in files.items():
            _write(Path(args.output) / name, text)
    t1 = time.perf_counter()
    torch.manual_seed(args.seed)  # the seed fixes the weights, then (again) the batch
    model = api.build(spec)
    t2 = time.perf_counter()
    torch.manual_seed(args.seed)
    vocab = _vocab(spec)
    tokens = torch.randint(0, vocab, (args.batch, args.seq))
    with torch.no_grad():
        t3 = time.perf_counter()
        logits = model(tokens)
        t4 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    from .analysis.live import live_program

    counts = count_params(live_program(spec.program))
    n_torch = sum(p.numel() for p in model.parameters())
    print(f"model {spec.name} from {spec.file}")
    print(f"  params        {n_torch:,} (unique; {counts.applied:,} applied per forward)")
    print(f"  compile       {(t1 - t0) * 1e3:.1f} ms to source, "
          f"{(t2 - t1) * 1e3:.1f} ms to module")
    print(f"  forward       [{args.batch}, {args.seq}] -> {list(logits.shape)} "
          f"in {(t4 - t3) * 1e3:.1f} ms")
    print(f"  loss          {loss.item():.4f} (ln vocab = {torch.log(torch.tensor(vocab)):.4f})")
    finite = bool(torch.isfinite(logits).all())
    print(f"  finite        {finite}")
    return 0 if finite else 1


def _vocab(spec) -> int:
    for block in spec.program.classes.values():
        for _, module in block.modules:
            if getattr(module, "op", "") == "embed":
                return dict(module.args)["vocab"]
    raise ArchcError("`archc run` needs a model with an embed", None,
                     "`run` feeds random token ids; use `archc compile` for other models",
                     code="A002")


def _cost(args, parser) -> int:
    from .analysis.cost import cost_of

    spec = _load(args, parser)
    c = cost_of(spec.program, seq=args.seq, batch=args.batch)
    if args.json:
        print(c.to_json())
        return 0
    at = f"batch {args.batch} x seq {args.seq}"
    print(f"model {c.model}  ({Path(spec.file).name})  at {at}")
    runtime = [p for p in spec.program.params.values() if p.runtime]
    if runtime:
        print("  run-time counts: " + ", ".join(f"{p.name}={p.value}" for p in runtime))
    rows = [
        ("params", f"{c.params:,}", f"unique; {c.params_applied:,} applied per forward"),
        ("flops/token", f"{c.flops_per_token:,}", "forward matmul FLOPs, attention included"),
        ("", f"{c.vector_flops_per_token:,}", "elementwise and reduction FLOPs (estimate)"),
        ("forward", f"{c.flops:,}", f"FLOPs for {at}"),
        ("kv cache", f"{c.kv_bytes_per_token:,}",
         f"bytes per token; {_size(c.kv_bytes)} for {at}"),
        ("activations", f"{c.activation_bytes:,}",
         f"bytes kept for backward at {at} ({_size(c.activation_bytes)})"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"  {name.ljust(w0)}  {value.rjust(w1)}  {note}")
    table = [("instance", "params", "applied", "flops/token")]
    table += [(n, f"{u:,}", f"{a:,}", f"{f:,}") for n, u, a, f in c.rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print()
    for row in table:
        print("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))))
    if c.uncounted:
        print(f"\nno FLOP rule (counted as 0): {', '.join(c.uncounted)}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _fmt(args, parser) -> int:
    from .fmt import format_text
    from .sourcefile import read_spec

    path = Path(args.spec)
    text = read_spec(path)
    out = format_text(text, str(path))
    if args.check:
        if out != text:
            print(f"{path}: not in canonical form (run `archc fmt -w {path}`)",
                  file=sys.stderr)
            return 1
        return 0
    if args.write:
        if out != text:
            _write(path, out)
        return 0
    sys.stdout.write(out)
    return 0


def _hash(args, parser) -> int:
    from .identity import architecture_hash, explain

    program = _load(args, parser).program
    if args.explain:
        sys.stdout.write(explain(program))
        return 0
    print(architecture_hash(program))
    return 0


_COMMANDS = {"check": _check, "compile": _compile, "info": _info, "run": _run,
             "cost": _cost, "fmt": _fmt, "hash": _hash, "backends": _backends}


if __name__ == "__main__":
    sys.exit(main())
