"""``c2lst.metrics``: known values of every public metric and the errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from c2lst import metrics

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- correlations
def test_pearson_known_values():
    x = np.arange(10.0)
    assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.pearson(x, -3 * x) == pytest.approx(-1.0)
    assert isinstance(metrics.pearson(x, x**2), float)
    r = metrics.pearson(np.c_[x, x, x], np.c_[2 * x + 1, np.ones(10), np.r_[np.nan, x[1:]]])
    assert r.shape == (3,)
    assert r[0] == pytest.approx(1.0)
    assert np.isnan(r[1:]).all()  # constant column, column with NaN


def test_pearson_matches_numpy_per_column():
    a, b = RNG.normal(size=(40, 5)), RNG.normal(size=(40, 5))
    ref = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(metrics.pearson(a, b), ref, rtol=1e-12)
    np.testing.assert_allclose(metrics.pearson(a.tolist(), b.tolist()), ref, rtol=1e-12)


def test_spearman_known_values():
    x = np.arange(1.0, 9.0)
    assert metrics.spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
    assert metrics.spearman(x, -(x**3)) == pytest.approx(-1.0)
    # pairs with NaN / inf are left out; fewer than 3 pairs or a constant side give NaN
    assert metrics.spearman([1.0, 2.0, 3.0, np.nan, np.inf], [1.0, 4.0, 9.0, 0.0, 2.0]) == pytest.approx(1.0)
    assert math.isnan(metrics.spearman([1.0, 2.0, np.nan], [1.0, 2.0, 3.0]))
    assert math.isnan(metrics.spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    a, b = RNG.normal(size=(30, 3)), RNG.normal(size=(30, 3))
    ref = [stats.spearmanr(a[:, j], b[:, j]).statistic for j in range(3)]
    np.testing.assert_allclose(metrics.spearman(a, b), ref)


@pytest.mark.parametrize("func", [metrics.pearson, metrics.spearman])
def test_correlation_bad_input(func):
    with pytest.raises(ValueError, match="`x` and `y`"):
        func(np.zeros(4), np.zeros(5))
    with pytest.raises(TypeError, match="`x`"):
        func("abcd", np.zeros(4))
    with pytest.raises(TypeError, match="`y`"):
        func(np.zeros(2), np.array(["a", "b"]))
    with pytest.raises(ValueError, match="`x` must be 1-D or 2-D"):
        func(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="`x` is empty"):
        func([], [])


# --------------------------------------------------------------------------- Moran's I
def _grid(n: int = 8) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2).astype(float)


def test_morans_i_checkerboard_is_negative_and_gradient_positive():
    xy = _grid()
    checker = (xy.sum(1) % 2).astype(float)
    values = np.c_[checker, xy[:, 0], np.ones(len(xy))]
    i = metrics.morans_i(values, xy, n_neighs=4)
    assert i.shape == (3,)
    assert i[0] < -0.5  # neighbours disagree
    assert i[1] > 0.5  # neighbours agree
    assert np.isnan(i[2])  # constant map
    assert metrics.morans_i(checker, xy, n_neighs=4) == pytest.approx(i[0])  # 1-D gives a float


def test_morans_i_keeps_torch_thread_count():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics.morans_i(RNG.normal(size=(30, 2)), RNG.uniform(size=(30, 2)))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_morans_i_bad_input():
    xy = _grid(3)
    with pytest.raises(ValueError, match="`coords` has 9 rows but `values` 4"):
        metrics.morans_i(np.zeros(4), xy)
    with pytest.raises(ValueError, match="at least 2 spots"):
        metrics.morans_i(np.zeros(1), xy[:1])
    with pytest.raises(ValueError, match="`coords` contains NaN"):
        metrics.morans_i(np.arange(9.0), np.where(xy == 0, np.nan, xy))
    with pytest.raises(ValueError, match="`coords` must be 2-D"):
        metrics.morans_i(np.arange(9.0), np.arange(9.0))
    with pytest.raises(ValueError, match="n_neighs"):
        metrics.morans_i(np.arange(9.0), xy, n_neighs=0)
    with pytest.raises(TypeError, match="n_neighs"):
        metrics.morans_i(np.arange(9.0), xy, n_neighs=2.5)
    with pytest.raises(TypeError, match="`values`"):
        metrics.morans_i(None, xy)


# --------------------------------------------------------------------------- distances
def test_frechet_and_kernel_distance_known_values():
    a = RNG.normal(size=(60, 4))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # one dimension, no scaling: N(0, 1) vs N(3, 1) -> |mu|^2 + (s_a - s_b)^2
    x = RNG.normal(size=(5000, 1))
    y = RNG.normal(size=(5000, 1)) + 3
    exact = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert metrics.frechet_distance(x, y, standardise=False) == pytest.approx(exact, rel=1e-6)
    far = metrics.kernel_distance(a, a + 3, n_subsets=10, subset_size=30, seed=1)
    assert far == metrics.kernel_distance(a, a + 3, n_subsets=10, subset_size=30, seed=1)  # seeded
    assert far[0] > 1 and far[1] >= 0
    near, _ = metrics.kernel_distance(a, a.copy(), n_subsets=10, subset_size=60)
    assert abs(near) < 0.01 * far[0]


@pytest.mark.parametrize("func", [metrics.frechet_distance, metrics.kernel_distance])
def test_distance_bad_input(func):
    a = RNG.normal(size=(10, 3))
    with pytest.raises(ValueError, match="same number of features"):
        func(a, a[:, :2])
    with pytest.raises(ValueError, match="at least 2 rows"):
        func(a, a[:1])
    with pytest.raises(ValueError, match="NaN or inf"):
        func(a, np.where(a > 1, np.inf, a))
    with pytest.raises(ValueError, match="`real` must be 2-D"):
        func(a[:, 0], a)
    with pytest.raises(TypeError, match="`other`"):
        func(a, "features")


def test_distance_option_errors():
    a = RNG.normal(size=(10, 3))
    with pytest.raises(ValueError, match="eps"):
        metrics.frechet_distance(a, a, eps=-1.0)
    with pytest.raises(ValueError, match="n_subsets"):
        metrics.kernel_distance(a, a, n_subsets=0)
    with pytest.raises(TypeError, match="subset_size"):
        metrics.kernel_distance(a, a, subset_size=1.5)
    with pytest.raises(TypeError, match="seed"):
        metrics.kernel_distance(a, a, seed=-1)


# --------------------------------------------------------------------------- confidence intervals
def test_mean_ci_of_constant_values_is_a_point():
    assert tuple(metrics.mean_ci([0.3, 0.3, 0.3, 0.3])) == (0.3, 0.3, 0.3, 4)


def test_mean_ci_is_the_student_t_interval():
    v = RNG.normal(size=12)
    iv = metrics.mean_ci(np.r_[v, np.nan, np.inf], ci=0.9)  # non-finite values left out
    lo, hi = stats.t.interval(0.9, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert isinstance(iv, metrics.ConfidenceInterval)
    assert (iv.mean, iv.n) == (pytest.approx(v.mean()), 12)
    assert (iv.low, iv.high) == (pytest.approx(lo), pytest.approx(hi))
    assert tuple(metrics.mean_ci([2.0, np.nan])) == (2.0, 2.0, 2.0, 1)
    empty = metrics.mean_ci([np.nan, np.nan])
    assert empty.n == 0 and all(math.isnan(x) for x in empty[:3])


def test_paired_ci_matches_a_hand_computation():
    x = [1.0, 2.0, 3.0, 4.0, 9.0]
    y = [0.5, 1.0, 2.0, 2.5, np.nan]  # the last pair is incomplete
    d = [0.5, 1.0, 1.0, 1.5]
    mean = sum(d) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} * s / sqrt(4)
    iv = metrics.paired_ci(x, y)
    assert iv.n == 4
    assert iv.mean == pytest.approx(1.0)
    assert (iv.low, iv.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    # pairing removes what both sides share: the unpaired interval of x alone is far wider
    shared = RNG.normal(size=8) * 10
    paired = metrics.paired_ci(shared + 1.0 + RNG.normal(size=8) * 0.01, shared)
    assert paired.low > 0.9 and paired.high < 1.1


@pytest.mark.parametrize("ci", [0.0, 1.0, 95, -0.5])
def test_ci_level_must_be_in_unit_interval(ci):
    with pytest.raises(ValueError, match="`ci="):
        metrics.mean_ci([1.0, 2.0], ci=ci)
    with pytest.raises(ValueError, match="`ci="):
        metrics.paired_ci([1.0, 2.0], [1.0, 2.0], ci=ci)


def test_interval_bad_input():
    with pytest.raises(TypeError, match="`ci`"):
        metrics.mean_ci([1.0, 2.0], ci="0.95")
    with pytest.raises(TypeError, match="`ci`"):
        metrics.mean_ci([1.0, 2.0], ci=True)
    with pytest.raises(ValueError, match="`values` must be 1-D"):
        metrics.mean_ci(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="`values`"):
        metrics.mean_ci(["a", "b"])
    with pytest.raises(ValueError, match="`values` is empty"):
        metrics.mean_ci([])
    with pytest.raises(ValueError, match="`x` and `y`"):
        metrics.paired_ci([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="`y` must be 1-D"):
        metrics.paired_ci([1.0, 2.0], [[1.0, 2.0]])
