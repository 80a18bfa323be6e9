"""Arms that train on added rows alone (train on generated patches, test on real ones) in ``budget_curve``."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from _eval_helpers import assert_budget_refuses, tiny_budget
from _reliability_helpers import state

import c2lst
from c2lst.tl._budget import ARMS, SOLO


def test_solo_arms_are_listed_with_their_source():
    assert set(SOLO) <= set(ARMS)
    assert all(SOLO[a] in ARMS and SOLO[a] == f"real+{a.removesuffix('-only')}" for a in SOLO)


def test_solo_arms_train_on_the_added_rows_alone(sim_sdata, tiny_central):
    central, _ = tiny_central
    curve = tiny_budget(sim_sdata, central, arms=("real", "real+synthetic", *SOLO),
                        n_repeats=1, n_per_condition=2, synthetic_weight=(0.3, 1.0))
    at = curve[np.isclose(curve["fraction"], 0.5)].set_index("condition")
    n_sub = int(at.loc["real", "n_real"])
    # one fit per solo arm (no weight, share or batching), none of the real spots, every added row
    for arm in SOLO:
        row = curve[(curve["condition"] == arm)]
        assert len(row) == 1 and row["n_real"].iloc[0] == 0 and row["n_synthetic"].iloc[0] == 2 * n_sub
        assert np.isnan(row["synthetic_weight"].iloc[0]) and np.isnan(row["chosen_weight"].iloc[0])
        assert np.isfinite(row["pearson_r"].iloc[0])
    combined = curve[curve["condition"] == "real+synthetic"]
    assert len(combined) == 2 and (combined["n_real"] == n_sub).all() and (combined["n_synthetic"] == 2 * n_sub).all()
    # the solo arms run only where the added arms do
    assert set(curve.loc[np.isclose(curve["fraction"], 1.0), "condition"]) == {"real"}
    # every arm's name survives a CSV round trip (pandas reads "null" or "NA" as missing)
    back = pd.read_csv(io.StringIO(curve.to_csv(index=False)))
    assert back["condition"].tolist() == curve["condition"].tolist()


def test_solo_copy_of_one_per_spot_is_the_real_arm(sim_sdata, tiny_central):
    """One copy of each parent's own patch and profile, alone, is the real training set: the same ridge fit."""
    central, _ = tiny_central
    curve = tiny_budget(sim_sdata, central, arms=("real", "copy-only"), n_repeats=2, n_per_condition=1,
                        predictor_kwargs={"mode": "ridge"})
    half = curve[np.isclose(curve["fraction"], 0.5)]
    real = half[half["condition"] == "real"].set_index("repeat")["pearson_r"]
    copy = half[half["condition"] == "copy-only"].set_index("repeat")["pearson_r"]
    np.testing.assert_allclose(copy.to_numpy(), real.loc[copy.index].to_numpy(), rtol=1e-5, atol=1e-6)


def test_solo_synthetic_is_deterministic_and_plans_ignore_it(sim_sdata, tiny_central):
    central, _ = tiny_central
    kw = {"arms": ("real", "real+synthetic", "synthetic-only"), "n_repeats": 3}
    a = tiny_budget(sim_sdata, central, **kw)
    b = tiny_budget(sim_sdata, central, **kw)
    solo = a["condition"] == "synthetic-only"
    np.testing.assert_array_equal(a.loc[solo, "pearson_r"].to_numpy(), b.loc[solo, "pearson_r"].to_numpy())
    with_solo = c2lst.tl.plan_budget(a, margin=0.02)
    without = c2lst.tl.plan_budget(a[~solo], margin=0.02)
    assert with_solo["fraction"] == without["fraction"]
    np.testing.assert_array_equal(with_solo["gain"]["gain"].to_numpy(), without["gain"]["gain"].to_numpy())


def test_solo_arms_refuse_early_stopping(sim_sdata, tiny_central):
    central, _ = tiny_central
    assert_budget_refuses(sim_sdata, central,
                          {"arms": ("real", "synthetic-only"), "predictor_kwargs": {"n_steps": 2, "early_stopping": True}},
                          r"\['synthetic-only'\].*early stopping")


def test_solo_copy_with_unpaired_conditions_needs_their_patches(sim_sdata, tiny_central):
    central, _ = tiny_central
    other = c2lst.datasets.simulated_visium(n_spots=20, seed=5).tables["table"].copy()
    other.obs_names = [f"other_{n}" for n in other.obs_names]
    table = sim_sdata.tables["table"]
    before = state(table)
    with pytest.raises(KeyError, match=r"'copy-only'.*extract_patches"):
        tiny_budget(sim_sdata, central, arms=("real", "copy-only"), conditions=other)
    assert state(table) == before
