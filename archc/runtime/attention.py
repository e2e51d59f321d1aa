"""Softmax attention: the one place for its pieces (ALiBi, the causal mask, GQA,
scaled logits), shared by attention layers, head loops and the own-output scan."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (geometric; interleaved for a head count that is not a
    power of two), as in Press et al."""
    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = power_of_two(heads)
    else:
        closest = 2 ** math.floor(math.log2(heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][:heads - closest]
    return torch.tensor(slopes)


def attend(q, k, v, causal: bool = True, alibi: bool = False):
    """Softmax attention of q [B, H, T, dh] over k, v [B, H_kv, S, dh] (S >= T: with a KV
    cache the queries are the last T positions). GQA when H_kv < H."""
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if alibi:
        pos_q = torch.arange(s - t, s, device=q.device)
        pos_k = torch.arange(s, device=q.device)
        dist = (pos_q[:, None] - pos_k[None, :]).to(q.dtype)
        bias = -alibi_slopes(q.shape[1]).to(q.device, q.dtype)[:, None, None] * dist
        if causal:
            bias = bias.masked_fill(dist < 0, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
    if not causal or t == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def select_kv(training: bool, p: float, infer: str, own, other):
    """Stochastic KV routing: in training read the other layer's keys and values with
    probability p (one draw per call), else this layer's own; in eval follow `infer`."""
    if not training:
        return other if infer == "shared" else own
    use_other = torch.rand((), device=own[0].device) < p
    return (torch.where(use_other, other[0], own[0]), torch.where(use_other, other[1], own[1]))


def depth_mix(q, ks: list, vs: list):
    """Depth-Attention: each position's query (averaged over its GQA group) attends over
    the keys of the listed layers at the same position and mixes their values."""
    b, h, t, dh = q.shape
    hkv = ks[0].shape[1]
    qbar = q.view(b, hkv, h // hkv, t, dh).mean(2)
    keys = torch.stack(ks, dim=-2)
    values = torch.stack(vs, dim=-2)
    logits = (qbar.unsqueeze(-2) * keys).sum(-1) / math.sqrt(dh)
    alpha = torch.softmax(logits, dim=-1)
    return (alpha.unsqueeze(-1) * values).sum(-2)


def gate_heads(g: torch.Tensor) -> torch.Tensor:
    """[B, T, H] -> [B, H, T, 1], to weight per-head tensors."""
    return g.transpose(1, 2).unsqueeze(-1)


def softmax_scaled(g: torch.Tensor) -> torch.Tensor:
    """softmax over the units, times their number (mean 1)."""
    return torch.softmax(g, dim=-1) * g.shape[-1]
