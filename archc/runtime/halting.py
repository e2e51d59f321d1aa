"""Early exit for loops with a halting rule (per token or per sequence)."""

from __future__ import annotations

import torch

from .cache import KVCache


class Halting:
    """Early exit for a loop: positions (tokens, or whole sequences) whose state stopped
    moving keep their state; the loop ends when none is still moving."""

    def __init__(self, state: torch.Tensor, tol: float, per: str):
        self.tol = tol
        self.per = per
        shape = state.shape[:-1] + (1,) if per == "token" else state.shape[:1] + (1, 1)
        self.active = torch.ones(shape, dtype=torch.bool, device=state.device)

    def update(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        new = torch.where(self.active, new, old)
        if self.per == "token":
            delta = (new - old).norm(dim=-1, keepdim=True)
            size = new.norm(dim=-1, keepdim=True)
        else:
            delta = (new - old).flatten(1).norm(dim=1).view(-1, 1, 1)
            size = new.flatten(1).norm(dim=1).view(-1, 1, 1)
        self.active = self.active & (delta > self.tol * size)
        return new

    def done(self, cache: "KVCache | None" = None) -> bool:
        """Whether the loop may stop: once no position moves, unless the loop fills a KV
        cache. Then it runs every iteration, so a halted position's later slots hold the
        keys and values of its frozen state (what a loop that kept computing stores) and
        decoding reads the same slots as the prefill of the whole sequence."""
        return cache is None and not bool(self.active.any())
