"""Fair new information (issue 11, item 4): mixup and unpaired conditions, central-denoiser features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import tiny_budget
from anndata import AnnData

import c2lst
from c2lst.models import ExpressionPredictor
from c2lst.models.central import CentralModel
from c2lst.models.denoiser_features import CentralFeatureExtractor, central_features
from c2lst.pp._expression import apply_expression
from c2lst.tl._conditions import mixup_conditions


def _adapter(table: AnnData) -> tuple[list[str], dict]:
    import json

    rec = table.uns["c2lst"]["local"]["c2lst_local"]
    return [str(g) for g in np.asarray(rec["genes"]).tolist()], json.loads(str(rec["expr"]))


def _other_slide(seed: int = 1, n_spots: int = 30) -> AnnData:
    """Another simulated slide's raw counts, spots renamed so they cannot collide with the local slide's."""
    other = c2lst.datasets.simulated_visium(n_spots=n_spots, seed=seed).tables["table"].copy()
    other.obs_names = [f"other_{name}" for name in other.obs_names]
    return other


# --------------------------------------------------------------------------- mixup
def test_mixup_profiles_are_count_space_mixtures_of_two_parents(adapted_base):
    table = adapted_base
    genes, params = _adapter(table)
    conds = mixup_conditions(table, genes=genes, params=params, n_conditions=40, alpha=1.0, seed=3)
    assert conds.expr.shape == (40, len(genes)) and conds.source == "mixup"
    assert (conds.parents != conds.parents_b).all()
    assert ((conds.weights >= 0.5) & (conds.weights <= 1)).all() and conds.weights.std() > 0.05
    # independent recomputation: mix raw counts and library sizes, then normalise and log
    counts = table.X.toarray().astype(np.float64)
    pos = table.obs_names.get_indexer
    a, b, w = pos(conds.parents), pos(conds.parents_b), conds.weights[:, None]
    mixed = w * counts[a] + (1 - w) * counts[b]
    gi = table.var_names.get_indexer(genes)
    np.testing.assert_allclose(conds.counts, mixed[:, gi], rtol=1e-5)
    expected = np.log1p(mixed[:, gi] * float(params["target_sum"]) / mixed.sum(1, keepdims=True))
    np.testing.assert_allclose(conds.expr, expected, rtol=1e-4, atol=1e-5)
    # a mixture is not the mean of the parents' log profiles (count space, not log space)
    own = np.asarray(table.obsm["c2lst_expr"])
    assert not np.allclose(conds.expr, w * own[a] + (1 - w) * own[b], atol=1e-3)
    # deterministic from the seed
    again = mixup_conditions(table, genes=genes, params=params, n_conditions=40, seed=3)
    np.testing.assert_array_equal(again.expr, conds.expr)
    other = mixup_conditions(table, genes=genes, params=params, n_conditions=40, seed=4)
    assert not np.array_equal(other.parents, conds.parents)


def test_synthesize_mixup_records_both_parents(adapted_sdata, tiny_central):
    central, _ = tiny_central
    c2lst.tl.synthesize(adapted_sdata, central=central, conditions="mixup", n_conditions=5, n_per_condition=2,
                        n_steps=1, progress=False)
    syn = adapted_sdata.tables["c2lst_synthetic"]
    assert syn.n_obs == 10
    real = adapted_sdata.tables["table"].obs_names
    for col in ("c2lst_parent", "c2lst_parent_b"):
        assert syn.obs[col].isin(real).all()
    assert (syn.obs["c2lst_parent"] != syn.obs["c2lst_parent_b"]).all()
    assert syn.obs["c2lst_mix_weight"].between(0.5, 1.0).all()
    assert "mixup_alpha" in str(syn.uns["c2lst"]["lineage"])
    # the augmented table places a mixed row at its first parent's coordinates
    aug = c2lst.tl.concat_augmented(adapted_sdata)
    xy = pd.DataFrame(np.asarray(adapted_sdata.tables["table"].obsm["spatial"])[:, :2], index=real)
    rows = aug.obs["c2lst_synthetic"].to_numpy()
    np.testing.assert_allclose(aug.obsm["spatial"][rows],
                               xy.loc[aug.obs["c2lst_parent"][rows]].to_numpy())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"conditions": "mix"}, TypeError, "mixup"),
        ({"n_conditions": 3}, ValueError, "n_conditions"),
        ({"conditions": "mixup", "n_conditions": 0}, ValueError, "n_conditions"),
        ({"conditions": "mixup", "mixup_alpha": 0.0}, ValueError, "mixup_alpha"),
        ({"conditions": np.zeros((2, 20)), "n_conditions": 2}, ValueError, "n_conditions"),
    ],
)
def test_synthesize_mixup_bad_input_writes_nothing(adapted_sdata, tiny_central, kwargs, exc, match):
    central, _ = tiny_central
    before = set(adapted_sdata.tables)
    with pytest.raises(exc, match=match):
        c2lst.tl.synthesize(adapted_sdata, central=central, n_steps=1, progress=False, **kwargs)
    assert set(adapted_sdata.tables) == before


def test_mixup_needs_the_raw_counts(adapted_base):
    genes, params = _adapter(adapted_base)
    with pytest.raises(KeyError, match="layer 'counts'"):
        mixup_conditions(adapted_base, genes=genes, params={**params, "layer": "counts"})
    with pytest.raises(ValueError, match="at least 2"):
        mixup_conditions(adapted_base[:1].copy(), genes=genes, params=params)


# --------------------------------------------------------------------------- unpaired expression
def test_unpaired_conditions_from_another_slide(adapted_sdata, tiny_central):
    central, _ = tiny_central
    genes, params = _adapter(adapted_sdata.tables["table"])
    other = _other_slide()
    c2lst.tl.synthesize(adapted_sdata, central=central, conditions=other, n_steps=1, progress=False)
    syn = adapted_sdata.tables["c2lst_synthetic"]
    assert syn.n_obs == other.n_obs
    np.testing.assert_array_equal(syn.obs["c2lst_parent"], other.obs_names)
    # X: the other slide's raw counts of the adapter's genes; the model input: its own normalisation
    np.testing.assert_allclose(syn.X.toarray(), other[:, genes].X.toarray())
    np.testing.assert_allclose(syn.obsm["c2lst_expr"], apply_expression(other, genes=genes, params=params),
                               rtol=1e-6)
    # genes are matched by name, whatever their order
    shuffled = other[:, other.var_names[::-1]].copy()
    c2lst.tl.synthesize(adapted_sdata, central=central, conditions=shuffled, n_steps=1, progress=False,
                        key_added="shuffled")
    np.testing.assert_allclose(adapted_sdata.tables["shuffled"].obsm["c2lst_expr"], syn.obsm["c2lst_expr"],
                               rtol=1e-6)


def test_unpaired_conditions_missing_genes_or_layer_are_clear(adapted_sdata, tiny_central):
    central, _ = tiny_central
    genes, _ = _adapter(adapted_sdata.tables["table"])
    other = _other_slide()
    with pytest.raises(KeyError, match="matched by name"):
        c2lst.tl.synthesize(adapted_sdata, central=central, conditions=other[:, other.var_names.difference(genes[:2])],
                            n_steps=1, progress=False)
    table = adapted_sdata.tables["table"]
    rec = table.uns["c2lst"]["local"]["c2lst_local"]
    rec["expr"] = str(rec["expr"]).replace('"layer": "X"', '"layer": "counts"')
    with pytest.raises(KeyError, match="lacks layer 'counts'"):
        c2lst.tl.synthesize(adapted_sdata, central=central, conditions=other, n_steps=1, progress=False)
    assert "c2lst_synthetic" not in adapted_sdata.tables


# --------------------------------------------------------------------------- central features
def test_central_features_are_deterministic_batched_and_from_the_model(sim_sdata_base, tiny_central):
    central, _ = tiny_central
    patches = np.asarray(sim_sdata_base.tables["table"].obsm["c2lst_patch"])[:12]
    f = central_features(central, patches, batch_size=5)
    assert f.shape == (12, 2 * central.unet.config.block_out_channels[-1]) and f.dtype == np.float64
    np.testing.assert_allclose(f, central_features(central, patches, batch_size=12), rtol=1e-5, atol=1e-6)
    assert np.linalg.matrix_rank(f - f.mean(0)) > 3  # patches differ in the feature space
    both = central_features(central, patches, layers=("down", "mid"))
    assert both.shape[1] > f.shape[1]
    np.testing.assert_allclose(both[:, -f.shape[1]:], f, rtol=1e-5, atol=1e-6)
    assert not np.allclose(central_features(central, patches, t=500), f)
    assert not np.allclose(central_features(CentralModel.from_preset("tiny", seed=5), patches), f)
    for bad, match in (({"t": 1000}, "t="), ({"t": -1}, "t="), ({"layers": ("up",)}, "layers")):
        with pytest.raises(ValueError, match=match):
            central_features(central, patches, **bad)
    with pytest.raises(ValueError, match="multiples"):
        central_features(central, np.zeros((2, 30, 30, 3), np.uint8))


def test_fit_predictor_on_central_features_round_trips(sim_sdata_base, tiny_central, tmp_path):
    central, _ = tiny_central
    table = sim_sdata_base.tables["table"]
    was_training = central.training
    model = c2lst.tl.fit_predictor(table, mode="ridge", features="central", central=central, progress=False)
    assert model.feature_space == "central"
    assert central.training is was_training  # the frozen central model's mode is left alone
    assert model.training["n_features"] == 2 * central.unet.config.block_out_channels[-1]
    patches = np.asarray(table.obsm["c2lst_patch"])
    pred = model.predict(patches)
    model.save_pretrained(tmp_path / "pred")
    back = ExpressionPredictor.from_pretrained(tmp_path / "pred", backbone=CentralFeatureExtractor(central, t=50))
    np.testing.assert_allclose(back.predict(patches), pred, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="settings"):
        ExpressionPredictor.from_pretrained(tmp_path / "pred", backbone=CentralFeatureExtractor(central, t=10))
    with pytest.raises(ValueError, match="central-denoiser"):
        ExpressionPredictor.from_pretrained(tmp_path / "pred")
    # in-sample, ridge on central features fits better than the mean
    y = np.asarray(table.obsm["c2lst_expr"])
    assert ((pred - y) ** 2).mean() < ((y - y.mean(0)) ** 2).mean()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "ridge", "features": "central"}, "needs the central model"),
        ({"features": "central", "central": "x"}, "mode='ridge'"),
        ({"mode": "ridge", "features": "deep"}, "features="),
        ({"mode": "ridge", "central": "x"}, "features='central'"),
    ],
)
def test_fit_predictor_features_bad_input(sim_sdata_base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        c2lst.tl.fit_predictor(sim_sdata_base.tables["table"], progress=False, **kwargs)


# --------------------------------------------------------------------------- budget curve
def test_budget_curve_mixup_with_central_features_plans(sim_sdata, tiny_central):
    central, _ = tiny_central
    curve = tiny_budget(sim_sdata, central, conditions="mixup", n_per_condition=2,
                        adapt_kwargs={"n_steps": 1, "batch_size": 8}, synthesize_kwargs={"n_steps": 1},
                        predictor_kwargs={"mode": "ridge", "features": "central"})
    assert set(curve["conditions"]) == {"mixup"} and set(curve["features"]) == {"central"}
    aug = curve[curve["condition"] == "real+synthetic"]
    np.testing.assert_array_equal(aug["n_synthetic"], 2 * aug["n_real"])
    assert np.isfinite(curve["pearson_r"]).all()
    plan = c2lst.tl.plan_budget(curve, margin=0.02)
    assert plan["n_repeats"] == 3 and list(plan["gain"]["fraction"]) == [0.5]
    # runs with other conditions concatenate; plan_budget then asks which one
    both = pd.concat([curve, curve.assign(conditions="train")])
    with pytest.raises(ValueError, match="conditions="):
        c2lst.tl.plan_budget(both)
    assert c2lst.tl.plan_budget(both, conditions="train")["n_repeats"] == 3
    with pytest.raises(ValueError, match="features"):
        c2lst.tl.plan_budget(pd.concat([curve, curve.assign(features="cnn")]))


def test_budget_curve_unpaired_conditions(sim_sdata, tiny_central):
    central, _ = tiny_central
    other = _other_slide(n_spots=20)  # fewer spots than the synthetic rows asked for: drawn with replacement
    curve = c2lst.tl.budget_curve(
        sim_sdata, central=central, conditions=other, fractions=(0.5,), arms=("real", "real+synthetic"),
        n_repeats=1, n_per_condition=1, adapt_kwargs={"n_steps": 1, "batch_size": 8},
        synthesize_kwargs={"n_steps": 1}, predictor_kwargs={"mode": "ridge"}, progress=False,
    )
    assert set(curve["conditions"]) == {"unpaired"}
    aug = curve[curve["condition"] == "real+synthetic"]
    assert (aug["n_synthetic"] == aug["n_real"]).all() and (aug["n_real"] > other.n_obs).all()


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda t: "copy", ValueError, "conditions='copy'"),
        (lambda t: 3, TypeError, "conditions"),
        (lambda t: t.copy(), ValueError, "another slide"),  # the local slide's own sequenced spots
        (lambda t: _other_slide()[:, :50].copy(), KeyError, "shared genes"),
        (lambda t: _other_slide()[:0].copy(), ValueError, "empty"),
    ],
)
def test_budget_curve_conditions_bad_input(sim_sdata, tiny_central, make, exc, match):
    central, _ = tiny_central
    with pytest.raises(exc, match=match):
        c2lst.tl.budget_curve(sim_sdata, central=central, conditions=make(sim_sdata.tables["table"]),
                              progress=False)


def test_budget_curve_mixup_refuses_too_few_spots(sim_sdata, tiny_central):
    central, _ = tiny_central
    with pytest.raises(ValueError, match="at least 2 training spots"):
        c2lst.tl.budget_curve(sim_sdata, central=central, conditions="mixup", fractions=(0.01, 1.0),
                              progress=False)


def _other_section(n_spots: int = 40, size: int = 32) -> AnnData:
    """Another section of the local slide's tissue type (same gene panel), with patches, spots renamed."""
    sdata = c2lst.datasets.simulated_visium(n_spots=n_spots, seed=1, panel_seed=0)
    c2lst.pp.extract_patches(sdata, size=size, progress=False)
    other = sdata.tables["table"].copy()
    other.obs_names = [f"other_{name}" for name in other.obs_names]
    return other


def test_unpaired_copy_arm_is_the_perfect_generator_for_the_drawn_profiles(sim_sdata):
    from c2lst.tl._budget_arms import conditions_kwargs, unpaired_copy_arm, unpaired_rows

    table = sim_sdata.tables["table"]
    record = dict(table.uns["c2lst"]["expr"]["c2lst_expr"])
    other = _other_section()
    real = table[:10].copy()
    idx = unpaired_rows(other, 30, seed=7)
    copy = unpaired_copy_arm(other, idx, real, "c2lst_patch", "c2lst_expr", apply_expression)
    # the very profiles the synthetic arm of the same run is conditioned on
    cond = conditions_kwargs("unpaired", other, record, n_real=10, per_spot=3, seed=7)["conditions"]
    np.testing.assert_array_equal(copy.obs["c2lst_parent"], cond.obs_names)
    np.testing.assert_array_equal(copy.obsm["c2lst_patch"], other.obsm["c2lst_patch"][idx])
    genes = [str(g) for g in record["genes"]]
    expected = apply_expression(other[idx], genes=genes, params=record)
    np.testing.assert_allclose(copy.obsm["c2lst_expr"], expected, rtol=1e-6)
    assert copy.obs["c2lst_synthetic"].all()


def test_budget_curve_unpaired_copy_arm(sim_sdata, tiny_central):
    central, _ = tiny_central
    other = _other_section()
    curve = c2lst.tl.budget_curve(
        sim_sdata, central=central, conditions=other, fractions=(0.5,), arms=("real", "real+copy"),
        n_repeats=1, n_per_condition=2, predictor_kwargs={"mode": "ridge"}, progress=False,
    )
    copy = curve[curve["condition"] == "real+copy"]
    assert (copy["n_synthetic"] == 2 * copy["n_real"]).all() and set(copy["conditions"]) == {"unpaired"}


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: _other_slide(), KeyError, "extract_patches"),
        (lambda: _other_section(size=16), ValueError, "same `size`"),
    ],
)
def test_budget_curve_unpaired_copy_needs_matching_patches(sim_sdata, tiny_central, make, exc, match):
    central, _ = tiny_central
    table = sim_sdata.tables["table"]
    before = table.copy()
    with pytest.raises(exc, match=match):
        c2lst.tl.budget_curve(sim_sdata, central=central, conditions=make(), arms=("real", "real+copy"),
                              progress=False)
    assert set(table.obsm) == set(before.obsm) and set(table.uns) == set(before.uns)
