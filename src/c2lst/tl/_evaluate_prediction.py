"""``tl.evaluate_prediction``: per-gene accuracy and spatial coherence of predicted expression."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _records as records
from .._logging import logger
from .._tables import _check_adata, expression_genes
from .._utils import as_table, check_positive_int, require_obsm
from ..get import metrics as get_metrics
from ..metrics import morans_i, pearson


def evaluate_prediction(
    adata: Any,
    *,
    table_key: str = "table",
    pred_key: str = "c2lst_pred",
    expr_key: str = "c2lst_expr",
    spatial: bool = True,
    spatial_key: str = "spatial",
    n_neighs: int = 6,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Score predicted against observed expression per gene: Pearson r, MSE and spatial coherence.

    Spatial coherence compares Moran's I of the predicted and the observed map of each gene
    (:func:`scanpy.metrics.morans_i` on a ``n_neighs`` kNN graph of the spots, built aside, so ``adata.obsp``
    and ``adata.uns`` are untouched; see :func:`c2lst.metrics.morans_i`). Use :func:`c2lst.get.metrics`
    to get the result as a tidy per-gene DataFrame. Evaluate on held-out real spots: select them first
    (e.g. ``adata[~adata.obs["c2lst_synthetic"]]``).

    Parameters
    ----------
    adata
        Table with ``obsm[pred_key]`` (from :func:`c2lst.tl.predict_expression`) and ``obsm[expr_key]``.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    pred_key
        Predictions.
    expr_key
        Observed prepared expression.
    spatial
        Also compute Moran's I (needs ``obsm[spatial_key]``).
    spatial_key
        Spot coordinates.
    n_neighs
        Neighbours per spot of the spatial graph.
    key_added
        Results go to ``uns["c2lst"]["evaluation"][key_added]``; ``None`` uses ``pred_key``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    The modified copy when ``copy=True``, else None. The record holds ``genes``, ``pearson_r``, ``mse``,
    ``mean_pearson_r`` (NaN-ignoring mean over genes), ``median_pearson_r``, ``mean_mse``, ``n_obs`` and, with
    ``spatial``, ``moran_observed``, ``moran_predicted``, ``moran_difference`` (predicted - observed) and
    ``mean_abs_moran_difference``; ``run_id`` points to the lineage record.

    Examples
    --------
    With ``table`` predicted as in :func:`c2lst.tl.predict_expression`:

    >>> c2lst.tl.evaluate_prediction(table)  # doctest: +SKIP
    >>> c2lst.get.metrics(table).columns.tolist()[:2]  # doctest: +SKIP
    ['pearson_r', 'mse']
    """
    adata = as_table(adata, table_key, arg="adata")
    n_neighs = check_positive_int(n_neighs, "n_neighs")
    key = pred_key if key_added is None else key_added
    if not isinstance(key, str) or not key:
        raise TypeError(f"`key_added` must be a non-empty string or None, got {key_added!r}.")
    pred = np.asarray(require_obsm(adata, pred_key, "pred_key", records.PRED_HINT), dtype=np.float64)
    pred_genes = records.gene_names(records.prediction_record(adata, pred_key)["genes"])
    obs_genes = expression_genes(adata, expr_key)
    missing = [g for g in pred_genes if g not in set(obs_genes)]
    if missing:
        raise ValueError(
            f"{len(missing)} predicted genes are not in `obsm[{expr_key!r}]`: {missing[:20]}; evaluate against the "
            "expression the predictor was trained on."
        )
    obs = np.asarray(adata.obsm[expr_key], dtype=np.float64)[:, pd.Index(obs_genes).get_indexer(pred_genes)]
    if adata.n_obs < 2:
        raise ValueError(f"`adata` has {adata.n_obs} spot(s); evaluation needs at least 2.")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(obs))):
        raise ValueError(f"`obsm[{pred_key!r}]` or `obsm[{expr_key!r}]` contains NaN or inf.")
    coords = None
    if spatial:
        if spatial_key not in adata.obsm:
            raise KeyError(
                f"`spatial_key={spatial_key!r}` is not in `adata.obsm` (keys: {sorted(adata.obsm)}); pass the key "
                "of the spot coordinates or `spatial=False`."
            )
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]

    r = pearson(pred, obs)
    mse = ((pred - obs) ** 2).mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out: dict[str, Any] = {
            "genes": pred_genes,
            "pearson_r": r,
            "mse": mse,
            "mean_pearson_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
            "median_pearson_r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
            "mean_mse": float(mse.mean()),
            "n_obs": int(adata.n_obs),
            "pred_key": pred_key,
            "expr_key": expr_key,
            "spatial": bool(spatial),
        }
        if spatial:
            moran = morans_i(np.hstack([obs, pred]), coords, n_neighs=n_neighs)
            k = len(pred_genes)
            diff = moran[k:] - moran[:k]
            out.update(
                {
                    "moran_observed": moran[:k],
                    "moran_predicted": moran[k:],
                    "moran_difference": diff,
                    "mean_abs_moran_difference": float(np.nanmean(np.abs(diff)))
                    if np.isfinite(diff).any()
                    else float("nan"),
                    "n_neighs": int(n_neighs),
                }
            )

    adata = adata.copy() if copy else adata
    out["run_id"] = records.record_lineage(
        adata,
        function="c2lst.tl.evaluate_prediction",
        parameters={
            "pred_key": pred_key,
            "expr_key": expr_key,
            "spatial": spatial,
            "spatial_key": spatial_key,
            "n_neighs": n_neighs,
            "key_added": key,
        },
        seed=None,
        input_table=None,
    )
    records.store(adata, "evaluation", key, out)
    logger.info(
        f"evaluation {key!r}: mean Pearson r {out['mean_pearson_r']:.3f}, mean MSE {out['mean_mse']:.3f}"
    )
    return adata if copy else None


def prediction_metrics(adata: AnnData, key: str = "c2lst_pred") -> pd.DataFrame:
    """Return the per-gene metrics stored by :func:`c2lst.tl.evaluate_prediction` (deprecated).

    .. deprecated:: 0.2
       Use :func:`c2lst.get.metrics`, which reads every c2lst record the same way.
    """
    warnings.warn(
        "`c2lst.tl.prediction_metrics` is deprecated; use `c2lst.get.metrics(adata, key)`.", FutureWarning, stacklevel=2
    )
    return get_metrics(_check_adata(adata), key)
