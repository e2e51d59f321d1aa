"""Head loops (SGT): a few heads of an attention run again on a new input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attend, attention_probs
from .cache import kv_cache
from .heads import apply_rope, merge_heads, split_heads


class HeadLoop(nn.Module):
    """A few heads of an attention run again on a new input (SGT); the other heads keep
    their output. Which heads: the `count` heads with the highest attention entropy, measured
    on the loop's input the first time the loop runs (the growth event), then kept as state
    (buffers `heads`, `chosen`, saved in the state dict). Only the looped heads' rows of
    W_q/W_k/W_v and columns of W_o are used, so the extra work is count/heads of the layer's
    attention."""

    def __init__(self, count: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.count, self.n_heads, self.kv_heads, self.head_dim = count, heads, kv_heads, head_dim
        self.register_buffer("heads", torch.arange(count))
        self.register_buffer("chosen", torch.tensor(False))

    def extra_repr(self) -> str:
        return f"count={self.count}, heads={self.n_heads}, kv_heads={self.kv_heads}"

    @torch.no_grad()
    def choose(self, h: torch.Tensor, attn: nn.Module, rope) -> None:
        q = split_heads(attn.q(h), self.n_heads)
        k = split_heads(attn.k(h), self.kv_heads)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        self.choose_from(q, k)

    @torch.no_grad()
    def choose_from(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """The choice from every head's queries and keys (RoPE applied), ranked by the
        entropy of the weights attend gives them (attention_probs)."""
        p = attention_probs(q, k)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean(dim=(0, 2))
        top = entropy.topk(self.count).indices.sort().values
        self.heads.copy_(top)
        self.chosen.fill_(True)

    def forward(self, h, a, o, attn: nn.Module, rope=None, cache=None, slot: int = 0):
        if not bool(self.chosen):
            self.choose(h, attn, rope)
        sel = self.heads
        dh = self.head_dim
        span = torch.arange(dh, device=h.device)
        rows = (sel[:, None] * dh + span).flatten()
        kv_rows = ((sel // (self.n_heads // self.kv_heads))[:, None] * dh + span).flatten()

        def project(layer, idx):
            bias = layer.bias[idx] if layer.bias is not None else None
            return split_heads(F.linear(h, layer.weight[idx], bias), self.count)

        q, k, v = project(attn.q, rows), project(attn.k, kv_rows), project(attn.v, kv_rows)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        k, v = kv_cache(cache, slot, k, v)  # the looped heads' own keys when decoding
        out = attend(q, k, v)
        change = merge_heads(out - o.index_select(1, sel))
        a = a + F.linear(change, attn.o.weight[:, rows])
        return a, o.index_copy(1, sel, out)


def chosen_heads(loop: HeadLoop, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The looped heads of a decomposed head loop: chosen from q, k [B, H(kv), T, dh] at
    its first run, as HeadLoop.forward chooses them, then kept in the loop's buffers."""
    if not bool(loop.chosen):
        loop.choose_from(q, k)
    return loop.heads
