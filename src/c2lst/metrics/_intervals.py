"""Confidence intervals over repeats: the mean of one sample and the mean of paired differences (Student's t)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from ._validation import as_float_array, check_ci, same_shape


class ConfidenceInterval(NamedTuple):
    """A mean with its two-sided confidence interval and the number of finite values behind it."""

    mean: float
    low: float
    high: float
    n: int


def mean_ci(values: Any, *, ci: float = 0.95) -> ConfidenceInterval:
    """Return the mean of ``values`` with its Student-t confidence interval.

    ``mean ± t_{(1 + ci) / 2, n - 1} · s / √n`` with ``s`` the sample standard deviation (``ddof=1``), over the
    finite values (NaN and inf are left out).

    Parameters
    ----------
    values
        ``(n,)`` sample, e.g. a metric over repeats.
    ci
        Two-sided confidence level in (0, 1).

    Returns
    -------
    ``(mean, low, high, n)``; a single finite value gives ``low = high = mean``, none gives NaN and ``n = 0``.

    Examples
    --------
    >>> from c2lst import metrics
    >>> metrics.mean_ci([0.5, 0.5, 0.5])
    ConfidenceInterval(mean=0.5, low=0.5, high=0.5, n=3)
    """
    ci = check_ci(ci)
    arr = as_float_array(values, "values", ndim=(1,))
    return _t_interval(arr[np.isfinite(arr)], ci)


def paired_ci(x: Any, y: Any, *, ci: float = 0.95) -> ConfidenceInterval:
    """Return the mean paired difference ``x - y`` with its Student-t confidence interval.

    Pairs (e.g. one repeat of two arms sharing a split and seeds) in which either value is NaN or inf are left
    out; the interval is :func:`mean_ci` of the differences, so the variation shared by both sides cancels.

    Parameters
    ----------
    x, y
        ``(n,)`` samples, aligned pair by pair.
    ci
        Two-sided confidence level in (0, 1).

    Returns
    -------
    ``(mean, low, high, n)`` of the differences; ``n`` counts the complete pairs.

    Examples
    --------
    >>> from c2lst import metrics
    >>> round(metrics.paired_ci([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]).mean, 6)
    0.1
    """
    ci = check_ci(ci)
    a = as_float_array(x, "x", ndim=(1,))
    b = as_float_array(y, "y", ndim=(1,))
    same_shape(a, b, "`x` and `y`")
    diff = a - b
    return _t_interval(diff[np.isfinite(diff)], ci)


def _t_interval(values: np.ndarray, ci: float) -> ConfidenceInterval:
    n = len(values)
    if n == 0:
        return ConfidenceInterval(math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if n < 2:
        return ConfidenceInterval(mean, mean, mean, n)
    half = float(stats.t.ppf(0.5 + ci / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return ConfidenceInterval(mean, mean - half, mean + half, n)
