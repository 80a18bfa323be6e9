"""``pl.patches``: real patches next to their synthetic children."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from .._records import synthetic_mask
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
    patch_key: str = "c2lst_patch",
    parent_key: str = "c2lst_parent",
    seed: int = 0,
    panel_size: float = 1.3,
    show: bool | None = None,
    save: str | Path | None = None,
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
    """
    check_show_save(show, save)
    n = check_positive_int(n, "n")
    n_synthetic = check_positive_int(n_synthetic, "n_synthetic")
    rng = np.random.default_rng(check_seed(seed))
    if not isinstance(real, AnnData):
        raise TypeError(f"`real` must be an AnnData table, got {type(real).__name__}.")
    if synthetic is None and synthetic_mask(real).any() and (~synthetic_mask(real)).any():
        synthetic = real
    real_p, real_t = side_patches(real, "real", patch_key, synthetic=False)
    real_names = pd.Index(real_t.obs_names.astype(str))

    if synthetic is None:
        idx = _choose(real_names, spots, n, rng, "real")
        ncols = min(len(idx), 8)
        nrows = -(-len(idx) // ncols)
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False
        )
        for ax in axes.ravel():
            ax.set_axis_off()
        for ax, i in zip(axes.ravel(), idx, strict=False):
            ax.imshow(real_p[i])
            ax.set_title(real_names[i], fontsize=7)
        fig.suptitle("real patches", fontsize=9)
        return finish(fig, show, save)

    if not isinstance(synthetic, AnnData):
        raise TypeError(f"`synthetic` must be an AnnData table or None, got {type(synthetic).__name__}.")
    syn_p, parents = child_patches(synthetic, patch_key, parent_key)
    with_children = real_names[real_names.isin(parents)]
    if len(with_children) == 0:
        raise ValueError(
            f"no `synthetic.obs[{parent_key!r}]` value names a spot of `real`; pass the real table the synthetic "
            "spots were generated from."
        )
    chosen = real_names.get_indexer(with_children)[_choose(with_children, spots, n, rng, "parent")]
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
        axes[r, 0].set_ylabel(real_names[i], fontsize=7)
        children = np.flatnonzero(parents == real_names[i])[:n_synthetic]
        for c, j in enumerate(children, start=1):
            axes[r, c].imshow(syn_p[j])
    axes[0, 0].set_title("real", fontsize=8)
    for c in range(1, ncols):
        axes[0, c].set_title(f"synthetic {c}", fontsize=8)
    return finish(fig, show, save)


def _choose(
    names: pd.Index, spots: Sequence[str] | None, n: int, rng: np.random.Generator, what: str
) -> np.ndarray:
    """Positions in ``names`` of the requested ``spots`` or of ``n`` seeded random picks (in table order)."""
    if spots is not None:
        spots = [spots] if isinstance(spots, str) else [str(s) for s in spots]
        pos = names.get_indexer(spots)
        if (pos < 0).any():
            bad = [s for s, p in zip(spots, pos, strict=True) if p < 0]
            raise KeyError(f"`spots` has names that are not {what} spots with patches: {bad[:10]}.")
        return pos
    k = min(n, len(names))
    return np.sort(rng.choice(len(names), size=k, replace=False))
