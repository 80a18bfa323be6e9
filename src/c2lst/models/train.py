"""One accelerate-based training loop shared by central pretraining, local adaptation and the predictor.

Randomness is *stateless*: every step draws its batch, augmentation, noise and dropout from a generator seeded
by ``(seed, step, process)``, epoch-wise row batches (``rows=``) from a permutation seeded by ``(seed, epoch)``
and the learning rate is a function of the step. A run resumed from a checkpoint therefore continues exactly as
the uninterrupted run would, and the same seed gives the same bytes on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checkpoint import check_resume, latest_checkpoint, load_checkpoint, set_aside_old_checkpoints
from ._checkpoint import save_checkpoint as _save_checkpoint  # patched by tests/_fault_scripts

__all__ = [
    "TrainSettings",
    "TrainingDivergedError",
    "dihedral",
    "dihedral_transform",
    "epoch_rows",
    "epoch_steps",
    "latest_checkpoint",
    "lr_factor",
    "step_generator",
    "total_steps",
    "train",
]

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")


class TrainingDivergedError(FloatingPointError):
    """Raised when the loss or the gradients become NaN/Inf; no weights are saved after that step."""


@dataclass
class TrainSettings:
    """Options of :func:`train` (validated by the public ``tl`` functions that build it)."""

    n_steps: int
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: bool = True
    ema_decay: float = 0.999
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    mixed_precision: str = "no"
    seed: int = 0
    output_dir: str | Path | None = None
    resume: bool = True
    progress: bool = True
    desc: str = "training"
    device: str | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: learning-rate multipliers by parameter-name prefix (e.g. ``{"encoder.": 5.0}``); others use ``lr``
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    #: ``"constant"`` or ``"cosine"`` (to 0 at ``n_steps``), after ``warmup_steps`` of linear warm-up (see
    #: :func:`lr_factor`)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    #: step at which the schedule starts again (warm-up, then the schedule over the remaining steps), e.g. a
    #: fine-tuning stage; ``None``: one schedule over all steps
    lr_restart: int | None = None


@dataclass
class TrainResult:
    """What a finished :func:`train` call reports."""

    losses: list[float]
    steps: int
    resumed_from: int
    seconds: float
    device: str

    def summary(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (loss curve downsampled to at most 200 points)."""
        losses = np.asarray(self.losses, dtype=float)
        idx = np.unique(np.linspace(0, max(len(losses) - 1, 0), min(len(losses), 200)).astype(int))
        k = max(1, min(10, len(losses) // 5))
        return {
            "steps": int(self.steps),
            "resumed_from": int(self.resumed_from),
            "seconds": round(float(self.seconds), 3),
            "device": self.device,
            "loss_first": float(losses[:k].mean()) if len(losses) else float("nan"),
            "loss_last": float(losses[-k:].mean()) if len(losses) else float("nan"),
            "loss_curve_steps": idx.tolist(),
            "loss_curve": losses[idx].round(6).tolist() if len(losses) else [],
        }


def step_generator(seed: int, step: int, process: int = 0) -> torch.Generator:
    """Return a CPU generator seeded by ``(seed, step, process)``."""
    state = np.random.SeedSequence([int(seed), int(step), int(process)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def dihedral_transform(x: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Apply one of the 8 dihedral transforms per image: ``ops % 4`` quarter turns, then a flip if ``ops >= 4``.

    Parameters
    ----------
    x
        Images ``(B, C, H, W)`` with ``H == W``.
    ops
        Integer tensor ``(B,)`` with values in ``[0, 8)``.

    Returns
    -------
    The transformed images (a new tensor).

    Examples
    --------
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> dihedral_transform(x, torch.tensor([4]))[0, 0].tolist()
    [[1.0, 0.0], [3.0, 2.0]]
    """
    ops = ops.to(x.device)
    out = x.clone()
    for op in range(1, 8):
        sel = ops == op
        if not bool(sel.any()):
            continue
        y = torch.rot90(x[sel], k=op % 4, dims=(-2, -1))
        out[sel] = torch.flip(y, dims=(-1,)) if op >= 4 else y
    return out


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply a random element of the dihedral group (flips, 90° rotations) to each image of ``(B, C, H, W)``.

    Draws ``k`` quarter turns and a flip per image from ``generator`` and applies "flip, then turn ``k``" with
    :func:`dihedral_transform` (the same transform is "turn ``-k``, then flip").
    """
    b = x.shape[0]
    k = torch.randint(0, 4, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    return dihedral_transform(x, torch.where(flip, (4 - k) % 4 + 4, k))


def epoch_rows(n_rows: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Return the row indices of ``step``'s batch when ``n_rows`` rows are visited once per epoch.

    Each epoch shuffles the rows with a permutation seeded by ``(seed, epoch)`` and cuts it into
    ``ceil(n_rows / batch_size)`` batches (the last one may be smaller), so the batch is a function of the step
    alone and a resumed run draws the same batches.

    Examples
    --------
    >>> sorted(torch.cat([epoch_rows(5, 2, 0, s) for s in range(3)]).tolist())
    [0, 1, 2, 3, 4]
    """
    bs = min(int(batch_size), int(n_rows))
    epoch, pos = divmod(int(step), math.ceil(n_rows / bs))
    return _epoch_permutation(int(n_rows), int(seed), epoch)[pos * bs : (pos + 1) * bs]


def epoch_steps(n_rows: int, batch_size: int) -> int:
    """Return the optimiser steps of one epoch over ``n_rows`` rows in batches of ``batch_size``.

    The last batch may be smaller, so it is ``ceil(n_rows / min(batch_size, n_rows))``, as :func:`epoch_rows` cuts.
    """
    return math.ceil(int(n_rows) / min(int(batch_size), int(n_rows)))


def total_steps(n_steps: int | None, n_epochs: int, n_rows: int, batch_size: int) -> int:
    """Return a fit's optimiser steps: ``n_steps`` when given, else ``n_epochs`` epochs over ``n_rows`` rows.

    The one rule of :meth:`~c2lst.models.ExpressionPredictor.fit` and of early stopping's step cap; the caller
    says which rows an epoch passes over (all of them, or the real rows when synthetic rows are stacked).
    """
    return int(n_steps) if n_steps is not None else int(n_epochs) * epoch_steps(n_rows, batch_size)


def _epoch_permutation(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    # a stream of its own (the trailing 1), apart from the per-step generators
    state = np.random.SeedSequence([seed, epoch, 0, 1]).generate_state(1, dtype=np.uint64)[0]
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(int(state)))


def lr_factor(step: int, n_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """Return the learning-rate multiplier of ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(n_steps - warmup_steps, 1)))
    return 1.0


def check_mixed_precision(mixed_precision: Any, device: str | None = None) -> str:
    """Return ``mixed_precision`` or raise a :class:`ValueError` naming it (call it before anything is written).

    ``device`` is validated too (an unknown device, or CUDA on a machine without one, is a :class:`ValueError`).
    """
    from .._utils import check_device

    check_device(device)
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"`mixed_precision={mixed_precision!r}` is invalid; use one of {list(MIXED_PRECISION)}."
        )
    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if cpu and mixed_precision == "fp16":
        raise ValueError("`mixed_precision='fp16'` needs a GPU; on CPU use 'bf16' or 'no'.")
    return mixed_precision


def _accelerator(settings: TrainSettings):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    check_mixed_precision(settings.mixed_precision, settings.device)
    cpu = settings.device == "cpu" or (settings.device is None and not torch.cuda.is_available())
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    elif AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=settings.mixed_precision, cpu=cpu)


def train(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor | None],
    settings: TrainSettings,
    *,
    rows: int | Callable[[int], torch.Tensor] | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
) -> TrainResult:
    """Optimise the trainable parameters of ``model`` with AdamW for ``settings.n_steps`` steps.

    The loop adds accelerate (device placement, mixed precision, DDP), a learning-rate schedule
    (``settings.lr_schedule``, ``warmup_steps``), gradient clipping, a NaN/Inf guard, diffusers ``EMAModel`` over
    the trainable parameters (``settings.ema``; copied into the model at the end), periodic atomic checkpoints
    (``accelerator.save_state`` + EMA/loss state in safetensors; only with ``settings.output_dir``) and exact
    resume.

    Parameters
    ----------
    model
        The module to train in place.
    loss_fn
        ``loss_fn(model, generator, device)`` draws its batch with ``generator`` (seeded by the step) and returns
        a scalar loss. With ``rows``, ``loss_fn(model, indices, generator, device)`` gets the row indices of the
        step's batch. It may return ``None`` to skip the step (e.g. a batch whose rows all weigh 0): no update,
        no loss recorded.
    settings
        The options; see :class:`TrainSettings`.
    rows
        Number of training rows: each step takes the next ``settings.batch_size`` rows of an epoch-wise shuffle
        (:func:`epoch_rows`), so every row is seen once per epoch. A callable ``rows(step)`` returns the step's
        row indices itself (e.g. a schedule that changes the rows mid-run). ``None``: ``loss_fn`` draws its own
        batch.
    callback
        Called as ``callback(steps_done, loss)`` after every step (and its checkpoint); returning ``True`` ends
        the run there, as if it were interrupted (early stopping). ``loss`` is NaN for a skipped step.

    Returns
    -------
    The losses, the number of steps taken, the step resumed from, the wall time and the device.
    """
    from .._logging import logger, progress

    if settings.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"`lr_schedule={settings.lr_schedule!r}` is invalid; use one of {list(LR_SCHEDULES)}.")
    out = Path(settings.output_dir) if settings.output_dir is not None else None
    start_ckpt = None
    if out is not None:
        start_ckpt = check_resume(out, settings.n_steps, settings.resume, settings.fingerprint)  # raises before anything is written
    accelerator = _accelerator(settings)
    if out is not None and not settings.resume and accelerator.is_main_process:
        set_aside_old_checkpoints(out)
    accelerator.wait_for_everyone()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise ValueError("the model has no trainable parameters.")
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in named:
        mult = next((m for pre, m in settings.lr_multipliers.items() if name.startswith(pre)), 1.0)
        groups.setdefault(float(mult), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": settings.lr * m} for m, ps in groups.items()],
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = None
    if settings.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=settings.ema_decay, foreach=True)
    losses: list[float] = []
    start = 0
    if start_ckpt is not None:
        start, losses, ema_state = load_checkpoint(accelerator, start_ckpt)
        if ema is not None:
            ema.shadow_params = [ema_state[i].to(p.device) for i, p in enumerate(params)]
            ema.optimization_step = start
        logger.info("resuming from %s (step %d)", start_ckpt, start)
    every = settings.checkpoint_every or max(1, min(500, settings.n_steps // 4 or 1))
    rank = accelerator.process_index
    device = accelerator.device
    t0 = time.perf_counter()
    bar = progress(
        range(start, settings.n_steps),
        enabled=settings.progress and accelerator.is_local_main_process,
        desc=settings.desc,
        initial=start,
        total=settings.n_steps,
    )
    model.train()
    for step in bar:
        gen = step_generator(settings.seed, step, rank)
        restart = settings.lr_restart if settings.lr_restart is not None and step >= settings.lr_restart else 0
        factor = lr_factor(step - restart, settings.n_steps - restart, settings.warmup_steps, settings.lr_schedule)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        with accelerator.autocast():
            if rows is None:
                loss = loss_fn(model, gen, device)
            else:
                idx = rows(step) if callable(rows) else epoch_rows(rows, settings.batch_size, settings.seed, step)
                loss = loss_fn(model, idx, gen, device)
        value = float("nan")
        if loss is not None:
            value = _optimise(accelerator, optimizer, params, loss, step, settings.grad_clip)
            if ema is not None:
                ema.step(params)
            losses.append(value)
            if settings.progress and step % 10 == 0:
                bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if out is not None and (done % every == 0 or done == settings.n_steps):
            _save_checkpoint(accelerator, out, done, losses, ema, settings.fingerprint, settings.keep_checkpoints)
        if callback is not None and callback(done, value):
            break
    bar.close()
    seconds = time.perf_counter() - t0
    if ema is not None:
        ema.copy_to(params)
    if device.type == "cuda":
        accelerator.free_memory()
    return TrainResult(losses, len(losses), start, seconds, str(device))


def _optimise(accelerator, optimizer, params, loss: torch.Tensor, step: int, grad_clip: float) -> float:
    """One guarded optimiser step; return the (process-averaged) loss."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise TrainingDivergedError(
            f"the loss became {loss.item()} at step {step}; training stopped and no weights were saved "
            "after the last checkpoint. Lower `lr` or check the input patches for NaN/constant values."
        )
    accelerator.backward(loss)
    # without clipping (grad_clip=0) the norm is still computed (max_norm=inf scales by 1) for the guard
    norm = accelerator.clip_grad_norm_(params, grad_clip or float("inf"))
    if not bool(torch.isfinite(torch.as_tensor(norm)).all()):
        raise TrainingDivergedError(
            f"the gradients became non-finite at step {step}; training stopped and no weights were saved "
            "after the last checkpoint. Lower `lr` or `mixed_precision='no'`."
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(accelerator.reduce(loss.detach(), reduction="mean"))
