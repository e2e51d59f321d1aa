"""PyTorch backend: a readable module file, and in-process builds from it."""

from .emit import generate

__all__ = ["generate"]
