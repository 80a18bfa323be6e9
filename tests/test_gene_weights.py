"""Synthetic rows weighted per gene: ``synthetic_weight="auto-gene"`` or a mapping gene -> weight.

A generator can carry some genes (those its images show) and not others; per-gene weights let synthetic rows teach
only the first. The engine takes weights per row and gene ``(n, n_genes)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from _eval_helpers import make_table
from _reliability_helpers import state as snapshot

import c2lst
from c2lst.models import ExpressionPredictor
from c2lst.models.ridge import fit_ridge_head
from c2lst.tl import _weights

GENES = ["g_nuclei", "g_colour", "g_noise"]


@pytest.fixture(scope="module")
def real():
    return make_table(60, seed=0)


def _half_right_children(real):
    """Synthetic rows whose images carry the nuclei gene (new, correct pairs) but whose colour gene is noise."""
    syn = make_table(2 * real.n_obs, seed=9)
    syn.obs_names = [f"syn_{i}" for i in range(syn.n_obs)]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = np.repeat(real.obs_names.to_numpy(), 2)
    expr = np.asarray(syn.obsm["c2lst_expr"]).copy()
    expr[:, 1] = np.random.default_rng(3).permutation(expr[:, 1])  # the colour label no longer fits its image
    syn.obsm["c2lst_expr"] = expr
    return syn


# --------------------------------------------------------------------------- engine
@pytest.mark.parametrize("mode", ["cnn", "ridge"])
def test_zero_weight_cells_do_not_count(real, mode):
    """A (row, gene) cell of weight 0 changes nothing: its target can be anything, the fit is the same bytes."""
    p, y = np.asarray(real.obsm["c2lst_patch"]), np.asarray(real.obsm["c2lst_expr"])
    w = np.ones(y.shape)
    w[40:, 1] = 0.0  # the last 20 rows teach genes 0 and 2 only
    noisy = y.copy()
    noisy[40:, 1] = np.random.default_rng(0).normal(size=20) * 10
    kw = {"n_steps": 4, "batch_size": 16, "progress": False} if mode == "cnn" else {}
    a = ExpressionPredictor(GENES, mode=mode, alpha=1.0).fit(p, y, sample_weight=w, **kw)
    b = ExpressionPredictor(GENES, mode=mode, alpha=1.0).fit(p, noisy, sample_weight=w, **kw)
    np.testing.assert_array_equal(a.predict(p[:8]), b.predict(p[:8]))
    # while a row weight of 1 for those cells does see the noise
    c = ExpressionPredictor(GENES, mode=mode, alpha=1.0).fit(p, noisy, **kw)
    assert not np.array_equal(a.predict(p[:8])[:, 1], c.predict(p[:8])[:, 1])


def test_ridge_per_target_weights_equal_to_row_weights_when_columns_agree():
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=(30, 4)), rng.normal(size=(30, 3))
    w = rng.uniform(0.1, 1, 30)
    one, _ = fit_ridge_head(x, z, w, alpha=2.0)
    per, s2 = fit_ridge_head(x, z, np.repeat(w[:, None], 3, axis=1), alpha=2.0)
    for k in one:
        np.testing.assert_allclose(one[k], per[k], rtol=1e-5, atol=1e-6)
    assert s2["alpha_per_target"] == [2.0, 2.0, 2.0]
    # a target with its own column is fitted under its own weights: with a vanishing penalty (no dependence on
    # the feature scaling) it predicts as a fit of that target alone under those row weights
    w2 = np.repeat(w[:, None], 3, axis=1)
    w2[:10, 2] = 0.0
    per2, s3 = fit_ridge_head(x, z, w2, alpha=1e-9)
    alone, _ = fit_ridge_head(x, z[:, 2:], w2[:, 2], alpha=1e-9)
    pooled, _ = fit_ridge_head(x, z, w, alpha=1e-9)

    def predict(arrays, cols):
        xs = (x - arrays["feature_mean"]) / arrays["feature_std"]
        return xs @ arrays["coef"][:, cols].astype(float) + arrays["intercept"][cols]

    np.testing.assert_allclose(predict(per2, [2]), predict(alone, [0]), rtol=1e-4, atol=1e-4)
    assert not np.allclose(predict(per2, [2]), predict(pooled, [2]), atol=1e-3)
    np.testing.assert_allclose(predict(per2, [0, 1]), predict(pooled, [0, 1]), rtol=1e-4, atol=1e-4)
    assert len(s3["alpha_per_target"]) == 3


@pytest.mark.parametrize(
    "weights",
    [np.zeros((60, 3)), np.ones((60, 2)), np.ones((59, 3)), -np.ones((60, 3)), np.c_[np.ones((60, 2)), np.zeros(60)]],
)
def test_bad_per_gene_sample_weights(real, weights):
    p, y = np.asarray(real.obsm["c2lst_patch"]), np.asarray(real.obsm["c2lst_expr"])
    with pytest.raises(ValueError, match="sample_weight"):
        ExpressionPredictor(GENES, mode="ridge").fit(p, y, sample_weight=weights)


# --------------------------------------------------------------------------- fit_predictor
def test_auto_gene_keeps_the_genes_synthetic_rows_carry(real):
    syn = _half_right_children(real)
    before = snapshot(real), snapshot(syn)
    m = c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight="auto-gene", progress=False)
    assert (snapshot(real), snapshot(syn)) == before
    chosen = m.training["synthetic_weight_genes"]
    assert list(chosen) == GENES
    assert set(chosen.values()) <= set(_weights.AUTO_WEIGHTS)
    assert chosen["g_colour"] == 0.0  # its synthetic labels are noise
    assert chosen["g_nuclei"] > 0.0  # its synthetic pairs are new, correct information
    assert m.training["synthetic_weight"] == pytest.approx(np.mean(list(chosen.values())))
    assert set(m.training["synthetic_weight_cv"]) == {"0", "0.1", "0.3", "1"}
    # one weight for all genes (auto) cannot do both
    one = c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight="auto", progress=False)
    assert "synthetic_weight_genes" not in one.training
    # the chosen weights, passed back as a mapping, give the same fit
    again = c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight=chosen, progress=False)
    x = np.asarray(real.obsm["c2lst_patch"])
    np.testing.assert_array_equal(again.predict(x), m.predict(x))


def test_auto_gene_cnn_is_deterministic_and_round_trips(real, tmp_path):
    syn = _half_right_children(real)
    kw = {"mode": "cnn", "n_steps": 3, "synthetic_weight": "auto-gene", "cv_folds": 2, "seed": 4, "progress": False}
    a = c2lst.tl.fit_predictor([real, syn], **kw)
    b = c2lst.tl.fit_predictor([real, syn], **kw)
    x = np.asarray(real.obsm["c2lst_patch"])
    assert a.training["synthetic_weight_genes"] == b.training["synthetic_weight_genes"]
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    loaded = ExpressionPredictor.from_pretrained(a.save_pretrained(tmp_path / "p"))
    assert loaded.training["synthetic_weight_genes"] == a.training["synthetic_weight_genes"]
    np.testing.assert_array_equal(loaded.predict(x), a.predict(x))


def test_a_uniform_mapping_is_the_number(real):
    syn = _half_right_children(real)
    kw = {"mode": "cnn", "n_steps": 3, "seed": 1, "progress": False}
    a = c2lst.tl.fit_predictor([real, syn], synthetic_weight=dict.fromkeys(GENES, 0.3), **kw)
    b = c2lst.tl.fit_predictor([real, syn], synthetic_weight=0.3, **kw)
    x = np.asarray(real.obsm["c2lst_patch"])
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert a.training["synthetic_weight_genes"] == dict.fromkeys(GENES, 0.3)


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        ({"g_nuclei": 0.3, "g_colour": 0.3}, KeyError, "no weight for 1 gene"),
        ({**dict.fromkeys(GENES, 0.3), "g_other": 1.0}, ValueError, "do not predict"),
        ({**dict.fromkeys(GENES, 0.3), "g_noise": -1.0}, ValueError, "finite numbers >= 0"),
        ({**dict.fromkeys(GENES, 0.3), "g_noise": "high"}, ValueError, "finite numbers >= 0"),
        ("auto-genes", ValueError, "auto-gene"),
    ],
)
def test_bad_gene_weights(real, weight, error, match):
    syn = _half_right_children(real)
    before = snapshot(real), snapshot(syn)
    with pytest.raises(error, match=match):
        c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight=weight, progress=False)
    assert (snapshot(real), snapshot(syn)) == before


def test_zero_gene_weight_without_real_rows(real):
    syn = _half_right_children(real)
    with pytest.raises(ValueError, match="no row to learn from"):
        c2lst.tl.fit_predictor(syn, mode="ridge", synthetic_weight={**dict.fromkeys(GENES, 1.0), "g_noise": 0.0},
                               progress=False)
