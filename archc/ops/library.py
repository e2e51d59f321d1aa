"""Spec-level ops: what a .arch file can call, each declared once.

An op has an attribute schema (pydantic: names, types, defaults, checks), a number of
tensor inputs, and an `expand` function that emits IR primitives through an `OpCtx`
(see `archc/frontend/opctx.py`). Ops with weights create an instance where they are
called; `let n = rmsnorm()` names one so it can be called again with the same weights.

The ops are declared by family, one module each, and registered in `OPS` (registry.py)
when the module is imported; importing this module imports every family:

- embedding.py: embed, lm_head
- norms.py: rmsnorm, layernorm
- feedforward.py: linear, swiglu, mlp, topk
- attention.py: attention, head_loop, linear_attention
- residual.py: layerscale, scalar, gated_mix, hyper-connections, delta, drop_path
- routing.py: gate, moe, width_route, group_fuse
- partitions.py: partition_norm, rotate, horn
- reparam.py: batchnorm, repbn, sigma_linear, ds_linear
- stateless.py: scale, add, sum, mul, activations, concat, split, init_state
- adapters.py: lora and untie, what `with` attaches to an instance call
"""

from __future__ import annotations

from . import (attention, embedding, feedforward, norms, partitions, reparam,  # noqa: F401
               residual, routing, stateless)
from .adapters import ADAPTERS, LoraAttrs, UntieAttrs, lora_scale
from .registry import OPS, Attrs, OpDef, op, suggest

__all__ = ["ADAPTERS", "OPS", "Attrs", "LoraAttrs", "OpDef", "UntieAttrs", "lora_scale", "op",
           "suggest"]
