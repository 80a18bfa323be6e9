"""``tl.plan_budget``: a paired non-inferiority test on the curve of :func:`c2lst.tl.budget_curve`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._logging import logger
from ..metrics import mean_ci, paired_ci


def plan_budget(
    curve: pd.DataFrame,
    *,
    metric: str = "pearson_r",
    margin: float = 0.02,
    ci: float = 0.95,
    arm: str = "real+synthetic",
    synthetic_weight: float | str | None = None,
    conditions: str | None = None,
    real_finetune: float | None = None,
    batching: str | None = None,
) -> dict[str, Any]:
    """Name the smallest fraction of real spots that is non-inferior to all of them, with and without synthesis.

    The test is paired: for every repeat, ``metric`` of an arm at fraction ``f`` minus the all-real reference
    (``"real"`` at fraction 1.0) of the *same* repeat. An arm at ``f`` is non-inferior when the lower bound of
    the ``ci`` Student-t interval of those differences lies above ``-margin``; fix the margin before looking at
    the results. Intervals come from :func:`c2lst.metrics.mean_ci` and :func:`c2lst.metrics.paired_ci`.

    The saving is read on the grid of fractions that was run: when real spots alone are non-inferior only at
    1.0, a grid of ``(0.1, 0.25, 1.0)`` can show a saving of a half only as 0.25 (a factor of four); put 0.5 on
    the grid to test a factor of two. The reference must be trained as well as the data allow: a step count
    that under-trains the all-spot fit makes every smaller fraction look non-inferior sooner, with and without
    synthesis (docs: benchmarks, *A 50 % point on the grid*).

    Parameters
    ----------
    curve
        Output of :func:`budget_curve`, with fraction 1.0 in the ``"real"`` arm and at least 3 repeats.
    metric
        Column to compare (higher is better).
    margin
        Non-inferiority margin in units of ``metric`` (e.g. 0.02 r).
    ci
        Two-sided confidence level of the intervals (its lower bound is a one-sided ``(1 + ci) / 2`` bound).
    arm
        The augmented arm to plan for.
    synthetic_weight
        When ``curve`` holds several synthetic weights, the one to use (required then): a number or ``"auto"``.
    conditions
        When ``curve`` concatenates runs with several ``conditions`` (``"train"``, ``"mixup"``, ``"unpaired"``;
        see :func:`budget_curve`), the one to plan for (required then); its run's ``"real"`` rows are the
        reference. A curve mixing predictor ``features`` must be split by the caller.
    real_finetune
        When ``curve`` holds several staged-training shares (``budget_curve(real_finetune=(0, 0.33))``), the one
        to use (required then).
    batching
        When ``curve`` holds several batchings (``budget_curve(batching=("mixed", "stacked"))``), the one to use
        (required then).

    Returns
    -------
    dict with ``fraction`` (smallest non-inferior fraction of ``arm``, or None), ``fraction_real`` (the same
    for real spots alone), ``saving`` (``fraction / fraction_real`` when both exist: below 1 means synthesis
    saves spots), ``margin``, ``ci``, ``n_repeats``, ``differences`` (per arm and fraction: mean, CI and n of
    the paired difference to the reference, and ``non_inferior``), ``gain`` (per fraction: ``arm`` minus
    ``"real"`` at the same fraction, paired), ``table`` (per arm and fraction: mean and CI of ``metric``) and
    ``caveats``: plain sentences, each also logged as a warning, for what makes the answer hard to read. They
    name a real-only curve that is flat or falls (a smaller fraction of real spots scores above all of them:
    the slide saturates there, or the all-spot fit is under-trained), a grid that cannot show a saving of a
    half (no fraction of ``arm`` at half of ``fraction_real``, and none smaller non-inferior), real spots
    non-inferior already at the smallest fraction run (how few suffice is not known, nor the saving), and a
    repeat whose paired difference to all spots lies more than 5 robust standard deviations (1.4826 times the
    median absolute deviation, with at least 5 repeats) from the median of its arm and fraction: a degenerate
    training subset that can decide a mean over few repeats.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [("real", 1.0, 0.60), ("real", 0.5, 0.57), ("real", 0.25, 0.50), ("real+synthetic", 0.5, 0.60),
    ...         ("real+synthetic", 0.25, 0.55)]
    >>> curve = pd.DataFrame([{"condition": c, "fraction": f, "repeat": r, "pearson_r": v + 0.01 * r}
    ...                       for r in range(4) for c, f, v in rows])
    >>> plan = plan_budget(curve, margin=0.02)
    >>> plan["fraction"], plan["fraction_real"], plan["caveats"]
    (0.5, 1.0, [])
    """
    needed = {"fraction", "condition", "repeat", metric}
    if not isinstance(curve, pd.DataFrame) or not needed <= set(curve.columns):
        raise ValueError(f"`curve` must be the DataFrame of `budget_curve` with columns {sorted(needed)}.")
    if not (0 < ci < 1):
        raise ValueError(f"`ci={ci}` must be in (0, 1).")
    curve = _one_finetune(_one_weight(curve, synthetic_weight), real_finetune)
    curve = _one_conditions(_one_batching(curve, batching), conditions)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"`margin={margin!r}` must be a finite number >= 0 (e.g. 0.02 for Pearson r).")
    ref = curve[(curve["condition"] == "real") & np.isclose(curve["fraction"], 1.0)].set_index("repeat")[metric]
    if len(ref) == 0:
        raise ValueError(
            "`curve` has no all-real result (fraction 1.0, condition 'real'); include 1.0 in `fractions`."
        )
    if ref.index.nunique() < 3:
        raise ValueError(
            f"`curve` has {ref.index.nunique()} repeat(s) of the all-real reference; a paired test needs at "
            "least 3 (run `budget_curve` with `n_repeats>=3`; 8 or more for useful intervals)."
        )
    rows, table_rows, outliers = [], [], []
    for (cond, frac), grp in curve.groupby(["condition", "fraction"], sort=True):
        vals = grp.set_index("repeat")[metric]
        m, lo, hi, _ = mean_ci(vals.to_numpy(), ci=ci)
        table_rows.append({"condition": cond, "fraction": float(frac), "mean": m, "ci_low": lo, "ci_high": hi,
                           "n": len(vals)})
        same = ref.reindex(vals.index)
        outliers += _outlying_repeats(vals - same, cond, float(frac))
        dm, dlo, dhi, n = paired_ci(vals.to_numpy(), same.to_numpy(), ci=ci)
        rows.append({"condition": cond, "fraction": float(frac), "difference": dm, "ci_low": dlo, "ci_high": dhi,
                     "n": n, "non_inferior": bool(n >= 3 and dlo > -margin)})
    diffs = pd.DataFrame(rows)

    def smallest(cond: str) -> float | None:
        ok = diffs[(diffs["condition"] == cond) & diffs["non_inferior"]].sort_values("fraction")
        return float(ok["fraction"].iloc[0]) if len(ok) else None

    gain_rows = []
    real_arm = curve[curve["condition"] == "real"]
    for frac, grp in curve[curve["condition"] == arm].groupby("fraction", sort=True):
        base = real_arm[np.isclose(real_arm["fraction"], frac)].set_index("repeat")[metric]
        vals = grp.set_index("repeat")[metric]
        dm, dlo, dhi, n = paired_ci(vals.to_numpy(), base.reindex(vals.index).to_numpy(), ci=ci)
        gain_rows.append({"fraction": float(frac), "gain": dm, "ci_low": dlo, "ci_high": dhi, "n": n})
    f_arm, f_real = smallest(arm), smallest("real")
    caveats = _caveats(diffs, arm, f_real)
    if outliers:
        caveats.append(
            f"{'a repeat lies' if len(outliers) == 1 else 'repeats lie'} far from the others (more than 5 robust "
            f"SDs from the median paired difference to all spots): {'; '.join(outliers)}. A degenerate training "
            "subset can decide a mean over few repeats; look at its spots, or run more repeats."
        )
    for text in caveats:
        logger.warning(text)
    return {
        "fraction": f_arm,
        "fraction_real": f_real,
        "saving": (f_arm / f_real) if f_arm is not None and f_real else None,
        "margin": float(margin),
        "ci": float(ci),
        "n_repeats": int(ref.index.nunique()),
        "reference_mean": float(ref.mean()),
        "differences": diffs,
        "gain": pd.DataFrame(gain_rows, columns=["fraction", "gain", "ci_low", "ci_high", "n"]),
        "table": pd.DataFrame(table_rows),
        "caveats": caveats,
    }


def _outlying_repeats(diff: pd.Series, cond: str, frac: float) -> list[str]:
    """Name the repeats whose paired difference lies more than 5 robust SDs (1.4826 MAD) from the median."""
    diff = diff[np.isfinite(diff.to_numpy(dtype=float))]
    if len(diff) < 5:
        return []
    med = float(diff.median())
    spread = 1.4826 * float((diff - med).abs().median())
    if spread <= 0:
        return []
    far = diff[(diff - med).abs() > 5 * spread]
    return [f"repeat {rep} of {cond!r} at fraction {frac:g} ({d:+.3f} against a median of {med:+.3f})"
            for rep, d in far.items()]


def _caveats(diffs: pd.DataFrame, arm: str, f_real: float | None) -> list[str]:
    """Name what makes a plan hard to read: a flat real-only curve, a grid too coarse for a factor of two."""
    out = []
    real = diffs[(diffs["condition"] == "real") & (diffs["fraction"] < 1 - 1e-9)]
    above = real[real["difference"] > 0]
    if len(above):
        top = above.loc[above["difference"].idxmax()]
        out.append(
            f"real spots alone at fraction {top['fraction']:g} score above all of them on average (paired "
            f"{top['difference']:+.3f} [{top['ci_low']:+.3f}, {top['ci_high']:+.3f}]): the slide saturates there, or "
            "the all-spot fit is under-trained (raise the predictor's `n_steps` or use "
            "`predictor_kwargs={'early_stopping': True}`); either way smaller fractions look non-inferior sooner."
        )
    if f_real is None:
        return out
    if len(real) and f_real < 1 - 1e-9 and np.isclose(f_real, real["fraction"].min()):
        out.append(
            f"real spots alone are non-inferior already at the smallest fraction run ({f_real:g}); how few "
            "suffice is not known, so the saving is not either: add smaller `fractions`."
        )
        return out
    arm_rows = diffs[diffs["condition"] == arm]
    half = f_real / 2
    at_or_below = arm_rows[arm_rows["fraction"] <= half + 1e-9]
    if len(arm_rows) and not at_or_below["non_inferior"].any() and not np.isclose(at_or_below["fraction"], half).any():
        largest = (
            f"the largest fraction of {arm!r} at or below {half:g} is {at_or_below['fraction'].max():g}"
            if len(at_or_below)
            else f"no fraction of {arm!r} at or below {half:g} was run"
        )
        out.append(
            f"the grid cannot show a saving of a half: real spots alone need fraction {f_real:g}, and {largest}; "
            f"add {half:g} to `fractions` to test a factor of two."
        )
    return out


def _weight_label(value: Any) -> float | str:
    """Return a weight as compared in a curve: ``"auto"`` stays text, numbers become floats past float noise.

    Numbers read back from a CSV as text (the column mixes numbers and ``"auto"``) become floats too.
    """
    try:
        return round(float(value), 9)
    except ValueError:
        return str(value)


def _one_weight(curve: pd.DataFrame, weight: float | str | None) -> pd.DataFrame:
    """Keep the real rows and the added rows of one synthetic weight."""
    if "synthetic_weight" not in curve.columns:
        return curve
    labels = curve["synthetic_weight"].map(lambda v: None if pd.isna(v) else _weight_label(v))
    present = sorted(set(labels.dropna()), key=lambda v: (1, 0.0, v) if isinstance(v, str) else (0, v, ""))
    if weight is None:
        if len(present) > 1:
            raise ValueError(f"`curve` holds synthetic weights {present}; pass `synthetic_weight=` (one of them).")
        return curve
    if isinstance(weight, bool) or not isinstance(weight, int | float | str) or _weight_label(weight) not in present:
        raise ValueError(f"`synthetic_weight={weight!r}` is not in `curve` (weights: {present}).")
    keep = labels.isna() | (labels == _weight_label(weight))
    return curve[keep.to_numpy()]


def _one_finetune(curve: pd.DataFrame, share: float | None) -> pd.DataFrame:
    """Keep the real rows and the added rows of one staged-training share (``real_finetune``)."""
    if "real_finetune" not in curve.columns:
        if share is not None:
            raise ValueError(f"`real_finetune={share!r}` given, but `curve` has no `real_finetune` column.")
        return curve
    col = curve["real_finetune"].astype(float)
    present = sorted(set(col.dropna().round(9)))
    if share is None:
        if len(present) > 1:
            raise ValueError(f"`curve` holds staged-training shares {present}; pass `real_finetune=` (one of them).")
        return curve
    if isinstance(share, bool) or not isinstance(share, int | float) or round(float(share), 9) not in present:
        raise ValueError(f"`real_finetune={share!r}` is not in `curve` (shares: {present}).")
    return curve[(col.isna() | np.isclose(col, float(share))).to_numpy()]


def _one_batching(curve: pd.DataFrame, batching: str | None) -> pd.DataFrame:
    """Keep the real rows and the added rows of one ``batching`` (``"mixed"`` or ``"stacked"``)."""
    return _one_text(curve, "batching", batching, "batchings", real_rows=True)


def _one_conditions(curve: pd.DataFrame, conditions: str | None) -> pd.DataFrame:
    """Keep the rows of one ``conditions`` run (and refuse a curve that mixes predictor feature spaces)."""
    if "features" in curve.columns and curve["features"].nunique() > 1:
        raise ValueError(
            f"`curve` mixes predictor features {sorted(curve['features'].unique())}; plan each separately, e.g. "
            "`plan_budget(curve[curve['features'] == 'central'])`."
        )
    return _one_text(curve, "conditions", conditions, "conditions", real_rows=False)


def _one_text(curve: pd.DataFrame, column: str, value: str | None, what: str, *, real_rows: bool) -> pd.DataFrame:
    """Keep the rows of one text ``value`` of ``column`` (and its NaN rows, the real arm's, when ``real_rows``).

    ``None`` keeps everything when the curve holds at most one value; a curve without the column plans as it is.
    """
    if column not in curve.columns:
        if value is not None:
            raise ValueError(f"`{column}={value!r}` given, but `curve` has no `{column}` column.")
        return curve
    col = curve[column]
    present = sorted(set(col.dropna().astype(str)))
    if value is None:
        if len(present) > 1:
            raise ValueError(f"`curve` holds {what} {present}; pass `{column}=` (one of them).")
        return curve
    if value not in present:
        raise ValueError(f"`{column}={value!r}` is not in `curve` ({what}: {present}).")
    keep = col.astype(str) == value
    return curve[(keep | col.isna()).to_numpy() if real_rows else keep.to_numpy()]
