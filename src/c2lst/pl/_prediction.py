"""``pl.gene_correlation`` and ``pl.spatial_expression``: how well expression is predicted, per gene and in space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .. import _records as records
from .._utils import as_table, check_positive_float, check_positive_int
from ..get import metrics as prediction_metrics
from ..metrics import pearson
from ._tissue import draw, tissue
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
    save: str | Path | bool | None = None,
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
    return finish(fig, show, save, name="gene_correlation")


@doc_params
def spatial_expression(
    adata: Any,
    genes: str | Sequence[str],
    *,
    table_key: str = "table",
    image_key: str | None = None,
    coordinate_system: str | None = None,
    pred_key: str = "c2lst_pred",
    expr_key: str = "c2lst_expr",
    spatial_key: str = "spatial",
    spot_size: float | None = None,
    alpha: float = 0.8,
    cmap: str = "viridis",
    panel_size: float = 3.0,
    ax: Axes | Sequence[Axes] | np.ndarray | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Figure:
    """Map observed next to predicted expression of ``genes``: on the H&E image, or at the spot coordinates.

    Each row is one gene, observed left and predicted right; both panels share the gene's colour scale.
    Given a :class:`spatialdata.SpatialData`, the spots (the circles or polygons the table annotates) are drawn
    on the H&E image by spatialdata-plot (``render_images`` + ``render_shapes``), in the image's orientation.
    Given an :class:`~anndata.AnnData`, the spots are dots at ``obsm[spatial_key]`` (y axis pointing down).

    Parameters
    ----------
    adata
        A :class:`spatialdata.SpatialData` (spots on tissue; the table is ``tables[table_key]``) or an AnnData
        table with ``obsm[spatial_key]``. The table holds ``obsm[pred_key]``
        (:func:`c2lst.tl.predict_expression`) and ``obsm[expr_key]``.
    genes
        One gene or a list, among the predicted genes.
    table_key
        Table of a SpatialData; it must annotate one shapes element. Synthetic rows are not drawn.
    image_key
        Image under the spots (SpatialData only). Default: the image :func:`c2lst.pp.extract_patches` cut
        these spots' patches from, else the smallest H&E/brightfield RGB image sharing a coordinate system
        with the shapes (e.g. Space Ranger's hires image rather than the full-resolution one).
    coordinate_system
        Coordinate system to draw in (SpatialData only); default the one of the patches, else ``"global"`` or
        the first shared by image and shapes.
    pred_key, expr_key, spatial_key
        Keys of predictions, observed expression and (AnnData only) coordinates.
    spot_size
        Marker area in points² (AnnData only; on tissue the spots have their real size); ``None`` scales
        with the number of spots.
    alpha
        Opacity of the spots over the image (SpatialData only), in ``(0, 1]``.
    cmap
        Colour map.
    panel_size
        Inches per panel.
    ax
        Draw into these axes instead of a new figure: ``2 * len(genes)`` axes (a sequence or an array),
        observed and predicted of the first gene, then of the second gene...
    {show_save}

    Returns
    -------
    The figure: one row per gene, observed left and predicted right; the predicted panel's title gives
    the gene's Pearson r (:func:`c2lst.metrics.pearson`) over the drawn spots.

    Examples
    --------
    >>> fig = c2lst.pl.spatial_expression(sdata, ["Gene_0", "Gene_1"])  # doctest: +SKIP
    >>> fig, axes = plt.subplots(1, 2)  # doctest: +SKIP
    >>> c2lst.pl.spatial_expression(table, "Gene_0", ax=axes, save="_gene0.png")  # doctest: +SKIP
    """
    check_show_save(show, save)
    table = as_table(adata, table_key)
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        raise ValueError("`genes` is empty; pass at least one gene name.")
    axes = _check_axes(ax, 2 * len(genes))
    alpha = check_positive_float(alpha, "alpha")
    if alpha > 1:
        raise ValueError(f"`alpha` must be in (0, 1], got {alpha!r}.")
    on_tissue = not isinstance(adata, AnnData)
    keys = ((pred_key, "pred_key"),) if on_tissue else ((pred_key, "pred_key"), (spatial_key, "spatial_key"))
    for key, arg in keys:
        if key not in table.obsm:
            hint = records.PRED_HINT if arg == "pred_key" else "pass the key of the spot coordinates."
            raise KeyError(f"`{arg}={key!r}` is not in `adata.obsm` (keys: {sorted(table.obsm)}); {hint}")
    pred_genes = pd.Index(records.gene_names(records.prediction_record(table, pred_key)["genes"]))
    obs_genes = pd.Index(records.expression_genes(table, expr_key, var_names_fallback=True))
    bad = [g for g in genes if g not in pred_genes or g not in obs_genes]
    if bad:
        raise KeyError(
            f"`genes` {bad[:10]} are not both predicted and observed; available: {list(pred_genes[:10])}"
            f"{' ...' if len(pred_genes) > 10 else ''}."
        )
    place = tissue(adata, table, table_key, image_key, coordinate_system) if on_tissue else None
    rows = place.rows if place is not None else np.arange(table.n_obs)
    pred = np.asarray(table.obsm[pred_key], dtype=np.float64)[:, pred_genes.get_indexer(genes)]
    obs = np.asarray(table.obsm[expr_key], dtype=np.float64)[:, obs_genes.get_indexer(genes)]

    if axes is None:
        fig, grid = plt.subplots(
            len(genes), 2, figsize=(2 * panel_size + 0.8, panel_size * len(genes)), squeeze=False
        )
        axes = list(grid.ravel())
    fig = axes[0].figure
    values, titles, norms = {}, [], []
    for r, gene in enumerate(genes):
        o, p = obs[rows, r], pred[rows, r]
        norm = Normalize(float(min(o.min(), p.min())), float(max(o.max(), p.max())))
        values[f"c2lst_observed_{r}"], values[f"c2lst_predicted_{r}"] = obs[:, r], pred[:, r]
        titles += [f"{gene}: observed", f"{gene}: predicted (r = {pearson(o, p):.2f})"]
        norms += [norm, norm]
    if place is not None:
        draw(place, table, values, axes, titles, norms, cmap, alpha)
    else:
        xy = np.asarray(table.obsm[spatial_key], dtype=np.float64)[:, :2]
        size = spot_size if spot_size is not None else float(np.clip(4000 / max(len(xy), 1), 2, 60))
        for a, vals, title, norm in zip(axes, values.values(), titles, norms, strict=True):
            a.scatter(xy[:, 0], xy[:, 1], c=vals, s=size, cmap=cmap, norm=norm, linewidths=0)
            a.set_aspect("equal")
            a.invert_yaxis()
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(title, fontsize=8)
    for r in range(len(genes)):
        fig.colorbar(ScalarMappable(norm=norms[2 * r], cmap=cmap), ax=axes[2 * r : 2 * r + 2], shrink=0.8)
    return finish(fig, show, save, name="spatial_expression")


def _check_axes(ax: Any, n: int) -> list[Axes] | None:
    """Return ``ax`` as a list of ``n`` matplotlib axes (``None`` stays None); raise before any drawing."""
    if ax is None:
        return None
    flat = [ax] if isinstance(ax, Axes) else list(np.asarray(ax, dtype=object).ravel())
    if len(flat) != n or not all(isinstance(a, Axes) for a in flat):
        raise TypeError(
            f"`ax` must hold {n} matplotlib Axes (observed and predicted for each gene), got "
            f"{len(flat)} item(s) of type {sorted({type(a).__name__ for a in flat})}; e.g. pass "
            f"`plt.subplots({n // 2}, 2)[1]`."
        )
    return flat
