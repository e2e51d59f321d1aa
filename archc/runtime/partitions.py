"""Width partitions (3PT): per-partition norms, phase rotations, the DC channel and
top-k sparsity of activations."""

from __future__ import annotations

import math

import torch
from torch import nn


def topk_keep(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each token's k largest activations, zero the rest."""
    if k >= x.shape[-1]:
        return x
    values, index = x.topk(k, dim=-1)
    return torch.zeros_like(x).scatter(-1, index, values)


class PartitionNorm(nn.Module):
    """RMSNorm with statistics per partition: the width is `parts` equal channels plus
    `dc` trailing dims (normalised as one more group); one learnable gain per dim."""

    def __init__(self, dim: int, parts: int, dc: int = 0, eps: float = 1e-6):
        super().__init__()
        self.parts, self.dc, self.eps = parts, dc, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        main = x[..., :d - self.dc].unflatten(-1, (self.parts, -1))
        main = main * torch.rsqrt(main.pow(2).mean(-1, keepdim=True) + self.eps)
        out = [main.flatten(-2)]
        if self.dc:
            rest = x[..., d - self.dc:]
            out.append(rest * torch.rsqrt(rest.pow(2).mean(-1, keepdim=True) + self.eps))
        return torch.cat(out, dim=-1) * self.weight if self.dc else out[0] * self.weight


class PhaseRotation(nn.Module):
    """3PT's Givens rotation: partition i's dims pair into planes, each rotated by
    theta + 2*pi*i/parts; theta is learnable (starts at 0). Orthogonal, so norms keep."""

    def __init__(self, dim: int, parts: int, dc: int = 0):
        super().__init__()
        self.parts, self.dc = parts, dc
        self.theta = nn.Parameter(torch.zeros(()))
        self.register_buffer("offsets", 2 * math.pi * torch.arange(parts) / parts,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        main = x[..., :d - self.dc].unflatten(-1, (self.parts, -1, 2))
        angle = (self.theta + self.offsets).view(self.parts, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        a, b = main[..., 0], main[..., 1]
        rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-3)
        return torch.cat([rotated, x[..., d - self.dc:]], dim=-1) if self.dc else rotated


def horn(x: torch.Tensor, dc: int, start: int = 0) -> torch.Tensor:
    """Add r(p) = 1/(p + 1) for absolute position p along the unit direction of the last
    `dc` dims (3PT's DC channel, outside every partition)."""
    t = x.shape[1]
    r = 1.0 / (torch.arange(start, start + t, device=x.device, dtype=x.dtype) + 1.0)
    direction = torch.full((dc,), dc ** -0.5, device=x.device, dtype=x.dtype)
    pad = x.new_zeros(x.shape[-1] - dc)
    return x + r.view(1, t, 1) * torch.cat([pad, direction])
