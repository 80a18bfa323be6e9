"""Checks and readers shared by the predictor, evaluation, fidelity and plotting functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from .._records import EXPR_HINT, PATCH_HINT, PRED_HINT, gene_names, synthetic_mask
from .._records import expression_genes as _expression_genes
from .._utils import require_obsm

__all__ = ["expression_genes", "gene_names", "synthetic_mask"]

_PATCH_HINT = PATCH_HINT
_EXPR_HINT = EXPR_HINT
_PRED_HINT = PRED_HINT


def _check_adata(adata: Any, name: str = "adata") -> AnnData:
    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData table, got {type(adata).__name__}.")
    return adata


def expression_genes(adata: AnnData, expr_key: str) -> np.ndarray:
    """Return the gene names of ``obsm[expr_key]`` (a synthetic table without a record: its ``var_names``)."""
    return gene_names(_expression_genes(adata, expr_key, var_names_fallback=True))


def _gene_diff(a: Sequence[str], b: Sequence[str]) -> str:
    only_a = [g for g in a if g not in set(b)]
    only_b = [g for g in b if g not in set(a)]
    return f"only in the first: {only_a[:20]}; only in the second: {only_b[:20]}"


def _patches(adata: AnnData, patch_key: str) -> np.ndarray:
    arr = np.asarray(require_obsm(adata, patch_key, "patch_key", _PATCH_HINT))
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"`obsm[{patch_key!r}]` must hold uint8 RGB patches (n, S, S, 3), got {arr.dtype} {arr.shape}; "
            f"{_PATCH_HINT}"
        )
    return arr
