"""Checks and readers shared by the predictor, evaluation, fidelity and plotting functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from anndata import AnnData

from .._utils import UNS_KEY, require_obsm

_PATCH_HINT = "run `c2lst.pp.extract_patches` first (or pass the `patch_key` it used)."
_EXPR_HINT = "run `c2lst.pp.prepare_expression` first (or pass the `key_added` it used as `expr_key`)."
_PRED_HINT = "run `c2lst.tl.predict_expression` first (or pass the `key_added` it used as `pred_key`)."


def _check_adata(adata: Any, name: str = "adata") -> AnnData:
    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData table, got {type(adata).__name__}.")
    return adata


def gene_names(values: Any) -> np.ndarray:
    """Return gene names as an object array of ``str`` (also from numpy ``StringDType`` arrays read from zarr)."""
    return np.asarray([str(v) for v in np.asarray(values).tolist()], dtype=object)


def expression_genes(adata: AnnData, expr_key: str) -> np.ndarray:
    """Return the gene names of ``obsm[expr_key]`` recorded by :func:`c2lst.pp.prepare_expression`."""
    mat = require_obsm(adata, expr_key, "expr_key", _EXPR_HINT)
    rec = adata.uns.get(UNS_KEY, {}).get("expr", {}).get(expr_key, {})
    if "genes" in rec:
        genes = gene_names(rec["genes"])
    elif mat.shape[1] == adata.n_vars:  # e.g. a synthetic table whose X holds the conditioning genes
        genes = gene_names(adata.var_names)
    else:
        raise KeyError(f"`uns['c2lst']['expr'][{expr_key!r}]['genes']` is missing; {_EXPR_HINT}")
    if len(genes) != mat.shape[1]:
        raise ValueError(
            f"`obsm[{expr_key!r}]` has {mat.shape[1]} columns but {len(genes)} recorded genes; {_EXPR_HINT}"
        )
    return genes


def synthetic_mask(adata: AnnData) -> np.ndarray:
    """Return a boolean mask of rows marked ``obs["c2lst_synthetic"]`` (all False when the column is absent)."""
    if "c2lst_synthetic" not in adata.obs:
        return np.zeros(adata.n_obs, dtype=bool)
    col = adata.obs["c2lst_synthetic"]
    return np.asarray(col.astype("boolean").fillna(False), dtype=bool)


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
