"""Routed computation: top-k mixture of experts (with its load-balance loss), routed
width (MoHD), group fusion and stochastic depth."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MoE(nn.Module):
    """Top-k mixture of experts with capacity (token dropping) and a load-balance loss.

    Each token goes to its k most probable experts, weighted by its router probabilities
    renormalised over those k. In training expert e takes at most ceil(capacity * N * k / E)
    of the N tokens: first choices claim places before second choices, earlier tokens
    before later ones; the rest are dropped for that expert. In eval nothing is dropped
    (as inference engines route): a token's output must not depend on how many tokens
    share its call, or cached decoding would differ from the prefill. Every call appends
    its load-balance loss E * sum_e f_e * P_e (f_e: share of first choices, P_e: mean
    router probability) to `self.aux`, so a shared MoE applied L times contributes L
    terms to model.aux_loss().
    """

    def __init__(self, dim: int, experts: int, hidden: int, k: int = 2,
                 capacity: float = 1.25, act: str = "gelu", noise: float = 0.0):
        super().__init__()
        self.experts, self.k, self.act = experts, k, act
        self.capacity, self.noise = capacity, noise
        self.router = nn.Parameter(torch.empty(experts, dim))
        self.w_in = nn.Parameter(torch.empty(experts, hidden, dim))
        self.w_out = nn.Parameter(torch.empty(experts, dim, hidden))
        for w in (self.router, self.w_in, self.w_out):
            nn.init.normal_(w, std=w.shape[-1] ** -0.5)
        self.aux: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        n, e = b * t, self.experts
        flat = x.reshape(n, d)
        logits = flat @ self.router.t()
        if self.training and self.noise:
            logits = logits + self.noise * torch.randn_like(logits)
        probs = torch.softmax(logits, dim=-1)
        gate, index = probs.topk(self.k, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        cap = math.ceil(self.capacity * n * self.k / e) if self.training else n
        onehot = F.one_hot(index, e)                                  # [n, k, e]
        order = onehot.transpose(0, 1).reshape(self.k * n, e)          # choices first
        place = ((order.cumsum(0) - 1) * order).sum(-1).view(self.k, n).t()
        keep = place < cap
        share = onehot[:, 0].to(probs.dtype).mean(0)
        self.aux.append(e * (share * probs.mean(0)).sum())
        out = torch.zeros_like(flat)
        act = getattr(F, self.act)
        for i in range(e):
            token, slot = ((index == i) & keep).nonzero(as_tuple=True)
            h = act(flat[token] @ self.w_in[i].t()) @ self.w_out[i].t()
            out = out.index_add(0, token, h * gate[token, slot].unsqueeze(-1))
        return out.view(b, t, d)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's whole branch with probability p in training."""
    if not training or p == 0.0:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device,
                       dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


def clear_aux(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, MoE):
            m.aux = []


def aux_loss(model: nn.Module) -> torch.Tensor:
    terms = [t for m in model.modules() if isinstance(m, MoE) for t in m.aux]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def eval_only(x: torch.Tensor, training: bool, what: str, where: tuple | None) -> torch.Tensor:
    """A composite decomposed as it evaluates (archc/passes/decompose.py: moe with no
    capacity drops and no load-balance loss) refuses to run in training, where the
    composite would compute something else."""
    if training:
        from ..errors import ArchcError, Span

        raise ArchcError(f"this build runs {what} decomposed into its eval computation; "
                         "in training it would drop no token over capacity and add no "
                         "load-balance loss", Span(*where) if where else None,
                         "train a build without decompose, or call model.eval()",
                         code="A055")
    return x


class WidthRouter(nn.Module):
    """MoHD's routed width: `groups` groups of the width, `shared` always active, the top-k
    of the rest per token by a router. Returns the input mask (1 on active dims) and the
    write-back weights (router weight on routed groups if `weighted`, times D / D_active
    if `scaling`; 0 on inactive dims, which the sublayer then leaves unchanged)."""

    def __init__(self, dim: int, groups: int, shared: int, k: int, weighted: bool = True,
                 scaling: bool = True):
        super().__init__()
        self.groups, self.shared, self.k = groups, shared, k
        self.weighted, self.scaling = weighted, scaling
        self.router = nn.Linear(dim, groups - shared, bias=False)

    def forward(self, x: torch.Tensor):
        b, t, d = x.shape
        probs = torch.softmax(self.router(x), dim=-1)
        top, index = probs.topk(self.k, dim=-1)
        routed_mask = torch.zeros_like(probs).scatter(-1, index, 1.0)
        routed_weight = torch.zeros_like(probs).scatter(-1, index, top)
        shared = x.new_ones(b, t, self.shared)
        mask = torch.cat([shared, routed_mask], dim=-1)
        weight = torch.cat([shared, routed_weight if self.weighted else routed_mask], dim=-1)
        if self.scaling:
            weight = weight * (self.groups / (self.shared + self.k))
        size = d // self.groups
        return mask.repeat_interleave(size, -1), weight.repeat_interleave(size, -1)


class GroupFusion(nn.Module):
    """A learnable mixing of a tensor's `groups` width groups (starts as the identity)."""

    def __init__(self, groups: int):
        super().__init__()
        self.mix = nn.Parameter(torch.eye(groups))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        g = self.mix.shape[0]
        parts = y.unflatten(-1, (g, -1))
        return torch.einsum("gh,...hd->...gd", self.mix, parts).flatten(-2)
