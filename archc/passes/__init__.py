"""The pass pipeline: small pure functions (Program, PassOptions) -> Program, in one order.

Each pass lives in its own file and exports `PASS`, a named `Pass`; `default_pipeline`
lists them in the order archc compiles with. The pass manager itself (options, pipelines,
instruments for `--print-after`, `--time-passes` and verification) is
archc/passes/pipeline.py.
"""

from __future__ import annotations

from typing import Iterable

from .pipeline import (DEFAULTS, MODES, REWRITES, Instrument, Pass, PassOptions, Pipeline,
                       PrintAfter, TimePasses, VerifyEach)
from . import canonicalize, dce, fuse, kvplan, reparam, roll, share, unroll, widen

PASSES: tuple[Pass, ...] = (widen.PASS, unroll.PASS, canonicalize.PASS, dce.PASS,
                            reparam.PASS, roll.PASS, share.PASS, fuse.PASS, kvplan.PASS)


def default_pipeline(mode: str = "train", rewrites: Iterable[str] = (),
                     unroll: bool = False, *, verify: bool = True) -> Pipeline:
    """The pipeline archc compiles with, verifying after each pass unless `verify=False`.

    Every pass is always in it; a pass that `options` do not ask for returns its input
    (so `--print-after` and `--time-passes` name the same passes for every build). The
    order, and why:

    1. widen: opt-in rewrites see the graph as elaboration made it (widen matches the
       stack of layers the spec wrote, before anything reshapes it);
    2. unroll: before canonicalize, so constant folding and CSE see the literal loop
       indices that unrolling exposes;
    3. canonicalize: identities, constants, CSE, which leave values dead ...
    4. dce: ... for dce to drop, with the ops and weights nothing reads (in infer mode it
       first resolves train-time choices to the inference map);
    5. reparam: infer mode folds train-time structure on the cleaned graph, sweeping
       with dce's helpers what folding leaves dead;
    6. roll: on the cleaned, folded graph, where repeated applications of one shared
       instance look alike (under `unroll` it rolls nothing: that asked for straight
       lines);
    7. share: the table of shared and tied weights, once refs and weights are final;
    8. fuse: marks fusion regions, after the last pass that rewrites ops;
    9. kvplan: last, because it numbers the KV-cache slots in program order and any later
       change to attention would leave the numbering wrong.
    """
    options = PassOptions(mode, tuple(rewrites), unroll)
    instruments: tuple[Instrument, ...] = (VerifyEach(),) if verify else ()
    return Pipeline(PASSES, options, instruments)


__all__ = ["DEFAULTS", "MODES", "PASSES", "REWRITES", "Instrument", "Pass", "PassOptions",
           "Pipeline", "PrintAfter", "TimePasses", "VerifyEach", "default_pipeline"]
