"""Preprocessing: SpatialData / AnnData -> arrays a model eats (image patches, expression matrices)."""

from ._expression import prepare_expression
from ._patches import extract_patches

__all__ = ["extract_patches", "prepare_expression"]
