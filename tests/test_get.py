"""``c2lst.get``: public readers of the records in ``uns["c2lst"]`` (and the records module under them)."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import c2lst
from c2lst import _records as records


def test_lineage_keeps_call_order_within_one_second(tmp_path):
    """Records written in the same second stay oldest first after a zarr round trip (which sorts the run ids)."""
    table = ad.AnnData(np.zeros((2, 1), np.float32))
    for k in range(6):
        records.record_lineage(table, function=f"step{k}", parameters={}, seed=None, input_table=None)
    table.write_zarr(tmp_path / "t.zarr")
    back = ad.read_zarr(tmp_path / "t.zarr")
    assert list(c2lst.get.lineage(back)["function"]) == [f"step{k}" for k in range(6)]


def test_lineage_is_a_frame_of_parsed_records(adapted_base):
    frame = c2lst.get.lineage(adapted_base)
    assert list(frame.columns) == [
        "function",
        "c2lst_version",
        "created",
        "seed",
        "input_table",
        "parameters",
        "model_sha256",
    ]
    assert frame.index.name == "run_id"
    assert {"c2lst.pp.extract_patches", "c2lst.pp.prepare_expression", "c2lst.tl.adapt"} <= set(frame["function"])
    assert list(frame["created"]) == sorted(frame["created"])
    adapt = c2lst.get.lineage(adapted_base, function="c2lst.tl.adapt")
    assert len(adapt) == 1
    params = adapt["parameters"].iloc[0]
    assert isinstance(params, dict) and params["n_steps"] == 6
    assert isinstance(adapt["model_sha256"].iloc[0], dict)
    assert c2lst.get.lineage(adapted_base, function="c2lst.tl.synthesize").empty
    with pytest.raises(TypeError, match="function"):
        c2lst.get.lineage(adapted_base, function=3)


def test_adapter_and_adapters(adapted_base):
    rec = c2lst.get.adapter(adapted_base)
    stored = adapted_base.uns["c2lst"]["local"]["c2lst_local"]
    assert rec["genes"] == [str(g) for g in stored["genes"]]
    assert isinstance(rec["config"], dict) and rec["config"] == json.loads(stored["config"])
    assert isinstance(rec["summary"], dict) and rec["summary"]["steps"] == 6
    assert rec["sha256"] == stored["sha256"] and rec["n_weights"] == len(stored["weights"])
    assert "weights" not in rec
    frame = c2lst.get.adapters(adapted_base)
    assert list(frame.index) == ["c2lst_local"]
    assert frame.loc["c2lst_local", "n_genes"] == len(rec["genes"])
    assert frame.loc["c2lst_local", "central_sha256"] == rec["central_sha256"]
    assert frame.loc["c2lst_local", "backbone"] == rec["backbone"] == "unet"
    with pytest.raises(KeyError, match=r"`key='nope'`.*c2lst_local.*c2lst\.tl\.adapt"):
        c2lst.get.adapter(adapted_base, "nope")


def test_readers_accept_a_spatialdata_and_name_a_missing_table(adapted_sdata):
    assert c2lst.get.adapter(adapted_sdata)["genes"] == c2lst.get.adapter(adapted_sdata.tables["table"])["genes"]
    with pytest.raises(KeyError, match=r"table_key='nope'"):
        c2lst.get.lineage(adapted_sdata, table_key="nope")
    with pytest.raises(TypeError, match=r"`adata` must be an AnnData or a SpatialData"):
        c2lst.get.lineage({"uns": {}})


def test_central_models_lists_the_registry(sim_sdata_base, tmp_path):
    table = sim_sdata_base.tables["table"][:16].copy()
    assert c2lst.get.central_models(table).empty
    c2lst.tl.pretrain(
        table, preset="tiny", n_steps=1, batch_size=8, key_added="c", output_dir=tmp_path, progress=False
    )
    frame = c2lst.get.central_models(table)
    assert list(frame.index) == ["c"]
    assert frame.loc["c", "path"] == str((tmp_path / "model").resolve())
    assert isinstance(frame.loc["c", "config"], dict) and frame.loc["c", "summary"]["steps"] == 1


def test_expression_readers(sim_sdata_base):
    table = sim_sdata_base.tables["table"]
    genes = c2lst.get.expression_genes(table)
    assert genes == [str(g) for g in table.uns["c2lst"]["expr"]["c2lst_expr"]["genes"]]
    params = c2lst.get.expression_params(table)
    assert params["genes"] == genes and "normalization" in params
    frame = c2lst.get.expression(table)
    assert list(frame.columns) == genes and list(frame.index) == list(table.obs_names)
    np.testing.assert_array_equal(frame.to_numpy(), np.asarray(table.obsm["c2lst_expr"], dtype=np.float32))
    with pytest.raises(KeyError, match=r"`key='absent'`.*prepare_expression"):
        c2lst.get.expression_genes(table, "absent")


def test_expression_genes_checks_the_matrix_width(sim_sdata_base):
    table = sim_sdata_base.tables["table"].copy()
    table.obsm["c2lst_expr"] = np.asarray(table.obsm["c2lst_expr"])[:, :3]
    with pytest.raises(ValueError, match=r"obsm\['c2lst_expr'\].*expected \(n_obs, 20\)"):
        c2lst.get.expression_genes(table)


def test_predictions_metrics_and_synthetic_mask(sim_sdata_base):
    table = sim_sdata_base.tables["table"].copy()
    predictor = c2lst.tl.fit_predictor(table, mode="ridge", progress=False)
    c2lst.tl.predict_expression(table, predictor=predictor)
    pred = c2lst.get.predictions(table)
    assert list(pred.columns) == list(predictor.genes)
    np.testing.assert_array_equal(pred.to_numpy(), np.asarray(table.obsm["c2lst_pred"], dtype=np.float32))
    with pytest.raises(KeyError, match="predict_expression"):
        c2lst.get.predictions(table, "absent")
    with pytest.raises(KeyError, match="evaluate_prediction"):
        c2lst.get.metrics(table)
    c2lst.tl.evaluate_prediction(table, spatial=False)
    metrics = c2lst.get.metrics(table)
    assert list(metrics.columns) == ["pearson_r", "mse"] and metrics.index.name == "gene"
    pd.testing.assert_frame_equal(metrics, c2lst.tl.prediction_metrics(table))
    assert not c2lst.get.synthetic_mask(table).any()
    table.obs["c2lst_synthetic"] = np.arange(table.n_obs) % 2 == 0
    np.testing.assert_array_equal(c2lst.get.synthetic_mask(table), np.arange(table.n_obs) % 2 == 0)


def test_records_module_is_the_one_writer(sim_sdata_base):
    table = sim_sdata_base.tables["table"][:4].copy()
    assert records.section(table, "nothing") == {} and "nothing" not in table.uns["c2lst"]
    records.store(table, "features", "k", {"a": 1})
    assert table.uns["c2lst"]["features"]["k"] == {"a": 1}
    with pytest.raises(ValueError, match=r"`key_added='k'` already holds a feature set.*overwrite=True"):
        records.check_key_added(table, "features", "k", False, "a feature set")
    with pytest.raises(TypeError, match="key_added"):
        records.check_key_added(table, "features", "", False, "a feature set")
    records.check_key_added(table, "features", "k", True, "a feature set")


def test_get_does_not_import_torch():
    code = "import sys, c2lst; c2lst.get.lineage; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_table_functions_take_a_spatialdata_with_table_key(sim_sdata):
    """adapt / prepare_expression / evaluate read `table_key` of a SpatialData like the AnnData itself."""
    c2lst.pp.prepare_expression(sim_sdata, n_top_genes=10, key_added="e10")
    table = sim_sdata.tables["table"]
    assert c2lst.get.expression_genes(sim_sdata, "e10") == c2lst.get.expression_genes(table, "e10")
    copy = c2lst.pp.prepare_expression(sim_sdata, n_top_genes=5, key_added="e5", copy=True)
    assert "e5" in copy.obsm and "e5" not in table.obsm
    predictor = c2lst.tl.fit_predictor(table, mode="ridge", progress=False)
    c2lst.tl.predict_expression(sim_sdata, predictor=predictor)
    c2lst.tl.evaluate_prediction(sim_sdata, spatial=False)
    assert "pearson_r" in c2lst.get.metrics(sim_sdata)
    with pytest.raises(KeyError, match=r"`table_key='nope'`"):
        c2lst.tl.predict_expression(sim_sdata, predictor=predictor, table_key="nope")
