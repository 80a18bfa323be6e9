"""``tl.evaluate_conditioning``: a predictor trained on other real spots reads the genes back from synthetic patches."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _reliability_helpers import state as snapshot

import c2lst


def _children(parents, patches=None, n_children: int = 2):
    """A synthetic table: ``n_children`` rows per parent with its profile and ``patches`` (default: its own)."""
    with warnings.catch_warnings():  # the repeated parents' names are replaced at once
        warnings.simplefilter("ignore", UserWarning)
        syn = parents[np.repeat(np.arange(parents.n_obs), n_children)].copy()
    syn.obs_names = [f"syn_{i}" for i in range(syn.n_obs)]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = np.repeat(parents.obs_names.to_numpy(), n_children)
    if patches is not None:
        syn.obsm["c2lst_patch"] = patches
    return syn


def test_perfect_generator_reaches_the_ceiling(halves):
    parents, reader = halves
    syn = _children(parents)  # each child is its parent's own patch: a perfect generator
    before = snapshot(syn), snapshot(parents)
    df = c2lst.tl.evaluate_conditioning(parents, syn, predictor=reader, progress=False)
    assert (snapshot(syn), snapshot(parents)) == before
    assert list(df.index) == list(reader.genes)
    assert list(df.columns) == ["synthetic_r", "real_r", "shuffled_r", "recovery"]
    np.testing.assert_allclose(df["synthetic_r"], df["real_r"], atol=1e-5)
    assert df.attrs["mean_real_r"] > 0.3  # the reader sees the image-visible genes
    assert abs(df.attrs["recovery"] - 1.0) < 1e-4
    assert abs(df.attrs["mean_shuffled_r"]) < 0.1
    assert df.attrs["n_synthetic"] == 2 * parents.n_obs
    assert df.attrs["n_parents"] == parents.n_obs


def test_generator_that_ignores_the_condition_sits_at_the_null(halves):
    parents, reader = halves
    rng = np.random.default_rng(0)
    real_p = np.asarray(parents.obsm["c2lst_patch"])
    null = real_p[rng.integers(0, parents.n_obs, size=2 * parents.n_obs)]  # patches of random spots
    df = c2lst.tl.evaluate_conditioning(parents, _children(parents, null), predictor=reader, progress=False)
    assert abs(df.attrs["mean_synthetic_r"]) < 0.15
    assert df.attrs["mean_real_r"] - df.attrs["mean_synthetic_r"] > 0.2
    assert df.attrs["recovery"] < 0.4


def test_same_seed_same_null_and_saved_reader(halves, tmp_path):
    parents, reader = halves
    syn = _children(parents)
    a = c2lst.tl.evaluate_conditioning(parents, syn, predictor=reader, seed=3, progress=False)
    b = c2lst.tl.evaluate_conditioning(parents, syn, predictor=reader, seed=3, progress=False)
    np.testing.assert_array_equal(a["shuffled_r"], b["shuffled_r"])
    path = reader.save_pretrained(tmp_path / "reader")
    c = c2lst.tl.evaluate_conditioning(parents, syn, predictor=path, seed=3, progress=False)
    np.testing.assert_allclose(c["synthetic_r"], a["synthetic_r"], atol=1e-6)


def test_augmented_table_as_real_side(halves):
    """An augmented table (real + synthetic rows) as ``real``: only its real rows are the parents."""
    import anndata as ad

    parents, reader = halves
    syn = _children(parents)
    both = ad.concat([parents, syn], merge="same", uns_merge="first")
    both.obs["c2lst_synthetic"] = np.r_[np.zeros(parents.n_obs, bool), np.ones(syn.n_obs, bool)]
    df = c2lst.tl.evaluate_conditioning(both, syn, predictor=reader, progress=False)
    assert df.attrs["n_parents"] == parents.n_obs


def test_bad_input(halves):
    parents, reader = halves
    syn = _children(parents)
    before = snapshot(syn), snapshot(parents)
    with pytest.raises(TypeError, match="`real` must be an AnnData"):
        c2lst.tl.evaluate_conditioning(parents.obsm["c2lst_patch"], syn, predictor=reader)
    with pytest.raises(TypeError, match="`predictor`"):
        c2lst.tl.evaluate_conditioning(parents, syn, predictor=42)
    with pytest.raises(ValueError, match="not fitted"):
        c2lst.tl.evaluate_conditioning(
            parents, syn, predictor=c2lst.models.ExpressionPredictor(reader.genes, mode="ridge")
        )
    with pytest.raises(KeyError, match="parent_key"):
        c2lst.tl.evaluate_conditioning(parents, syn, predictor=reader, parent_key="origin")
    with pytest.raises(KeyError, match="expr_key"):
        c2lst.tl.evaluate_conditioning(parents, syn, predictor=reader, expr_key="nope")
    with pytest.raises(ValueError, match="n_shuffles"):
        c2lst.tl.evaluate_conditioning(parents, syn, predictor=reader, n_shuffles=0)
    few = _children(parents[:2].copy())
    with pytest.raises(ValueError, match="at least 3"):
        c2lst.tl.evaluate_conditioning(parents, few, predictor=reader)
    strangers = syn.copy()
    strangers.obs["c2lst_parent"] = [f"elsewhere_{i}" for i in range(strangers.n_obs)]
    with pytest.raises(ValueError, match="no `synthetic"):
        c2lst.tl.evaluate_conditioning(parents, strangers, predictor=reader)
    small = syn.copy()
    small.obsm["c2lst_patch"] = np.asarray(syn.obsm["c2lst_patch"])[:, :16, :16].copy()
    with pytest.raises(ValueError, match="px"):
        c2lst.tl.evaluate_conditioning(parents, small, predictor=reader)
    other = syn.copy()
    other.obsm["c2lst_expr"] = np.asarray(other.obsm["c2lst_expr"]) * np.nan
    with pytest.raises(ValueError, match="NaN"):
        c2lst.tl.evaluate_conditioning(parents, other, predictor=reader)
    assert (snapshot(syn), snapshot(parents)) == before
