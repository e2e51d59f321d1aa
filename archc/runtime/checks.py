"""Run-time checks of what a generated module is called with (tokens, loop counts):
cheap guards that torch.compile turns into graph guards."""

from __future__ import annotations

import torch


def check_count(value: int, maximum: int, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name}={value!r}: a run-time loop count must be an int in "
                         f"0..={maximum} (its declared max)")
    return value


def check_tokens(tokens, model: str) -> None:
    """A model's input is token ids: an integer tensor [batch, seq]. Checks dtype and rank
    only, so it costs nothing per call (torch.compile turns it into guards)."""
    expects = f"{model} expects tokens as an integer tensor [batch, seq]"
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{expects}, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
        got = f"{str(tokens.dtype).removeprefix('torch.')} {list(tokens.shape)}"
        error = ValueError if tokens.dtype in (torch.int64, torch.int32) else TypeError
        raise error(f"{expects}, got {got}")
