"""``tl.select_synthetic``: best-of-k synthesis keeps the candidates a reader finds closest to their profile."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _eval_helpers import tiny_budget
from _reliability_helpers import state as snapshot

import c2lst
from c2lst.tl._select import reading_score


def _candidates(parents, seed=0):
    """Two candidates per profile, in a random order: the parent's own patch, and a random other spot's patch."""
    rng = np.random.default_rng(seed)
    n = parents.n_obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        syn = parents[np.repeat(np.arange(n), 2)].copy()
    own_first = rng.random(n) < 0.5
    own = np.where(np.repeat(own_first, 2), np.tile([True, False], n), np.tile([False, True], n))
    patches = np.asarray(parents.obsm["c2lst_patch"]).copy()
    others = (np.arange(n) + rng.integers(1, n, n)) % n  # another spot, never the parent itself
    syn.obsm["c2lst_patch"] = np.where(own[:, None, None, None], patches[np.repeat(np.arange(n), 2)],
                                       patches[np.repeat(others, 2)])
    syn.obs_names = [f"syn_{i}" for i in range(syn.n_obs)]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = np.repeat(parents.obs_names.to_numpy(), 2)
    syn.obs["c2lst_run_id"] = "run0"
    syn.obs["c2lst_condition"] = np.repeat(np.arange(n), 2)
    return syn, own


def test_selection_keeps_the_candidate_that_carries_its_profile(halves):
    parents, reader = halves
    syn, own = _candidates(parents)
    before = snapshot(syn)
    best = c2lst.tl.select_synthetic(syn, predictor=reader, progress=False)
    assert snapshot(syn) == before  # the input is not modified
    assert best.n_obs == parents.n_obs
    assert list(best.obs["c2lst_condition"]) == list(range(parents.n_obs))  # one per profile, original order
    kept_own = own[syn.obs_names.get_indexer(best.obs_names)]
    assert kept_own.mean() > 0.75  # mostly the real patch of the profile, not another spot's
    score = reading_score(reader.predict(np.asarray(syn.obsm["c2lst_patch"])).astype(float),
                          np.asarray(syn.obsm["c2lst_expr"], float)[:, _gene_index(syn, reader)],
                          *reader.target_scale)
    pairs = score.reshape(-1, 2)
    np.testing.assert_allclose(best.obs["c2lst_selection_score"], pairs.max(axis=1), rtol=1e-5)
    rec = c2lst.get.lineage(best).iloc[-1]
    assert rec["function"] == "c2lst.tl.select_synthetic"
    assert rec["parameters"]["n_keep"] == 1 and rec["parameters"]["n_candidates"] == syn.n_obs


def _gene_index(table, reader):
    genes = list(map(str, table.uns["c2lst"]["expr"]["c2lst_expr"]["genes"]))
    return [genes.index(g) for g in reader.genes]


def test_reading_score_is_a_per_row_correlation_on_the_reader_scale():
    mean, std = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 0.5])
    cond = np.tile([2.0, 6.0, 3.5], (4, 1))  # z = (1, 2, 1)
    pred = np.array([[2.0, 6.0, 3.5], [0.0, -2.0, 2.5], [3.0, 10.0, 4.0], [1.0, 2.0, 3.0]])  # z: same, opposite,
    # twice as far (a correlation: the same score), flat (all at the mean: no reading)
    score = reading_score(pred, cond, mean, std)
    np.testing.assert_allclose(score[:3], [1.0, -1.0, 1.0])
    assert np.isnan(score[3])


def test_ties_and_flat_readings_keep_the_row_order(halves):
    parents, reader = halves
    syn, _ = _candidates(parents)
    syn.obsm["c2lst_patch"][1::2] = syn.obsm["c2lst_patch"][0::2]  # both candidates identical: a tie
    best = c2lst.tl.select_synthetic(syn, predictor=reader, progress=False)
    assert list(best.obs_names) == list(syn.obs_names[0::2])


def test_synthesized_candidates_are_selected_per_profile(adapted_base):
    table = adapted_base[:12].copy()
    syn = c2lst.tl.synthesize(table, n_per_condition=3, n_steps=2, progress=False)
    assert list(syn.obs["c2lst_condition"]) == list(np.repeat(np.arange(12), 3))
    reader = c2lst.tl.fit_predictor(table, mode="ridge", progress=False)
    best = c2lst.tl.select_synthetic(syn, predictor=reader, n_keep=2, progress=False)
    assert best.n_obs == 24
    assert (best.obs.groupby("c2lst_condition").size() == 2).all()
    assert list(c2lst.get.lineage(best)["function"])[-2:] == ["c2lst.tl.synthesize", "c2lst.tl.select_synthetic"]
    np.testing.assert_array_equal(best.obsm["c2lst_patch"], syn.obsm["c2lst_patch"][syn.obs_names.isin(best.obs_names)])


def test_bad_input_is_refused_before_any_prediction(halves):
    parents, reader = halves
    syn, _ = _candidates(parents)
    with pytest.raises(TypeError, match="`synthetic` must be the AnnData"):
        c2lst.tl.select_synthetic(np.zeros(3), predictor=reader)
    with pytest.raises(ValueError, match="`n_keep=2` keeps every candidate"):
        c2lst.tl.select_synthetic(syn, predictor=reader, n_keep=2)
    with pytest.raises(ValueError, match="n_keep"):
        c2lst.tl.select_synthetic(syn, predictor=reader, n_keep=0)
    with pytest.raises(TypeError, match="predictor"):
        c2lst.tl.select_synthetic(syn, predictor=3)
    with pytest.raises(ValueError, match="not fitted"):
        c2lst.tl.select_synthetic(syn, predictor=c2lst.models.ExpressionPredictor(genes=list(reader.genes)))
    no_group = syn.copy()
    del no_group.obs["c2lst_condition"]
    with pytest.raises(KeyError, match="c2lst_condition"):
        c2lst.tl.select_synthetic(no_group, predictor=reader)
    mixed = syn.copy()
    mixed.obs["c2lst_synthetic"] = np.arange(mixed.n_obs) > 0
    with pytest.raises(ValueError, match="1 real rows"):
        c2lst.tl.select_synthetic(mixed, predictor=reader)
    small = syn.copy()
    small.obsm["c2lst_patch"] = np.asarray(syn.obsm["c2lst_patch"])[:, :16, :16]
    with pytest.raises(ValueError, match="16 px"):
        c2lst.tl.select_synthetic(small, predictor=reader)
    with pytest.raises(KeyError, match="expr_key='nope'"):
        c2lst.tl.select_synthetic(syn, predictor=reader, expr_key="nope")


@pytest.mark.slow
def test_budget_curve_takes_best_of_k_synthetic_rows(sim_sdata, tiny_central):
    central, _ = tiny_central
    kw = {"n_repeats": 1, "n_per_condition": 2}
    plain = tiny_budget(sim_sdata, central, **kw)
    best = tiny_budget(sim_sdata, central, n_candidates=3, **kw)
    syn = lambda df: df[df["condition"] == "real+synthetic"]  # noqa: E731
    assert list(syn(best)["n_synthetic"]) == list(syn(plain)["n_synthetic"])  # as many rows, chosen among 3x
    real = lambda df: df[df["condition"] == "real"].reset_index(drop=True)  # noqa: E731
    np.testing.assert_array_equal(real(best)["pearson_r"], real(plain)["pearson_r"])  # the real arm is paired
    assert not np.allclose(syn(best)["pearson_r"], syn(plain)["pearson_r"])
    with pytest.raises(ValueError, match="n_candidates"):
        tiny_budget(sim_sdata, central, n_candidates=0)
