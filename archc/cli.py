"""The `archc` command line.

    archc check   SPEC [--set NAME=VALUE ...]       parse, check, elaborate
    archc compile SPEC [-o DIR] [--print-ir] ...    write the PyTorch module file
    archc info    SPEC [--set ...]                  parameters: unique and applied
    archc run     SPEC [--set ...]                  compile, build, run a sample batch

Spec errors print a located diagnostic and exit 1; usage errors exit 2. `check` and
`info` never import torch.
"""

from __future__ import annotations

import argparse
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path to a .arch file")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="override a model param (repeatable)")
    p.add_argument("--error-format", choices=("human", "json"), default="human",
                   help="how to print spec errors (json: one object per line, for tools)")
    p.add_argument("--max-params", type=int, default=None,
                   help="refuse specs with more parameters than this")
    p.add_argument("--max-nodes", type=int, default=None,
                   help="refuse specs with more IR ops than this")


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

    p = sub.add_parser("info", help="parameter counts, unique and applied, per instance",
                       description="Print the model's params and its parameter counts: "
                       "unique (each weight once) and applied (once per use, so a loop of r "
                       "counts r times). Does not import torch.")
    _common(p)

    p = sub.add_parser("run", help="compile, build and run a spec on a sample batch",
                       description="Compile a spec, build the module, run a forward pass "
                       "on a random token batch and print a short report.")
    _common(p)
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--seq", type=int, default=16, help="sequence length (default 16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="also write the generated file here")
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
        return _COMMANDS[args.command](args, parser)
    except ArchcError as e:
        if args.error_format == "json":
            print(e.to_json(), file=sys.stderr)
        else:
            print(e.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _load(args, parser):
    from . import api
    from .elaborate import Budget

    budget = Budget()
    if args.max_params is not None:
        budget.max_params = args.max_params
    if args.max_nodes is not None:
        budget.max_nodes = args.max_nodes
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise ArchcError(f"no spec file at {args.spec!r}", None,
                         "pass the path of a .arch file, e.g. specs/transformer.arch",
                         code="A002")
    return api.load(spec_path, budget=budget, **_settings(args.set, parser))


def _check(args, parser) -> int:
    from .analysis.params import count_params
    from .verify import verify

    spec = _load(args, parser)
    verify(spec.program)
    n = count_params(spec.program).unique
    print(f"ok: model {spec.name} ({n:,} parameters, {len(spec.program.classes)} classes)")
    return 0


def _compile(args, parser) -> int:
    from .codegen.torch import generate
    from .ir import format_program
    from .passes import run_pipeline

    spec = _load(args, parser)
    if args.print_ir:
        print(format_program(spec.program))
    timings: list[tuple[str, float]] = []
    program = run_pipeline(spec.program, set(args.print_after), timings)
    if args.time_passes:
        for name, seconds in timings:
            print(f"pass {name:<14} {seconds * 1e3:8.3f} ms")
    source = generate(program)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{program.name}.py"
    path.write_text(source)
    print(f"wrote {path}")
    return 0


def _info(args, parser) -> int:
    from .analysis.params import count_params

    spec = _load(args, parser)
    program = spec.program
    print(f"model {program.name}  ({Path(spec.file).name})")
    print("params:")
    for p in program.params.values():
        extra = " (run-time)" if p.runtime else ""
        dom = f"  in {p.domain_text}" if p.domain_text else ""
        print(f"  {p.name}: {p.type} = {p.value!r}{extra}{dom}")
    counts = count_params(program)
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
    runtime = [p.name for p in program.params.values() if p.runtime]
    if runtime:
        print(f"\napplied counts use the default of run-time params: "
              f"{', '.join(f'{n}={program.params[n].value}' for n in runtime)}")
    return 0


def _run(args, parser) -> int:
    from .analysis.params import count_params
    from .codegen.torch import generate

    import torch

    from . import api

    t0 = time.perf_counter()
    spec = _load(args, parser)
    source = generate(api.compile_program(spec))
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{spec.name}.py").write_text(source)
    t1 = time.perf_counter()
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
    counts = count_params(spec.program)
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


_COMMANDS = {"check": _check, "compile": _compile, "info": _info, "run": _run}


if __name__ == "__main__":
    sys.exit(main())
