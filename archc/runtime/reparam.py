"""Reparameterizable layers: trained in one form, folded by archc.reparam
(archc/fold.py) into plain linears and affines for inference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the width with every token of the batch as a sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


class RepBN(nn.Module):
    """SLAB's RepBN(x) = BatchNorm(x) + alpha * x (alpha learnable, starts at 1)."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(()))
        self.bn = nn.BatchNorm1d(dim, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).view_as(x) + self.alpha * x


def sigma_estimate(weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sigma(W) ~ v^T W u with v = W u / |W u|: the spectral norm seen from the power
    iteration's vector u (no step taken; v carries no gradient)."""
    v = F.normalize(weight @ u, dim=0).detach()
    return v @ weight @ u


def sigma_weight(weight: torch.Tensor, u: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """sigma-Reparam's effective weight gamma / sigma(W) * W: what SigmaLinear multiplies
    by, and what archc.reparam (archc/fold.py) folds into a plain linear."""
    return gamma / sigma_estimate(weight, u) * weight


class SigmaLinear(nn.Module):
    """sigma-Reparam (Zhai et al.): W_hat = gamma / sigma(W) * W. sigma comes from one
    power-iteration step per training forward on a persistent vector u (no step in eval);
    gamma starts at sigma(W_init) so W_hat starts at W_init."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.register_buffer("u", torch.empty(d_in))
        self.gamma = nn.Parameter(torch.empty(()))
        self.after_init()

    def after_init(self) -> None:
        """u and gamma from the current W: gamma = sigma(W) so W_hat = W (rt.init_ calls
        this again after it sets W)."""
        with torch.no_grad():
            _, s, vh = torch.linalg.svd(self.weight, full_matrices=False)
            self.u.copy_(vh[0])
            self.gamma.copy_(s[0])

    @torch.no_grad()
    def power_step(self) -> None:
        """One power-iteration step on u (training forwards take one each)."""
        v = F.normalize(self.weight @ self.u, dim=0)
        self.u.copy_(F.normalize(self.weight.t() @ v, dim=0))

    def sigma(self) -> torch.Tensor:
        if self.training:
            self.power_step()
        return sigma_estimate(self.weight, self.u)

    def effective_weight(self) -> torch.Tensor:
        if self.training:
            self.power_step()
        return sigma_weight(self.weight, self.u, self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def top_n_columns(s: torch.Tensor, n: int) -> torch.Tensor:
    """Each column's n largest-magnitude entries, the rest zero: DSFormer's sparse factor,
    as DSLinear applies it each forward and archc.reparam folds it once."""
    index = s.abs().topk(n, dim=0).indices
    return torch.zeros_like(s).scatter(0, index, s.gather(0, index))


class _TopNColumns(torch.autograd.Function):
    """top_n_columns with gradients passed straight through (to the dense shadow)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, n: int) -> torch.Tensor:
        return top_n_columns(s, n)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class DSLinear(nn.Module):
    """DSFormer's factorised linear W = D S: D dense [out, rank]; S [rank, in] with `nnz`
    non-zeros per column, the top-nnz projection of a dense shadow (straight-through)."""

    def __init__(self, d_in: int, d_out: int, rank: int, nnz: int, bias: bool = False):
        super().__init__()
        self.nnz = nnz
        self.dense = nn.Parameter(torch.empty(d_out, rank))
        self.sparse = nn.Parameter(torch.empty(rank, d_in))
        nn.init.normal_(self.dense, std=rank ** -0.5)
        nn.init.normal_(self.sparse, std=(d_in * nnz / rank) ** -0.5)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def sparse_factor(self) -> torch.Tensor:
        return _TopNColumns.apply(self.sparse, self.nnz)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.sparse_factor()), self.dense, self.bias)
