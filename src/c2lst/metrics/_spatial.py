"""Spatial autocorrelation: Moran's I of maps on a kNN graph of the spots (scanpy)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import sparse

from .._utils import check_positive_int, keep_torch_threads
from ._validation import as_float_array


@keep_torch_threads
def morans_i(values: Any, coords: Any, *, n_neighs: int = 6) -> np.ndarray | float:
    """Return Moran's I of every column of ``values`` on a kNN graph of ``coords`` (scanpy).

    The graph joins each spot to its ``n_neighs`` nearest spots (scikit-learn, the spot itself excluded); the
    statistic is :func:`scanpy.metrics.morans_i` on it. This equals squidpy's ``spatial_neighbors`` (generic,
    kNN) + ``spatial_autocorr(mode="moran")`` to float precision without importing squidpy. torch's thread
    count is restored afterwards (scanpy's numba kernels reset it).

    Parameters
    ----------
    values
        ``(n,)`` or ``(n, k)`` maps, one value per spot.
    coords
        ``(n, d)`` spatial coordinates (usually ``d = 2``), finite.
    n_neighs
        Neighbours per spot (capped at ``n - 1``).

    Returns
    -------
    A float for 1-D ``values``, else a ``(k,)`` float array. Constant columns give NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from c2lst import metrics
    >>> xy = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2).astype(float)
    >>> bool(metrics.morans_i(xy[:, 0], xy) > 0.5)
    True
    """
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    vals = as_float_array(values, "values")
    coords = as_float_array(coords, "coords", ndim=(2,))
    n_neighs = check_positive_int(n_neighs, "n_neighs")
    if len(coords) != len(vals):
        raise ValueError(f"`coords` has {len(coords)} rows but `values` {len(vals)}; pass one row per spot.")
    if len(vals) < 2:
        raise ValueError(f"Moran's I needs at least 2 spots, got {len(vals)}.")
    if not np.all(np.isfinite(coords)):
        raise ValueError("`coords` contains NaN or inf; pass finite spot coordinates.")
    one = vals.ndim == 1
    vals = vals[:, None] if one else vals
    n, k = vals.shape
    k_nn = max(1, min(n_neighs, n - 1))
    _, idx = NearestNeighbors(n_neighbors=k_nn + 1).fit(coords).kneighbors(coords)
    # drop each spot itself (the first neighbour, or wherever it appears when coordinates repeat)
    keep = idx != np.arange(n)[:, None]
    nbrs = np.stack([row[m][:k_nn] for row, m in zip(idx, keep, strict=True)])
    graph = sparse.csr_matrix(
        (np.ones(n * k_nn), (np.repeat(np.arange(n), k_nn), nbrs.ravel())), shape=(n, n)
    )
    out = np.full(k, np.nan)
    varying = vals.std(axis=0) > 0
    if varying.any():
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[varying] = np.atleast_1d(sc.metrics.morans_i(graph, np.ascontiguousarray(vals[:, varying].T)))
    return float(out[0]) if one else out
