"""The torch backend behind the seam: one readable module file, and in-process builds."""

from __future__ import annotations

import hashlib
import sys
import types

from ...ir import Program
from ..backend import Backend
from ..escape import file_name
from .emit import generate as generate_source, root_class
from .lower import LEAVES, LOWERINGS


def generate(program: Program) -> dict[str, str]:
    return {f"{program.name}.py": generate_source(program)}


def build(program: Program, spec) -> "torch.nn.Module":  # noqa: F821
    """Generate the module file and instantiate its root class. The source is ours (spec
    text reaches it only through codegen/escape.py), compiled under a name that carries
    its digest, so one source is one module per process."""
    source = generate_source(program)
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"archc_generated.{spec.program.name}_{digest}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__file__ = f"<archc:{file_name(spec.file)}:{digest}>"  # see codegen/escape.py
        code = compile(source, module.__file__, "exec")
        _remember_source(module.__file__, source)
        exec(code, module.__dict__)  # our generated source; spec text never reaches exec
        sys.modules[name] = module
    return getattr(module, root_class(program))()


def _remember_source(filename: str, source: str) -> None:
    """Let tracebacks and inspect show the generated code."""
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


BACKEND = Backend(
    name="torch",
    summary="one readable PyTorch module file per spec (nn.Module); in-process builds",
    lowerings=LOWERINGS,
    leaves=LEAVES,
    generate=generate,
    build=build,
    complete=True,
)
