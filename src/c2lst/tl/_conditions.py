"""Turn the ``conditions=`` users give to ``tl.synthesize`` into expression over the adapter's genes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _records as records
from .._logging import logger
from .._utils import as_float_matrix
from ..pp._expression import NORMALIZE_LOG1P, apply_expression


@dataclass
class Conditions:
    """Conditioning profiles: model input, count-space values for ``X`` and the parent ids."""

    expr: np.ndarray  # (m, G) float32, preprocessed like the adapter's training expression
    counts: np.ndarray  # (m, G) float32, count-space values written to the synthetic table's X
    parents: np.ndarray  # (m,) str
    source: str  # "table", "anndata", "dataframe", "array" or "mixup"
    parents_b: np.ndarray | None = None  # (m,) str, mixup only: the second parent
    weights: np.ndarray | None = None  # (m,) float, mixup only: the first parent's weight, in [0.5, 1]


def _check_finite(expr: np.ndarray, what: str) -> None:
    if not np.isfinite(expr).all():
        bad = np.where(~np.isfinite(expr).all(1))[0][:5].tolist()
        raise ValueError(
            f"`conditions` ({what}) contains NaN or Inf (rows {bad}…); remove or impute those profiles."
        )


def _check_range(expr: np.ndarray, params: dict, what: str) -> None:
    """Refuse preprocessed profiles outside the range the recorded preprocessing can produce.

    Log-normalised values are >= 0, and with ``normalize_total(target_sum)`` + ``log1p`` no gene exceeds
    ``log1p(target_sum)`` (a spot whose counts all fall on that gene): larger values are not log-normalised and
    would give ``inf`` counts in ``X``.
    """
    if expr.size and float(expr.min()) < 0:
        raise ValueError(
            f"`conditions` ({what}) holds negative values (min {float(expr.min()):.4g}); profiles are preprocessed "
            "(log-normalised) expression, >= 0. Pass `np.log1p` of normalised counts, or an AnnData of counts."
        )
    target_sum = float(params.get("target_sum", 0.0) or 0.0)
    if str(params.get("normalization")) == NORMALIZE_LOG1P and target_sum > 0 and expr.size:
        top = float(np.log1p(target_sum))
        if float(expr.max()) > top * (1 + 1e-4):
            raise ValueError(
                f"`conditions` ({what}) holds values up to {float(expr.max()):.4g}, beyond log1p(target_sum="
                f"{target_sum:g}) = {top:.4g}, the largest a log-normalised gene can reach; values are taken as "
                "`log1p(normalize_total(counts))`. Pass log-normalised profiles, or an AnnData of counts."
            )


def _to_counts(expr: np.ndarray, params: dict) -> np.ndarray:
    """Invert the preprocessing to count space (``expm1`` at the recorded ``target_sum``)."""
    if str(params.get("normalization")) == NORMALIZE_LOG1P:
        return np.expm1(expr).astype(np.float32)
    return expr.astype(np.float32)


def _from_table(table: AnnData, genes: list[str], params: dict, expr_key: str, source: str) -> Conditions:
    missing = [g for g in genes if g not in table.var_names]
    stored = records.section(table, "expr").get(expr_key)
    if stored is not None and expr_key in table.obsm and list(records.gene_names(stored["genes"])) == genes:
        expr = np.asarray(table.obsm[expr_key], dtype=np.float32)
    else:
        if missing:
            raise KeyError(
                f"the adapter's genes {missing[:10]}{'…' if len(missing) > 10 else ''} ({len(missing)} of "
                f"{len(genes)}) are missing from the conditioning table (genes are matched by name); pass a table "
                "measured on the same genes, or adapt on the genes both tables share."
            )
        layer = str(params.get("layer", "X"))
        if source == "anndata" and layer != "X" and layer not in table.layers:
            raise KeyError(
                f"`conditions` (AnnData) lacks layer {layer!r}, where the adapter's expression was prepared from "
                f"raw counts; store the other table's raw counts there (`conditions.layers[{layer!r}] = ...`)."
            )
        if source == "anndata" and str(params.get("normalization")) == NORMALIZE_LOG1P:
            mat = table.X if layer == "X" else table.layers[layer]
            vals = mat.data if sparse.issparse(mat) else np.asarray(mat)
            if vals.size and np.isfinite(vals).all() and not np.allclose(vals, np.round(vals)):
                logger.warning(
                    "`conditions` (AnnData): %s holds non-integer values; the adapter normalises raw counts, "
                    "so pass the other table's raw counts, not normalised values", layer
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


MIXUP = "mixup"


def check_mixup_options(conditions: Any, n_conditions: Any, mixup_alpha: Any) -> tuple[int | None, float]:
    """Validate ``n_conditions`` and ``mixup_alpha`` of ``synthesize`` against ``conditions``."""
    if isinstance(conditions, str) and conditions != MIXUP:
        raise TypeError(
            f"`conditions={conditions!r}` is unknown; the only string is {MIXUP!r} (count-space mixtures of the "
            "table's spots); otherwise pass None, an AnnData, a DataFrame or an array."
        )
    if n_conditions is not None:
        if not (isinstance(conditions, str) and conditions == MIXUP):
            raise ValueError(
                "`n_conditions` sets the number of mixtures of `conditions='mixup'`; other conditions give one "
                "profile per row, so drop `n_conditions`."
            )
        if isinstance(n_conditions, bool) or not isinstance(n_conditions, int | np.integer) or n_conditions < 1:
            raise ValueError(f"`n_conditions={n_conditions!r}` must be an integer >= 1 (or None: one per spot).")
    if isinstance(mixup_alpha, bool) or not isinstance(mixup_alpha, int | float) or not (
        np.isfinite(mixup_alpha) and mixup_alpha > 0
    ):
        raise ValueError(f"`mixup_alpha={mixup_alpha!r}` must be a finite number > 0 (1: uniform weights).")
    return (None if n_conditions is None else int(n_conditions)), float(mixup_alpha)


def mixup_conditions(
    table: AnnData,
    *,
    genes: list[str],
    params: dict,
    n_conditions: int | None = None,
    alpha: float = 1.0,
    seed: int = 0,
) -> Conditions:
    """Return count-space convex mixtures of pairs of ``table``'s spots, preprocessed like the adapter's input.

    For mixture ``i`` two distinct spots ``a`` and ``b`` are drawn uniformly and a weight ``u ~ Beta(alpha,
    alpha)``; the weight of the first parent is ``w = max(u, 1 - u)`` (so ``a`` always dominates), the counts
    are ``w c_a + (1 - w) c_b`` over the adapter's genes and the library sizes mix the same way, then the
    adapter's recorded normalisation is applied. Everything is drawn from ``seed``.
    """
    layer = str(params.get("layer", "X"))
    if layer != "X" and layer not in table.layers:
        raise KeyError(
            f"`conditions='mixup'` mixes raw counts, but the table lacks layer {layer!r} the adapter was prepared "
            "from; restore that layer."
        )
    mat = table.X if layer == "X" else table.layers[layer]
    missing = [g for g in genes if g not in table.var_names]
    if mat is None or missing:
        raise KeyError(
            f"`conditions='mixup'` mixes raw counts of the adapter's genes, but the table's "
            f"{'X' if layer == 'X' else f'layer {layer!r}'} lacks "
            f"{'them' if mat is None else f'{missing[:10]} ({len(missing)} of {len(genes)})'}; use the table the "
            "adapter was trained on, with its counts."
        )
    n = table.n_obs
    if n < 2:
        raise ValueError(f"`conditions='mixup'` needs at least 2 spots in the table, got {n}.")
    m = n if n_conditions is None else int(n_conditions)
    totals = np.asarray(mat.sum(axis=1), dtype=np.float64).ravel()
    sub = mat[:, table.var_names.get_indexer(genes)]
    counts = np.asarray(sub.toarray() if sparse.issparse(sub) else sub, dtype=np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(
            "`conditions='mixup'`: the table's counts hold negative, NaN or Inf values; mixtures need raw counts."
        )
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, m)
    b = rng.integers(0, n - 1, m)
    b = b + (b >= a)  # a distinct second parent
    u = rng.beta(alpha, alpha, m)
    w = np.maximum(u, 1.0 - u)
    mixed = w[:, None] * counts[a] + (1.0 - w)[:, None] * counts[b]
    mixed_totals = w * totals[a] + (1.0 - w) * totals[b]
    expr = apply_expression(mixed, genes=genes, params=params, totals=mixed_totals)
    names = np.asarray(table.obs_names, dtype=str)
    return Conditions(expr, mixed.astype(np.float32), names[a], MIXUP, parents_b=names[b], weights=w)


def resolve_conditions(
    conditions: Any,
    table: AnnData,
    *,
    genes: list[str],
    params: dict,
    expr_key: str,
    n_conditions: int | None = None,
    mixup_alpha: float = 1.0,
    seed: int = 0,
) -> Conditions:
    """Return the conditioning profiles for ``synthesize``.

    ``None``: the table's own spots. ``"mixup"``: :func:`mixup_conditions` of the table's spots. An AnnData:
    its spots (raw counts in the adapter's recorded layer, prepared with the adapter's recorded preprocessing,
    unless it already holds matching ``obsm[expr_key]``). A DataFrame: rows = profiles, columns include the
    adapter's genes, values already preprocessed (log-normalised). An array ``(m, n_genes)``: preprocessed
    profiles in the adapter's gene order.
    """
    if isinstance(conditions, str) and conditions == MIXUP:
        return mixup_conditions(
            table, genes=genes, params=params, n_conditions=n_conditions, alpha=mixup_alpha, seed=seed
        )
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
        dup = sorted({str(c) for c in conditions.columns[conditions.columns.duplicated()] if c in set(genes)})
        if dup:
            raise ValueError(
                f"`conditions` has duplicate gene columns {dup[:10]}; give each adapter gene one column."
            )
        expr = as_float_matrix(conditions[genes], "conditions")
        if expr.shape[0] == 0:
            raise ValueError("`conditions` has no rows; pass at least one expression profile.")
        _check_finite(expr, "dataframe")
        _check_range(expr, params, "dataframe")
        return Conditions(
            expr, _to_counts(expr, params), np.asarray(conditions.index, dtype=str), "dataframe"
        )
    if isinstance(conditions, np.ndarray | list):
        expr = as_float_matrix(conditions, "conditions")
        if expr.ndim != 2 or expr.shape[1] != len(genes) or expr.shape[0] == 0:
            raise ValueError(
                f"`conditions` array has shape {expr.shape}; expected (n_profiles >= 1, {len(genes)}) over the "
                "adapter's genes in order (see `uns['c2lst']['local'][adapter_key]['genes']`)."
            )
        _check_finite(expr, "array")
        _check_range(expr, params, "array")
        parents = np.asarray([f"condition_{i}" for i in range(expr.shape[0])], dtype=str)
        return Conditions(expr, _to_counts(expr, params), parents, "array")
    raise TypeError(
        f"`conditions` must be None, an AnnData, a DataFrame or an array, got {type(conditions).__name__}."
    )
