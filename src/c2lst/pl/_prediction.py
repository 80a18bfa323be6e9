"""``pl.gene_correlation`` and ``pl.spatial_expression``: how well expression is predicted, per gene and in space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import _records as records
from .._utils import check_positive_int
from ..get import metrics as prediction_metrics
from ..metrics import pearson
from ._utils import check_show_save, doc_params, finish


@doc_params
def gene_correlation(
    adata: AnnData,
    *,
    key: str = "c2lst_pred",
    n_top: int | None = 20,
    metric: str = "pearson_r",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Bar chart of the per-gene prediction score stored by :func:`c2lst.tl.evaluate_prediction`.

    Parameters
    ----------
    adata
        Evaluated table.
    key
        The evaluation key (``key_added`` of :func:`c2lst.tl.evaluate_prediction`, default its ``pred_key``).
    n_top
        Show the ``n_top`` best genes; ``None`` shows all.
    metric
        ``"pearson_r"`` (higher is better), ``"mse"`` (lower is better) or a Moran's I column.
    {ax}
    {show_save}

    Returns
    -------
    The figure: one bar per gene, best first; a dashed line marks the mean over all genes.

    Examples
    --------
    >>> fig = c2lst.pl.gene_correlation(table, n_top=10)  # doctest: +SKIP
    """
    check_show_save(show, save)
    if n_top is not None:
        n_top = check_positive_int(n_top, "n_top")
    df = prediction_metrics(adata, key)
    if metric not in df.columns:
        raise KeyError(f"`metric={metric!r}` is not an evaluated metric; choose one of {list(df.columns)}.")
    values = df[metric].dropna().sort_values(ascending=metric == "mse")
    shown = values if n_top is None else values.iloc[:n_top]
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 0.6 + 0.22 * max(len(shown), 1)))
    else:
        fig = ax.figure
    y = np.arange(len(shown))[::-1]
    colours = np.where(shown.to_numpy() >= 0, "tab:blue", "tab:orange")
    ax.barh(y, shown.to_numpy(), color=colours)
    ax.set_yticks(y, shown.index, fontsize=7)
    if len(values):
        ax.axvline(float(values.mean()), color="k", ls="--", lw=1, label=f"mean over {len(values)} genes")
        ax.legend(frameon=False, fontsize=7, loc="lower right")
    ax.axvline(0.0, color="k", lw=0.5)
    ax.set_xlabel(metric.replace("_", " "))
    top = "all" if n_top is None else f"top {len(shown)}"
    ax.set_title(f"{top} genes by {metric.replace('_', ' ')} ({key})", fontsize=9)
    return finish(fig, show, save)


@doc_params
def spatial_expression(
    adata: AnnData,
    genes: str | Sequence[str],
    *,
    pred_key: str = "c2lst_pred",
    expr_key: str = "c2lst_expr",
    spatial_key: str = "spatial",
    spot_size: float | None = None,
    cmap: str = "viridis",
    panel_size: float = 3.0,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Map observed next to predicted expression of ``genes`` at the spot coordinates.

    Each row is one gene; both panels share its colour scale. The y axis points down (image coordinates).

    Parameters
    ----------
    adata
        Table with ``obsm[pred_key]`` (:func:`c2lst.tl.predict_expression`), ``obsm[expr_key]`` and
        ``obsm[spatial_key]``.
    genes
        One gene or a list, among the predicted genes.
    pred_key, expr_key, spatial_key
        Keys of predictions, observed expression and coordinates.
    spot_size
        Marker area in points²; ``None`` scales with the number of spots.
    cmap
        Colour map.
    panel_size
        Inches per panel.
    {show_save}

    Returns
    -------
    The figure: one row per gene, observed left and predicted right; the predicted panel's title gives
    the gene's Pearson r (:func:`c2lst.metrics.pearson`).

    Examples
    --------
    >>> fig = c2lst.pl.spatial_expression(table, ["Gene_0", "Gene_1"])  # doctest: +SKIP
    """
    check_show_save(show, save)
    if not isinstance(adata, AnnData):
        raise TypeError(f"`adata` must be an AnnData table, got {type(adata).__name__}.")
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        raise ValueError("`genes` is empty; pass at least one gene name.")
    for key, arg in ((pred_key, "pred_key"), (spatial_key, "spatial_key")):
        if key not in adata.obsm:
            hint = records.PRED_HINT if arg == "pred_key" else "pass the key of the spot coordinates."
            raise KeyError(f"`{arg}={key!r}` is not in `adata.obsm` (keys: {sorted(adata.obsm)}); {hint}")
    pred_genes = pd.Index(records.gene_names(records.prediction_record(adata, pred_key)["genes"]))
    obs_genes = pd.Index(records.expression_genes(adata, expr_key, var_names_fallback=True))
    bad = [g for g in genes if g not in pred_genes or g not in obs_genes]
    if bad:
        raise KeyError(
            f"`genes` {bad[:10]} are not both predicted and observed; available: {list(pred_genes[:10])}"
            f"{' ...' if len(pred_genes) > 10 else ''}."
        )
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2]
    pred = np.asarray(adata.obsm[pred_key])[:, pred_genes.get_indexer(genes)]
    obs = np.asarray(adata.obsm[expr_key])[:, obs_genes.get_indexer(genes)]
    size = spot_size if spot_size is not None else float(np.clip(4000 / max(len(xy), 1), 2, 60))

    fig, axes = plt.subplots(
        len(genes), 2, figsize=(2 * panel_size + 0.8, panel_size * len(genes)), squeeze=False
    )
    for r, gene in enumerate(genes):
        vmin = float(min(obs[:, r].min(), pred[:, r].min()))
        vmax = float(max(obs[:, r].max(), pred[:, r].max()))
        rr = pearson(obs[:, r], pred[:, r])
        for c, (vals, label) in enumerate(
            ((obs[:, r], "observed"), (pred[:, r], f"predicted (r = {rr:.2f})"))
        ):
            ax = axes[r, c]
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=size, cmap=cmap, vmin=vmin, vmax=vmax, linewidths=0)
            ax.set_aspect("equal")
            ax.invert_yaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{gene}: {label}", fontsize=8)
        fig.colorbar(sc, ax=axes[r].tolist(), shrink=0.8)
    return finish(fig, show, save)
