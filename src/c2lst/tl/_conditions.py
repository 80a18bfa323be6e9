"""Turn the ``conditions=`` users give to ``tl.synthesize`` into expression over the adapter's genes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..pp._expression import NORMALIZE_LOG1P, apply_expression


@dataclass
class Conditions:
    """Conditioning profiles: model input, count-space values for ``X`` and the parent ids."""

    expr: np.ndarray  # (m, G) float32, preprocessed like the adapter's training expression
    counts: np.ndarray  # (m, G) float32, count-space values written to the synthetic table's X
    parents: np.ndarray  # (m,) str
    source: str  # "table", "anndata", "dataframe" or "array"


def _check_finite(expr: np.ndarray, what: str) -> None:
    if not np.isfinite(expr).all():
        bad = np.where(~np.isfinite(expr).all(1))[0][:5].tolist()
        raise ValueError(
            f"`conditions` ({what}) contains NaN or Inf (rows {bad}…); remove or impute those profiles."
        )


def _to_counts(expr: np.ndarray, params: dict) -> np.ndarray:
    """Invert the preprocessing to count space (``expm1`` at the recorded ``target_sum``)."""
    if str(params.get("normalization")) == NORMALIZE_LOG1P:
        return np.expm1(expr).astype(np.float32)
    return expr.astype(np.float32)


def _from_table(table: AnnData, genes: list[str], params: dict, expr_key: str, source: str) -> Conditions:
    missing = [g for g in genes if g not in table.var_names]
    stored = table.uns.get("c2lst", {}).get("expr", {}).get(expr_key)
    if stored is not None and expr_key in table.obsm and [str(g) for g in stored["genes"]] == genes:
        expr = np.asarray(table.obsm[expr_key], dtype=np.float32)
    else:
        if missing:
            raise KeyError(
                f"the adapter's genes {missing[:10]}{'…' if len(missing) > 10 else ''} ({len(missing)} of "
                f"{len(genes)}) are missing from the conditioning table; pass a table measured on the same genes."
            )
        expr = apply_expression(table, genes=genes, params=params)
    _check_finite(expr, source)
    if missing:
        counts = _to_counts(expr, params)
    else:
        layer = str(params.get("layer", "X"))
        mat = table.X if layer == "X" or layer not in table.layers else table.layers[layer]
        sub = mat[:, table.var_names.get_indexer(genes)]
        counts = np.asarray(sub.toarray() if sparse.issparse(sub) else sub, dtype=np.float32)
    return Conditions(expr, counts, np.asarray(table.obs_names, dtype=str), source)


def resolve_conditions(
    conditions: Any, table: AnnData, *, genes: list[str], params: dict, expr_key: str
) -> Conditions:
    """Return the conditioning profiles for ``synthesize``.

    ``None``: the table's own spots. An AnnData: its spots (prepared with the adapter's recorded preprocessing
    unless it already holds matching ``obsm[expr_key]``). A DataFrame: rows = profiles, columns include the
    adapter's genes, values already preprocessed (log-normalised). An array ``(m, n_genes)``: preprocessed
    profiles in the adapter's gene order.
    """
    if conditions is None:
        return _from_table(table, genes, params, expr_key, "table")
    if isinstance(conditions, AnnData):
        if conditions.n_obs == 0:
            raise ValueError("`conditions` is an empty AnnData; pass at least one expression profile.")
        try:
            return _from_table(conditions, genes, params, expr_key, "anndata")
        except ValueError as err:
            raise ValueError(f"`conditions` (AnnData): {err}") from None
    if isinstance(conditions, pd.DataFrame):
        missing = [g for g in genes if g not in conditions.columns]
        if missing:
            raise KeyError(
                f"`conditions` lacks the adapter's genes {missing[:10]}{'…' if len(missing) > 10 else ''} "
                f"({len(missing)} of {len(genes)}); give one column per adapter gene."
            )
        expr = conditions[genes].to_numpy(dtype=np.float32)
        if expr.shape[0] == 0:
            raise ValueError("`conditions` has no rows; pass at least one expression profile.")
        _check_finite(expr, "dataframe")
        return Conditions(
            expr, _to_counts(expr, params), np.asarray(conditions.index, dtype=str), "dataframe"
        )
    if isinstance(conditions, np.ndarray | list):
        expr = np.asarray(conditions, dtype=np.float32)
        if expr.ndim != 2 or expr.shape[1] != len(genes) or expr.shape[0] == 0:
            raise ValueError(
                f"`conditions` array has shape {expr.shape}; expected (n_profiles >= 1, {len(genes)}) over the "
                "adapter's genes in order (see `uns['c2lst']['local'][adapter_key]['genes']`)."
            )
        _check_finite(expr, "array")
        parents = np.asarray([f"condition_{i}" for i in range(expr.shape[0])], dtype=str)
        return Conditions(expr, _to_counts(expr, params), parents, "array")
    raise TypeError(
        f"`conditions` must be None, an AnnData, a DataFrame or an array, got {type(conditions).__name__}."
    )
