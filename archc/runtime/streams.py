"""Residual streams beyond one: hyper-connections (mHC) and the rank-1 delta residual."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinkhorn(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """A doubly stochastic matrix from exp(logits) by alternating row/column normalisation
    (over the last two dims)."""
    m = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(-1, keepdim=True)
        m = m / m.sum(-2, keepdim=True)
    return m


class HyperConnection(nn.Module):
    """Manifold-constrained hyper-connection coefficients (mHC) for one sublayer.

    From the n residual streams X [B, T, n*d]: x = RMSNorm(vec X); per token,
    H_pre = sigmoid(a_pre * x W_pre + b_pre), H_post = 2 sigmoid(a_post * x W_post +
    b_post), H_res = Sinkhorn(exp(a_res * x W_res + b_res)). Returns the sublayer input
    h = H_pre X and the packed coefficients for `hyper_write`. The static biases start at
    a plain residual: H_res = I (b_res -8 off the diagonal), H_post = 1, H_pre = 1/2.
    """

    def __init__(self, n: int, dim: int, alpha: float = 0.01, iters: int = 20):
        super().__init__()
        self.n, self.iters = n, iters
        self.norm = nn.RMSNorm(n * dim, eps=1e-6)
        self.proj = nn.Linear(n * dim, 2 * n + n * n, bias=False)
        self.alpha = nn.Parameter(torch.full((3,), float(alpha)))
        self.b_pre = nn.Parameter(torch.zeros(n))
        self.b_post = nn.Parameter(torch.zeros(n))
        self.b_res = nn.Parameter(torch.full((n, n), -8.0).fill_diagonal_(0.0))

    def forward(self, streams: torch.Tensor):
        b, t, nd = streams.shape
        n = self.n
        x = self.proj(self.norm(streams))
        pre = torch.sigmoid(self.alpha[0] * x[..., :n] + self.b_pre)
        post = 2 * torch.sigmoid(self.alpha[1] * x[..., n:2 * n] + self.b_post)
        res = sinkhorn(self.alpha[2] * x[..., 2 * n:].view(b, t, n, n) + self.b_res, self.iters)
        xs = streams.view(b, t, n, nd // n)
        h = (pre.unsqueeze(-1) * xs).sum(2)
        return h, torch.cat([post, res.flatten(2)], dim=-1)


def hyper_write(streams: torch.Tensor, coeffs: torch.Tensor, f: torch.Tensor, n: int):
    """X' = H_res X + H_post^T f: mix the streams, add the sublayer output to each."""
    b, t, nd = streams.shape
    post = coeffs[..., :n]
    res = coeffs[..., n:].view(b, t, n, n)
    xs = streams.view(b, t, n, nd // n)
    mixed = res @ xs + post.unsqueeze(-1) * f.unsqueeze(2)
    return mixed.reshape(b, t, nd)


def expand_streams(x: torch.Tensor, n: int) -> torch.Tensor:
    """n copies of the residual stream, side by side: [B, T, n*d]."""
    return x.repeat(1, 1, n)


def merge_streams(streams: torch.Tensor, n: int) -> torch.Tensor:
    b, t, nd = streams.shape
    return streams.view(b, t, n, nd // n).sum(2)


class DeltaResidual(nn.Module):
    """Deep Delta Learning's rank-1 residual (d_v = 1): x + beta * (v - k.x) * k with
    k = f / |f| (the sublayer output's direction), beta = 2 sigmoid(w . ctx + b) in [0, 2]
    (0 keeps x, 1 replaces its k-component, 2 reflects it), v = w_v . x + b_v."""

    def __init__(self, dim: int, beta_init: float = 1.0):
        super().__init__()
        self.beta = nn.Linear(dim, 1)
        self.value = nn.Linear(dim, 1)
        p = min(max(beta_init / 2.0, 1e-6), 1 - 1e-6)
        nn.init.constant_(self.beta.bias, math.log(p) - math.log(1 - p))

    def forward(self, x: torch.Tensor, f: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        k = F.normalize(f, dim=-1, eps=1e-6)
        beta = 2 * torch.sigmoid(self.beta(ctx))
        v = self.value(x)
        return x + beta * (v - (k * x).sum(-1, keepdim=True)) * k
