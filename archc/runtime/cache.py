"""The KV cache for incremental decoding, and the helpers generated code calls to
fill it, read it and refuse it."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values for incremental decoding: one [B, H_kv, max_len, dh] buffer pair
    per slot of the model's kv plan. `model(tokens, cache=cache)` appends."""

    def __init__(self, layout, batch: int, max_len: int, dtype=torch.float32, device=None):
        self.layout = [tuple(x) for x in layout]
        self.batch = batch
        self.max_len = max_len
        self.pos = 0
        self.params: dict[str, int] | None = None  # the run-time params it was filled with
        self.k = [torch.zeros(batch, h, max_len, dh, dtype=dtype, device=device)
                  for h, dh in self.layout]
        self.v = [torch.zeros(batch, h, max_len, dh, dtype=dtype, device=device)
                  for h, dh in self.layout]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(self, slot: int, k: torch.Tensor, v: torch.Tensor):
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions, max_len={self.max_len}")
        if k.shape[0] != self.batch:
            raise ValueError(f"KV cache made for batch {self.batch}, got {k.shape[0]}")
        self.k[slot][:, :, self.pos:end] = k
        self.v[slot][:, :, self.pos:end] = v
        return self.k[slot][:, :, :end], self.v[slot][:, :, :end]

    def write(self, slot: int, at: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values at positions at.. (layers that fill their cache themselves)."""
        end = at + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions, max_len={self.max_len}")
        self.k[slot][:, :, at:end] = k
        self.v[slot][:, :, at:end] = v

    def read(self, slot: int, end: int):
        return self.k[slot][:, :, :end], self.v[slot][:, :, :end]

    def keep_params(self, params: dict[str, int]) -> None:
        """Record the run-time params (loop counts) of the first call; refuse other values
        later. The cached keys and values belong to those counts: a bigger count would read
        slots never filled, a smaller one mix states of two depths (layers after the loop
        cached keys of the deeper state)."""
        if self.pos == 0 or self.params is None:
            self.params = dict(params)
            return
        from ..errors import ArchcError

        for name, value in params.items():
            was = self.params.get(name, value)
            if value != was:
                raise ArchcError(
                    f"run-time param {name}={value}, but this KV cache was filled with "
                    f"{name}={was}: its keys and values belong to that count",
                    hint=f"decode with {name}={was}, or start over with cache.reset() "
                         "or a new cache", code="A061")

    def reset(self) -> None:
        self.pos = 0
        self.params = None


def kv_cache(cache: "KVCache | None", slot: int, k, v):
    """Append this step's keys/values to a slot and return all of them (no cache: as is)."""
    if cache is None:
        return k, v
    return cache.update(slot, k, v)


def cache_params(cache: "KVCache | None", params: dict[str, int]) -> None:
    """Every call with a cache passes its run-time params (see KVCache.keep_params)."""
    if cache is not None:
        cache.keep_params(params)


def refuse_cache(message: str, where: tuple | None, hint: str, code: str = "A060"):
    """new_cache of a model that cannot decode incrementally: an archc error at the spec
    line that rules it out (see archc/passes/kvplan.py, decode_blockers)."""
    from ..errors import ArchcError, Span

    raise ArchcError(message, Span(*where) if where else None, hint, code)


def cache_start(cache: "KVCache | None") -> int:
    return 0 if cache is None else cache.pos


def cache_advance(cache: "KVCache | None", n: int) -> None:
    if cache is not None:
        cache.pos += n
