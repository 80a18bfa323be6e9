"""``tl.budget_curve`` and ``tl.plan_budget``: how many real spots does synthesis save."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from .._logging import logger
from .._logging import progress as _progress
from .._utils import check_positive_int, check_seed, get_table, require_obsm

SPLITS = ("spatial", "random")
CONDITIONS = ("real", "real+synthetic")


def spatial_split(
    coords: np.ndarray, *, test_fraction: float = 0.25, n_blocks: int = 4, seed: int = 0
) -> np.ndarray:
    """Return a boolean test mask that holds out whole spatial blocks.

    The slide's bounding box is cut into ``n_blocks x n_blocks`` tiles; tiles are drawn in a seeded random
    order until at least ``test_fraction`` of the spots are held out, so neighbouring spots never straddle
    train and test except along block borders.
    """
    coords = np.asarray(coords, dtype=float)[:, :2]
    lo, hi = coords.min(0), coords.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cell = np.minimum((coords - lo) / span * n_blocks, n_blocks - 1).astype(int)
    block = cell[:, 0] * n_blocks + cell[:, 1]
    order = np.random.default_rng(seed).permutation(np.unique(block))
    test = np.zeros(len(coords), dtype=bool)
    target = test_fraction * len(coords)
    for b in order:
        if test.sum() >= target:
            break
        test |= block == b
    if test.all():  # a single occupied block: keep at least one training spot
        test[np.random.default_rng(seed).integers(len(test))] = False
    return test


def _mean_ci(values: np.ndarray, ci: float) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + ci / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def budget_curve(
    sdata: Any,
    *,
    central: Any,
    table_key: str = "table",
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    synthetic_per_spot: int = 2,
    n_repeats: int = 3,
    split: str = "spatial",
    test_fraction: float = 0.25,
    n_blocks: int = 4,
    expr_key: str = "c2lst_expr",
    patch_key: str = "c2lst_patch",
    adapt_kwargs: Mapping[str, Any] | None = None,
    synthesize_kwargs: Mapping[str, Any] | None = None,
    predictor_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure image→expression accuracy against the number of real spots, with and without synthesis.

    For each repeat, whole spatial blocks of spots are held out as the test set (``split="spatial"``, so
    neighbouring spots do not leak between train and test). For each fraction ``f`` of the remaining spots, a
    seeded random subset is drawn; the central model is adapted on it (:func:`c2lst.tl.adapt`),
    ``synthetic_per_spot`` patches are synthesized per training spot (:func:`c2lst.tl.synthesize`), and two
    predictors are fitted (:func:`c2lst.tl.fit_predictor`): on the real subset, and on the real subset plus its
    synthetic spots. Both are scored on the held-out real spots (:func:`c2lst.tl.evaluate_prediction`).

    Parameters
    ----------
    sdata
        SpatialData (or an AnnData table) with ``obsm[patch_key]``, ``obsm[expr_key]`` and ``obsm["spatial"]``.
    central
        The central model (object, directory or registry key) to adapt.
    table_key
        Table of the real spots.
    fractions
        Fractions of the training spots, each in (0, 1].
    synthetic_per_spot
        Synthetic patches per real training spot.
    n_repeats
        Repeats (different held-out blocks and subsets).
    split
        ``"spatial"`` (held-out blocks) or ``"random"`` (held-out spots; optimistic, for comparison only).
    test_fraction
        Fraction of spots held out per repeat.
    n_blocks
        Blocks per side of the spatial grid.
    expr_key, patch_key
        Prepared expression and patches.
    adapt_kwargs, synthesize_kwargs, predictor_kwargs
        Extra options for :func:`c2lst.tl.adapt`, :func:`c2lst.tl.synthesize` and :func:`c2lst.tl.fit_predictor`.
    seed
        Seeds splits, subsets, adaptation, synthesis and predictors.
    progress
        Show a progress bar over the runs.

    Returns
    -------
    One row per (repeat, fraction, condition): ``fraction``, ``repeat``, ``condition`` (``"real"`` or
    ``"real+synthetic"``), ``n_real``, ``n_synthetic``, ``n_test``, ``pearson_r`` (mean over genes), ``mse``,
    ``moran_difference`` (mean absolute Moran's I difference, predicted vs observed).

    Examples
    --------
    >>> curve = c2lst.tl.budget_curve(sdata, central=model, fractions=(0.25, 1.0), n_repeats=3)
    >>> c2lst.tl.plan_budget(curve)
    """
    from ._adapt import adapt
    from ._predict import evaluate_prediction, fit_predictor, predict_expression
    from ._synthesize import synthesize

    table = sdata if isinstance(sdata, AnnData) else get_table(sdata, table_key)
    fractions = [float(f) for f in fractions]
    if not fractions or any(not (0 < f <= 1) or not np.isfinite(f) for f in fractions):
        raise ValueError(f"`fractions={fractions}` must be non-empty values in (0, 1]; e.g. (0.25, 1.0).")
    if split not in SPLITS:
        raise ValueError(f"`split={split!r}` is unknown; use one of {list(SPLITS)}.")
    if not (0 < test_fraction < 1):
        raise ValueError(f"`test_fraction={test_fraction}` must be in (0, 1).")
    synthetic_per_spot = check_positive_int(synthetic_per_spot, "synthetic_per_spot")
    n_repeats = check_positive_int(n_repeats, "n_repeats")
    n_blocks = check_positive_int(n_blocks, "n_blocks")
    seed = check_seed(seed)
    require_obsm(table, patch_key, "patch_key", "run `c2lst.pp.extract_patches` first.")
    require_obsm(table, expr_key, "expr_key", "run `c2lst.pp.prepare_expression` first.")
    coords = require_obsm(
        table, "spatial", "obsm key", "the table needs spot coordinates in obsm['spatial']."
    )
    from spatialdata import SpatialData

    from ._central import resolve_central

    model = resolve_central(central, table)
    base = AnnData(obs=pd.DataFrame(index=table.obs_names.copy()))
    for key in (patch_key, expr_key, "spatial"):
        base.obsm[key] = np.asarray(table.obsm[key])
    base.uns["c2lst"] = {"expr": {expr_key: dict(table.uns["c2lst"]["expr"][expr_key])}}
    a_kw = {"n_steps": 200, "batch_size": 16, **dict(adapt_kwargs or {})}
    s_kw = {"steps": 20, **dict(synthesize_kwargs or {})}
    p_kw = dict(predictor_kwargs or {})
    rows: list[dict[str, Any]] = []
    runs = [(r, f) for r in range(n_repeats) for f in fractions]
    for r, f in _progress(runs, enabled=progress, desc="budget curve", unit="run"):
        rseed = seed + 1000 * r
        test = (
            spatial_split(coords, test_fraction=test_fraction, n_blocks=n_blocks, seed=rseed)
            if split == "spatial"
            else np.random.default_rng(rseed).random(table.n_obs) < test_fraction
        )
        pool = np.flatnonzero(~test)
        if test.sum() == 0 or len(pool) == 0:
            raise ValueError(
                f"the {split} split left {int(test.sum())} test and {len(pool)} training spots; use more spots, "
                "a larger `test_fraction` or more `n_blocks`."
            )
        n_real = max(1, round(f * len(pool)))
        train_idx = np.sort(np.random.default_rng([rseed, int(f * 1e6)]).choice(pool, n_real, replace=False))
        real = base[train_idx].copy()
        held = base[np.flatnonzero(test)].copy()
        real.obs["c2lst_synthetic"] = False
        adapt(real, central=model, expr_key=expr_key, patch_key=patch_key, seed=rseed, progress=False, **a_kw)
        sd = SpatialData(tables={"train": real})
        synthesize(
            sd,
            table_key="train",
            central=model,
            n_per_condition=synthetic_per_spot,
            seed=rseed,
            patch_key=patch_key,
            table_added="syn",
            progress=False,
            **s_kw,
        )
        syn = sd.tables["syn"]
        for cond, tables in (("real", [real]), ("real+synthetic", [real, syn])):
            pred = fit_predictor(
                tables, expr_key=expr_key, patch_key=patch_key, seed=rseed, progress=False, **p_kw
            )
            ev = held.copy()
            predict_expression(ev, predictor=pred, patch_key=patch_key, expr_key=expr_key)
            evaluate_prediction(ev, expr_key=expr_key, spatial=True)
            rec = ev.uns["c2lst"]["evaluation"]["c2lst_pred"]
            rows.append(
                {
                    "fraction": f,
                    "repeat": r,
                    "condition": cond,
                    "n_real": int(n_real),
                    "n_synthetic": int(syn.n_obs) if cond != "real" else 0,
                    "n_test": int(test.sum()),
                    "pearson_r": float(rec["mean_pearson_r"]),
                    "mse": float(rec["mean_mse"]),
                    "moran_difference": float(rec.get("mean_abs_moran_difference", math.nan)),
                }
            )
        logger.info(
            "budget: fraction %.2f repeat %d: real r=%.3f, +synthetic r=%.3f",
            f,
            r,
            rows[-2]["pearson_r"],
            rows[-1]["pearson_r"],
        )
    return pd.DataFrame(rows)


def plan_budget(curve: pd.DataFrame, *, metric: str = "pearson_r", ci: float = 0.95) -> dict[str, Any]:
    """Name the smallest real fraction whose real+synthetic score is within the CI of the all-real score.

    Parameters
    ----------
    curve
        Output of :func:`budget_curve`; it must contain fraction 1.0 with the ``"real"`` condition.
    metric
        Column to compare (higher is better).
    ci
        Confidence level of the all-real interval (Student's t over repeats).

    Returns
    -------
    ``{"fraction": smallest sufficient fraction or None, "reference_mean", "reference_ci_low",
    "reference_ci_high", "table": DataFrame of means and CIs per (condition, fraction)}``.
    """
    needed = {"fraction", "condition", metric}
    if not isinstance(curve, pd.DataFrame) or not needed <= set(curve.columns):
        raise ValueError(f"`curve` must be the DataFrame of `budget_curve` with columns {sorted(needed)}.")
    if not (0 < ci < 1):
        raise ValueError(f"`ci={ci}` must be in (0, 1).")
    ref = curve[(curve["condition"] == "real") & np.isclose(curve["fraction"], 1.0)][metric].to_numpy()
    if len(ref) == 0:
        raise ValueError(
            "`curve` has no all-real result (fraction 1.0, condition 'real'); include 1.0 in `fractions`."
        )
    mean, low, high = _mean_ci(ref, ci)
    rows = []
    for (cond, frac), grp in curve.groupby(["condition", "fraction"], sort=True):
        m, lo, hi = _mean_ci(grp[metric].to_numpy(), ci)
        rows.append(
            {
                "condition": cond,
                "fraction": float(frac),
                "mean": m,
                "ci_low": lo,
                "ci_high": hi,
                "n": len(grp),
            }
        )
    table = pd.DataFrame(rows)
    aug = table[table["condition"] == "real+synthetic"].sort_values("fraction")
    ok = aug[aug["mean"] >= low]
    return {
        "fraction": float(ok["fraction"].iloc[0]) if len(ok) else None,
        "reference_mean": mean,
        "reference_ci_low": low,
        "reference_ci_high": high,
        "table": table,
    }
