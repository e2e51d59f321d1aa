"""Small weight-carrying modules torch lacks: LoRA (zero-init B), LayerScale, a
learnable scalar and a learnable bias."""

from __future__ import annotations

import torch
from torch import nn


class LoRA(nn.Module):
    """Low-rank update B(A x) * scale; B starts at zero so the adapted model starts equal
    to the shared one."""

    def __init__(self, d_in: int, d_out: int, rank: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t() * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.A.shape[0]}, scale={self.scale}"


class LayerScale(nn.Module):
    """Per-channel scale, initialised small (CaiT)."""

    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Scalar(nn.Module):
    """One learnable multiplier (SReT's residual coefficients)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value


class Bias(nn.Module):
    """A learnable additive term, zero at init (Huginn's per-head q/k bias)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias
