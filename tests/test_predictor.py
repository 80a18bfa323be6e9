"""``models.predictor.ExpressionPredictor`` and ``tl.fit_predictor`` / ``predict_expression`` / ``evaluate_prediction``."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import disc_patches, make_table
from _reliability_helpers import state as snapshot
from scipy import stats
from sklearn.neighbors import NearestNeighbors

import c2lst
from c2lst.models.predictor import ExpressionPredictor
from c2lst.models.ridge import ridge_alpha
from c2lst.models.train import dihedral_transform
from c2lst.tl._evaluate_prediction import morans_i

GENES = ["g_nuclei", "g_colour", "g_noise"]


def _r(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def _r2(pred, truth):
    return float(1.0 - ((pred - truth) ** 2).mean() / truth.var())


class MeanColour(torch.nn.Module):
    """A frozen 'backbone': per-channel means and a fixed random conv's pooled responses."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 5, padding=2)
        torch.nn.init.constant_(self.conv.weight, 0.05)
        torch.nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), torch.relu(self.conv(x)).mean(dim=(2, 3))], dim=1)


@pytest.fixture(scope="module")
def data():
    train = make_table(160, seed=0)
    test = make_table(60, seed=1)
    return train, test


# --------------------------------------------------------------------------- engine
def test_cnn_learns_relation_better_than_shuffled_labels(data):
    train, test = data
    x, y = train.obsm["c2lst_patch"], train.obsm["c2lst_expr"]
    model = ExpressionPredictor(GENES).fit(x, y, n_epochs=8, progress=False)
    pred = model.predict(test.obsm["c2lst_patch"])
    shuffled = y[np.random.default_rng(0).permutation(len(y))]
    control = ExpressionPredictor(GENES).fit(x, shuffled, n_epochs=8, progress=False)
    pred_c = control.predict(test.obsm["c2lst_patch"])
    truth = test.obsm["c2lst_expr"]
    assert _r(pred[:, 0], truth[:, 0]) > 0.8
    assert _r(pred[:, 1], truth[:, 1]) > 0.7
    # shuffled labels: nothing to learn, so held-out R² stays at or below the mean predictor's 0
    assert _r2(pred[:, 0], truth[:, 0]) > 0.6
    assert _r2(pred_c[:, 0], truth[:, 0]) < 0.1
    assert model.n_parameters < 300_000
    assert model.training["loss_history"][-1] < model.training["loss_history"][0]


def test_cnn_is_deterministic_per_seed(data):
    train, _ = data
    x, y = train.obsm["c2lst_patch"][:64], train.obsm["c2lst_expr"][:64]
    a = ExpressionPredictor(GENES).fit(x, y, n_epochs=2, seed=3, progress=False).predict(x)
    b = ExpressionPredictor(GENES).fit(x, y, n_epochs=2, seed=3, progress=False).predict(x)
    c = ExpressionPredictor(GENES).fit(x, y, n_epochs=2, seed=4, progress=False).predict(x)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert a.dtype == np.float32


def test_cnn_save_load_round_trip(data, tmp_path):
    train, test = data
    x, y = train.obsm["c2lst_patch"][:64], train.obsm["c2lst_expr"][:64]
    model = ExpressionPredictor(GENES, widths=(8, 16)).fit(x, y, n_epochs=2, progress=False)
    path = model.save_pretrained(tmp_path / "pred")
    assert sorted(p.name for p in path.iterdir()) == ["predictor.safetensors", "predictor_config.json"]
    cfg = json.loads((path / "predictor_config.json").read_text())
    assert cfg["genes"] == GENES
    assert cfg["mode"] == "cnn"
    assert cfg["widths"] == [8, 16]
    loaded = ExpressionPredictor.from_pretrained(path)
    p = test.obsm["c2lst_patch"]
    assert model.predict(p).tobytes() == loaded.predict(p).tobytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(path)
    model.save_pretrained(path, overwrite=True)


def test_dihedral_covers_the_eight_symmetries():
    x = torch.arange(9.0).reshape(1, 1, 3, 3).repeat(8, 1, 1, 1)
    out = dihedral_transform(x, torch.arange(8))
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert torch.equal(out[0], x[0])


def test_ridge_morphometric_learns_nuclei_and_round_trips(data, tmp_path):
    train, test = data
    model = ExpressionPredictor(GENES, mode="ridge").fit(train.obsm["c2lst_patch"], train.obsm["c2lst_expr"])
    pred = model.predict(test.obsm["c2lst_patch"])
    assert _r(pred[:, 0], test.obsm["c2lst_expr"][:, 0]) > 0.9
    assert model.feature_space == "morphometric"
    assert model.training["alpha"] > 0
    loaded = ExpressionPredictor.from_pretrained(model.save_pretrained(tmp_path / "ridge"))
    assert loaded.predict(test.obsm["c2lst_patch"]).tobytes() == pred.tobytes()


def test_ridge_with_custom_backbone(data, tmp_path):
    train, test = data
    backbone = MeanColour()
    model = ExpressionPredictor(GENES, mode="ridge", backbone=backbone)
    model.fit(train.obsm["c2lst_patch"], train.obsm["c2lst_expr"])
    pred = model.predict(test.obsm["c2lst_patch"])
    assert model.feature_space == "backbone"
    assert model.training["n_features"] == 7
    assert _r(pred[:, 1], test.obsm["c2lst_expr"][:, 1]) > 0.8
    path = model.save_pretrained(tmp_path / "bb")
    with pytest.raises(ValueError, match="backbone"):
        ExpressionPredictor.from_pretrained(path)
    assert ExpressionPredictor.from_pretrained(path, backbone=MeanColour()).predict(
        test.obsm["c2lst_patch"]
    ).tobytes() == (pred.tobytes())
    other = MeanColour()
    torch.nn.init.constant_(other.conv.weight, 0.1)
    with pytest.raises(ValueError, match="sha256"):
        ExpressionPredictor.from_pretrained(path, backbone=other)


def test_cnn_mode_fine_tunes_a_backbone(data, tmp_path):
    train, _test = data
    x, y = train.obsm["c2lst_patch"][:64], train.obsm["c2lst_expr"][:64]
    model = ExpressionPredictor(GENES, backbone=MeanColour()).fit(x, y, n_epochs=2, progress=False)
    path = model.save_pretrained(tmp_path / "ft")
    loaded = ExpressionPredictor.from_pretrained(path, backbone=MeanColour())
    assert loaded.predict(x).tobytes() == model.predict(x).tobytes()


def test_ridge_alpha_matches_brute_force_leave_one_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 4))
    z = x @ rng.normal(size=(4, 2)) + rng.normal(0, 0.5, (25, 2))
    _alpha, err = ridge_alpha(x, z, alphas=[3.0])
    loo = []
    for i in range(25):
        keep = np.arange(25) != i
        xm, zm = x[keep].mean(0), z[keep].mean(0)
        a = x[keep] - xm
        coef = np.linalg.solve(a.T @ a + 3.0 * np.eye(4), a.T @ (z[keep] - zm))
        loo.append(((x[i] - xm) @ coef + zm - z[i]) ** 2)
    # the closed form centres on all rows; brute force on the n-1 rows: equal up to the intercept's O(1/n) term
    assert err == pytest.approx(float(np.mean(loo)), rel=0.1)


def test_engine_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        ExpressionPredictor(GENES, mode="forest")
    with pytest.raises(ValueError, match="unique"):
        ExpressionPredictor(["a", "a"])
    model = ExpressionPredictor(GENES)
    patches, _ = disc_patches(4)
    with pytest.raises(ValueError, match="shape"):
        model.fit(patches, np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        model.fit(patches.astype(np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(patches)
    bad = np.zeros((4, 3), np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(patches, bad)
    with pytest.raises(ValueError, match="is not a device"):
        model.fit(patches, np.ones((4, 3), np.float32), device="banana")
    fitted = ExpressionPredictor(GENES, mode="ridge").fit(patches, np.ones((4, 3), np.float32))
    big, _ = disc_patches(2, size=48)
    with pytest.raises(ValueError, match="size=32"):
        fitted.predict(big)


def _synthetic_copy(train, n: int = 40):
    """The first ``n`` real rows relabelled as synthetic children of themselves."""
    syn = train[:n].copy()
    syn.obs_names = [f"syn_{i}" for i in range(n)]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = list(train.obs_names[:n])
    return syn


# --------------------------------------------------------------------------- skin
def test_fit_predictor_aligns_genes_and_filters_synthetic(data):
    train, _ = data
    syn = _synthetic_copy(train)
    # same genes, other order
    order = [2, 0, 1]
    syn.obsm["c2lst_expr"] = syn.obsm["c2lst_expr"][:, order]
    syn.uns["c2lst"]["expr"]["c2lst_expr"]["genes"] = np.asarray(GENES, dtype=object)[order]
    before = snapshot(syn)
    m = c2lst.tl.fit_predictor([train, syn], mode="ridge", synthetic_weight=1.0, progress=False)
    assert m.genes == GENES
    assert (m.training["n_real"], m.training["n_synthetic"]) == (160, 40)
    # reordered synthetic rows equal their real parents, so the fit equals a fit on the duplicated real rows
    # (at the same penalty: the penalty itself is chosen by parent-grouped CV on the real rows)
    dup = ExpressionPredictor(GENES, mode="ridge", alpha=m.training["alpha"]).fit(
        np.concatenate([train.obsm["c2lst_patch"], train.obsm["c2lst_patch"][:40]]),
        np.concatenate([train.obsm["c2lst_expr"], train.obsm["c2lst_expr"][:40]]),
    )
    p = train.obsm["c2lst_patch"][:8]
    np.testing.assert_allclose(m.predict(p), dup.predict(p), rtol=1e-5, atol=1e-5)
    m_real = c2lst.tl.fit_predictor([train, syn], mode="ridge", include_synthetic=False, progress=False)
    assert (m_real.training["n_real"], m_real.training["n_synthetic"]) == (160, 0)
    assert snapshot(syn) == before
    with pytest.raises(ValueError, match="at least 2"):
        c2lst.tl.fit_predictor(syn, include_synthetic=False, progress=False)


def test_fit_predictor_rejects_tables_with_other_genes(data):
    train, _ = data
    other = make_table(20, genes=("g_nuclei", "g_colour", "Xist"))
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"Xist.*|.*g_noise"):
        c2lst.tl.fit_predictor([train, other], progress=False)
    assert snapshot(other) == before


@pytest.mark.parametrize(
    ("drop", "step"),
    [("c2lst_patch", "c2lst.pp.extract_patches"), ("c2lst_expr", "c2lst.pp.prepare_expression")],
)
def test_missing_inputs_name_the_step_to_run(drop, step):
    table = make_table(10)
    del table.obsm[drop]
    before = snapshot(table)
    with pytest.raises(KeyError, match=step.replace(".", r"\.")):
        c2lst.tl.fit_predictor(table, progress=False)
    assert snapshot(table) == before


def test_fit_predictor_argument_checks(data):
    train, _ = data
    with pytest.raises(TypeError, match="tables"):
        c2lst.tl.fit_predictor([], progress=False)
    with pytest.raises(TypeError, match="tables"):
        c2lst.tl.fit_predictor(train.obsm["c2lst_patch"], progress=False)
    with pytest.raises(ValueError, match="n_epochs"):
        c2lst.tl.fit_predictor(train, n_epochs=0, progress=False)
    with pytest.raises(ValueError, match="lr"):
        c2lst.tl.fit_predictor(train, lr=-1.0, progress=False)


@pytest.fixture(scope="module")
def ridge_model(data):
    train, _ = data
    return c2lst.tl.fit_predictor(train, mode="ridge", progress=False)


def test_predict_expression_writes_obsm_uns_and_lineage(data, ridge_model, tmp_path):
    _, test = data
    table = test.copy()
    out = c2lst.tl.predict_expression(table, predictor=ridge_model, copy=True)
    assert "c2lst_pred" not in table.obsm
    np.testing.assert_array_equal(out.obsm["c2lst_pred"], ridge_model.predict(table.obsm["c2lst_patch"]))
    rec = out.uns["c2lst"]["pred"]["c2lst_pred"]
    assert list(rec["genes"]) == GENES
    assert rec["mode"] == "ridge"
    assert rec["run_id"] in out.uns["c2lst"]["lineage"]
    # from a saved directory, with another key
    path = ridge_model.save_pretrained(tmp_path / "m")
    assert c2lst.tl.predict_expression(table, predictor=str(path), key_added="c2lst_pred2") is None
    np.testing.assert_array_equal(table.obsm["c2lst_pred2"], out.obsm["c2lst_pred"])


def test_predict_expression_rejects_other_genes(ridge_model):
    table = make_table(10, genes=("g_nuclei", "Gfap", "g_noise"))
    before = snapshot(table)
    with pytest.raises(ValueError, match="Gfap") as err:
        c2lst.tl.predict_expression(table, predictor=ridge_model)
    assert "prepare_expression" in str(err.value)
    assert snapshot(table) == before
    del table.obsm["c2lst_patch"]
    with pytest.raises(KeyError, match=r"c2lst\.pp\.extract_patches"):
        c2lst.tl.predict_expression(table, predictor=ridge_model, expr_key="absent")
    with pytest.raises(TypeError, match="predictor"):
        c2lst.tl.predict_expression(table, predictor=42)


def test_predict_expression_on_image_only_table(ridge_model):
    table = make_table(6)
    del table.obsm["c2lst_expr"]
    c2lst.tl.predict_expression(table, predictor=ridge_model)
    assert table.obsm["c2lst_pred"].shape == (6, 3)


def _evaluated_table(n_side=10, seed=0):
    """A grid table with a smooth gene, a noise gene and a constant gene; predictions = truth + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    xy = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    smooth = np.sin(xy[:, 0] / 3.0) + np.cos(xy[:, 1] / 3.0)
    obs = np.stack([smooth, rng.normal(size=len(xy)), np.full(len(xy), 2.0)], 1).astype(np.float32)
    pred = (obs + rng.normal(0, 0.5, obs.shape)).astype(np.float32)
    t = ad.AnnData(obs=__import__("pandas").DataFrame(index=[f"s{i}" for i in range(len(xy))]))
    t.obsm["spatial"] = xy
    t.obsm["c2lst_expr"] = obs
    t.obsm["c2lst_pred"] = pred
    t.uns["c2lst"] = {
        "expr": {"c2lst_expr": {"genes": np.array(["smooth", "noise", "const"], dtype=object)}},
        "pred": {"c2lst_pred": {"genes": np.array(["smooth", "noise", "const"], dtype=object)}},
    }
    return t


def test_evaluate_prediction_matches_scipy_and_moran_is_sane(tmp_path):
    t = _evaluated_table()
    before_obsp = sorted(t.obsp)
    c2lst.tl.evaluate_prediction(t)
    rec = t.uns["c2lst"]["evaluation"]["c2lst_pred"]
    obs, pred = t.obsm["c2lst_expr"].astype(float), t.obsm["c2lst_pred"].astype(float)
    for j in range(2):
        assert rec["pearson_r"][j] == pytest.approx(
            stats.pearsonr(obs[:, j], pred[:, j]).statistic, abs=1e-10
        )
    assert np.isnan(rec["pearson_r"][2])  # constant observed gene
    assert t.uns["c2lst"]["lineage"][rec["run_id"]]["function"] == "c2lst.tl.evaluate_prediction"
    np.testing.assert_allclose(rec["mse"], ((obs - pred) ** 2).mean(0))
    assert rec["mean_pearson_r"] == pytest.approx(np.nanmean(rec["pearson_r"]))
    assert rec["moran_observed"][0] > 0.7  # smooth map
    assert abs(rec["moran_observed"][1]) < 0.2  # white noise
    np.testing.assert_allclose(rec["moran_difference"], rec["moran_predicted"] - rec["moran_observed"])
    # noise added to the prediction blurs the structure
    assert rec["moran_predicted"][0] < rec["moran_observed"][0]
    assert sorted(t.obsp) == before_obsp
    assert "spatial_neighbors" not in t.uns
    df = c2lst.tl.prediction_metrics(t)
    assert list(df.index) == ["smooth", "noise", "const"]
    np.testing.assert_array_equal(df["pearson_r"].to_numpy(), rec["pearson_r"])
    # the record survives h5ad
    t.write_h5ad(tmp_path / "t.h5ad")
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    np.testing.assert_array_equal(
        back.uns["c2lst"]["evaluation"]["c2lst_pred"]["moran_observed"], rec["moran_observed"]
    )


def test_morans_i_equals_row_normalised_knn_reference():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10, (80, 2))
    values = np.stack([np.sin(xy[:, 0]), rng.normal(size=80)], 1)
    idx = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
    w = np.zeros((80, 80))
    np.put_along_axis(w, idx, 1.0 / 6, axis=1)
    z = values - values.mean(0)
    ref = 80 / w.sum() * np.einsum("ig,ij,jg->g", z, w, z) / (z**2).sum(0)
    np.testing.assert_allclose(morans_i(values, xy, n_neighs=6), ref, rtol=1e-8)


def test_evaluate_prediction_without_spatial_and_copy():
    t = _evaluated_table()
    out = c2lst.tl.evaluate_prediction(t, spatial=False, key_added="plain", copy=True)
    assert "evaluation" not in t.uns["c2lst"]
    rec = out.uns["c2lst"]["evaluation"]["plain"]
    assert "moran_observed" not in rec
    assert list(c2lst.tl.prediction_metrics(out, "plain").columns) == ["pearson_r", "mse"]


def test_evaluate_prediction_bad_inputs():
    t = _evaluated_table()
    del t.obsm["c2lst_pred"]
    before = snapshot(t)
    with pytest.raises(KeyError, match=r"c2lst\.tl\.predict_expression"):
        c2lst.tl.evaluate_prediction(t)
    t = _evaluated_table()
    del t.obsm["c2lst_expr"]
    with pytest.raises(KeyError, match=r"c2lst\.pp\.prepare_expression"):
        c2lst.tl.evaluate_prediction(t)
    t = _evaluated_table()
    del t.obsm["spatial"]
    before = snapshot(t)
    with pytest.raises(KeyError, match="spatial=False"):
        c2lst.tl.evaluate_prediction(t)
    assert snapshot(t) == before
    t = _evaluated_table()
    t.uns["c2lst"]["expr"]["c2lst_expr"]["genes"] = np.array(["smooth", "noise", "other"], dtype=object)
    with pytest.raises(ValueError, match="const"):
        c2lst.tl.evaluate_prediction(t)
    with pytest.raises(KeyError, match="evaluate_prediction"):
        c2lst.tl.prediction_metrics(t, "nothing")


def test_pipeline_on_the_simulated_slide(sim_sdata_base):
    """extract_patches + prepare_expression -> fit (ridge) -> predict -> evaluate, with the real contracts."""
    table = sim_sdata_base.tables["table"].copy()
    train, test = table[:90].copy(), table[90:].copy()
    model = c2lst.tl.fit_predictor(train, mode="ridge", progress=False)
    c2lst.tl.predict_expression(test, predictor=model)
    c2lst.tl.evaluate_prediction(test)
    df = c2lst.tl.prediction_metrics(test)
    assert list(df.index) == list(train.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])
    assert df["pearson_r"].mean() > 0.2  # marker genes follow the nuclei the features see
    assert np.isfinite(df["moran_observed"]).all()


def test_records_survive_zarr_and_are_usable_after_reading(ridge_model, tmp_path):
    """Gene lists come back from zarr as numpy StringDType arrays; every reader must accept them."""
    table = make_table(30, seed=3)
    table.write_zarr(tmp_path / "a.zarr")
    table = ad.read_zarr(tmp_path / "a.zarr")
    c2lst.tl.predict_expression(table, predictor=ridge_model)
    c2lst.tl.evaluate_prediction(table)
    table.write_zarr(tmp_path / "b.zarr")
    back = ad.read_zarr(tmp_path / "b.zarr")
    c2lst.tl.evaluate_prediction(back, key_added="again")
    pd.testing.assert_frame_equal(
        c2lst.tl.prediction_metrics(back, "again"), c2lst.tl.prediction_metrics(table)
    )


# --------------------------------------------------------------------------- equal compute, weights, groups
def test_cnn_n_steps_fixes_optimiser_steps_whatever_the_rows(data):
    train, _ = data
    p, y = train.obsm["c2lst_patch"], train.obsm["c2lst_expr"]
    small = ExpressionPredictor(GENES).fit(p[:20], y[:20], n_steps=7, batch_size=8, progress=False)
    big = ExpressionPredictor(GENES).fit(p, y, n_steps=7, batch_size=8, progress=False)
    assert small.training["n_steps"] == big.training["n_steps"] == 7
    by_epochs = ExpressionPredictor(GENES).fit(p[:20], y[:20], n_epochs=2, batch_size=8, progress=False)
    assert by_epochs.training["n_steps"] == 6  # 2 epochs x ceil(20 / 8)


def test_sample_weight_zero_rows_do_not_count(data):
    train, _ = data
    p, y = train.obsm["c2lst_patch"][:60], train.obsm["c2lst_expr"][:60]
    noise = np.random.default_rng(0).normal(size=y.shape).astype(np.float32) * 10
    w = np.r_[np.ones(40), np.zeros(20)]
    for mode in ("cnn", "ridge"):
        kw = {"n_steps": 5, "batch_size": 16, "progress": False} if mode == "cnn" else {}
        ref = ExpressionPredictor(GENES, mode=mode, alpha=1.0).fit(p[:40], y[:40], **kw)
        weighted = ExpressionPredictor(GENES, mode=mode, alpha=1.0).fit(
            p, np.r_[y[:40], noise[40:]], sample_weight=w, **kw
        )
        if mode == "ridge":  # the zero-weight rows change nothing in the closed form
            np.testing.assert_allclose(weighted.predict(p[:8]), ref.predict(p[:8]), rtol=1e-4, atol=1e-4)
        else:
            assert np.isfinite(weighted.predict(p[:8])).all()
    with pytest.raises(ValueError, match="sample_weight"):
        ExpressionPredictor(GENES).fit(p, y, sample_weight=np.zeros(60))
    with pytest.raises(ValueError, match="sample_weight"):
        ExpressionPredictor(GENES).fit(p, y, sample_weight=np.ones(3))


def test_grouped_alpha_holds_siblings_out_together():
    from c2lst.models.ridge import ridge_alpha

    rng = np.random.default_rng(0)
    x_real = rng.normal(size=(30, 20))
    z_real = x_real[:, :1] + rng.normal(size=(30, 1))
    # each real row has 5 exact copies: plain leave-one-out sees the copies and picks almost no penalty
    x = np.repeat(x_real, 6, axis=0)
    z = np.repeat(z_real, 6, axis=0)
    groups = np.repeat(np.arange(30), 6)
    is_real = np.tile([True, False, False, False, False, False], 30)
    loo_alpha, loo_err = ridge_alpha(x, z)
    grp_alpha, grp_err = ridge_alpha(x, z, groups=groups, eval_mask=is_real)
    assert grp_alpha > loo_alpha
    assert grp_err > loo_err  # honest held-out error is larger than the leaky one


def test_fit_predictor_synthetic_weight_and_steps(data):
    train, _ = data
    syn = _synthetic_copy(train)
    m = c2lst.tl.fit_predictor([train, syn], synthetic_weight=0.25, n_steps=4, progress=False)
    assert m.training["synthetic_weight"] == 0.25 and m.training["n_steps"] == 4 and m.training["weighted"]
    with pytest.raises(ValueError, match="synthetic_weight"):
        c2lst.tl.fit_predictor([train, syn], synthetic_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="n_steps"):
        c2lst.tl.fit_predictor([train], n_steps=0, progress=False)
    with pytest.raises(ValueError, match="only synthetic"):
        c2lst.tl.fit_predictor([syn], synthetic_weight=0.0, progress=False)


def test_predict_shows_a_progress_bar_over_batches_only_when_asked(data, capsys):
    train, _ = data
    x, y = train.obsm["c2lst_patch"][:40], train.obsm["c2lst_expr"][:40]
    model = ExpressionPredictor(GENES, widths=(8, 16)).fit(x, y, n_epochs=1, progress=False)
    capsys.readouterr()
    quiet = model.predict(x, batch_size=8)
    assert "predict" not in capsys.readouterr().err
    shown = model.predict(x, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "predict" in err and f"{-(-len(x) // 8)}/{-(-len(x) // 8)}" in err
    np.testing.assert_array_equal(shown, quiet)
