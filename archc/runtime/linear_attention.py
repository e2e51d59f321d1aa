"""Causal linear attention and the per-head causal convolution used beside it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalDepthwiseConv(nn.Module):
    """A depthwise 1-D convolution over positions that sees only the past, per head."""

    def __init__(self, channels: int, kernel: int = 5):
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = v.shape
        x = v.permute(0, 1, 3, 2).reshape(b * h, dh, t)
        x = F.conv1d(F.pad(x, (self.kernel - 1, 0)), self.weight, self.bias, groups=dh)
        return x.view(b, h, dh, t).permute(0, 1, 3, 2)


def linear_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention: q_t (sum_{s<=t} k_s v_s^T) / (q_t . sum_{s<=t} k_s + 1e-6)."""
    kv = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(2)
    num = torch.einsum("bhtd,bhtde->bhte", q, kv)
    den = (q * k.cumsum(2)).sum(-1, keepdim=True) + 1e-6
    return num / den
