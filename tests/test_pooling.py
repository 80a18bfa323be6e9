"""``metrics.pooled_ci``: per-slide intervals pooled across slides with random effects."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from c2lst import metrics as M

CI = M.ConfidenceInterval


def _reference(runs, ci=0.95):
    """statsmodels' DerSimonian-Laird pooling with the Hartung-Knapp ("wls") interval."""
    from statsmodels.stats.meta_analysis import combine_effects

    x = np.array([r.mean for r in runs])
    se = np.array([(r.high - r.low) / (2 * stats.t.ppf(0.5 + ci / 2, r.n - 1)) for r in runs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = combine_effects(x, se**2, method_re="dl", use_t=True, alpha=1 - ci).summary_frame()
    return frame.loc["random effect wls"]


def test_matches_statsmodels_on_heterogeneous_slides():
    runs = [CI(0.014, -0.015, 0.044, 8), CI(0.034, 0.008, 0.060, 8), CI(-0.007, -0.028, 0.015, 16), CI(0.029, 0.002, 0.057, 12)]
    pooled = M.pooled_ci(runs)
    hk = _reference(runs)
    assert pooled.n == 4
    assert pooled.mean == pytest.approx(hk["eff"], abs=1e-12)
    assert (pooled.low, pooled.high) == pytest.approx((hk["ci_low"], hk["ci_upp"]), abs=1e-9)
    # four slides, each with a CI that may exclude 0, do not make a pooled claim by themselves
    assert pooled.low < 0 < pooled.high


def test_agreeing_slides_pool_to_the_normal_interval():
    runs = [CI(0.02, 0.0, 0.04, 10)] * 3
    pooled = M.pooled_ci(runs, ci=0.9)
    se = 0.02 / stats.t.ppf(0.95, 9)
    half = stats.norm.ppf(0.95) * se / np.sqrt(3)  # no spread between slides: the Hartung-Knapp width is 0
    assert pooled.mean == pytest.approx(0.02)
    assert (pooled.low, pooled.high) == pytest.approx((0.02 - half, 0.02 + half))


def test_disagreeing_slides_widen_the_interval():
    tight = [CI(0.05, 0.04, 0.06, 12), CI(-0.05, -0.06, -0.04, 12)]
    pooled = M.pooled_ci(tight)
    assert pooled.mean == pytest.approx(0.0, abs=1e-12)
    assert pooled.low < -0.05 and pooled.high > 0.05  # wider than either slide: the slides disagree


def test_one_slide_is_returned_as_it_is():
    assert M.pooled_ci([(0.01, -0.02, 0.04, 8)]) == CI(0.01, -0.02, 0.04, 8)


@pytest.mark.parametrize(
    "bad",
    [[], "abc", None, [(0.1, 0.2, 0.3, 5)], [(0.1, 0.0, 0.2, 1)], [(0.1, 0.0, 0.2, 2.5)], [(np.nan, 0, 1, 4)], [(1, 2)]],
)
def test_bad_input(bad):
    with pytest.raises(ValueError, match="intervals"):
        M.pooled_ci(bad)


def test_bad_level():
    with pytest.raises(ValueError, match="ci"):
        M.pooled_ci([CI(0.1, 0.0, 0.2, 5)] * 2, ci=1.5)
