"""The memory check `archc.build` runs before it allocates a single tensor.

A NAS loop may sample a spec whose weights do not fit the machine; building it would
have the process killed by the kernel (or swap for minutes) instead of raising. The
parameter count is analytic (archc/param_count.py), so the bytes a build will hold,
parameters x bytes per element of torch's default dtype, are known before anything is
allocated: when they are more than the memory available (or than `Budget.max_bytes`),
the build is an archc error that gives both numbers.
"""

from __future__ import annotations

import os

from .errors import ArchcError
from .ir import Program

MEMINFO = "/proc/meminfo"


def available_bytes() -> int | None:
    """Host memory a new allocation can get now: MemAvailable from /proc/meminfo (free
    plus reclaimable cache), else the physical memory; None where neither is known."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _device_bytes(torch) -> tuple[str, int | None]:
    """Where torch will put new tensors, and the memory free there (None: no limit to
    check, as for the meta device, which allocates nothing)."""
    device = torch.get_default_device()
    if device.type == "meta":
        return "meta", None
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return f"the {device} device", free
    return "this machine", available_bytes()


def check_build_memory(program: Program, max_bytes: int | None = None) -> int:
    """Raise an ArchcError (A041) before allocation if the parameters would not fit.
    `max_bytes` overrides the limit (the memory available on the default device).
    Returns the bytes the parameters will take."""
    import torch

    from .param_count import unique_params

    itemsize = torch.empty((), dtype=torch.get_default_dtype(), device="meta").element_size()
    params = unique_params(program)
    need = params * itemsize
    if max_bytes is not None:
        have, limit = max_bytes, f"the memory budget of {max_bytes:,} bytes"
    else:
        where, have = _device_bytes(torch)
        limit = f"the {have:,} bytes available on {where}" if have is not None else ""
    if have is not None and need > have:
        root = program.classes[program.root]
        raise ArchcError(
            f"building the model needs {need:,} bytes for its {params:,} parameters "
            f"({itemsize} bytes each), more than {limit}",
            root.span,
            "lower the widths or depth; price specs without building them with archc.cost; "
            "set the limit with archc.Budget(max_bytes=N) (`--max-bytes N`)", code="A041")
    return need
