"""``models.train.train``: the one loop, its epoch-wise row batches, schedule, skipped steps and early stop."""

from __future__ import annotations

import math

import pytest
import torch

from c2lst.models.train import (
    TrainSettings,
    dihedral,
    dihedral_transform,
    epoch_rows,
    latest_checkpoint,
    lr_factor,
    step_generator,
    train,
)

X = torch.linspace(-1, 1, 12)[:, None]
Y = 3 * X - 1


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(1, 1)


def _loss(model, idx, gen, dev):
    return ((model(X[idx].to(dev)) - Y[idx].to(dev)) ** 2).mean()


def _settings(**kw) -> TrainSettings:
    base = {"n_steps": 12, "batch_size": 5, "lr": 0.05, "ema": False, "progress": False, "device": "cpu"}
    return TrainSettings(**{**base, **kw})


def test_epoch_rows_visit_every_row_once_per_epoch_and_depend_on_the_step_only():
    per_epoch = math.ceil(12 / 5)
    for epoch in range(3):
        rows = torch.cat([epoch_rows(12, 5, 7, epoch * per_epoch + i) for i in range(per_epoch)])
        assert sorted(rows.tolist()) == list(range(12))
    assert torch.equal(epoch_rows(12, 5, 7, 4), epoch_rows(12, 5, 7, 4))
    assert not torch.equal(epoch_rows(12, 12, 7, 0), epoch_rows(12, 12, 7, 1))  # reshuffled each epoch
    assert len(epoch_rows(3, 10, 0, 0)) == 3  # batch larger than the rows: one batch per epoch


def test_lr_factor_warms_up_then_follows_the_schedule():
    assert [lr_factor(s, 10, 2) for s in range(3)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0
    assert lr_factor(9, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    with pytest.raises(ValueError, match="lr_schedule"):
        train(_model(), _loss, _settings(lr_schedule="linear"), rows=12)


def test_rows_training_is_deterministic_and_learns():
    a, b = _model(), _model()
    kw = {"n_steps": 90, "lr": 0.3, "lr_schedule": "cosine", "warmup_steps": 3}
    ra = train(a, _loss, _settings(**kw), rows=12)
    train(b, _loss, _settings(**kw), rows=12)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert ra.steps == 90 and max(ra.losses[-3:]) < ra.losses[0] / 10


def test_a_loss_of_none_skips_the_step():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    result = train(model, lambda m, idx, gen, dev: None, _settings(), rows=12)
    assert result.steps == 0 and result.losses == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_callback_stops_the_run_and_resume_continues_exactly(tmp_path):
    full = _model()
    train(full, _loss, _settings(output_dir=tmp_path / "a", checkpoint_every=4), rows=12)
    seen = []

    def stop_at_8(done, loss):
        seen.append(done)
        return done == 8  # as if the run were killed right after the step-8 checkpoint

    part = _model()
    result = train(part, _loss, _settings(output_dir=tmp_path / "b", checkpoint_every=4), rows=12, callback=stop_at_8)
    assert seen == list(range(1, 9)) and result.steps == 8
    assert latest_checkpoint(tmp_path / "b").name == "step_8"
    resumed = _model(seed=1)  # other initial weights: everything comes from the checkpoint
    again = train(resumed, _loss, _settings(output_dir=tmp_path / "b", checkpoint_every=4), rows=12)
    assert again.resumed_from == 8 and again.steps == 12
    assert all(torch.equal(full.state_dict()[k], resumed.state_dict()[k]) for k in full.state_dict())


def test_stop_after_is_gone():
    with pytest.raises(TypeError):
        TrainSettings(n_steps=1, batch_size=1, stop_after=1)


def test_one_dihedral_implementation():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(6, 1, 1, 1)
    gen, again = step_generator(0, 3), step_generator(0, 3)
    k = torch.randint(0, 4, (6,), generator=again)
    flip = torch.randint(0, 2, (6,), generator=again).bool()
    # "flip, then k quarter turns" (what the denoisers always drew) equals dihedral_transform's "turn -k, flip"
    expected = torch.stack(
        [torch.rot90(xi.flip(-1) if f else xi, int(ki), dims=(-2, -1)) for xi, ki, f in zip(x, k, flip, strict=True)]
    )
    assert torch.equal(dihedral(x, gen), expected)
    assert torch.equal(dihedral_transform(x, torch.zeros(6, dtype=torch.long)), x)


def test_total_steps_counts_epochs_unless_steps_are_fixed():
    """An epoch is ceil(rows / batch) steps (a last short batch counts); n_steps overrides the epochs."""
    from c2lst.models.train import epoch_steps, total_steps

    assert epoch_steps(33, 16) == 3 and epoch_steps(5, 16) == 1
    assert total_steps(None, 30, 33, 16) == 90
    assert total_steps(7, 30, 33, 16) == 7
