"""``synthetic_weight="auto"``: the loss weight of synthetic rows chosen by grouped validation on real spots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import make_table, tiny_budget
from _reliability_helpers import state as snapshot

import c2lst
from c2lst.tl import _weights


@pytest.fixture(scope="module")
def real():
    return make_table(60, seed=0)


def _children(real, patches, n_children: int = 2, parent_b: bool = False):
    """Synthetic rows with their parents' profiles and the given patches."""
    n = real.n_obs * n_children
    syn = make_table(n, seed=5)  # same genes; expression replaced by the parents'
    syn.obs_names = [f"syn_{i}" for i in range(n)]
    syn.obs["c2lst_synthetic"] = True
    parents = np.repeat(real.obs_names.to_numpy(), n_children)
    syn.obs["c2lst_parent"] = parents
    if parent_b:
        syn.obs["c2lst_parent_b"] = np.roll(parents, 7)
    syn.obsm["c2lst_expr"] = np.asarray(real.obsm["c2lst_expr"])[np.repeat(np.arange(real.n_obs), n_children)]
    syn.obsm["c2lst_patch"] = patches
    return syn


def test_auto_ignores_synthetic_rows_that_mislead(real):
    # children drawn as unrelated images: their labels are noise for the predictor
    wrong = make_table(2 * real.n_obs, seed=9).obsm["c2lst_patch"]
    syn = _children(real, wrong)
    before = snapshot(real), snapshot(syn)
    m = c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight="auto", cv_split="random", progress=False)
    assert (snapshot(real), snapshot(syn)) == before
    assert m.training["synthetic_weight"] == 0.0
    assert m.training["cv_split"] == "random"
    scores = m.training["synthetic_weight_cv"]
    assert set(scores) == {"0", "0.1", "0.3", "1"}
    assert scores["0"] > scores["1"]
    assert m.training["cv_folds"] == 3
    # the refit uses the chosen weight: the same as fitting with it directly
    fixed = c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight=0.0, progress=False)
    x = real.obsm["c2lst_patch"]
    np.testing.assert_allclose(m.predict(x), fixed.predict(x), rtol=1e-6)


def test_auto_keeps_synthetic_rows_that_teach(real):
    # children are their parents' own images under their parents' profiles: they cannot mislead
    syn = _children(real, np.asarray(real.obsm["c2lst_patch"])[np.repeat(np.arange(real.n_obs), 2)])
    m = c2lst.tl.fit_predictor([real, syn], mode="ridge", synthetic_weight=(0.0, 1.0), progress=False)
    scores = m.training["synthetic_weight_cv"]
    assert set(scores) == {"0", "1"}
    assert m.training["synthetic_weight"] == (1.0 if scores["1"] > scores["0"] else 0.0)


def test_auto_is_deterministic_and_a_cnn_works(real):
    wrong = make_table(2 * real.n_obs, seed=9).obsm["c2lst_patch"]
    syn = _children(real, wrong)
    kw = {"mode": "cnn", "n_steps": 3, "synthetic_weight": "auto", "cv_folds": 2, "seed": 4, "progress": False}
    a = c2lst.tl.fit_predictor([real, syn], **kw)
    b = c2lst.tl.fit_predictor([real, syn], **kw)
    assert a.training["synthetic_weight_cv"] == b.training["synthetic_weight_cv"]
    assert a.training["cv_folds"] == 2
    np.testing.assert_array_equal(a.predict(real.obsm["c2lst_patch"]), b.predict(real.obsm["c2lst_patch"]))


def test_validation_folds_never_train_on_a_held_out_spot(monkeypatch):
    """A fold leaves out its real spots and every synthetic row conditioned on them, first or second parent."""
    n_real, n_syn = 12, 24
    rng = np.random.default_rng(0)
    spots = np.array([f"spot_{i}" for i in range(n_real)])
    groups = np.r_[spots, rng.choice(spots, n_syn)]  # a synthetic row's group is its first parent
    groups_b = np.r_[spots, rng.choice(spots, n_syn)]  # and a mixture's second parent
    is_syn = np.r_[np.zeros(n_real, bool), np.ones(n_syn, bool)]
    x = np.zeros((n_real + n_syn, 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n_real + n_syn)  # row ids travel in the patches
    y = rng.normal(size=(n_real + n_syn, 2))
    trained: list[np.ndarray] = []

    class Constant:
        def predict(self, patches, device=None):
            return rng.normal(size=(len(patches), 2))

    def spy(x_fit, y_fit, syn_fit, groups_fit, weight, *args):
        trained.append(x_fit[:, 0, 0, 0].astype(int))
        return Constant()

    monkeypatch.setattr(_weights, "_fit_weighted", spy)
    fit_kw = {"seed": 0, "device": None}
    scores = _weights._cv_weights(x, y, is_syn, groups, groups_b, [0.0, 1.0], 3, None, fit_kw, False)
    assert set(scores) == {0.0, 1.0}
    assert len(trained) == 3 * 2
    held_per_fold = []
    for rows in trained:
        held = set(spots) - set(groups[rows[rows < n_real]])
        held_per_fold.append(frozenset(held))
        assert 0 < len(held) < n_real
        assert not any(groups[i] in held or groups_b[i] in held for i in rows)
        # and nothing else is left out: every row whose parents are both kept trains
        kept = [i for i in range(n_real + n_syn) if groups[i] not in held and groups_b[i] not in held]
        assert sorted(rows) == kept
    folds = set(held_per_fold)
    assert len(folds) == 3 and set().union(*folds) == set(spots)  # every real spot is validated once


def test_spatial_folds_hold_out_whole_blocks(monkeypatch):
    """With blocks, a fold holds out every real spot of its blocks (and their synthetic rows), never part of one."""
    n_real, n_syn = 16, 16
    spots = np.array([f"spot_{i}" for i in range(n_real)])
    groups = np.r_[spots, spots]
    is_syn = np.r_[np.zeros(n_real, bool), np.ones(n_syn, bool)]
    xy = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 100.0
    blocks = np.r_[_weights.spatial_blocks(xy, 2), np.full(n_syn, -1)]  # 2 x 2 tiles of 4 spots
    x = np.zeros((n_real + n_syn, 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n_real + n_syn)
    y = np.random.default_rng(0).normal(size=(n_real + n_syn, 2))
    trained = []

    class Zero:
        def predict(self, patches, device=None):
            return np.random.default_rng(len(patches)).normal(size=(len(patches), 2))

    def spy(x_fit, *args):
        trained.append(set(x_fit[:, 0, 0, 0].astype(int)))
        return Zero()

    monkeypatch.setattr(_weights, "_fit_weighted", spy)
    _weights._cv_weights(x, y, is_syn, groups, groups, [0.0], 2, None, {"seed": 0, "device": None}, False,
                         blocks=blocks)
    for rows in trained:
        held = set(range(n_real)) - rows
        tiles = {int(blocks[i]) for i in held}
        assert held == {i for i in range(n_real) if blocks[i] in tiles}  # whole tiles only
        assert not any(i + n_real in rows for i in held)  # and their children
    assert set().union(*(set(range(n_real)) - r for r in trained)) == set(range(n_real))


def test_cv_split_default_and_errors(real):
    syn = _children(real, make_table(2 * real.n_obs, seed=9).obsm["c2lst_patch"])
    kw = {"mode": "ridge", "synthetic_weight": "auto", "progress": False}
    assert c2lst.tl.fit_predictor([real, syn], **kw).training["cv_split"] == "spatial"  # coordinates: blocks
    flat = real.copy()
    del flat.obsm["spatial"]
    assert c2lst.tl.fit_predictor([flat, syn], **kw).training["cv_split"] == "random"
    with pytest.raises(KeyError, match="obsm\\['spatial'\\]"):
        c2lst.tl.fit_predictor([flat, syn], cv_split="spatial", **kw)
    with pytest.raises(ValueError, match="cv_split='blocks'"):
        c2lst.tl.fit_predictor([real, syn], cv_split="blocks", **kw)
    one_place = real.copy()
    one_place.obsm["spatial"] = np.zeros((real.n_obs, 2))
    with pytest.raises(ValueError, match="fewer occupied blocks"):
        c2lst.tl.fit_predictor([one_place, syn], cv_split="spatial", **kw)
    assert c2lst.tl.fit_predictor([one_place, syn], **kw).training["cv_split"] == "random"


def test_no_synthetic_rows_needs_no_choice(real):
    m = c2lst.tl.fit_predictor(real, mode="ridge", synthetic_weight="auto", progress=False)
    assert m.training["synthetic_weight"] == 1.0
    assert "synthetic_weight_cv" not in m.training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"synthetic_weight": "best"}, "synthetic_weight"),
        ({"synthetic_weight": (0.3, 0.3)}, "synthetic_weight"),
        ({"synthetic_weight": (0.3, -1.0)}, "synthetic_weight"),
        ({"synthetic_weight": ()}, "synthetic_weight"),
        ({"synthetic_weight": "auto", "cv_folds": 1}, "cv_folds"),
        ({"synthetic_weight": "auto", "cv_folds": 0}, "cv_folds"),
    ],
)
def test_bad_weight_choice(real, kwargs, match):
    syn = _children(real, make_table(2 * real.n_obs, seed=9).obsm["c2lst_patch"])
    with pytest.raises(ValueError, match=match):
        c2lst.tl.fit_predictor([real, syn], mode="ridge", progress=False, **kwargs)


def test_too_few_real_spots_for_the_folds(real):
    few = real[:2].copy()
    syn = _children(few, make_table(4, seed=9).obsm["c2lst_patch"])
    with pytest.raises(ValueError, match="at least 3 real spots"):
        c2lst.tl.fit_predictor([few, syn], mode="ridge", synthetic_weight="auto", progress=False)


def test_budget_curve_and_plan_with_auto(sim_sdata, tiny_central):
    central, _ = tiny_central
    curve = tiny_budget(sim_sdata, central, synthetic_weight=(0.3, "auto", "auto-gene"))
    aug = curve[curve["condition"] == "real+synthetic"]
    labels = aug["synthetic_weight"].astype(str)
    assert sorted(labels.unique()) == ["0.3", "auto", "auto-gene"]
    auto = aug[labels == "auto"]
    assert set(auto["chosen_weight"]) <= set(_weights.AUTO_WEIGHTS)
    np.testing.assert_array_equal(aug.loc[labels == "0.3", "chosen_weight"], 0.3)
    assert curve.loc[curve["condition"] == "real", "chosen_weight"].isna().all()
    # one weight per gene: the mean in chosen_weight, and the mean per gene kind of the simulated slide
    per_gene = aug[labels == "auto-gene"]
    assert len(per_gene) == 3 and per_gene["chosen_weight"].between(0, 1).all()
    kinds = [c for c in curve.columns if c.startswith("chosen_weight_")]
    assert kinds and per_gene[kinds].notna().all().all()
    assert aug.loc[labels != "auto-gene", kinds].isna().all().all()
    for w in ("auto", "auto-gene"):
        plan = c2lst.tl.plan_budget(curve, synthetic_weight=w)
        assert list(plan["gain"]["fraction"]) == [0.5]
    assert c2lst.tl.plan_budget(curve, synthetic_weight=0.3)["n_repeats"] == 3
    with pytest.raises(ValueError, match="synthetic weights"):
        c2lst.tl.plan_budget(curve)
    with pytest.raises(ValueError, match="not in `curve`"):
        c2lst.tl.plan_budget(curve, synthetic_weight=0.7)
    for bad in (("auto", "auto"), "per-gene"):
        with pytest.raises(ValueError, match=r"synthetic_weight.*auto-gene"):
            c2lst.tl.budget_curve(sim_sdata, central=central, synthetic_weight=bad, progress=False)


def test_plan_budget_reads_a_saved_curve_with_auto():
    """A curve written to CSV and read back keeps 'auto' and the numbers apart."""
    rows = [
        {"fraction": f, "repeat": r, "condition": c, "synthetic_weight": w, "pearson_r": 0.5 + 0.01 * r}
        for r in range(3)
        for f, c, w in ((1.0, "real", np.nan), (0.5, "real+synthetic", 0.3), (0.5, "real+synthetic", "auto"))
    ]
    curve = pd.read_csv(pd.io.common.StringIO(pd.DataFrame(rows).to_csv(index=False)))
    assert c2lst.tl.plan_budget(curve, synthetic_weight="auto")["n_repeats"] == 3
    assert c2lst.tl.plan_budget(curve, synthetic_weight=0.3)["n_repeats"] == 3
