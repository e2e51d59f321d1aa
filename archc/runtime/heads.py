"""Multi-head layout and rotary position tables: the pieces every attention
layer shares (split/merge of heads, RoPE with one cos/sin table per head dim)."""

from __future__ import annotations

import torch
from torch import nn


def split_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, T, n*dh] -> [B, n, T, dh]"""
    b, t, d = x.shape
    return x.view(b, t, n, d // n).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, n, T, dh] -> [B, T, n*dh]"""
    b, n, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, n * dh)


class Rotary(nn.Module):
    """cos/sin tables for RoPE (rotate-half convention), computed once per forward and
    shared by every attention with this head dim. Not saved in the state dict."""

    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 4096):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        cos, sin = self._table(max_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _table(self, n: int):
        t = torch.arange(n, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, length: int, start: int = 0):
        end = start + length
        if end > self.cos.shape[0]:
            cos, sin = self._table(end)
            return cos[start:end], sin[start:end]
        return self.cos[start:end], self.sin[start:end]


def apply_rope(x: torch.Tensor, table) -> torch.Tensor:
    """x: [B, H, T, dh]; table: (cos, sin) each [T, dh]."""
    cos, sin = table
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
