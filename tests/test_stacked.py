"""Stacked batches: synthetic rows join the real batch a real-only fit draws, instead of thinning it.

With a fixed number of optimiser steps, shuffling ``k`` synthetic rows per spot in with the real ones visits each
real spot about ``1 / (1 + k)`` as often as a real-only fit does (issue 11: that, not the synthetic rows' content,
was most of the loss at 25 % of the spots). ``fit_predictor(batching="stacked")`` keeps the real batches of the
real-only fit and adds a batch of synthetic rows to each step; it is the CNN's default (``batching=None``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _eval_helpers import assert_budget_refuses, child_rows, make_table, tiny_budget
from _reliability_helpers import state as snapshot

import c2lst
from c2lst.models import ExpressionPredictor, _nets
from c2lst.models.train import epoch_rows

GENES = ["g_nuclei", "g_colour", "g_noise"]


@pytest.fixture(scope="module")
def real():
    return make_table(20, seed=0)


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.network.state_dict().items()}


def _schedule(monkeypatch) -> dict[int, list[int]]:
    """Record the rows of every step that ``fit_network`` hands to ``train``."""
    seen: dict[int, list[int]] = {}
    real_train = _nets.train

    def spy(net, loss_fn, settings, *, rows, callback=None):
        def schedule(step):
            idx = rows(step) if callable(rows) else epoch_rows(rows, settings.batch_size, settings.seed, step)
            seen[step] = idx.tolist()
            return idx

        return real_train(net, loss_fn, settings, rows=schedule, callback=callback)

    monkeypatch.setattr(_nets, "train", spy)
    return seen


# --------------------------------------------------------------------------- engine
def test_stacked_steps_hold_the_real_only_batch_plus_a_batch_of_the_others(monkeypatch):
    seen = _schedule(monkeypatch)
    table = make_table(40, seed=1)
    x, y = table.obsm["c2lst_patch"], table.obsm["c2lst_expr"]
    mask = np.zeros(40, dtype=bool)
    mask[::4] = True  # 10 stacked rows, 30 others
    model = ExpressionPredictor(GENES).fit(x, y, n_steps=12, batch_size=8, stack_mask=mask, seed=5, progress=False)
    assert model.training["stacked_rows"] == 10
    anchor, other = np.flatnonzero(mask), np.flatnonzero(~mask)
    for step in range(12):
        own = anchor[epoch_rows(10, 8, 5, step).numpy()].tolist()
        assert seen[step][: len(own)] == own  # the batch a fit on the stacked rows alone draws
        rest = seen[step][len(own):]
        assert len(rest) == (6 if step % 4 == 3 else 8) and set(rest) <= set(other.tolist())  # 30 = 8 + 8 + 8 + 6
    first_epoch = [i for s in range(4) for i in seen[s] if not mask[i]]  # 30 others in batches of 8: 4 steps
    assert sorted(first_epoch) == other.tolist()  # each other row once per epoch of its own


def test_stacking_keeps_how_often_the_real_rows_are_visited(real, monkeypatch):
    """Mixed: a quarter of the real-only visits with 3 synthetic rows per spot; stacked: all of them."""
    seen = _schedule(monkeypatch)
    syn = child_rows(real)
    kw = {"n_steps": 16, "batch_size": 20, "seed": 0, "progress": False}
    visits = {}
    for batching in ("mixed", "stacked"):
        seen.clear()
        c2lst.tl.fit_predictor([real, syn], batching=batching, synthetic_weight=0.3, **kw)
        visits[batching] = sum(i < real.n_obs for s in seen.values() for i in s)
    seen.clear()
    c2lst.tl.fit_predictor(real, **kw)
    alone = sum(len(s) for s in seen.values())
    assert alone == 16 * 20
    assert visits["stacked"] == alone
    assert visits["mixed"] == alone // 4


def test_stacked_real_batches_are_the_real_only_fit_batches(real, monkeypatch):
    seen = _schedule(monkeypatch)
    kw = {"n_steps": 10, "batch_size": 8, "seed": 2, "progress": False}
    c2lst.tl.fit_predictor(real, **kw)
    alone = dict(seen)
    seen.clear()
    c2lst.tl.fit_predictor([real, child_rows(real)], batching="stacked", **kw)
    for step in range(10):
        assert [i for i in seen[step] if i < real.n_obs] == alone[step]


def test_stacking_every_row_is_the_plain_fit_byte_for_byte(real):
    x, y = real.obsm["c2lst_patch"], real.obsm["c2lst_expr"]
    plain = ExpressionPredictor(GENES).fit(x, y, n_steps=6, progress=False)
    stacked = ExpressionPredictor(GENES).fit(x, y, n_steps=6, stack_mask=np.ones(real.n_obs, bool), progress=False)
    for k, v in _weights(plain).items():
        np.testing.assert_array_equal(v, _weights(stacked)[k])
    assert "stacked_rows" not in stacked.training  # nothing was stacked onto the rows


def test_stacked_epochs_count_passes_over_the_stacked_rows(real, monkeypatch):
    """Without ``n_steps`` a stacked fit takes the real-only fit's steps; its epochs are passes over the real rows."""
    seen = _schedule(monkeypatch)
    kw = {"n_epochs": 3, "batch_size": 8, "seed": 1, "progress": False}
    alone = c2lst.tl.fit_predictor(real, **kw)  # 20 real rows in batches of 8: 3 steps an epoch
    assert alone.training["n_steps"] == 9 and len(seen) == 9
    seen.clear()
    stacked = c2lst.tl.fit_predictor([real, child_rows(real)], batching="stacked", **kw)
    assert stacked.training["n_steps"] == 9 and len(seen) == 9
    assert stacked.training["n_epochs"] == 3 and len(stacked.training["loss_history"]) == 3
    visits = np.bincount([i for s in seen.values() for i in s if i < real.n_obs], minlength=real.n_obs)
    assert np.all(visits == 3)  # every real spot once per epoch, as alone
    mixed = c2lst.tl.fit_predictor([real, child_rows(real)], batching="mixed", **kw)  # 80 rows: 10 steps an epoch
    assert mixed.training["n_steps"] == 30 and mixed.training["n_epochs"] == 3


def test_stacked_and_staged_end_on_the_real_rows(monkeypatch):
    seen = _schedule(monkeypatch)
    table = make_table(24, seed=1)
    mask = np.arange(24) < 6
    model = ExpressionPredictor(GENES).fit(
        table.obsm["c2lst_patch"], table.obsm["c2lst_expr"], n_steps=20, batch_size=8, stack_mask=mask,
        finetune_mask=mask, finetune_fraction=0.25, progress=False,
    )
    assert model.training["finetune_steps"] == 5 and model.training["stacked_rows"] == 6
    assert all(set(range(6)) < set(seen[s]) for s in range(15))  # all 6 stacked rows and some others
    assert {i for s in range(15, 20) for i in seen[s]} == set(range(6))  # then the real rows alone


# --------------------------------------------------------------------------- fit_predictor
def test_the_cnn_stacks_by_default_and_records_the_batching(real):
    syn = child_rows(real)
    mixed = c2lst.tl.fit_predictor([real, syn], n_steps=4, batching="mixed", progress=False)
    assert mixed.training["batching"] == "mixed" and "stacked_rows" not in mixed.training
    stacked = c2lst.tl.fit_predictor([real, syn], n_steps=4, batching="stacked", progress=False)
    assert stacked.training["batching"] == "stacked" and stacked.training["stacked_rows"] == real.n_obs
    default = c2lst.tl.fit_predictor([real, syn], n_steps=4, progress=False)
    assert default.training["batching"] == "stacked"
    for k, v in _weights(stacked).items():
        np.testing.assert_array_equal(v, _weights(default)[k])
    ridge = c2lst.tl.fit_predictor([real, syn], mode="ridge", progress=False)  # no batches: nothing to stack
    assert ridge.training["batching"] is None


def test_real_only_tables_ignore_the_batching(real):
    a = c2lst.tl.fit_predictor(real, n_steps=4, batching="mixed", progress=False)
    b = c2lst.tl.fit_predictor(real, n_steps=4, batching="stacked", progress=False)
    for k, v in _weights(a).items():
        np.testing.assert_array_equal(v, _weights(b)[k])


def test_stacked_fits_are_deterministic_and_differ_from_mixed(real):
    syn = child_rows(real)
    a, b = (c2lst.tl.fit_predictor([real, syn], n_steps=6, batching="stacked", seed=3, progress=False)
            for _ in range(2))
    mixed = c2lst.tl.fit_predictor([real, syn], n_steps=6, batching="mixed", seed=3, progress=False)
    for k, v in _weights(a).items():
        np.testing.assert_array_equal(v, _weights(b)[k])
    assert any(not np.array_equal(v, _weights(mixed)[k]) for k, v in _weights(a).items())


def test_the_weight_choice_folds_are_stacked_too(real, monkeypatch):
    masks = []
    fit = ExpressionPredictor.fit

    def spy(self, *args, stack_mask=None, **kwargs):
        masks.append(stack_mask)
        return fit(self, *args, stack_mask=stack_mask, **kwargs)

    monkeypatch.setattr(ExpressionPredictor, "fit", spy)
    c2lst.tl.fit_predictor([real, child_rows(real)], synthetic_weight=(0.3, 1.0), batching="stacked", n_steps=2,
                           cv_folds=2, cv_split="random", progress=False)
    assert len(masks) == 2 * 2 + 1 and all(m is not None and m.any() and not m.all() for m in masks)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("batching", ["shuffled", "", 1, ("mixed",)])
def test_fit_predictor_refuses_an_unknown_batching(real, batching):
    syn = child_rows(real)
    before = snapshot(real), snapshot(syn)
    with pytest.raises(ValueError, match="batching="):
        c2lst.tl.fit_predictor([real, syn], n_steps=2, batching=batching, progress=False)
    assert (snapshot(real), snapshot(syn)) == before


def test_fit_predictor_refuses_stacking_a_ridge_head(real):
    with pytest.raises(ValueError, match=r"batching='stacked'.*mode='ridge'"):
        c2lst.tl.fit_predictor([real, child_rows(real)], mode="ridge", batching="stacked", progress=False)


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (np.ones(5, bool), "one value per patch"),
        (np.ones(20), "boolean"),
        (np.zeros(20, bool), "selects no row"),
    ],
)
def test_predictor_fit_refuses_a_bad_stack_mask(real, mask, match):
    model = ExpressionPredictor(GENES)
    with pytest.raises(ValueError, match=match):
        model.fit(real.obsm["c2lst_patch"], real.obsm["c2lst_expr"], n_steps=2, stack_mask=mask, progress=False)
    assert not model.is_fitted
    with pytest.raises(ValueError, match="ridge"):
        ExpressionPredictor(GENES, mode="ridge").fit(
            real.obsm["c2lst_patch"], real.obsm["c2lst_expr"], stack_mask=np.ones(20, bool), progress=False
        )


# --------------------------------------------------------------------------- budget curve and plan
def test_budget_curve_fits_each_batching_on_the_same_rows(sim_sdata, tiny_central):
    central, _ = tiny_central
    curve = tiny_budget(sim_sdata, central, batching=("mixed", "stacked"), predictor_kwargs={"n_steps": 4})
    real = curve[curve["condition"] == "real"]
    added = curve[curve["condition"] == "real+synthetic"]
    assert real["batching"].isna().all()
    assert sorted(added["batching"].unique()) == ["mixed", "stacked"]
    assert len(added) == 2 * 3  # two batchings x three repeats, on the same subsets
    by = added.set_index(["batching", "repeat"])
    np.testing.assert_array_equal(by.loc["mixed", "n_synthetic"], by.loc["stacked", "n_synthetic"])
    assert not np.array_equal(by.loc["mixed", "pearson_r"], by.loc["stacked", "pearson_r"])
    with pytest.raises(ValueError, match="batching="):
        c2lst.tl.plan_budget(curve)
    plan = c2lst.tl.plan_budget(curve, batching="stacked")
    assert tiny_budget(sim_sdata, central, predictor_kwargs={"n_steps": 4}).equals(
        curve[curve["batching"].isna() | (curve["batching"] == "stacked")].reset_index(drop=True)
    )  # the default is stacked, on the same rows
    assert set(plan["gain"]["fraction"]) == {0.5}
    with pytest.raises(ValueError, match="not in `curve`"):
        c2lst.tl.plan_budget(curve, batching="shuffled")
    old = curve.drop(columns="batching")[curve["batching"].isna() | (curve["batching"] == "mixed")]
    assert c2lst.tl.plan_budget(old)["n_repeats"] == 3  # curves from before the column still plan
    with pytest.raises(ValueError, match="no `batching` column"):
        c2lst.tl.plan_budget(old, batching="stacked")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batching": "shuffled"}, "batching="),
        ({"batching": ("mixed", "mixed")}, "distinct"),
        ({"batching": ("stacked", None)}, "distinct"),  # None is stacked for the CNN
        ({"batching": "stacked", "predictor_kwargs": {"mode": "ridge"}}, "mode='ridge'"),
        ({"predictor_kwargs": {"batching": "stacked"}}, "to `budget_curve` itself"),
    ],
)
def test_budget_curve_refuses_bad_batchings_before_any_work(sim_sdata, tiny_central, kwargs, match):
    assert_budget_refuses(sim_sdata, tiny_central[0], kwargs, match)
