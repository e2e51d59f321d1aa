"""The own-output KV scan (Recurrent Transformer): positions in order, each attending
over keys computed from the layer's own earlier outputs."""

from __future__ import annotations

import math

import torch

from .attention import alibi_bias, alibi_slopes, block_logits
from .cache import KVCache


def recurrent_scan(layer, x: torch.Tensor, cache: "KVCache | None", slot: int,
                   alibi: bool = False, mode: str = "tiled", chunk: int = 16) -> torch.Tensor:
    """Run a layer whose keys/values at earlier positions come from its own output
    (the Recurrent Transformer). Positions run in order; position t attends over the keys
    of outputs 0..t-1 (and any cached ones) plus its own input's key on the diagonal.

    The layer gives three pieces: `queries(x) -> (q, k_diag, v_diag, *saved)` over all
    positions, `finish(x_t, a_t, *saved_t) -> out_t` for one position, and
    `keys(out_t) -> (k_t, v_t)`. `mode="naive"` attends over all earlier keys at every
    step. `mode="tiled"` is the exact tiled prefill: keys are grouped in chunks; when
    chunk c completes, chunks [c+1-L, c] (L = lowbit(c+1)) are added to the queries of
    chunks [c+1, c+L] as one dense block with online softmax, so every query meets every
    earlier complete chunk exactly once (a Fenwick decomposition); the few keys of its
    own, unfinished chunk it attends directly.
    """
    q, k_diag, v_diag, *saved = layer.queries(x)
    b, h, t_len, dh = q.shape
    past = cache.pos if cache is not None else 0
    if cache is not None:
        past_k, past_v = cache.read(slot, past)
    else:
        past_k = q.new_zeros(b, h, 0, dh)
        past_v = q.new_zeros(b, h, 0, dh)
    scale = 1.0 / math.sqrt(dh)
    slopes = alibi_slopes(h).to(q.device, q.dtype) if alibi else None
    diag_logits = (q * k_diag).sum(-1, keepdim=True) * scale
    own_k: list[torch.Tensor] = []
    own_v: list[torch.Tensor] = []
    outs = []
    if mode == "tiled" and not torch.is_grad_enabled():
        return _tiled_scan_inference(layer, x, q, k_diag, v_diag, saved, cache, slot, past,
                                     past_k, past_v, scale, slopes, chunk)
    acc = None
    if mode == "tiled":
        acc = _OnlineSoftmax(q, scale, slopes, past)
        if past:
            acc.add(0, t_len, past_k, past_v, 0)
    for t in range(t_len):
        qt = q[:, :, t:t + 1]
        if mode == "tiled":
            first = (t // chunk) * chunk  # keys of this position's unfinished chunk
            a_t = acc.finish(t, diag_logits[:, :, t:t + 1], v_diag[:, :, t:t + 1],
                             own_k[first:t], own_v[first:t], past + first)
        else:
            keys = torch.cat([past_k] + own_k + [k_diag[:, :, t:t + 1]], dim=2)
            values = torch.cat([past_v] + own_v + [v_diag[:, :, t:t + 1]], dim=2)
            bias = None
            if slopes is not None:
                pos = torch.arange(past + t + 1, device=q.device)
                bias = alibi_bias(slopes, pos[-1:], pos)
            logits = block_logits(qt, keys, scale, bias)
            a_t = torch.softmax(logits, dim=-1) @ values
        out_t = layer.finish(x[:, t:t + 1], a_t, *[s_[:, t:t + 1] if s_.dim() == 3
                                                   else s_[:, :, t:t + 1] for s_ in saved])
        k_t, v_t = layer.keys(out_t)
        own_k.append(k_t)
        own_v.append(v_t)
        if cache is not None:
            cache.write(slot, past + t, k_t, v_t)
        outs.append(out_t)
        if mode == "tiled" and (t + 1) % chunk == 0:
            c = (t + 1) // chunk - 1
            span = (c + 1) & -(c + 1)
            lo, hi = (c + 1) * chunk, min((c + 1 + span) * chunk, t_len)
            if lo < hi:
                start = (c + 1 - span) * chunk
                acc.add(lo, hi, torch.cat(own_k[start:t + 1], dim=2),
                        torch.cat(own_v[start:t + 1], dim=2), past + start)
    return torch.cat(outs, dim=1)


def _tiled_scan_inference(layer, x, q, k_diag, v_diag, saved, cache, slot, past, past_k,
                          past_v, scale, slopes, chunk):
    """The tiled scan without autograd: accumulators and the layer's own keys live in
    preallocated tensors updated in place. Each query's accumulator starts with its
    diagonal; a new key is pushed to the rest of its chunk at once, and completed chunks
    reach later chunks in Fenwick blocks, so step t only reads its finished accumulator."""
    b, h, t_len, dh = q.shape
    acc = _InPlaceSoftmax(q, (q * k_diag).sum(-1, keepdim=True) * scale, v_diag, scale,
                          slopes, past)
    if past:
        acc.add(0, t_len, past_k, past_v, 0)
    keys = q.new_empty(b, h, t_len, dh)
    values = q.new_empty(b, h, t_len, dh)
    outs = []
    for t in range(t_len):
        out_t = layer.finish(x[:, t:t + 1], acc.output(t),
                             *[s_[:, t:t + 1] if s_.dim() == 3 else s_[:, :, t:t + 1]
                               for s_ in saved])
        k_t, v_t = layer.keys(out_t)
        keys[:, :, t:t + 1] = k_t
        values[:, :, t:t + 1] = v_t
        if cache is not None:
            cache.write(slot, past + t, k_t, v_t)
        outs.append(out_t)
        end = min((t // chunk + 1) * chunk, t_len)  # the rest of this chunk
        if t + 1 < end:
            acc.push(t + 1, end, k_t, v_t)
        if (t + 1) % chunk == 0:
            c = (t + 1) // chunk - 1
            span = (c + 1) & -(c + 1)
            lo, hi = (c + 1) * chunk, min((c + 1 + span) * chunk, t_len)
            if lo < hi:
                first = (c + 1 - span) * chunk
                acc.add(lo, hi, keys[:, :, first:t + 1], values[:, :, first:t + 1],
                        past + first)
    return torch.cat(outs, dim=1)


class _InPlaceSoftmax:
    """Online-softmax accumulators for all queries, updated in place (no autograd)."""

    def __init__(self, q, diag_logits, diag_values, scale, slopes, past):
        self.q, self.scale, self.slopes, self.past = q, scale, slopes, past
        self.m = diag_logits.clone()
        self.l = torch.ones_like(diag_logits)
        self.o = diag_values.clone()
        self.ramp = None  # ALiBi's bias [H, n, 1] for distances 1, 2, ..., n

    def add(self, lo: int, hi: int, keys, values, key_start: int) -> None:
        logits = _block(self.q, lo, hi, keys, key_start, self.scale, self.slopes, self.past)
        m, l, o = self.m[:, :, lo:hi], self.l[:, :, lo:hi], self.o[:, :, lo:hi]
        m_new = torch.maximum(m, logits.amax(-1, keepdim=True))
        keep = torch.exp(m - m_new)
        p = torch.exp(logits - m_new)
        l.mul_(keep).add_(p.sum(-1, keepdim=True))
        o.mul_(keep).add_(p @ values)
        m.copy_(m_new)

    def push(self, lo: int, hi: int, k, v) -> None:
        """One key (at position lo - 1) to queries lo..hi-1: distances 1, 2, ..."""
        bias = None
        if self.slopes is not None:
            if self.ramp is None or self.ramp.shape[1] < hi - lo:
                n = max(hi - lo, 64)
                dist = torch.arange(n + 1, device=self.q.device)
                self.ramp = alibi_bias(self.slopes, dist[1:], dist[:1])
            bias = self.ramp[:, :hi - lo]
        logits = block_logits(self.q[:, :, lo:hi], k, self.scale, bias)
        m, l, o = self.m[:, :, lo:hi], self.l[:, :, lo:hi], self.o[:, :, lo:hi]
        m_new = torch.maximum(m, logits)
        keep = torch.exp(m - m_new)
        p = torch.exp(logits - m_new)
        l.mul_(keep).add_(p)
        o.mul_(keep).add_(p @ v)  # an outer product; as a matmul it counts like the rest
        m.copy_(m_new)

    def output(self, t: int):
        return self.o[:, :, t:t + 1] / self.l[:, :, t:t + 1]


class _OnlineSoftmax:
    """Running max, normaliser and unnormalised output per query, so blocks of keys can
    arrive in any order and the result is exactly softmax attention. Kept per position
    (lists, no in-place writes) so autograd sees each block once: O(block) per update."""

    def __init__(self, q, scale, slopes, past):
        b, h, t, dh = q.shape
        self.q, self.scale, self.slopes, self.past = q, scale, slopes, past
        self.m = [q.new_full((b, h, 1, 1), float("-inf"))] * t
        self.l = [q.new_zeros(b, h, 1, 1)] * t
        self.o = [q.new_zeros(b, h, 1, dh)] * t

    def add(self, lo: int, hi: int, keys, values, key_start: int) -> None:
        """Queries lo..hi-1 (local) attend to keys at positions key_start.. (all earlier)."""
        logits = _block(self.q, lo, hi, keys, key_start, self.scale, self.slopes, self.past)
        m_old = torch.cat(self.m[lo:hi], dim=2)
        m_new = torch.maximum(m_old, logits.amax(-1, keepdim=True))
        p = torch.exp(logits - m_new)
        keep = torch.exp(m_old - m_new)
        l_new = torch.cat(self.l[lo:hi], dim=2) * keep + p.sum(-1, keepdim=True)
        o_new = torch.cat(self.o[lo:hi], dim=2) * keep + p @ values
        self.m[lo:hi] = m_new.split(1, dim=2)
        self.l[lo:hi] = l_new.split(1, dim=2)
        self.o[lo:hi] = o_new.split(1, dim=2)

    def finish(self, t: int, diag_logit, diag_value, recent_k: list, recent_v: list,
               recent_start: int):
        """Query t's output: what the blocks gave it, the keys of its unfinished chunk
        (`recent`, at positions recent_start..), and its own diagonal key."""
        logits = diag_logit
        values = diag_value
        if recent_k:
            keys = torch.cat(recent_k, dim=2)
            rec = _block(self.q, t, t + 1, keys, recent_start, self.scale, self.slopes,
                         self.past)
            logits = torch.cat([rec, diag_logit], dim=-1)
            values = torch.cat(recent_v + [diag_value], dim=2)
        m_old, l_old, o_old = self.m[t], self.l[t], self.o[t]
        m = torch.maximum(m_old, logits.amax(-1, keepdim=True))
        keep = torch.exp(m_old - m)
        p = torch.exp(logits - m)
        return (o_old * keep + p @ values) / (l_old * keep + p.sum(-1, keepdim=True))


def _block(q, lo: int, hi: int, keys, key_start: int, scale: float, slopes, past: int):
    """Logits of local queries lo..hi-1 (absolute positions past + lo..) against keys at
    absolute positions key_start.., with ALiBi's bias when the scan has slopes."""
    bias = None
    if slopes is not None:
        pos_q = torch.arange(past + lo, past + hi, device=q.device)
        pos_k = torch.arange(key_start, key_start + keys.shape[2], device=q.device)
        bias = alibi_bias(slopes, pos_q, pos_k)
    return block_logits(q[:, :, lo:hi], keys, scale, bias)
