"""One accelerate-based training loop shared by central pretraining, local adaptation and the predictor.

Randomness is *stateless*: every step draws its batch, augmentation, noise and dropout from a generator seeded
by ``(seed, step, process)``. A run resumed from a checkpoint therefore continues exactly as the
uninterrupted run would, and the same seed gives the same bytes on CPU.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .store import load_safetensors, save_safetensors

__all__ = ["TrainSettings", "TrainingDivergedError", "dihedral", "step_generator", "train"]

_STATE_FILE = "c2lst_state.safetensors"
_FINGERPRINT_FILE = "c2lst_fingerprint.json"
MIXED_PRECISION = ("no", "bf16", "fp16")


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
    stop_after: int | None = None  # testing hook: stop (as if interrupted) after this many steps


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


def dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply a random element of the dihedral group (flips, 90° rotations) to each image of ``(B, C, H, W)``."""
    b = x.shape[0]
    k = torch.randint(0, 4, (b,), generator=generator).to(x.device)
    flip = torch.randint(0, 2, (b,), generator=generator).to(x.device).bool()
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    out = x.clone()
    for r in (1, 2, 3):
        sel = k == r
        if bool(sel.any()):
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out


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


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / _STATE_FILE).is_file() and p.name[5:].isdigit()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_checkpoint(output_dir: str | Path, fingerprint: dict[str, Any] | None = None) -> Path | None:
    """Return the newest complete checkpoint under ``output_dir``; check its fingerprint if given."""
    ckpts = _checkpoints(Path(output_dir))
    if not ckpts:
        return None
    last = ckpts[-1]
    if fingerprint is not None:
        try:
            saved = json.loads((last / _FINGERPRINT_FILE).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"`output_dir={str(output_dir)!r}`: the checkpoint {last.name} has no readable {_FINGERPRINT_FILE} "
                f"({type(err).__name__}), so it cannot be matched to this run; delete it (or the whole "
                "`checkpoints/` folder) to start over, or pass `resume=False`."
            ) from None
        if not isinstance(saved, dict):
            raise ValueError(
                f"`output_dir={str(output_dir)!r}`: {last.name}/{_FINGERPRINT_FILE} is not a JSON object; delete the "
                "checkpoint to start over, or pass `resume=False`."
            )
        mine = json.loads(json.dumps(fingerprint))
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise ValueError(
                f"`output_dir={str(output_dir)!r}` holds a checkpoint ({last.name}) of a different run "
                f"configuration (differs in {diff}); pass `resume=False` to start over in another `output_dir`, "
                "or use the original settings. Nothing was overwritten."
            )
    return last


def _check_resume(out: Path, settings: TrainSettings) -> Path | None:
    """Return the checkpoint to resume from (or None), refusing what resume cannot honour before any work."""
    root = out / "checkpoints"
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"`output_dir={str(out)!r}` holds a file named 'checkpoints' where the checkpoints folder goes; move it "
            "away or pass another `output_dir`."
        )
    if not settings.resume:
        return None
    start = latest_checkpoint(out, settings.fingerprint)
    if start is not None and int(start.name[5:]) > settings.n_steps:
        raise ValueError(
            f"`n_steps={settings.n_steps}` is below the step of the newest checkpoint in `output_dir={str(out)!r}` "
            f"({start.name}); resuming cannot train fewer steps than were done. Pass `n_steps>={start.name[5:]}`, "
            "or `resume=False` / another `output_dir` to train from scratch."
        )
    return start


def _set_aside_old_checkpoints(out: Path) -> None:
    """With ``resume=False``, move an earlier run's checkpoints aside (kept, and logged).

    They are then neither resumed nor mistaken for this run's when checkpoints are pruned.
    """
    from .._logging import logger

    root = out / "checkpoints"
    if not root.is_dir() or not any(root.iterdir()):
        return
    dest = out / f"checkpoints.previous-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while dest.exists():
        n += 1
        dest = out / f"checkpoints.previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    root.rename(dest)
    logger.warning("resume=False: the earlier run's checkpoints in %s were moved to %s", root, dest)


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Generator, torch.device], torch.Tensor],
    settings: TrainSettings,
) -> TrainResult:
    """Optimise the trainable parameters of ``model`` with AdamW for ``settings.n_steps`` steps.

    ``loss_fn(model, generator, device)`` draws its batch with ``generator`` and returns a scalar loss. The
    loop adds accelerate (device placement, mixed precision, DDP), gradient clipping, a NaN/Inf guard,
    diffusers ``EMAModel`` over the trainable parameters (copied into the model at the end), periodic
    atomic checkpoints (``accelerator.save_state`` + EMA/loss state in safetensors) and exact resume.
    """
    from diffusers.training_utils import EMAModel

    from .._logging import logger, progress

    out = Path(settings.output_dir) if settings.output_dir is not None else None
    start_ckpt = None
    if out is not None:
        start_ckpt = _check_resume(out, settings)  # raises before anything is written
    accelerator = _accelerator(settings)
    if out is not None and not settings.resume and accelerator.is_main_process:
        _set_aside_old_checkpoints(out)
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
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMAModel(params, decay=settings.ema_decay, foreach=True) if settings.ema else None
    losses: list[float] = []
    start = 0
    if start_ckpt is not None:
        try:  # accelerate reads its .bin/.pkl files with torch.load(weights_only=True): code-bearing pickles fail
            accelerator.load_state(str(start_ckpt))
        except Exception as err:
            raise ValueError(
                f"the checkpoint {str(start_ckpt)!r} could not be loaded safely ({type(err).__name__}: "
                f"{str(err).split('. ')[0]}); it is "
                "corrupted or was tampered with. Delete it to resume from an earlier one, or pass `resume=False`."
            ) from None
        state = load_safetensors(start_ckpt / _STATE_FILE)
        start = int(state["step"].item())
        losses = state["losses"].tolist()
        if ema is not None:
            ema.shadow_params = [state[f"ema.{i}"].to(p.device) for i, p in enumerate(params)]
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
    step = start
    for step in bar:
        gen = step_generator(settings.seed, step, rank)
        with accelerator.autocast():
            loss = loss_fn(model, gen, device)
        if not bool(torch.isfinite(loss.detach()).all()):
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {step}; training stopped and no weights were saved "
                "after the last checkpoint. Lower `lr` or check the input patches for NaN/constant values."
            )
        accelerator.backward(loss)
        # without clipping (grad_clip=0) the norm is still computed (max_norm=inf scales by 1) for the guard
        norm = accelerator.clip_grad_norm_(params, settings.grad_clip or float("inf"))
        if not bool(torch.isfinite(torch.as_tensor(norm)).all()):
            raise TrainingDivergedError(
                f"the gradients became non-finite at step {step}; training stopped and no weights were saved "
                "after the last checkpoint. Lower `lr` or `mixed_precision='no'`."
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        value = float(accelerator.reduce(loss.detach(), reduction="mean"))
        losses.append(value)
        if settings.progress and step % 10 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
        done = step + 1
        if out is not None and (done % every == 0 or done == settings.n_steps):
            _save_checkpoint(accelerator, out, done, losses, ema, settings)
        if settings.stop_after is not None and done - start >= settings.stop_after:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    if ema is not None:
        ema.copy_to(params)
    if device.type == "cuda":
        accelerator.free_memory()
    return TrainResult(losses, len(losses), start, seconds, str(device))


def _save_checkpoint(accelerator, out: Path, step: int, losses, ema, settings: TrainSettings) -> None:
    root = out / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    # every rank writes its own random_states_<rank>.pkl: wait for all of them before the rename publishes it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": torch.tensor(step), "losses": torch.tensor(losses, dtype=torch.float64)}
        if ema is not None:
            state.update({f"ema.{i}": p for i, p in enumerate(ema.shadow_params)})
        (tmp / _FINGERPRINT_FILE).write_text(json.dumps(settings.fingerprint, sort_keys=True))
        save_safetensors(state, tmp / _STATE_FILE)  # written last: marks the checkpoint complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(out)[: -settings.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
