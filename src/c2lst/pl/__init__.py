"""Plotting: matplotlib figures of patches, budget curves and prediction quality (scanpy-style ``show``/``save``)."""

from ._budget import budget_curve
from ._patches import patches
from ._prediction import gene_correlation, spatial_expression

__all__ = ["budget_curve", "gene_correlation", "patches", "spatial_expression"]
