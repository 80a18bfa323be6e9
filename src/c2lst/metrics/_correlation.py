"""Correlations of paired samples, column by column: Pearson (predicted vs observed genes) and Spearman."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from ._validation import as_float_array, same_shape


def pearson(x: Any, y: Any) -> np.ndarray | float:
    """Return Pearson's correlation of ``x`` and ``y``, column by column (e.g. per gene over spots).

    Parameters
    ----------
    x, y
        Arrays of one shape: ``(n,)`` or ``(n, k)`` (rows are samples, columns are variables).

    Returns
    -------
    A float for 1-D input, else a ``(k,)`` float array. A column that is constant in ``x`` or ``y`` gives NaN,
    and so does one holding NaN or inf.

    Examples
    --------
    >>> import numpy as np
    >>> from c2lst import metrics
    >>> x = np.arange(5.0)
    >>> round(metrics.pearson(x, 2 * x + 1), 6)
    1.0
    >>> metrics.pearson(np.c_[x, x], np.c_[-x, np.ones(5)])
    array([-1., nan])
    """
    a = as_float_array(x, "x")
    b = as_float_array(y, "y")
    same_shape(a, b, "`x` and `y`")
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    den = np.sqrt((ac**2).sum(axis=0) * (bc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(axis=0) / den
    r = np.where(den > 0, r, np.nan)
    return float(r) if a.ndim == 1 else r


def spearman(x: Any, y: Any) -> np.ndarray | float:
    """Return Spearman's rank correlation of ``x`` and ``y``, column by column (:func:`scipy.stats.spearmanr`).

    Pairs in which either value is NaN or inf are left out, per column.

    Parameters
    ----------
    x, y
        Arrays of one shape: ``(n,)`` or ``(n, k)``.

    Returns
    -------
    A float for 1-D input, else a ``(k,)`` float array; NaN where fewer than 3 finite pairs remain or either
    side is constant on them.

    Examples
    --------
    >>> import numpy as np
    >>> from c2lst import metrics
    >>> metrics.spearman([1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, np.nan])
    1.0
    """
    a = as_float_array(x, "x")
    b = as_float_array(y, "y")
    same_shape(a, b, "`x` and `y`")
    if a.ndim == 1:
        return _spearman_1d(a, b)
    return np.array([_spearman_1d(a[:, j], b[:, j]) for j in range(a.shape[1])], dtype=np.float64)


def _spearman_1d(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)
