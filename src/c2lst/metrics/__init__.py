"""Metrics: correlations, spatial autocorrelation, feature-set distances and confidence intervals.

Arrays in, numbers out: numpy, scipy and scanpy only (no torch, no AnnData bookkeeping), so ``tl`` and ``pl``
share one implementation of each.
"""

from ._correlation import pearson, spearman
from ._distances import frechet_distance, kernel_distance
from ._intervals import ConfidenceInterval, mean_ci, paired_ci
from ._pooling import pooled_ci
from ._spatial import morans_i

__all__ = [
    "ConfidenceInterval",
    "frechet_distance",
    "kernel_distance",
    "mean_ci",
    "morans_i",
    "paired_ci",
    "pearson",
    "pooled_ci",
    "spearman",
]
