"""Distances between two sets of patch features: Fréchet (FID formula) and kernel (KID) distances.

Engine code: numpy and scipy only. Features come from :mod:`c2lst.models.features`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def _standardise(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both sets by the mean/std of ``a`` (the reference).

    The reference std is floored at a tenth of the pooled std, so a feature that is (nearly) constant in the
    reference cannot blow a distance up by orders of magnitude; all-constant columns get unit scale.
    """
    mean = a.mean(axis=0)
    std = a.std(axis=0)
    pooled = np.concatenate([a, b]).std(axis=0)
    std = np.maximum(std, 0.1 * pooled)
    std = np.where(std > 1e-12, std, 1.0)
    return (a - mean) / std, (b - mean) / std


def frechet_distance(
    real: np.ndarray, other: np.ndarray, *, standardise: bool = True, eps: float = 1e-6
) -> float:
    """Return the Fréchet distance between Gaussians fitted to two feature sets (FID formula).

    ``||mu_r - mu_o||² + Tr(S_r + S_o - 2 (S_r S_o)^{1/2})`` with :func:`scipy.linalg.sqrtm`; when the product
    is singular (e.g. fewer patches than features), ``eps`` is added to both diagonals. With fewer patches than
    features the estimate is biased upwards: compare FIDs computed on equal numbers of patches. With ``standardise`` the features are first
    scaled by the mean and standard deviation of ``real``, so every feature counts in units of real variability.

    Parameters
    ----------
    real, other
        Feature arrays ``(n_r, D)`` and ``(n_o, D)``, at least 2 rows each.
    standardise
        Scale by the statistics of ``real`` first.
    eps
        Diagonal offset used when the square root is singular.

    Returns
    -------
    The distance (>= 0).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> round(frechet_distance(x, x), 6)
    0.0
    """
    a, b = _as_pair(real, other)
    if standardise:
        a, b = _standardise(a, b)
    mu = a.mean(axis=0) - b.mean(axis=0)
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sa @ sb)
    if caught or not np.all(np.isfinite(covmean)):  # singular (e.g. fewer samples than features)
        off = eps * np.eye(len(sa))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            covmean = linalg.sqrtm((sa + off) @ (sb + off))
    covmean = np.real(covmean)
    value = float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def kernel_distance(
    real: np.ndarray,
    other: np.ndarray,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    standardise: bool = True,
    seed: int = 0,
) -> tuple[float, float]:
    """Return the kernel distance (KID): unbiased MMD² with the cubic polynomial kernel, over random subsets.

    ``k(x, y) = (x·y / D + 1)³``; each of ``n_subsets`` draws ``m = min(subset_size, n_r, n_o)`` rows of each set
    without replacement (seeded :func:`numpy.random.default_rng`). The unbiased estimate can be slightly
    negative for sets from one distribution.

    Parameters
    ----------
    real, other
        Feature arrays ``(n_r, D)`` and ``(n_o, D)``, at least 2 rows each.
    n_subsets
        Number of random subsets.
    subset_size
        Rows per subset (capped by the smaller set).
    standardise
        Scale by the statistics of ``real`` first.
    seed
        Seed of the subset sampling.

    Returns
    -------
    ``(mean, std)`` of the MMD² estimates over subsets.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> m, s = kernel_distance(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 3)
    >>> m > 0.1
    True
    """
    a, b = _as_pair(real, other)
    if standardise:
        a, b = _standardise(a, b)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = np.empty(n_subsets)
    for i in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        off = m * (m - 1)
        vals[i] = (
            (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2.0 * kxy.sum() / (m * m)
        )
    return float(vals.mean()), float(vals.std())


def _as_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be 2-D with the same width, got {a.shape} and {b.shape}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each feature set needs at least 2 rows, got {len(a)} and {len(b)}.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("features contain NaN or inf; check the feature extractor.")
    return a, b
