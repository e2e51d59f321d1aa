"""Small modules and functions that generated code imports as `rt`.

Generated modules use plain torch where torch has the piece (nn.Linear, nn.RMSNorm,
F.scaled_dot_product_attention); what is here is what torch lacks: rotary tables shared by
all layers, LoRA with zero-init B, LayerScale, learnable scalars, halting for loops.

One module per concern (attention, the KV cache, the own-output scan, residual streams,
head loops, partitions, routing, reparameterizable layers, ...); this file re-exports every
public name, so generated files keep `from archc import runtime as rt` and `rt.attend(...)`
and never name a submodule. Importing it changes nothing in torch (a FLOP formula for
CPU attention that FLOP-measuring tests want is in tests/flop_formulas.py).
"""

from __future__ import annotations

import torch

from .attention import (alibi_bias, alibi_slopes, attend, attention_probs, block_logits,
                        causal_mask, depth_mix, gate_heads, select_kv, softmax_scaled)
from .cache import (KVCache, cache_advance, cache_params, cache_start, kv_cache,
                    refuse_cache)
from .checks import check_count, check_tokens
from .halting import Halting
from .head_loop import HeadLoop, chosen_heads
from .heads import Rotary, apply_rope, merge_heads, split_heads
from .inits import init_, linear, trunc_normal_like
from .layers import Bias, LayerScale, LoRA, Scalar
from .linear_attention import CausalDepthwiseConv, linear_attend
from .noise import counter_uniform, state_noise
from .partitions import PartitionNorm, PhaseRotation, horn, topk_keep
from .reparam import (DSLinear, RepBN, SigmaLinear, TokenBatchNorm, sigma_estimate,
                      sigma_weight, top_n_columns)
from .routing import GroupFusion, MoE, WidthRouter, aux_loss, clear_aux, drop_path, eval_only
from .scan import recurrent_scan
from .streams import (DeltaResidual, HyperConnection, expand_streams, hyper_write,
                      merge_streams, sinkhorn)

__all__ = [
    "Bias", "CausalDepthwiseConv", "DSLinear", "DeltaResidual", "GroupFusion", "Halting",
    "HeadLoop", "HyperConnection", "KVCache", "LayerScale", "LoRA", "MoE", "PartitionNorm",
    "PhaseRotation", "RepBN", "Rotary", "Scalar", "SigmaLinear", "TYPE_LOG",
    "TokenBatchNorm", "WidthRouter", "alibi_bias", "alibi_slopes", "apply_rope", "attend",
    "attention_probs", "aux_loss", "block_logits", "cache_advance", "cache_params",
    "cache_start", "causal_mask", "check_count", "chosen_heads", "check_tokens", "check_types", "clear_aux",
    "counter_uniform", "depth_mix", "drop_path", "eval_only", "expand_streams", "gate_heads", "horn",
    "hyper_write", "init_", "kv_cache", "linear", "linear_attend", "merge_heads",
    "merge_streams", "recurrent_scan", "refuse_cache", "select_kv", "sigma_estimate",
    "sigma_weight", "sinkhorn", "softmax_scaled", "split_heads", "state_noise",
    "top_n_columns", "topk_keep", "trunc_normal_like",
]

# Set to a list by a test to collect (where, IR type, run-time type) of every value of a
# module generated with `generate(program, check_shapes=True)`; None (the default) and
# ordinary builds record nothing. It lives here, not in a submodule, because tests assign
# `rt.TYPE_LOG` on this package and check_types must read that binding.
TYPE_LOG: list | None = None


def check_types(where: tuple, types: tuple, *values) -> None:
    """Record each value's run-time dtype and shape next to the type the IR gave it."""
    if TYPE_LOG is None:
        return
    for w, t, v in zip(where, types, values):
        if isinstance(v, torch.Tensor):
            kind = "long" if v.dtype == torch.long else "float"
            TYPE_LOG.append((w, t, kind, tuple(v.shape)))
        else:
            TYPE_LOG.append((w, t, type(v).__name__, None))
