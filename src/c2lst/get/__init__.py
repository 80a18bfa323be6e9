"""Read what c2lst stored in a table, like :mod:`scanpy.get`: lineage, models, expression, predictions, metrics.

Everything here returns plain Python or pandas objects parsed from ``uns["c2lst"]`` (JSON strings are parsed,
never evaluated), reads without writing and imports no torch.
"""

from ._get import (
    adapter,
    adapters,
    central_models,
    expression,
    expression_genes,
    expression_params,
    lineage,
    metrics,
    predictions,
    synthetic_mask,
)

__all__ = [
    "adapter",
    "adapters",
    "central_models",
    "expression",
    "expression_genes",
    "expression_params",
    "lineage",
    "metrics",
    "predictions",
    "synthetic_mask",
]
