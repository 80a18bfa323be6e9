"""Staged training of the CNN predictor: real and synthetic rows first, then the real rows alone.

``fit_predictor(real_finetune=s)`` spends the last share ``s`` of the optimiser steps on the real rows, so
synthetic rows shape the network and the real rows have the last word (issue 11: rows of another section
contradict the slide-specific genes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _eval_helpers import assert_budget_refuses, make_table, tiny_budget
from _reliability_helpers import state as snapshot

import c2lst
from c2lst.models import ExpressionPredictor, _nets

GENES = ["g_nuclei", "g_colour", "g_noise"]


@pytest.fixture(scope="module")
def real():
    return make_table(40, seed=0)


def _contradicting(real):
    """Synthetic rows: the real patches again, with every label negated (rows that teach the opposite)."""
    syn = real.copy()
    syn.obs_names = [f"syn_{i}" for i in range(syn.n_obs)]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = real.obs_names.to_numpy()
    expr = np.asarray(real.obsm["c2lst_expr"])
    syn.obsm["c2lst_expr"] = (2 * expr.mean(axis=0) - expr).astype(np.float32)
    return syn


def _weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.network.state_dict().items()}


# --------------------------------------------------------------------------- engine
def test_last_steps_visit_only_the_finetune_rows(monkeypatch):
    seen: dict[int, list[int]] = {}
    real_train = _nets.train

    def spy(net, loss_fn, settings, *, rows, callback=None):
        def schedule(step):
            idx = rows(step)
            seen[step] = idx.tolist()
            return idx

        return real_train(net, loss_fn, settings, rows=schedule, callback=callback)

    monkeypatch.setattr(_nets, "train", spy)
    table = make_table(24, seed=1)
    mask = np.zeros(24, dtype=bool)
    mask[[2, 5, 7, 11, 13]] = True
    model = ExpressionPredictor(GENES).fit(
        table.obsm["c2lst_patch"], table.obsm["c2lst_expr"], n_steps=20, batch_size=8, finetune_mask=mask,
        finetune_fraction=0.25, progress=False,
    )
    assert model.training["finetune_steps"] == 5 and len(seen) == 20
    early = sorted({i for s in range(15) for i in seen[s]})
    assert early == list(range(24))  # every row while mixing
    late = [i for s in range(15, 20) for i in seen[s]]
    assert set(late) == {2, 5, 7, 11, 13}  # then only the fine-tuning rows, each epoch once
    assert sorted(late) == sorted([2, 5, 7, 11, 13] * 5)


def test_the_finetuning_stage_has_a_schedule_of_its_own(monkeypatch):
    from c2lst.models import train as train_module

    calls = []
    factor = train_module.lr_factor

    def spy(step, n_steps, warmup_steps=0, schedule="constant"):
        calls.append((step, n_steps, warmup_steps, schedule))
        return factor(step, n_steps, warmup_steps, schedule)

    monkeypatch.setattr(train_module, "lr_factor", spy)
    table = make_table(24, seed=1)
    ExpressionPredictor(GENES).fit(
        table.obsm["c2lst_patch"], table.obsm["c2lst_expr"], n_steps=40, finetune_mask=np.arange(24) < 6,
        finetune_fraction=0.25, progress=False,
    )
    assert calls[:30] == [(s, 40, 2, "cosine") for s in range(30)]  # one schedule while mixing
    assert calls[30:] == [(s, 10, 2, "cosine") for s in range(10)]  # then warm-up and cosine again


def test_share_zero_is_the_unstaged_fit_byte_for_byte(real):
    x, y = real.obsm["c2lst_patch"], real.obsm["c2lst_expr"]
    mask = np.arange(real.n_obs) < 10
    plain = ExpressionPredictor(GENES).fit(x, y, n_steps=6, progress=False)
    zero = ExpressionPredictor(GENES).fit(x, y, n_steps=6, finetune_mask=mask, finetune_fraction=0.0, progress=False)
    for k, v in _weights(plain).items():
        np.testing.assert_array_equal(v, _weights(zero)[k])
    assert "finetune_steps" not in zero.training


def test_staged_fit_ends_on_what_the_real_rows_teach(real):
    """Contradicting rows cancel the signal when mixed; a real-only last half restores it."""
    syn = _contradicting(real)
    kw = {"n_steps": 80, "synthetic_weight": 1.0, "seed": 0, "progress": False}
    mixed = c2lst.tl.fit_predictor([real, syn], real_finetune=0.0, **kw)
    staged = c2lst.tl.fit_predictor([real, syn], real_finetune=0.5, **kw)
    truth = np.asarray(real.obsm["c2lst_expr"])[:, 0]
    r = {name: np.corrcoef(m.predict(real.obsm["c2lst_patch"])[:, 0], truth)[0, 1]
         for name, m in (("mixed", mixed), ("staged", staged))}
    assert r["staged"] > 0.5
    assert r["staged"] > r["mixed"] + 0.3
    assert staged.training["finetune_steps"] == 40 and staged.training["n_steps"] == 80


def test_real_only_tables_ignore_the_share(real):
    a = c2lst.tl.fit_predictor(real, n_steps=4, progress=False)
    b = c2lst.tl.fit_predictor(real, n_steps=4, real_finetune=0.5, progress=False)
    for k, v in _weights(a).items():
        np.testing.assert_array_equal(v, _weights(b)[k])
    assert "finetune_steps" not in b.training


def test_the_weight_choice_folds_are_staged_too(real, monkeypatch):
    shares = []
    fit = ExpressionPredictor.fit

    def spy(self, *args, finetune_fraction=0.0, **kwargs):
        shares.append(finetune_fraction)
        return fit(self, *args, finetune_fraction=finetune_fraction, **kwargs)

    monkeypatch.setattr(ExpressionPredictor, "fit", spy)
    model = c2lst.tl.fit_predictor([real, _contradicting(real)], synthetic_weight=(0.3, 1.0), real_finetune=0.25,
                                   n_steps=4, cv_folds=2, progress=False)
    assert len(shares) == 2 * 2 + 1 and set(shares) == {0.25}
    assert model.training["finetune_steps"] == 1


def test_staged_training_is_deterministic_on_cpu(real):
    syn = _contradicting(real)
    a, b = (c2lst.tl.fit_predictor([real, syn], n_steps=6, real_finetune=0.5, seed=3, progress=False)
            for _ in range(2))
    for k, v in _weights(a).items():
        np.testing.assert_array_equal(v, _weights(b)[k])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5, math.nan, True, "half"])
def test_fit_predictor_refuses_a_bad_share(real, share):
    before = snapshot(real)
    with pytest.raises(ValueError, match="real_finetune"):
        c2lst.tl.fit_predictor([real, _contradicting(real)], n_steps=2, real_finetune=share, progress=False)
    assert snapshot(real) == before


def test_fit_predictor_refuses_a_share_for_ridge(real):
    with pytest.raises(ValueError, match=r"real_finetune=0\.3.*mode='ridge'"):
        c2lst.tl.fit_predictor([real, _contradicting(real)], mode="ridge", real_finetune=0.3, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"finetune_fraction": 0.5}, "needs `finetune_mask`"),
        ({"finetune_fraction": 0.5, "finetune_mask": np.ones(5, bool)}, "one value per patch"),
        ({"finetune_fraction": 0.5, "finetune_mask": np.ones(40)}, "boolean"),
        ({"finetune_fraction": 0.5, "finetune_mask": np.arange(40) == 3}, "selects 1 row"),
        ({"finetune_fraction": 1.0, "finetune_mask": np.ones(40, bool)}, r"\[0, 1\)"),
    ],
)
def test_predictor_fit_refuses_bad_staging(real, kwargs, match):
    model = ExpressionPredictor(GENES)
    with pytest.raises(ValueError, match=match):
        model.fit(real.obsm["c2lst_patch"], real.obsm["c2lst_expr"], n_steps=2, progress=False, **kwargs)
    assert not model.is_fitted


def test_predictor_fit_refuses_staging_a_ridge_head(real):
    with pytest.raises(ValueError, match="ridge"):
        ExpressionPredictor(GENES, mode="ridge").fit(
            real.obsm["c2lst_patch"], real.obsm["c2lst_expr"], finetune_mask=np.ones(40, bool),
            finetune_fraction=0.5, progress=False,
        )


def test_train_takes_a_row_schedule():
    from c2lst.models.train import TrainSettings, train

    net = torch.nn.Linear(2, 1)
    x = torch.arange(20.0).reshape(10, 2)
    seen = []

    def loss_fn(model, idx, gen, dev):
        seen.append(idx.tolist())
        return model(x[idx]).pow(2).mean()

    settings = TrainSettings(n_steps=3, batch_size=2, lr=1e-3, ema=False, progress=False)
    train(net, loss_fn, settings, rows=lambda step: torch.tensor([step, step + 1]))
    assert seen == [[0, 1], [1, 2], [2, 3]]


# --------------------------------------------------------------------------- budget curve and plan
def test_budget_curve_fits_each_share_on_the_same_rows(sim_sdata, tiny_central):
    central, _ = tiny_central
    curve = tiny_budget(sim_sdata, central, real_finetune=(0.0, 0.5), predictor_kwargs={"n_steps": 4})
    real = curve[curve["condition"] == "real"]
    added = curve[curve["condition"] == "real+synthetic"]
    assert real["real_finetune"].isna().all()
    assert sorted(added["real_finetune"].unique()) == [0.0, 0.5]
    assert len(added) == 2 * 3  # two shares x three repeats, on the same subsets
    by = added.set_index(["real_finetune", "repeat"])
    np.testing.assert_array_equal(by.loc[0.0, "n_synthetic"], by.loc[0.5, "n_synthetic"])
    with pytest.raises(ValueError, match="real_finetune="):
        c2lst.tl.plan_budget(curve)
    plan = c2lst.tl.plan_budget(curve, real_finetune=0.5)
    assert set(plan["gain"]["fraction"]) == {0.5}
    with pytest.raises(ValueError, match="not in `curve`"):
        c2lst.tl.plan_budget(curve, real_finetune=0.25)
    old = curve.drop(columns="real_finetune")[curve["real_finetune"].isna() | (curve["real_finetune"] == 0)]
    assert c2lst.tl.plan_budget(old)["n_repeats"] == 3  # curves from before the column still plan
    with pytest.raises(ValueError, match="no `real_finetune` column"):
        c2lst.tl.plan_budget(old, real_finetune=0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"real_finetune": 1.0}, r"\[0, 1\)"),
        ({"real_finetune": (0.3, 0.3)}, "distinct"),
        ({"real_finetune": 0.3, "predictor_kwargs": {"mode": "ridge"}}, "mode='ridge'"),
        ({"predictor_kwargs": {"real_finetune": 0.3}}, "to `budget_curve` itself"),
    ],
)
def test_budget_curve_refuses_bad_shares_before_any_work(sim_sdata, tiny_central, kwargs, match):
    assert_budget_refuses(sim_sdata, tiny_central[0], kwargs, match)


def test_the_default_mixes_throughout_and_records_the_share(real):
    syn = _contradicting(real)
    default = c2lst.tl.fit_predictor([real, syn], n_steps=6, progress=False)
    assert default.training["real_finetune"] == 0.0 and "finetune_steps" not in default.training
    staged = c2lst.tl.fit_predictor([real, syn], n_steps=6, real_finetune=0.33, progress=False)
    assert staged.training["real_finetune"] == 0.33 and staged.training["finetune_steps"] == 2
