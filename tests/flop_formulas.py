"""FLOP formulas torch's counter lacks, for tests that measure FLOPs.

torch.utils.flop_counter has no formula for the fused attention kernel SDPA uses on CPU,
so FlopCounterMode reports attention there as free. The tests that compare archc.cost with
a measurement run SDPA under the math backend (two counted matmuls) instead; a test that
wants the fused kernel counted passes CPU_ATTENTION as FlopCounterMode's custom_mapping,
which holds only for that counter: nothing is registered in torch's global flop_registry
(archc itself never touches it).
"""

from __future__ import annotations

import torch


def _attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """q k^T and the weighted sum of v, in full (a causal mask does not halve the count),
    as torch counts the GPU kernels."""
    b, h, s_q, d_q = query
    s_k, d_v = key[-2], value[-1]
    return 2 * b * h * s_q * s_k * (d_q + d_v)


def _attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * _attention(query, key, value)


def cpu_attention() -> dict:
    """FlopCounterMode(custom_mapping=...) entries for the fused CPU attention kernels;
    empty on a torch without them."""
    aten = torch.ops.aten
    names = {"_scaled_dot_product_flash_attention_for_cpu": _attention,
             "_scaled_dot_product_flash_attention_for_cpu_backward": _attention_backward}
    return {getattr(aten, name): formula for name, formula in names.items()
            if hasattr(aten, name)}


CPU_ATTENTION = cpu_attention()
