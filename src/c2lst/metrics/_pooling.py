"""Pool per-slide intervals into one across slides: random effects (DerSimonian-Laird, Hartung-Knapp interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from ._intervals import ConfidenceInterval
from ._validation import check_ci


def pooled_ci(intervals: Sequence[Any], *, ci: float = 0.95) -> ConfidenceInterval:
    """Pool Student-t intervals of one quantity measured on several slides into one random-effects interval.

    Each slide's interval (e.g. the paired gain of :func:`paired_ci` over that slide's repeats) gives a mean and
    a standard error ``(high - low) / (2 t_{(1 + ci) / 2, n - 1})``. The slides may differ in their true effect:
    the between-slide variance ``tau²`` is the DerSimonian-Laird estimate, the pooled mean weighs each slide by
    ``1 / (se² + tau²)``, and the interval is the Hartung-Knapp one (Student t with ``k - 1`` degrees of
    freedom for ``k`` slides), never narrower than the normal random-effects interval. Use it to read a gain
    across slides without treating one slide's repeats as independent samples of all slides.

    Parameters
    ----------
    intervals
        One :class:`ConfidenceInterval` (or ``(mean, low, high, n)``) per slide, all at the level ``ci``, each
        over ``n >= 2`` repeats with ``low <= mean <= high``.
    ci
        Two-sided confidence level of the inputs and of the result.

    Returns
    -------
    ``(mean, low, high, n)`` with ``n`` the number of slides; a single slide is returned as it is.

    Examples
    --------
    >>> from c2lst import metrics
    >>> same = [metrics.ConfidenceInterval(0.02, 0.0, 0.04, 10)] * 3
    >>> round(metrics.pooled_ci(same).mean, 6)
    0.02
    """
    ci = check_ci(ci)
    if isinstance(intervals, str | bytes) or not isinstance(intervals, Sequence) or not intervals:
        raise ValueError(f"`intervals` must be a non-empty sequence of (mean, low, high, n), got {intervals!r}.")
    rows = []
    for i, item in enumerate(intervals):
        try:
            mean, low, high, n = (float(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"`intervals[{i}]` must be (mean, low, high, n), got {item!r}.") from None
        if not all(math.isfinite(v) for v in (mean, low, high)) or not low <= mean <= high or n < 2 or n != int(n):
            raise ValueError(
                f"`intervals[{i}]={item!r}` needs finite low <= mean <= high over n >= 2 repeats (an integer)."
            )
        rows.append((mean, low, high, int(n)))
    if len(rows) == 1:
        return ConfidenceInterval(*rows[0])
    x = np.array([r[0] for r in rows])
    se = np.array([(r[2] - r[1]) / (2 * stats.t.ppf(0.5 + ci / 2, r[3] - 1)) for r in rows])
    se = np.maximum(se, 1e-12)  # a zero-width slide (all repeats equal) weighs a lot, not infinitely
    k = len(rows)
    w = 1 / se**2
    fixed = float(w @ x / w.sum())
    q = float(w @ (x - fixed) ** 2)
    tau2 = max(0.0, (q - (k - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    w_re = 1 / (se**2 + tau2)
    mean = float(w_re @ x / w_re.sum())
    var_normal = 1 / w_re.sum()
    var_hk = float(w_re @ (x - mean) ** 2) / ((k - 1) * w_re.sum())
    half = max(
        float(stats.t.ppf(0.5 + ci / 2, k - 1) * math.sqrt(var_hk)),
        float(stats.norm.ppf(0.5 + ci / 2) * math.sqrt(var_normal)),
    )
    return ConfidenceInterval(mean, mean - half, mean + half, k)
