"""archc: a declarative language and compiler for the depth topology of neural networks.

    import archc
    spec = archc.load("specs/huginn.arch", r=8)   # parse, check, bind params
    m = archc.build("specs/huginn.arch", r=8)     # torch.nn.Module
    logits = m(tokens, r=16)                      # run-time loop count as a keyword
    c = archc.cost("specs/huginn.arch", r=8, seq=2048)   # params, FLOPs, KV bytes; no torch
    archc.hash("specs/huginn.arch")               # architecture hash; archc.format(text)
    deploy = archc.reparam(m)                     # folded inference module, same outputs

Importing archc does not import torch; `build` does.
"""

__version__ = "0.1.0"

from .errors import ArchcError  # noqa: E402
from .api import Spec, build, compile_source, load  # noqa: E402
from .frontend import Budget  # noqa: E402
from .api import format_spec as format, spec_cost as cost, spec_hash as hash  # noqa: E402


def reparam(model):
    """The folded inference module of a model built by archc.build: same outputs in eval,
    train-time structure folded away (see archc/passes/reparam.py). Imports torch."""
    from .fold import reparam as fold

    return fold(model)


__all__ = ["ArchcError", "Budget", "Spec", "build", "compile_source", "cost", "format", "hash", "load",
           "reparam", "__version__"]
