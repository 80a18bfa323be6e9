"""``tl.image_features`` and ``tl.mixing_score``: whether synthetic patches sit among real ones in image space.

The paper's fidelity claim is that synthetic and real spots overlap in an embedding. c2lst states it through
scanpy: image features go to ``obsm``, ``sc.pp.neighbors(use_rep=...)`` + ``sc.tl.umap`` draw the embedding,
and :func:`mixing_score` measures the overlap (share of synthetic neighbours of each real spot against the
share expected by chance).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData

from .._logging import logger
from .._records import record_lineage, store, synthetic_mask
from .._tables import _patches
from .._utils import as_table, check_positive_int
from ..models import features as _features

FEATURES = ("morphometric",)


def image_features(
    adata: Any,
    *,
    table_key: str = "table",
    features: Literal["morphometric"] = "morphometric",
    patch_key: str = "c2lst_patch",
    key_added: str = "c2lst_morph",
    copy: bool = False,
) -> AnnData | None:
    """Compute image features of every patch into ``obsm[key_added]``, ready for ``sc.pp.neighbors``.

    ``features="morphometric"`` gives the offline features of :func:`c2lst.tl.evaluate_fidelity` (nuclei,
    colour, texture), standardised by the *real* rows' mean and standard deviation with the nuclei threshold
    fixed on the real rows, so real and synthetic rows share one feature space.

    Parameters
    ----------
    adata
        A table with patches, e.g. :func:`c2lst.tl.concat_augmented` (real and synthetic rows, told apart by
        ``obs["c2lst_synthetic"]``).
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    features
        Feature space (``"morphometric"``).
    patch_key
        Patches in ``obsm``.
    key_added
        Where the features go.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Writes ``obsm[key_added]`` : ndarray ``(n_obs, 21)`` float32 and
    ``uns["c2lst"]["features"][key_added]`` = ``{"features", "threshold", "n_reference"}``.

    Examples
    --------
    >>> aug = c2lst.tl.concat_augmented(sdata)  # doctest: +SKIP
    >>> c2lst.tl.image_features(aug)  # doctest: +SKIP
    >>> sc.pp.neighbors(aug, use_rep="c2lst_morph"); sc.tl.umap(aug)  # doctest: +SKIP
    >>> sc.pl.umap(aug, color="c2lst_synthetic")  # doctest: +SKIP
    """
    adata = as_table(adata, table_key, arg="adata")
    if features not in FEATURES:
        raise ValueError(f"`features={features!r}` is unknown; use one of {list(FEATURES)}.")
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    patches = _patches(adata, patch_key)
    if len(patches) < 2:
        raise ValueError(f"`adata` has {len(patches)} patch(es); image features need at least 2.")
    syn = synthetic_mask(adata)
    ref = patches[~syn] if (~syn).sum() >= 2 else patches
    thr = _features.hematoxylin_threshold(ref)
    feats = _features.morphometric_features(patches, threshold=thr)
    base = feats[~syn] if (~syn).sum() >= 2 else feats
    mean, std = base.mean(axis=0), base.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    out = ((feats - mean) / std).astype(np.float32)
    target = adata.copy() if copy else adata
    target.obsm[key_added] = out
    record = {"features": features, "threshold": float(thr), "n_reference": len(base), "patch_key": patch_key}
    store(target, "features", key_added, record)
    record_lineage(
        target,
        function="c2lst.tl.image_features",
        parameters={"features": features, "patch_key": patch_key, "key_added": key_added},
        seed=None,
        input_table=None,
    )
    return target if copy else None


def mixing_score(
    adata: Any,
    *,
    table_key: str = "table",
    use_rep: str = "c2lst_morph",
    n_neighbors: int = 15,
) -> dict[str, float]:
    """Measure how well synthetic rows mix with real rows in an embedding.

    For each real row, the share of synthetic rows among its ``n_neighbors`` nearest neighbours in
    ``obsm[use_rep]`` (Euclidean, itself excluded) is compared with the share expected by chance,
    ``n_synthetic / (n - 1)``. A ratio near 1 means synthetic rows sit among real ones; near 0 means they form
    their own cluster.

    Parameters
    ----------
    adata
        A table with real and synthetic rows (``obs["c2lst_synthetic"]``), e.g. from
        :func:`c2lst.tl.concat_augmented`.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    use_rep
        The embedding in ``obsm`` (e.g. from :func:`image_features`, or ``"X_umap"``).
    n_neighbors
        Neighbours per real row.

    Returns
    -------
    dict with ``observed`` (mean share over real rows), ``expected`` (chance), ``ratio``
    (observed / expected), ``n_real``, ``n_synthetic`` and ``n_neighbors``. ``adata`` is not modified.

    Examples
    --------
    >>> c2lst.tl.mixing_score(aug, use_rep="c2lst_morph")  # doctest: +SKIP
    """
    from sklearn.neighbors import NearestNeighbors

    adata = as_table(adata, table_key, arg="adata")
    n_neighbors = check_positive_int(n_neighbors, "n_neighbors")
    if use_rep not in adata.obsm:
        raise KeyError(
            f"`use_rep={use_rep!r}` is not in `obsm` (keys: {sorted(adata.obsm)}); run "
            "`c2lst.tl.image_features(adata)` first."
        )
    x = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"`obsm[{use_rep!r}]` must be a finite 2-D array, got shape {x.shape}.")
    syn = synthetic_mask(adata)
    n, n_syn = len(x), int(syn.sum())
    if n_syn == 0 or n_syn == n:
        raise ValueError(
            f"`adata` holds {n - n_syn} real and {n_syn} synthetic rows; mixing needs both (use "
            "`c2lst.tl.concat_augmented`)."
        )
    if n_neighbors >= n:
        raise ValueError(f"`n_neighbors={n_neighbors}` must be below the number of rows ({n}).")
    nn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(x)
    _, idx = nn.kneighbors(x[~syn])
    real_rows = np.flatnonzero(~syn)
    share = np.array([syn[[j for j in row if j != i][:n_neighbors]].mean() for i, row in zip(real_rows, idx, strict=True)])
    expected = n_syn / (n - 1)
    observed = float(share.mean())
    logger.info(f"mixing: {observed:.3f} synthetic neighbours per real row vs {expected:.3f} by chance")
    return {
        "observed": observed,
        "expected": float(expected),
        "ratio": float(observed / expected),
        "n_real": int(n - n_syn),
        "n_synthetic": n_syn,
        "n_neighbors": int(n_neighbors),
    }
