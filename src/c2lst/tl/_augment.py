"""``tl.concat_augmented``: one AnnData of real and synthetic spots, ready for scanpy."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _records as records
from .._utils import get_table


def concat_augmented(
    sdata: Any, *, real_key: str = "table", synthetic_key: str = "c2lst_synthetic"
) -> AnnData:
    """Concatenate the real table and a synthetic table into one AnnData.

    Parameters
    ----------
    sdata
        SpatialData holding both tables.
    real_key
        The real table.
    synthetic_key
        The table written by :func:`c2lst.tl.synthesize`.

    Returns
    -------
    A new AnnData over the synthetic table's genes (the adapter's genes) with real rows first.
    ``X`` holds counts for both (see :func:`c2lst.tl.synthesize`); ``obs["c2lst_synthetic"]`` marks
    the synthetic rows, ``obs["c2lst_parent"]`` links them to their source spot (real rows: themselves) and
    ``obs["c2lst_seed"]`` is -1 for real rows. ``obsm`` keys present in both tables with the same trailing shape
    (patches, prepared expression) are kept; ``obsm["spatial"]`` places each synthetic spot at its parent's
    position (NaN when the parent is not a real spot).

    Examples
    --------
    >>> both = c2lst.tl.concat_augmented(sdata)
    >>> sc.pp.normalize_total(both); sc.pp.log1p(both); sc.pp.pca(both)
    """
    real = get_table(sdata, real_key)
    syn = get_table(sdata, synthetic_key)
    if "c2lst_synthetic" not in syn.obs:
        raise ValueError(
            f"`synthetic_key={synthetic_key!r}` is not a synthetic table (no obs['c2lst_synthetic']); pass the "
            "`key_added` of `c2lst.tl.synthesize`."
        )
    genes = list(syn.var_names)
    missing = [g for g in genes if g not in real.var_names]
    if missing:
        raise KeyError(f"the real table `real_key={real_key!r}` lacks synthetic genes {missing[:10]}.")
    r = AnnData(
        X=real[:, genes].X.copy(),
        obs=pd.DataFrame(index=real.obs_names.copy()),
        var=pd.DataFrame(index=genes),
    )
    s = AnnData(X=syn.X.copy(), obs=pd.DataFrame(index=syn.obs_names.copy()), var=pd.DataFrame(index=genes))
    r.obs["c2lst_synthetic"] = False
    r.obs["c2lst_parent"] = np.asarray(real.obs_names, dtype=str)
    r.obs["c2lst_seed"] = -1
    s.obs["c2lst_synthetic"] = True
    s.obs["c2lst_parent"] = syn.obs["c2lst_parent"].astype(str).to_numpy()
    s.obs["c2lst_seed"] = syn.obs["c2lst_seed"].to_numpy()
    for key in set(real.obsm) & set(syn.obsm):
        a, b = np.asarray(real.obsm[key]), np.asarray(syn.obsm[key])
        if key != "spatial" and a.shape[1:] == b.shape[1:] and a.dtype.kind == b.dtype.kind:
            r.obsm[key], s.obsm[key] = a, b
    if "spatial" in real.obsm:
        pos = pd.DataFrame(np.asarray(real.obsm["spatial"], dtype=float)[:, :2], index=real.obs_names)
        r.obsm["spatial"] = pos.to_numpy()
        s.obsm["spatial"] = pos.reindex(s.obs["c2lst_parent"]).to_numpy()
    both = ad.concat([r, s], join="inner", merge="same")
    both.obs["c2lst_synthetic"] = both.obs["c2lst_synthetic"].astype(bool)
    augmented = {"real_key": real_key, "synthetic_key": synthetic_key, "n_real": r.n_obs, "n_synthetic": s.n_obs}
    records.root(both)["augmented"] = augmented
    for key, rec in records.section(syn, "expr").items():
        records.store(both, "expr", key, dict(rec))
    return both
