"""Spot-budget curve, budget planning, the command line and the demo (issue 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import tiny_budget

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
    curve = tiny_budget(sim_sdata, central, arms=("real", "real+synthetic", "real+null", "real+copy"),
                        predictor_kwargs={"n_steps": 3})
    # every arm at 0.5, only the real reference at 1.0
    assert len(curve) == 3 * (4 + 1)
    assert set(curve[curve["fraction"] == 1.0]["condition"]) == {"real"}
    assert set(curve.columns) >= {
        "fraction", "repeat", "condition", "n_real", "n_synthetic", "n_steps", "pearson_r", "mse",
        "pearson_r_marker", "pearson_r_smooth",
    }
    assert (curve["n_steps"] == 3).all()  # equal optimiser steps for every arm, whatever its rows
    aug = curve[curve["condition"] != "real"]
    np.testing.assert_array_equal(aug["n_synthetic"].to_numpy(), aug["n_real"].to_numpy())
    assert (curve.loc[curve["condition"] == "real", "n_synthetic"] == 0).all()
    half = curve[curve["fraction"] == 0.5]["n_real"].iloc[0]
    full = curve[curve["fraction"] == 1.0]["n_real"].iloc[0]
    assert half < full < sim_sdata.tables["table"].n_obs  # held-out spots never train
    assert np.isfinite(curve["pearson_r"]).all()
    # arms of one (repeat, fraction) are paired: same subset size, same test set
    for _, grp in curve.groupby(["repeat", "fraction"]):
        assert grp["n_real"].nunique() == 1 and grp["n_test"].nunique() == 1
    plan = c2lst.tl.plan_budget(curve, margin=0.02)
    assert plan["fraction"] in (None, 0.5)
    assert plan["n_repeats"] == 3
    assert set(plan["differences"]["condition"]) == set(curve["condition"])
    assert list(plan["gain"]["fraction"]) == [0.5]
    # the table is untouched: no adapter or synthetic rows leak into the user's data
    assert "local" not in sim_sdata.tables["table"].uns.get("c2lst", {})


def test_budget_genes_are_chosen_on_training_spots_only(sim_sdata):
    from c2lst.pp._expression import apply_expression, prepare_expression
    from c2lst.tl._budget_arms import repeat_table

    table = sim_sdata.tables["table"]
    record = table.uns["c2lst"]["expr"]["c2lst_expr"]
    pool = np.arange(0, table.n_obs, 3)  # a third of the spots
    base = repeat_table(table, pool, "train", record, "c2lst_expr", "c2lst_patch", prepare_expression,
                         apply_expression)
    alone = table[pool].copy()
    prepare_expression(alone, n_top_genes=int(record["n_top_genes"]))
    genes = list(base.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])
    assert genes == list(alone.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])
    assert genes != list(record["genes"])  # the panel of all spots differs: the test spots would have shaped it
    # every spot (test spots included) is expressed over the training panel with the recorded normalisation
    np.testing.assert_allclose(base.obsm["c2lst_expr"][pool], alone.obsm["c2lst_expr"], rtol=1e-5, atol=1e-6)
    assert base.obsm["c2lst_expr"].shape == (table.n_obs, len(genes))


def _curve(values: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"fraction": f, "repeat": rep, "condition": cond, "pearson_r": v}
            for (cond, f), vals in values.items()
            for rep, v in enumerate(vals)
        ]
    )


def test_plan_budget_is_a_paired_non_inferiority_test():
    ref = [0.50, 0.60, 0.55, 0.45, 0.65]  # repeats differ a lot: an unpaired interval would be wide
    curve = _curve(
        {
            ("real", 1.0): ref,
            ("real", 0.1): [v - 0.10 for v in ref],
            ("real", 0.5): [v - 0.001 * (i % 2) for i, v in enumerate(ref)],
            ("real+synthetic", 0.1): [v - 0.005 + 0.002 * (i % 2) for i, v in enumerate(ref)],
            ("real+synthetic", 0.5): [v + 0.001 for v in ref],
        }
    )
    plan = c2lst.tl.plan_budget(curve, margin=0.02)
    assert plan["fraction"] == 0.1  # paired differences are tight, so non-inferiority is shown at 0.1
    assert plan["fraction_real"] == 0.5
    assert plan["saving"] == pytest.approx(0.2)
    assert plan["caveats"] == []  # a falling real-only curve, a non-inferior arm at half: nothing to flag
    gain = plan["gain"].set_index("fraction")
    assert gain.loc[0.1, "gain"] == pytest.approx(0.0954, abs=1e-3)
    assert gain.loc[0.1, "ci_low"] > 0
    # a stricter margin than the mean loss at 0.1 refuses it
    assert c2lst.tl.plan_budget(curve, margin=0.001)["fraction"] == 0.5
    # a noisy arm whose mean is above the reference's lower CI bound is not enough (the old lenient rule)
    noisy = _curve({("real", 1.0): ref, ("real+synthetic", 0.1): [0.2, 0.9, 0.3, 0.8, 0.55]})
    assert c2lst.tl.plan_budget(noisy, margin=0.02)["fraction"] is None


def test_plan_budget_names_a_flat_curve_and_a_coarse_grid(caplog):
    ref = [0.50, 0.60, 0.55, 0.45, 0.65]
    # real alone needs all spots; the arm misses at 0.25 and the grid has no 0.5: a factor of two cannot show
    coarse = _curve({("real", 1.0): ref, ("real", 0.25): [v - 0.05 for v in ref],
                     ("real+synthetic", 0.25): [v - 0.03 - 0.01 * (i % 2) for i, v in enumerate(ref)]})
    with caplog.at_level("WARNING", logger="c2lst"):
        plan = c2lst.tl.plan_budget(coarse, margin=0.02)
    assert plan["fraction"] is None and plan["fraction_real"] == 1.0
    assert len(plan["caveats"]) == 1 and "add 0.5 to `fractions`" in plan["caveats"][0]
    assert "largest fraction of 'real+synthetic' at or below 0.5 is 0.25" in plan["caveats"][0]
    assert plan["caveats"][0] in caplog.text  # also logged
    # with 0.5 on the grid (missed too) the goal was testable: no caveat
    testable = pd.concat([coarse, _curve({("real+synthetic", 0.5): [v - 0.04 for v in ref]})])
    assert c2lst.tl.plan_budget(testable, margin=0.02)["caveats"] == []
    # a smaller real fraction above all spots: the curve is flat or the reference under-trained
    flat = _curve({("real", 1.0): ref, ("real", 0.5): [v + 0.01 + 0.002 * (i % 2) for i, v in enumerate(ref)],
                   ("real", 0.25): [v - 0.05 for v in ref], ("real+synthetic", 0.25): list(ref)})
    plan = c2lst.tl.plan_budget(flat, margin=0.02)
    assert plan["fraction_real"] == 0.5 and plan["fraction"] == 0.25
    assert len(plan["caveats"]) == 1 and "fraction 0.5 score above all of them on average (paired +0.011" in plan["caveats"][0]
    # non-inferior already at the smallest fraction run: how few suffice is unknown
    early = _curve({("real", 1.0): ref, ("real", 0.25): [v - 0.001 * (i % 2) for i, v in enumerate(ref)],
                    ("real+synthetic", 0.25): list(ref)})  # the grid caveat would only repeat it
    caveats = c2lst.tl.plan_budget(early, margin=0.02)["caveats"]
    assert len(caveats) == 1 and "smallest fraction run (0.25)" in caveats[0]


def test_plan_budget_names_an_outlying_repeat():
    ref = [0.50, 0.60, 0.55, 0.45, 0.65, 0.58, 0.52, 0.61]
    loss = [-0.10, -0.12, -0.09, -0.11, -0.10, -0.13, -0.08, -0.11]
    low = _curve({("real", 1.0): ref, ("real", 0.1): [v + d for v, d in zip(ref, loss, strict=True)],
                  ("real+synthetic", 0.1): [v - 0.002 * (i % 2) for i, v in enumerate(ref)]})
    assert c2lst.tl.plan_budget(low, margin=0.02)["caveats"] == []  # ordinary spread: nothing to flag
    bad = low.copy()
    bad.loc[(bad["condition"] == "real") & (bad["fraction"] == 0.1) & (bad["repeat"] == 3), "pearson_r"] = 0.05
    caveats = c2lst.tl.plan_budget(bad, margin=0.02)["caveats"]
    assert len(caveats) == 1
    assert caveats[0].startswith("a repeat lies far from the others")
    assert "repeat 3 of 'real' at fraction 0.1 (-0.400 against a median of -0.105)" in caveats[0]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fractions": (0.0, 1.0)}, ValueError, "fractions"),
        ({"fractions": (1.5,)}, ValueError, "fractions"),
        ({"fractions": ()}, ValueError, "fractions"),
        ({"fractions": "abc"}, ValueError, "fractions"),
        ({"synthetic_fractions": (2.0,)}, ValueError, "synthetic_fractions"),
        ({"arms": ("real", "magic")}, ValueError, "arms"),
        ({"arms": ()}, ValueError, "arms"),
        ({"gene_selection": "all"}, ValueError, "gene_selection"),
        ({"split": "diagonal"}, ValueError, "split"),
        ({"n_repeats": 0}, ValueError, "n_repeats"),
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"predictor_kwargs": {"synthetic_weight": 0.5}}, ValueError, "synthetic_weight"),
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
        c2lst.tl.plan_budget(_curve({("real", 0.5): [0.1, 0.2, 0.3]}))
    with pytest.raises(ValueError, match="at least 3"):
        c2lst.tl.plan_budget(_curve({("real", 1.0): [0.5, 0.6], ("real+synthetic", 0.5): [0.5, 0.6]}))
    with pytest.raises(ValueError, match="margin"):
        c2lst.tl.plan_budget(_curve({("real", 1.0): [0.5, 0.6, 0.7]}), margin=-0.1)


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
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "Spot budget" in report
    # plan_budget's caveats reach the summary and the report, one line each
    assert isinstance(summary["plan_budget_caveats"], list)
    assert report.count("- Caveat: ") == len(summary["plan_budget_caveats"])
    assert all(c in report for c in summary["plan_budget_caveats"])
    # the demo starts from the shipped central model; `pretrain=True` trains one on the simulated corpus
    assert summary["central"]["name"] == "tiny-sim" and "shipped model `tiny-sim`" in report
    assert summary["central"]["steps"] == 6000
    assert not (tmp_path / "demo" / "central").exists()


def test_demo_can_pretrain_its_own_central(tmp_path):
    from c2lst._demo import TEST, run_demo

    summary = run_demo(tmp_path / "demo", settings=TEST, progress=False, pretrain=True)
    assert summary["central"]["name"] == "pretrained in this run"
    assert summary["central"]["steps"] == TEST.pretrain_steps
    assert (tmp_path / "demo" / "central" / "model" / "c2lst.json").is_file()
    assert "pretrained in this run" in (tmp_path / "demo" / "report.md").read_text()
