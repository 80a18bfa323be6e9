"""The whole path on the command line, on a zarr store: extract, prepare, adapt, synthesize, evaluate, budget."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import spatialdata

import c2lst
from c2lst._cli import main


@pytest.mark.parametrize("command", ["extract", "prepare", "pretrain", "adapt", "synthesize", "evaluate", "budget"])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([command, "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"c2lst {command}" in out


@pytest.mark.slow
def test_the_chain_runs_on_a_store(tmp_path, tiny_central, capsys):
    store = str(tmp_path / "slide.zarr")
    c2lst.datasets.simulated_visium(n_spots=120, seed=3).write(store)

    assert main(["extract", store, "--size", "32"]) == 0
    assert main(["prepare", store, "--n-top-genes", "12"]) == 0
    table = spatialdata.read_zarr(store).tables["table"]
    assert table.obsm["c2lst_patch"].shape == (120, 32, 32, 3)
    assert len(c2lst.get.expression_genes(table)) == 12

    central = str(tiny_central[1])
    adapt = ["adapt", store, "--central", central, "--n-steps", "2", "--batch-size", "8"]
    assert main(adapt) == 0
    assert c2lst.get.adapter(spatialdata.read_zarr(store))["summary"]["steps"] == 2
    with pytest.raises(ValueError, match="overwrite=True"):  # an adapter is never replaced silently
        main(adapt)
    with pytest.raises(ValueError, match="timestep_bias"):  # refused before training; the store keeps its adapter
        main([*adapt, "--overwrite", "--timestep-bias", "-1"])
    with pytest.raises(ValueError, match="condition_noise"):
        main([*adapt, "--overwrite", "--condition-noise", "-1"])
    assert main([*adapt, "--overwrite", "--timestep-bias", "1", "--condition-noise", "0.3"]) == 0
    runs = c2lst.get.lineage(spatialdata.read_zarr(store), function="c2lst.tl.adapt")["parameters"]
    assert [r["timestep_bias"] for r in runs] == [0.0, 1.0]  # oldest first; the refused calls left no record
    assert [r["condition_noise"] for r in runs] == [0.0, 0.3]

    assert main(["synthesize", store, "--n-steps", "1", "--n-per-condition", "1"]) == 0
    assert spatialdata.read_zarr(store).tables["c2lst_synthetic"].n_obs == 120

    capsys.readouterr()
    assert main(["evaluate", store, "--out", str(tmp_path / "fid.json")]) == 0
    report = json.loads((tmp_path / "fid.json").read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["n_real"] == 120 and report["n_synthetic"] == 120 and report["fid"] >= 0

    budget = ["budget", store, "--central", central, "--fractions", "1.0", "--n-repeats", "1"]
    budget += ["--adapt-steps", "1", "--n-steps", "1", "--n-per-condition", "1", "--mode", "ridge"]
    assert main([*budget, "--synthetic-weight", "auto-gene", "--out", str(tmp_path / "curve.csv")]) == 0
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert set(curve["condition"]) == {"real", "real+synthetic"} and curve["pearson_r"].notna().all()
    assert set(curve["synthetic_weight"].dropna()) == {"auto-gene"}
    for bad in ("high", "-1", "inf"):
        with pytest.raises(SystemExit):
            main([*budget, "--synthetic-weight", bad, "--out", str(tmp_path / "bad.csv")])
    for bad in ("1", "-0.1", "half"):
        with pytest.raises(SystemExit):
            main([*budget, "--real-finetune", bad, "--out", str(tmp_path / "bad.csv")])
    with pytest.raises(ValueError, match="real_finetune"):  # staged training is the cnn's; ridge refuses it early
        main([*budget, "--real-finetune", "0.3", "--out", str(tmp_path / "bad.csv")])
    with pytest.raises(SystemExit):
        main([*budget, "--batching", "shuffled", "--out", str(tmp_path / "bad.csv")])
    with pytest.raises(ValueError, match="batching='stacked'"):  # stacked batches are the cnn's; ridge refuses early
        main([*budget, "--batching", "stacked", "--out", str(tmp_path / "bad.csv")])
    with pytest.raises(ValueError, match="early_stopping=True"):  # steps are the cnn's; ridge refuses early
        main([*budget, "--early-stopping", "--out", str(tmp_path / "bad.csv")])
    with pytest.raises(ValueError, match="validation_folds=9"):  # nine quarters of the spots: refused before any work
        main([*budget, "--mode", "cnn", "--early-stopping", "--validation-folds", "9", "--out", str(tmp_path / "bad.csv")])
    assert not (tmp_path / "bad.csv").exists()
    assert json.loads(capsys.readouterr().out)["plan"] is None  # a paired plan needs >= 3 repeats


def test_a_missing_table_is_named_before_any_work(tmp_path):
    store = str(tmp_path / "slide.zarr")
    c2lst.datasets.simulated_visium(n_spots=20, seed=0).write(store)
    with pytest.raises(KeyError, match=r"`table_key='nope'`"):
        main(["extract", store, "--table-key", "nope"])


def test_extract_takes_the_physical_scale(tmp_path):
    """`--mpp` reaches pp.extract_patches: half the µm per unit, twice the pixels per patch side."""
    store = str(tmp_path / "slide.zarr")
    c2lst.datasets.simulated_visium(n_spots=20, seed=0).write(store)
    assert main(["extract", store, "--size", "16", "--patch-um", "40"]) == 0
    auto = spatialdata.read_zarr(store).tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert main(["extract", store, "--size", "16", "--patch-um", "40", "--mpp", "0.25", "--key-added", "p2"]) == 0
    given = spatialdata.read_zarr(store).tables["table"].uns["c2lst"]["patches"]["p2"]
    assert float(given["um_per_unit"]) == 0.25 and float(auto["um_per_unit"]) != 0.25
    with pytest.raises(ValueError, match="mpp"):
        main(["extract", store, "--patch-um", "40", "--mpp", "-1"])


@pytest.mark.slow
def test_budget_takes_its_arms_and_another_sections_store(tmp_path, tiny_central, capsys):
    """`--arms` reaches tl.budget_curve, and `--conditions STORE` conditions the synthetic arm on that store's table."""
    store, other_store = str(tmp_path / "slide.zarr"), str(tmp_path / "other.zarr")
    c2lst.datasets.simulated_visium(n_spots=60, seed=3).write(store)
    other = c2lst.datasets.simulated_visium(n_spots=60, seed=103, panel_seed=3)  # same tissue type, new spots
    c2lst.pp.extract_patches(other, size=32, progress=False)  # the copy arms read its real patches
    other.tables["table"].obs_names = [f"other_{name}" for name in other.tables["table"].obs_names]
    other.write(other_store)
    assert main(["extract", store, "--size", "32"]) == 0
    assert main(["prepare", store, "--n-top-genes", "12"]) == 0

    budget = ["budget", store, "--central", str(tiny_central[1]), "--fractions", "1.0", "--n-repeats", "1"]
    budget += ["--adapt-steps", "1", "--n-steps", "1", "--n-per-condition", "1", "--mode", "ridge"]
    arms = ["--arms", "real", "real+synthetic", "real+copy", "copy-only"]
    unpaired = [*budget, *arms, "--conditions", other_store, "--checkpoint", str(tmp_path / "runs"), "--n-candidates",
                "2"]
    assert main([*unpaired, "--out", str(tmp_path / "curve.csv")]) == 0
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert (tmp_path / "runs" / "runs.jsonl").is_file()  # the same command again reads its finished run back
    assert main([*unpaired, "--out", str(tmp_path / "again.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), curve)
    assert set(curve["condition"]) == {"real", "real+synthetic", "real+copy", "copy-only"}
    assert set(curve["conditions"]) == {"unpaired"} and curve["pearson_r"].notna().all()
    assert main([*budget, "--arms", "real", "real+null", "--conditions", "mixup", "--out", str(tmp_path / "mix.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "mix.csv")["condition"]) == {"real", "real+null"}

    bad = ["--out", str(tmp_path / "bad.csv")]
    with pytest.raises(ValueError, match="neither 'mixup' nor a zarr store"):
        main([*budget, "--conditions", str(tmp_path / "nowhere.zarr"), *bad])
    with pytest.raises(KeyError, match="--conditions-table nope"):
        main([*budget, "--conditions", other_store, "--conditions-table", "nope", *bad])
    with pytest.raises(ValueError, match="arms"):
        main([*budget, "--arms", "real", "real+nonsense", *bad])
    assert not (tmp_path / "bad.csv").exists()
