"""Spot-budget curve, budget planning, the command line and the demo (issue 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import c2lst
from c2lst.tl._budget import spatial_split


def test_spatial_split_holds_out_whole_blocks():
    rng = np.random.default_rng(0)
    coords = np.vstack([rng.random((400, 2)) * 1000, [[0, 0], [1000, 1000]]])  # extent exactly [0, 1000]
    test = spatial_split(coords, test_fraction=0.25, n_blocks=4, seed=1)
    assert 0.2 <= test.mean() <= 0.5
    cells = np.minimum(coords / 1000 * 4, 3).astype(int)
    block = cells[:, 0] * 4 + cells[:, 1]
    for b in np.unique(block):  # every block is entirely train or entirely test
        assert len(set(test[block == b])) == 1
    assert not np.array_equal(test, spatial_split(coords, test_fraction=0.25, n_blocks=4, seed=2))
    np.testing.assert_array_equal(test, spatial_split(coords, test_fraction=0.25, n_blocks=4, seed=1))


def test_budget_curve_runs_and_plans(sim_sdata, tiny_central):
    central, _ = tiny_central
    curve = c2lst.tl.budget_curve(
        sim_sdata,
        central=central,
        fractions=(0.5, 1.0),
        n_repeats=2,
        synthetic_per_spot=1,
        adapt_kwargs={"n_steps": 2, "batch_size": 8},
        synthesize_kwargs={"steps": 2},
        predictor_kwargs={"n_epochs": 1},
        progress=False,
    )
    assert set(curve["condition"]) == {"real", "real+synthetic"}
    assert len(curve) == 2 * 2 * 2
    assert set(curve.columns) >= {
        "fraction",
        "repeat",
        "condition",
        "n_real",
        "n_synthetic",
        "pearson_r",
        "mse",
    }
    aug = curve[curve["condition"] == "real+synthetic"]
    np.testing.assert_array_equal(aug["n_synthetic"].to_numpy(), aug["n_real"].to_numpy())
    assert (curve.loc[curve["condition"] == "real", "n_synthetic"] == 0).all()
    half = curve[curve["fraction"] == 0.5]["n_real"].iloc[0]
    full = curve[curve["fraction"] == 1.0]["n_real"].iloc[0]
    assert half < full < sim_sdata.tables["table"].n_obs  # held-out spots never train
    assert np.isfinite(curve["pearson_r"]).all()
    plan = c2lst.tl.plan_budget(curve)
    assert plan["fraction"] in (None, 0.5, 1.0)
    assert plan["reference_ci_low"] <= plan["reference_mean"] <= plan["reference_ci_high"]
    # the table is untouched: no adapter or synthetic rows leak into the user's data
    assert "local" not in sim_sdata.tables["table"].uns.get("c2lst", {})


def test_plan_budget_picks_smallest_fraction_within_ci():
    rows = []
    for rep, (r100, s25, s50) in enumerate([(0.50, 0.40, 0.49), (0.52, 0.41, 0.51), (0.51, 0.42, 0.50)]):
        rows += [
            {"fraction": 1.0, "repeat": rep, "condition": "real", "pearson_r": r100},
            {"fraction": 0.25, "repeat": rep, "condition": "real+synthetic", "pearson_r": s25},
            {"fraction": 0.5, "repeat": rep, "condition": "real+synthetic", "pearson_r": s50},
        ]
    plan = c2lst.tl.plan_budget(pd.DataFrame(rows))
    assert plan["fraction"] == 0.5
    assert plan["reference_mean"] == pytest.approx(0.51)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fractions": (0.0, 1.0)}, ValueError, "fractions"),
        ({"fractions": (1.5,)}, ValueError, "fractions"),
        ({"fractions": ()}, ValueError, "fractions"),
        ({"split": "diagonal"}, ValueError, "split"),
        ({"n_repeats": 0}, ValueError, "n_repeats"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"patch_key": "nope"}, KeyError, "extract_patches"),
        ({"expr_key": "nope"}, KeyError, "prepare_expression"),
    ],
)
def test_budget_curve_bad_input(sim_sdata, tiny_central, kwargs, exc, match):
    central, _ = tiny_central
    with pytest.raises(exc, match=match):
        c2lst.tl.budget_curve(sim_sdata, central=central, progress=False, **kwargs)


def test_plan_budget_bad_input():
    with pytest.raises(ValueError, match="curve"):
        c2lst.tl.plan_budget(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="all-real"):
        c2lst.tl.plan_budget(pd.DataFrame({"fraction": [0.5], "condition": ["real"], "pearson_r": [0.1]}))


def test_cli_help_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "c2lst", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in out.stdout and "pretrain" in out.stdout and "synthesize" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "c2lst", "--version"], capture_output=True, text=True, check=True
    )
    assert c2lst.__version__ in out.stdout


def test_cli_pretrain(tmp_path):
    sd = c2lst.datasets.simulated_visium(n_spots=12, seed=1)
    sd.write(tmp_path / "s.zarr")
    from c2lst._cli import main

    assert (
        main(
            [
                "pretrain",
                str(tmp_path / "s.zarr"),
                "--out",
                str(tmp_path / "m"),
                "--preset",
                "tiny",
                "--n-steps",
                "2",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "m" / "model" / "c2lst.json").read_text())
    assert meta["config"]["preset"] == "tiny"


def test_demo_end_to_end_tiny(tmp_path):
    from c2lst._demo import TEST, run_demo

    summary = run_demo(tmp_path / "demo", settings=TEST, progress=False)
    for name in ("report.md", "summary.json", "budget_curve.csv", "patches.png", "budget_curve.png",
                 "gene_correlation.png", "spatial_expression.png"):
        assert (tmp_path / "demo" / name).is_file(), name
    import spatialdata

    back = spatialdata.read_zarr(tmp_path / "demo" / "local.zarr")
    assert "c2lst_synthetic" in back.tables and "local" in back.tables["table"].uns["c2lst"]
    assert summary["adapter"]["ratio"] < 0.10
    assert "Spot budget" in (tmp_path / "demo" / "report.md").read_text()
