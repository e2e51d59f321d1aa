"""archc does not patch torch: importing archc.runtime (and building and running a model)
leaves torch's global FLOP registry as it was. The CPU attention formula FLOP-measuring
tests may want is tests/flop_formulas.py, scoped to one FlopCounterMode."""

import subprocess
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import archc
from flop_formulas import CPU_ATTENTION

ROOT = Path(__file__).resolve().parents[2]

_FRESH = """
import torch
from torch.utils import flop_counter
before = dict(flop_counter.flop_registry)
import archc.runtime
import archc
m = archc.build("specs/transformer.arch")
m(torch.zeros(1, 4, dtype=torch.long))
assert dict(flop_counter.flop_registry) == before, "archc changed torch's flop_registry"
print("unchanged", len(before))
"""


def test_importing_archc_runtime_leaves_torch_flop_registry_unchanged():
    done = subprocess.run([sys.executable, "-c", _FRESH], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unchanged")


def _count(model, tokens, **mode) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, **mode) as counter:
        model(tokens)
    return counter.get_total_flops()


def test_cpu_attention_formula_counts_what_the_math_backend_counts():
    """The fused kernel, counted by the scoped formula, costs what SDPA's math backend's
    two matmuls cost, and what archc.cost prices; torch's own registry stays untouched."""
    before = dict(flop_registry)
    model = archc.build("specs/transformer.arch").eval()
    tokens = torch.zeros(2, 8, dtype=torch.long)
    with sdpa_kernel(SDPBackend.MATH):
        math = _count(model, tokens)
    fused = _count(model, tokens, custom_mapping=CPU_ATTENTION)
    plain = _count(model, tokens)
    assert fused == math == archc.cost("specs/transformer.arch", seq=8, batch=2).flops
    assert plain < fused  # without the formula, CPU attention counts as free
    assert dict(flop_registry) == before
