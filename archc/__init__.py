"""archc: a declarative language and compiler for the depth topology of neural networks.

    import archc
    spec = archc.load("specs/huginn.arch", r=8)   # parse, check, bind params
    m = archc.build("specs/huginn.arch", r=8)     # torch.nn.Module
    logits = m(tokens, r=16)                      # run-time loop count as a keyword

Importing archc does not import torch; `build` does.
"""

__version__ = "0.1.0"

from .errors import ArchcError  # noqa: E402
from .api import Spec, build, compile_source, load  # noqa: E402

__all__ = ["ArchcError", "Spec", "build", "compile_source", "load", "__version__"]
