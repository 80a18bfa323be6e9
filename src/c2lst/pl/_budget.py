"""``pl.budget_curve``: prediction accuracy against the fraction of real spots used."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..metrics import mean_ci
from ._utils import check_show_save, doc_params, finish

_STYLE = {"real": ("tab:gray", "o", "real only"), "real+synthetic": ("tab:red", "s", "real + synthetic")}


def summarise_curve(curve: pd.DataFrame, *, metric: str = "pearson_r", ci: float = 0.95) -> pd.DataFrame:
    """Return mean, standard deviation and ``ci`` confidence half-width of ``metric`` per condition and fraction.

    The interval is :func:`c2lst.metrics.mean_ci` over repeats: Student's t quantile times the standard error
    (0 with a single repeat).

    Parameters
    ----------
    curve
        Output of :func:`c2lst.tl.budget_curve`.
    metric
        Column to summarise.
    ci
        Confidence level in (0, 1).

    Returns
    -------
    Columns ``condition``, ``fraction``, ``mean``, ``std``, ``n``, ``ci_low``, ``ci_high``.

    Examples
    --------
    >>> df = pd.DataFrame({"fraction": [1.0, 1.0], "condition": ["real", "real"], "pearson_r": [0.5, 0.7]})
    >>> summarise_curve(df)["mean"].round(2).tolist()
    [0.6]
    """
    groups = curve.groupby(["condition", "fraction"], sort=True)[metric]
    out = groups.agg(["std", "count"]).reset_index().rename(columns={"count": "n"})
    intervals = pd.DataFrame([mean_ci(vals.to_numpy(), ci=ci) for _, vals in groups])
    out.insert(2, "mean", intervals["mean"].to_numpy())
    out["std"] = out["std"].fillna(0.0)
    out["ci_low"] = intervals["low"].to_numpy()
    out["ci_high"] = intervals["high"].to_numpy()
    return out


@doc_params
def budget_curve(
    curve: pd.DataFrame,
    *,
    metric: str = "pearson_r",
    ci: float = 0.95,
    ax: Axes | None = None,
    title: str | None = None,
    show: bool | None = None,
    save: str | Path | bool | None = None,
) -> Figure:
    """Plot mean prediction accuracy against the real-spot fraction, real only vs real + synthetic.

    Error bars are the ``ci`` confidence intervals over repeats (Student's t; none with one repeat).

    Parameters
    ----------
    curve
        Output of :func:`c2lst.tl.budget_curve` (columns ``fraction``, ``repeat``, ``condition``, ``metric``).
    metric
        Column to plot (``"pearson_r"`` or ``"mse"``).
    ci
        Confidence level of the error bars, in (0, 1).
    {ax}
    title
        Axes title.
    {show_save}

    Returns
    -------
    The figure: mean ``metric`` against the fraction of real spots, one line per arm, with ``ci`` error
    bars.

    Examples
    --------
    >>> fig = c2lst.pl.budget_curve(curve)  # doctest: +SKIP
    """
    check_show_save(show, save)
    if not isinstance(curve, pd.DataFrame):
        raise TypeError(
            f"`curve` must be the DataFrame of `c2lst.tl.budget_curve`, got {type(curve).__name__}."
        )
    missing = [c for c in ("fraction", "condition", metric) if c not in curve.columns]
    if missing:
        raise KeyError(
            f"`curve` lacks columns {missing} (has {list(curve.columns)}); pass the output of "
            "`c2lst.tl.budget_curve` and a `metric` among its columns."
        )
    if curve.empty:
        raise ValueError("`curve` has no rows; run `c2lst.tl.budget_curve` first.")
    if not (isinstance(ci, float | int) and 0 < ci < 1):
        raise ValueError(f"`ci` must be in (0, 1), got {ci!r}.")
    summary = summarise_curve(curve, metric=metric, ci=ci)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
    else:
        fig = ax.figure
    for k, (cond, sub) in enumerate(summary.groupby("condition", sort=False)):
        colour, marker, label = _STYLE.get(cond, (f"C{k}", "^", cond))
        mean = sub["mean"].to_numpy()  # arrays: matplotlib calls float() on a Series' elements otherwise
        ax.errorbar(
            sub["fraction"].to_numpy(),
            mean,
            yerr=np.stack([mean - sub["ci_low"].to_numpy(), sub["ci_high"].to_numpy() - mean]),
            color=colour,
            marker=marker,
            capsize=3,
            label=label,
        )
    ax.set_xlabel("fraction of real spots used for training")
    ax.set_ylabel(f"mean {metric.replace('_', ' ')}" + (" over genes" if metric == "pearson_r" else ""))
    ax.set_title(
        title if title is not None else f"spot budget ({round(ci * 100)}% CI over repeats)", fontsize=9
    )
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return finish(fig, show, save, name="budget_curve")
