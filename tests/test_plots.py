"""``c2lst.pl``: every plot returns a Figure, ``save=`` writes a file, bad input raises before drawing."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from _eval_helpers import make_table
from matplotlib.figure import Figure

import c2lst
from c2lst.pl._budget import summarise_curve


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def evaluated():
    t = make_table(36, seed=0)
    rng = np.random.default_rng(0)
    t.obsm["c2lst_pred"] = (t.obsm["c2lst_expr"] + rng.normal(0, 0.5, t.obsm["c2lst_expr"].shape)).astype(
        np.float32
    )
    t.uns["c2lst"]["pred"] = {"c2lst_pred": {"genes": t.uns["c2lst"]["expr"]["c2lst_expr"]["genes"]}}
    c2lst.tl.evaluate_prediction(t, spatial=False)
    return t


@pytest.fixture(scope="module")
def curve():
    rows = []
    for frac in (0.25, 0.5, 1.0):
        for rep in range(3):
            for cond, bonus in (("real", 0.0), ("real+synthetic", 0.05)):
                rows.append(
                    {
                        "fraction": frac,
                        "repeat": rep,
                        "condition": cond,
                        "n_real": int(100 * frac),
                        "n_synthetic": int(100 * frac) * 2 if bonus else 0,
                        "pearson_r": 0.3 + 0.3 * frac + bonus + 0.01 * rep,
                        "mse": 1.0 - frac,
                    }
                )
    return pd.DataFrame(rows)


def test_patches_real_vs_synthetic(tmp_path):
    real = make_table(10, seed=0)
    syn = make_table(20, seed=1)
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = np.repeat(real.obs_names.to_numpy()[:5], 4)
    fig = c2lst.pl.patches(real, syn, n=3, n_synthetic=2, save=tmp_path / "sub" / "patches.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "sub" / "patches.png").stat().st_size > 0
    assert len(fig.axes) == 3 * 3
    fig = c2lst.pl.patches(real, syn, spots=["spot_1"])
    assert fig.axes[0].get_ylabel() == "spot_1"
    with pytest.raises(KeyError, match="spot_9"):
        c2lst.pl.patches(real, syn, spots=["spot_9"])  # a real spot without children
    fig = c2lst.pl.patches(real, n=4)  # real only
    assert sum(ax.has_data() for ax in fig.axes) == 4


def test_patches_has_no_empty_columns():
    """One child per parent: two columns (real, synthetic 1), not 1 + n_synthetic with empty panels."""
    real = make_table(10, seed=0)
    syn = make_table(5, seed=1)
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = real.obs_names.to_numpy()[:5]
    fig = c2lst.pl.patches(real, syn, n=3, n_synthetic=4)
    assert len(fig.axes) == 3 * 2
    assert all(ax.has_data() for ax in fig.axes)


def test_patches_bad_inputs():
    real = make_table(4)
    syn = make_table(4, seed=1)
    with pytest.raises(KeyError, match="parent_key"):
        c2lst.pl.patches(real, syn)
    syn.obs["c2lst_parent"] = ["x"] * 4
    with pytest.raises(ValueError, match="real"):
        c2lst.pl.patches(real, syn)
    with pytest.raises(ValueError, match="`n`"):
        c2lst.pl.patches(real, n=0)
    with pytest.raises(TypeError, match="save"):
        c2lst.pl.patches(real, save=3)


def test_budget_curve(curve, tmp_path):
    fig = c2lst.pl.budget_curve(curve, save=tmp_path / "budget.pdf")
    assert isinstance(fig, Figure)
    assert (tmp_path / "budget.pdf").stat().st_size > 0
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["real only", "real + synthetic"]
    fig2, ax = plt.subplots()
    assert c2lst.pl.budget_curve(curve, metric="mse", ax=ax) is fig2
    with pytest.raises(KeyError, match="pearson_r"):
        c2lst.pl.budget_curve(curve.drop(columns="pearson_r"))
    with pytest.raises(ValueError, match="ci"):
        c2lst.pl.budget_curve(curve, ci=95)


def test_plot_docstrings_share_the_show_save_text():
    for func in (c2lst.pl.patches, c2lst.pl.budget_curve, c2lst.pl.gene_correlation, c2lst.pl.spatial_expression):
        doc = func.__doc__
        assert "{" + "show_save}" not in doc and "{" + "ax}" not in doc
        assert "\n    show\n        Call :func:`matplotlib.pyplot.show`" in doc
        assert "\n    save\n        Write the figure to this path" in doc


def test_budget_summary_is_a_t_interval(curve):
    s = summarise_curve(curve).set_index(["condition", "fraction"])
    vals = curve.query("condition == 'real' and fraction == 0.5")["pearson_r"].to_numpy()
    from scipy import stats

    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=vals.mean(), scale=stats.sem(vals))
    assert s.loc[("real", 0.5), "ci_low"] == pytest.approx(lo)
    assert s.loc[("real", 0.5), "ci_high"] == pytest.approx(hi)


def test_gene_correlation(evaluated, tmp_path):
    fig = c2lst.pl.gene_correlation(evaluated, n_top=2, save=tmp_path / "genes.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "genes.png").exists()
    ax = fig.axes[0]
    by_height = [t.get_text() for _, t in sorted(zip(ax.get_yticks(), ax.get_yticklabels(), strict=True))]
    r = c2lst.tl.prediction_metrics(evaluated)["pearson_r"].sort_values(ascending=False)
    assert by_height[::-1] == list(r.index[:2])  # best gene on top
    with pytest.raises(KeyError, match="evaluate_prediction"):
        c2lst.pl.gene_correlation(evaluated, key="other")
    with pytest.raises(KeyError, match="metric"):
        c2lst.pl.gene_correlation(evaluated, metric="moran_observed")


def test_spatial_expression(evaluated, tmp_path):
    fig = c2lst.pl.spatial_expression(evaluated, ["g_nuclei", "g_colour"], save=tmp_path / "maps.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "maps.png").exists()
    assert len([ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]) == 4
    assert "predicted (r = " in fig.axes[1].get_title()
    single = c2lst.pl.spatial_expression(evaluated, "g_noise")
    assert isinstance(single, Figure)
    with pytest.raises(KeyError, match="Actb"):
        c2lst.pl.spatial_expression(evaluated, ["Actb"])
    with pytest.raises(KeyError, match="predict_expression"):
        c2lst.pl.spatial_expression(evaluated, ["g_noise"], pred_key="none")
