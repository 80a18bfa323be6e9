"""Engine entry points used by ``tl`` (issue 12): ``fit_denoiser``, ``LocalModel.generate``, ``encode_patches``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import c2lst
from c2lst.models import CentralModel, LocalModel, fit_denoiser


def _patches(n=8, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def busy_local():
    """A tiny local model whose LoRA and encoder are non-trivial (an untrained one equals the central model)."""
    central = CentralModel.from_preset("tiny", seed=0)
    local = LocalModel(central, ["a", "b", "c"], seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in local.named_parameters():
            if "lora_B" in name or "encoder.net.3" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return local.eval()


# ----------------------------------------------------------------------------------------------- fit_denoiser
def test_fit_denoiser_is_what_pretrain_runs():
    patches = _patches()
    kw = {"n_steps": 2, "batch_size": 4, "lr": 2e-4, "seed": 3}
    via_tl = c2lst.tl.pretrain(patches, preset="tiny", progress=False, **kw)
    model = CentralModel.from_preset("tiny", seed=3)
    result = fit_denoiser(model, patches, progress=False, **kw)
    assert result.steps == 2 and not model.training
    assert _same(_state(model), _state(via_tl))
    assert result.summary()["loss_curve"] == via_tl.training_summary["loss_curve"]


def test_fit_denoiser_trains_only_the_adapters():
    central = CentralModel.from_preset("tiny", seed=0)
    local = LocalModel(central, ["a", "b"], seed=0)
    frozen = {k: v.clone() for k, v in local.central.state_dict().items() if "lora_" not in k}
    patches = _patches(6)
    expr = np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32)
    before = local.adapter_state()
    result = fit_denoiser(
        local, patches, conditions=expr, unlabelled=_patches(4, seed=2), n_steps=2, batch_size=4, lr=1e-3,
        progress=False,
    )  # fmt: skip
    assert result.steps == 2
    after_central = local.central.state_dict()
    assert all(torch.equal(frozen[k], after_central[k]) for k in frozen)
    after = local.adapter_state()
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    np.testing.assert_allclose(local.encoder.mean.numpy(), expr.mean(0), rtol=1e-6)


def test_biased_timesteps_density():
    """Density ~ t**bias: mean at (1 + b) / (2 + b) of the schedule, inside [0, T), seeded."""
    from c2lst.models.diffusion import biased_timesteps

    for bias, mean in ((0.0, 1 / 2), (1.0, 2 / 3), (2.0, 3 / 4)):
        t = biased_timesteps(20_000, 1000, bias, torch.Generator().manual_seed(0))
        assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
        assert abs(t.float().mean().item() / 1000 - mean) < 0.01
    again = biased_timesteps(50, 1000, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(again, biased_timesteps(50, 1000, 1.0, torch.Generator().manual_seed(0)))
    assert torch.equal(biased_timesteps(3, 10, 5.0, None, uniform=torch.tensor([0.0, 0.5, 0.9999])),
                       torch.tensor([0, 8, 9]))


def test_fit_denoiser_timestep_bias_moves_conditioned_rows_only(monkeypatch):
    """Rows that keep their condition draw high noise; dropped (null) and unlabelled rows stay uniform."""
    import c2lst.models.fit as fit_mod

    seen = []
    original = fit_mod.denoising_loss

    def spy(model, scheduler, clean, generator, condition=None, timesteps=None):
        seen.append((timesteps, condition[1].cpu()))
        return original(model, scheduler, clean, generator, condition=condition, timesteps=timesteps)

    monkeypatch.setattr(fit_mod, "denoising_loss", spy)
    expr = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)

    def run(bias):
        seen.clear()
        local = LocalModel(CentralModel.from_preset("tiny", seed=0), ["a", "b"], seed=0, cond_dropout=0.5)
        fit_denoiser(local, _patches(8), conditions=expr, unlabelled=_patches(4, seed=2), unlabelled_fraction=0.25,
                     n_steps=12, batch_size=8, lr=1e-3, timestep_bias=bias, progress=False)
        return local.adapter_state(), list(seen)

    plain, calls = run(0.0)
    assert all(t is None for t, _ in calls)  # bias 0: the loss draws its own uniform timesteps, as before
    biased, calls = run(3.0)
    t = torch.cat([c[0] for c in calls]).float()
    drop = torch.cat([c[1] for c in calls])
    assert drop[-2:].all() and 0 < int((~drop).sum()) < len(drop)  # unlabelled rows (the last 2) always dropped
    assert t[~drop].mean() > 700 and 300 < t[drop].mean() < 700  # mean 0.8 T when kept, 0.5 T when dropped
    assert any(not np.array_equal(plain[k], biased[k]) for k in plain)
    again, _ = run(3.0)
    assert all(np.array_equal(biased[k], again[k]) for k in biased)


def test_denoising_loss_refuses_misshapen_timesteps():
    from c2lst.models.diffusion import denoising_loss

    model = CentralModel.from_preset("tiny", seed=0)
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"`timesteps` must have shape \(2,\)"):
        denoising_loss(model, model.noise_scheduler, x, torch.Generator(), timesteps=torch.zeros(3))


_BAD = [
    ({"model": "central"}, TypeError, "`model`"),
    ({"patches": np.zeros((2, 32, 32, 3), np.float32)}, TypeError, "`patches`"),
    ({"patches": np.zeros((2, 16, 16, 3), np.uint8)}, ValueError, "`patches`.*16 px.*32 px"),
    ({"patches": np.zeros((0, 32, 32, 3), np.uint8)}, ValueError, "`patches`"),
    ({"n_steps": 0}, ValueError, "`n_steps`"),
    ({"batch_size": 1.5}, TypeError, "`batch_size`"),
    ({"lr": -1.0}, ValueError, "`lr`"),
    ({"seed": -1}, TypeError, "`seed`"),
    ({"mixed_precision": "fp8"}, ValueError, "`mixed_precision"),
    ({"unlabelled_fraction": 1.0}, ValueError, "`unlabelled_fraction`"),
    ({"conditions": np.zeros((4, 2))}, ValueError, "`conditions`.*LocalModel only"),
    ({"encoder_lr": 1e-3}, ValueError, "`encoder_lr`.*LocalModel only"),
    ({"timestep_bias": 1.0}, ValueError, "`timestep_bias`.*LocalModel only"),
    ({"timestep_bias": -1.0}, ValueError, "`timestep_bias`"),
    ({"condition_noise": 0.5}, ValueError, "`condition_noise`.*LocalModel only"),
    ({"condition_noise": -1.0}, ValueError, "`condition_noise`"),
]


@pytest.mark.parametrize(("kwargs", "exc", "match"), _BAD)
def test_fit_denoiser_refuses_bad_input_before_training(kwargs, exc, match):
    model = CentralModel.from_preset("tiny", seed=0)
    before = _state(model)
    args = {"model": model, "patches": _patches(4), "n_steps": 1, "batch_size": 2, "lr": 1e-4, "progress": False}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fit_denoiser(args.pop("model"), args.pop("patches"), **args)
    assert _same(before, _state(model))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "`conditions` is required"),
        ({"conditions": np.zeros((4, 3), np.float32)}, r"`conditions`.*\(4, 2\)"),
        ({"conditions": np.full((4, 2), np.nan, np.float32)}, "`conditions` contains NaN"),
        ({"conditions": np.zeros((4, 2)), "unlabelled": _patches(2, size=16)}, "`unlabelled`"),
    ],
)
def test_fit_denoiser_refuses_bad_local_input(kwargs, match):
    local = LocalModel(CentralModel.from_preset("tiny", seed=0), ["a", "b"])
    before = local.adapter_state()
    with pytest.raises(ValueError, match=match):
        fit_denoiser(local, _patches(4), n_steps=1, batch_size=2, lr=1e-4, progress=False, **kwargs)
    after = local.adapter_state()
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------- generate
def _close(a, b):
    """Equal up to float rounding of batched convolutions: at most one grey level on a rare pixel."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())


def test_generate_rows_are_seeded_per_row(busy_local):
    expr = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    kw = {"steps": 3, "guidance_scale": 2.0, "seed": 11}
    a = busy_local.generate(expr, n_per_condition=2, batch_size=4, **kw)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, busy_local.generate(expr, n_per_condition=2, batch_size=4, **kw))
    # the reference: the one sampler with one generator per row (what tl.synthesize ran before issue 12)
    with torch.inference_mode():
        emb = busy_local.condition(torch.from_numpy(np.repeat(expr, 2, axis=0)))
    gens = [torch.Generator().manual_seed(11 + i) for i in range(6)]
    ref = busy_local.central.sample(6, steps=3, condition=emb, guidance_scale=2.0, generator=gens, batch_size=4)
    np.testing.assert_array_equal(a, ref)
    # independent of the batch size, and row i is profile i // 2 drawn with seed 11 + i whatever else is drawn
    _close(a, busy_local.generate(expr, n_per_condition=2, batch_size=1, **kw))
    alone = busy_local.generate(expr[2:], n_per_condition=1, seed=11 + 4, steps=3, guidance_scale=2.0)
    _close(a[4:5], alone)
    assert np.abs(a[0].astype(int) - a[1].astype(int)).mean() > 5  # replicates of one profile differ


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"expr": np.zeros((2, 4), np.float32)}, ValueError, "`expr`"),
        ({"expr": np.full((2, 3), np.inf, np.float32)}, ValueError, "`expr` contains NaN"),
        ({"n_per_condition": 0}, ValueError, "`n_per_condition`"),
        ({"seed": 2**63 - 1}, ValueError, "`seed="),
        ({"scheduler": "euler"}, ValueError, "`scheduler="),
        ({"guidance_scale": -1.0}, ValueError, "`guidance_scale`"),
    ],
)
def test_generate_bad_input(busy_local, kwargs, exc, match):
    args = {"expr": np.zeros((2, 3), np.float32), "steps": 1, **kwargs}
    with pytest.raises(exc, match=match):
        busy_local.generate(args.pop("expr"), **args)


def test_encode_patches_pixel_mode_keeps_uint8():
    model = CentralModel.from_preset("tiny", seed=0)
    p = _patches(3)
    t = model.encode_patches(p)
    assert t.dtype == torch.uint8 and tuple(t.shape) == (3, 3, 32, 32)
    np.testing.assert_array_equal(t.permute(0, 2, 3, 1).numpy(), p)
