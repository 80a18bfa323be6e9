"""Distances between two sets of patch features: Fréchet (FID formula) and kernel (KID) distances.

Features come from :mod:`c2lst.models.features` (or any extractor): numpy and scipy only.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import linalg

from .._utils import check_nonneg_float, check_positive_int, check_seed
from ._validation import as_float_array


def frechet_distance(real: Any, other: Any, *, standardise: bool = True, eps: float = 1e-6) -> float:
    """Return the Fréchet distance between Gaussians fitted to two feature sets (FID formula).

    ``||mu_r - mu_o||² + Tr(S_r + S_o - 2 (S_r S_o)^{1/2})`` with :func:`scipy.linalg.sqrtm`; when the product
    is singular (e.g. fewer patches than features), ``eps`` is added to both diagonals. With fewer patches than
    features the estimate is biased upwards: compare FIDs computed on equal numbers of patches. With
    ``standardise`` the features are first scaled by the mean and standard deviation of ``real``, so every
    feature counts in units of real variability.

    Parameters
    ----------
    real, other
        Feature arrays ``(n_r, D)`` and ``(n_o, D)``, at least 2 rows each, finite.
    standardise
        Scale by the statistics of ``real`` first.
    eps
        Diagonal offset used when the square root is singular.

    Returns
    -------
    The distance (>= 0).

    Examples
    --------
    >>> import numpy as np
    >>> from c2lst import metrics
    >>> x = np.random.default_rng(0).normal(size=(50, 3))
    >>> round(metrics.frechet_distance(x, x), 6)
    0.0
    """
    a, b = _as_pair(real, other)
    eps = check_nonneg_float(eps, "eps")
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
    real: Any,
    other: Any,
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
        Feature arrays ``(n_r, D)`` and ``(n_o, D)``, at least 2 rows each, finite.
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
    >>> import numpy as np
    >>> from c2lst import metrics
    >>> rng = np.random.default_rng(0)
    >>> m, s = metrics.kernel_distance(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 3)
    >>> m > 0.1
    True
    """
    a, b = _as_pair(real, other)
    n_subsets = check_positive_int(n_subsets, "n_subsets")
    subset_size = check_positive_int(subset_size, "subset_size")
    seed = check_seed(seed)
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


def _as_pair(real: Any, other: Any) -> tuple[np.ndarray, np.ndarray]:
    a = as_float_array(real, "real", ndim=(2,))
    b = as_float_array(other, "other", ndim=(2,))
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`real` and `other` must have the same number of features, got {a.shape} and {b.shape}."
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"each feature set needs at least 2 rows, got {len(a)} (`real`) and {len(b)} (`other`)."
        )
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("`real` or `other` contains NaN or inf; check the feature extractor.")
    return a, b
