"""Deprecated home of the feature-set distances: use :mod:`c2lst.metrics` (kept for old imports)."""

from ..metrics import frechet_distance, kernel_distance

__all__ = ["frechet_distance", "kernel_distance"]
