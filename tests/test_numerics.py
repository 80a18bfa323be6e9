"""Numerics: NaN/Inf in the loss or the gradients stops training at that step, keeping the last good checkpoint.

Engine level (``models.train.train``) with faults injected at a known step, and end to end (``tl.pretrain`` with
an absurd learning rate on fine patches). Complements the NaN-loss test of ``test_central.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from _reliability_helpers import assert_same, snapshot_adata
from safetensors.torch import load_file

import c2lst
from c2lst.models import CentralModel, TrainingDivergedError
from c2lst.models.train import TrainSettings, latest_checkpoint, step_generator, train


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``factor`` (NaN / Inf) in the backward pass."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _checkpoint_is_finite(ckpt: Path) -> bool:
    tensors = load_file(str(ckpt / "model.safetensors"))
    return all(bool(torch.isfinite(v).all()) for v in tensors.values())


@pytest.mark.parametrize(
    ("fault", "grad_clip"),
    [("loss-inf", 1.0), ("grad-nan", 1.0), ("grad-inf", 1.0), ("grad-nan", 0.0)],
    ids=["loss-inf", "grad-nan", "grad-inf", "grad-nan-without-clipping"],
)
def test_non_finite_step_stops_training_and_keeps_last_good_checkpoint(tmp_path, fault, grad_clip):
    bad_step = 3
    bad_seed = step_generator(0, bad_step).initial_seed()
    model = CentralModel.from_preset("tiny")

    def loss_fn(m, gen, dev):
        loss = m(torch.zeros(1, 3, 32, 32), torch.tensor([1])).pow(2).mean()
        if gen.initial_seed() != bad_seed:
            return loss
        if fault == "loss-inf":
            return loss * float("inf")
        return _ScaleGrad.apply(loss, float("nan") if fault == "grad-nan" else float("inf"))

    settings = TrainSettings(
        n_steps=6, batch_size=1, output_dir=tmp_path, checkpoint_every=1, grad_clip=grad_clip, progress=False
    )
    what = "loss became inf" if fault == "loss-inf" else "gradients became non-finite"
    with pytest.raises(TrainingDivergedError, match=rf"{what} at step {bad_step}; training stopped"):
        train(model, loss_fn, settings)
    newest = latest_checkpoint(tmp_path)
    assert newest.name == f"step_{bad_step}"  # written after steps 0..2: the last good one stays the newest
    assert _checkpoint_is_finite(newest)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_pretrain_that_diverges_names_the_step_and_writes_no_model(tmp_path):
    """End to end: fine patches, an absurd learning rate; the run stops at the first non-finite step."""
    patches = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    adata = ad.AnnData(obsm={"c2lst_patch": patches})
    before = snapshot_adata(adata)
    with pytest.raises(TrainingDivergedError, match=r"at step \d+; training stopped") as info:
        c2lst.tl.pretrain(
            adata,
            preset="tiny",
            n_steps=8,
            batch_size=4,
            lr=1e30,
            output_dir=tmp_path,
            checkpoint_every=1,
            progress=False,
        )
    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert 0 < step < 8
    newest = latest_checkpoint(tmp_path)
    assert newest.name == f"step_{step}"
    assert _checkpoint_is_finite(newest)
    assert not (tmp_path / "model").exists()
    assert_same(before, snapshot_adata(adata))  # nothing registered in the AnnData


def test_dpmsolver_fast_threshold_equals_stock():
    from diffusers import DPMSolverMultistepScheduler

    from c2lst.models.sampling import make_scheduler

    fast = make_scheduler("dpmsolver++", {"num_train_timesteps": 1000, "clip_sample": True})
    stock = DPMSolverMultistepScheduler.from_config(fast.config)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(fast._threshold_sample(x), stock._threshold_sample(x))
