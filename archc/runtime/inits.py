"""Where a freshly built module's parameters start, as its spec says (archc/init.py
decides the scheme; this applies it in a fixed draw order so a seed reproduces weights)."""

from __future__ import annotations

import math

import torch
from torch import nn


def linear(d_in: int, d_out: int, bias: bool = True, bias_init: float | None = None) -> nn.Linear:
    """nn.Linear whose bias starts at a constant (a gate's identity bias)."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    if bias and bias_init is not None:
        nn.init.constant_(layer.bias, bias_init)
    return layer


def init_(module: nn.Module, **inits) -> nn.Module:
    """Start a freshly built module's parameters where its spec says (archc/init.py):
    `weight=("normal", 0.02)`, `("trunc_normal", std)`, `"xavier"`, `"zeros"` or
    `("const", v)`, drawn in the order given from torch's generator, so
    `torch.manual_seed(s)` before building gives the same weights. A module whose other
    state derives from its weights (SigmaLinear's gamma) recomputes it. Returns the module."""
    with torch.no_grad():
        for name, how in inits.items():
            _init_param(module.get_parameter(name), how)
    after = getattr(module, "after_init", None)
    if after is not None:
        after()
    return module


def _init_param(p: torch.Tensor, how) -> None:
    kind, *args = (how,) if isinstance(how, str) else how
    if kind == "normal":
        p.normal_(0.0, args[0])
    elif kind == "trunc_normal":
        p.copy_(trunc_normal_like(p, args[0]))
    elif kind == "zeros":
        p.zero_()
    elif kind == "const":
        p.fill_(args[0])
    elif kind == "xavier":
        for matrix in p.view(-1, *p.shape[-2:]) if p.dim() > 2 else (p,):
            nn.init.xavier_uniform_(matrix)  # per expert matrix, not across experts
    else:
        raise ValueError(f"unknown init {how!r}")


def trunc_normal_like(x: torch.Tensor, std: float, scale: float = 1.0) -> torch.Tensor:
    """A fresh random state shaped like x: N(0, std^2) cut at 3 std, times scale.

    Inverse-CDF sampling (one uniform draw per element): exact, and free of the
    data-dependent rejection loop that keeps torch.nn.init.trunc_normal_ out of
    torch.compile(fullgraph=True).
    """
    lo = 0.5 * (1.0 + math.erf(-3.0 / math.sqrt(2.0)))
    hi = 0.5 * (1.0 + math.erf(3.0 / math.sqrt(2.0)))
    u = torch.empty_like(x).uniform_(2.0 * lo - 1.0, 2.0 * hi - 1.0)
    out = torch.erfinv(u) * (std * math.sqrt(2.0))
    out = out.clamp(-3.0 * std, 3.0 * std)
    return out * scale if scale != 1.0 else out
