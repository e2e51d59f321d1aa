"""Analyses over the IR that need no torch: parameter counts (and, later, cost)."""
