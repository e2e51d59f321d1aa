"""Backends: one folder each (torch now; triton, onnx and mlir read the same IR)."""
