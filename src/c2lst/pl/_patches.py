"""``pl.patches``: real patches next to their synthetic children."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from .._records import expression_genes, synthetic_mask
from .._tables import child_patches, side_patches
from .._utils import check_positive_int, check_seed
from ._utils import check_show_save, doc_params, finish


@doc_params
def patches(
    real: AnnData,
    synthetic: AnnData | None = None,
    *,
    n: int = 8,
    n_synthetic: int = 4,
    spots: Sequence[str] | None = None,
    gene: str | None = None,
    expr_key: str = "c2lst_expr",
    patch_key: str = "c2lst_patch",
    parent_key: str = "c2lst_parent",
    seed: int = 0,
    panel_size: float = 1.3,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Figure:
    """Show real patches next to the synthetic patches generated from them, one parent spot per row.

    Parameters
    ----------
    real
        Real table with ``obsm[patch_key]``. An augmented table (``obs["c2lst_synthetic"]``, e.g. from
        :func:`c2lst.tl.concat_augmented`) may hold both kinds; then ``synthetic`` can be omitted.
    synthetic
        Synthetic table with ``obs[parent_key]``; ``None`` shows real patches only (unless ``real`` is augmented).
    n
        Number of parent spots (rows) or, without synthetic patches, of real patches.
    n_synthetic
        Most synthetic children shown per parent (columns after the real patch; fewer when the chosen parents
        have fewer children).
    spots
        Parent spot names to show, instead of a seeded random choice among spots with children.
    gene
        Show the ``n // 2`` spots lowest and the ``n - n // 2`` highest in this gene (among spots with
        synthetic children, if any), lowest first, each row labelled with its value; exclusive with ``spots``.
        The values come from the real table's ``obsm[expr_key]``, else from its ``X`` column of that gene.
    expr_key
        Prepared expression (:func:`c2lst.pp.prepare_expression`) read for ``gene``.
    patch_key, parent_key
        Keys of the patches and of the parent column.
    seed
        Seed of the random choice of spots.
    panel_size
        Inches per patch panel.
    {show_save}

    Returns
    -------
    The figure: one parent spot per row, its real patch first, then its synthetic children (a grid of
    real patches when there are none).

    Examples
    --------
    >>> fig = c2lst.pl.patches(sdata.tables["table"], sdata.tables["c2lst_synthetic"], n=4)  # doctest: +SKIP
    >>> fig = c2lst.pl.patches(table, synthetic, gene="Gene_0", n=6, save="_gene0.png")  # doctest: +SKIP
    """
    check_show_save(show, save)
    n = check_positive_int(n, "n")
    n_synthetic = check_positive_int(n_synthetic, "n_synthetic")
    rng = np.random.default_rng(check_seed(seed))
    if not isinstance(real, AnnData):
        raise TypeError(f"`real` must be an AnnData table, got {type(real).__name__}.")
    if gene is not None and spots is not None:
        raise ValueError("Pass either `gene` (lowest and highest spots in it) or `spots`, not both.")
    if gene is not None and (not isinstance(gene, str) or not gene):
        raise TypeError(f"`gene` must be a gene name (str) or None, got {gene!r}.")
    if synthetic is None and synthetic_mask(real).any() and (~synthetic_mask(real)).any():
        synthetic = real
    real_p, real_t = side_patches(real, "real", patch_key, synthetic=False)
    real_names = pd.Index(real_t.obs_names.astype(str))
    values = None if gene is None else _gene_values(real_t, gene, expr_key)

    if synthetic is None:
        idx = _choose(real_names, spots, n, rng, "real", values)
        ncols = min(len(idx), 8)
        nrows = -(-len(idx) // ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False
        )
        for ax in axes.ravel():
            ax.set_axis_off()
        for ax, i in zip(axes.ravel(), idx, strict=False):
            ax.imshow(real_p[i])
            ax.set_title(_label(real_names[i], gene, values, i, idx), fontsize=7)
        fig.suptitle("real patches" + ("" if gene is None else f", lowest to highest {gene}"), fontsize=9)
        return finish(fig, show, save, name="patches")

    if not isinstance(synthetic, AnnData):
        raise TypeError(f"`synthetic` must be an AnnData table or None, got {type(synthetic).__name__}.")
    syn_p, parents = child_patches(synthetic, patch_key, parent_key)
    with_children = real_names[real_names.isin(parents)]
    if len(with_children) == 0:
        raise ValueError(
            f"no `synthetic.obs[{parent_key!r}]` value names a spot of `real`; pass the real table the synthetic "
            "spots were generated from."
        )
    sub = None if values is None else values[real_names.get_indexer(with_children)]
    chosen = real_names.get_indexer(with_children)[_choose(with_children, spots, n, rng, "parent", sub)]
    # as many synthetic columns as the chosen parents have children (at most n_synthetic): no empty columns
    n_children = pd.Series(parents).value_counts()
    ncols = 1 + min(n_synthetic, int(n_children.reindex(real_names[chosen]).fillna(0).max()))
    fig, axes = plt.subplots(
        len(chosen), ncols, figsize=(panel_size * ncols, panel_size * len(chosen)), squeeze=False
    )
    for r, i in enumerate(chosen):
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        axes[r, 0].imshow(real_p[i])
        axes[r, 0].set_ylabel(_label(real_names[i], gene, values, i, chosen), fontsize=7)
        children = np.flatnonzero(parents == real_names[i])[:n_synthetic]
        for c, j in enumerate(children, start=1):
            axes[r, c].imshow(syn_p[j])
    axes[0, 0].set_title("real", fontsize=8)
    for c in range(1, ncols):
        axes[0, c].set_title(f"synthetic {c}", fontsize=8)
    return finish(fig, show, save, name="patches")


def _gene_values(table: AnnData, gene: str, expr_key: str) -> np.ndarray:
    """Return ``gene``'s value in every row of ``table``: prepared expression, else the ``X`` column."""
    if expr_key in table.obsm:
        genes = list(expression_genes(table, expr_key, var_names_fallback=True))
        if gene in genes:
            return np.asarray(table.obsm[expr_key], dtype=np.float64)[:, genes.index(gene)]
    if gene in table.var_names:
        col = table[:, gene].X
        return np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=np.float64).ravel()
    raise KeyError(
        f"`gene={gene!r}` is neither in the prepared expression `obsm[{expr_key!r}]` nor in `var_names` of the "
        f"real table; pass another gene or `expr_key=`."
    )


def _label(name: str, gene: str | None, values: np.ndarray | None, i: int, shown: np.ndarray) -> str:
    """Spot name, with its ``gene`` value and whether it is among the lowest or highest shown."""
    if gene is None or values is None:
        return name
    order = list(shown)
    side = "low" if order.index(i) < len(order) // 2 else "high"
    return f"{name}\n{gene} {values[i]:.3g} ({side})"


def _choose(
    names: pd.Index,
    spots: Sequence[str] | None,
    n: int,
    rng: np.random.Generator,
    what: str,
    values: np.ndarray | None = None,
) -> np.ndarray:
    """Positions in ``names`` of the spots to show.

    The requested ``spots``; else, with ``values``, the lowest and highest (ascending); else ``n`` seeded random
    picks (in table order).
    """
    if spots is not None:
        spots = [spots] if isinstance(spots, str) else [str(s) for s in spots]
        pos = names.get_indexer(spots)
        if (pos < 0).any():
            bad = [s for s, p in zip(spots, pos, strict=True) if p < 0]
            raise KeyError(f"`spots` has names that are not {what} spots with patches: {bad[:10]}.")
        return pos
    k = min(n, len(names))
    if values is not None:
        if not np.isfinite(values).all():
            raise ValueError("the gene's values contain NaN or Inf; fix the expression before plotting by it.")
        order = np.argsort(values, kind="stable")
        return order if k == len(names) else np.concatenate([order[: k // 2], order[len(order) - (k - k // 2) :]])
    return np.sort(rng.choice(len(names), size=k, replace=False))
