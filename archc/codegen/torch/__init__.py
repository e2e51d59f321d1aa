"""PyTorch backend: a readable module file, and in-process builds from it."""

from .emit import generate, root_class

__all__ = ["generate", "root_class"]
