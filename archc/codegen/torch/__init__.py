"""PyTorch backend: a readable module file, and in-process builds from it."""

from .emit import class_names, generate, root_class

__all__ = ["class_names", "generate", "root_class"]
