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


def alibi_bias(slopes: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """ALiBi's additive logit bias -slope_h * (p_q - p_k), [H, T_q, T_k], for absolute
    query positions pos_q and key positions pos_k (int tensors). slopes: [H], already in
    the logits' dtype and device (a caller making many blocks converts them once). The one
    place ALiBi's formula lives: attend adds it through SDPA's mask, the own-output scan to
    its blocks of logits (logits + (-s) d is bit for bit logits - s d)."""
    dist = (pos_q[:, None] - pos_k[None, :]).to(slopes.dtype)
    return -slopes[:, None, None] * dist


def causal_mask(t: int, s: int, device=None) -> torch.Tensor:
    """[T, S] True where query i (at position S - T + i) may see key j: j <= S - T + i."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)


def attend(q, k, v, causal: bool = True, alibi: bool = False):
    """Softmax attention of q [B, H, T, dh] over k, v [B, H_kv, S, dh] (S >= T: with a KV
    cache the queries are the last T positions). GQA when H_kv < H."""
    t, s = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if alibi:
        slopes = alibi_slopes(q.shape[1]).to(q.device, q.dtype)
        pos_q = torch.arange(s - t, s, device=q.device)
        bias = alibi_bias(slopes, pos_q, torch.arange(s, device=q.device))
        if causal:
            bias = bias.masked_fill(~causal_mask(t, s, q.device), float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
    if not causal or t == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    if t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = causal_mask(t, s, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def attention_probs(q: torch.Tensor, k: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """The weights attend gives, [B, H, T, S], for callers that need them rather than the
    weighted values (a head loop ranks heads by their entropy). Keys [B, H_kv, S, dh] are
    repeated per GQA group; logits are q k^T / sqrt(dh), masked as attend masks them.
    The repeat runs even for one group: it also makes k contiguous, and the matmul of a
    strided k rounds differently (the head loop's choice has always seen the copy)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def block_logits(q: torch.Tensor, k: torch.Tensor, scale: float,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled logits of a block of queries [B, H, T, dh] against a block of keys
    [B, H, S, dh], plus an additive bias (ALiBi's, from alibi_bias): what blockwise
    (online-softmax) attention computes per block. The scale multiplies, as the
    own-output scan always has (attention_probs divides by sqrt(dh), as it always has:
    the two round differently unless dh is a power of 4, so each keeps its op order)."""
    logits = (q @ k.transpose(-1, -2)) * scale
    return logits if bias is None else logits + bias


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
