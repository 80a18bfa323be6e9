"""``fit_denoiser``: the one training entry point of the denoisers (central pretraining and local adaptation).

It encodes the patches once (:meth:`~c2lst.models.CentralModel.encode_patches`), writes the loss (random
batches, dihedral augmentation, :func:`~c2lst.models.diffusion.denoising_loss`, condition dropout for a
:class:`~c2lst.models.LocalModel`) and runs the shared accelerate loop :func:`c2lst.models.train.train`. Every
random draw comes from the loop's per-step generator, so a run is reproducible and resumes exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .central import CentralModel
from .diffusion import biased_timesteps, denoising_loss, to_model_input
from .features import check_patches
from .local import LocalModel
from .train import TrainResult, TrainSettings, check_mixed_precision, dihedral, train

__all__ = ["fit_denoiser"]


def fit_denoiser(
    model: CentralModel | LocalModel,
    patches: np.ndarray,
    *,
    conditions: np.ndarray | None = None,
    unlabelled: np.ndarray | None = None,
    unlabelled_fraction: float = 0.5,
    n_steps: int,
    batch_size: int,
    lr: float,
    encoder_lr: float | None = None,
    timestep_bias: float = 0.0,
    condition_noise: float = 0.0,
    seed: int = 0,
    ema: bool = True,
    mixed_precision: str = "no",
    device: str | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = True,
    checkpoint_every: int | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str | None = None,
    slide_sizes: Sequence[int] | None = None,
) -> TrainResult:
    """Train a denoiser on uint8 patches in place: a central model, or the adapters of a local model.

    Parameters
    ----------
    model
        A :class:`~c2lst.models.CentralModel` (all its weights train, under the null condition) or a
        :class:`~c2lst.models.LocalModel` (only LoRA and the gene encoder train).
    patches
        uint8 RGB patches ``(N, S, S, 3)`` with ``S`` the model's image size.
    conditions
        Prepared expression ``(N, n_genes)`` of the patches, in the local model's gene order; required for a
        :class:`~c2lst.models.LocalModel` (it also sets the gene encoder's standardisation), refused for a
        central model.
    unlabelled
        Local model only: patches without expression ``(M, S, S, 3)``; they train the null branch.
    unlabelled_fraction
        Share of each batch drawn from ``unlabelled``, in [0, 1).
    n_steps, batch_size, lr
        Optimisation steps, patches per step (per process) and AdamW learning rate.
    encoder_lr
        Local model only: learning rate of the gene encoder (``None``: ``lr``).
    timestep_bias
        Local model only: the timesteps of the rows that keep their condition are drawn with density
        proportional to ``t ** timestep_bias`` (:func:`~c2lst.models.diffusion.biased_timesteps`), so more of the
        conditional loss falls at high noise, where the image's content is decided. Rows with the condition
        dropped and unlabelled rows stay uniform (the null branch learns every noise level). ``0``: uniform for
        all rows, drawn exactly as before the option existed.
    condition_noise
        Standard deviation, in units of each gene's spread over the training spots, of Gaussian noise added to
        the profiles of the spots that keep their condition, drawn afresh every step (a local model only).
        ``0`` (default): the profiles as measured.
    seed
        Seeds batches, augmentation, noise and condition dropout (initialisation is the model's own).
    ema
        Keep an exponential moving average of the trained weights and copy it into the model at the end.
    mixed_precision
        ``"no"``, ``"bf16"`` or ``"fp16"`` (GPU).
    device
        ``"cpu"`` to force the CPU; ``None`` picks CUDA when available.
    output_dir
        Directory for checkpoints (``checkpoints/``); ``None`` trains in memory.
    resume
        Continue from the newest checkpoint in ``output_dir`` (it must match ``fingerprint``).
    checkpoint_every
        Steps between checkpoints (default: a quarter of ``n_steps``, at most 500).
    fingerprint
        JSON-serialisable description of the run that a checkpoint must match to be resumed (default: the
        training settings, the model configuration and the data sizes).
    progress
        Show a progress bar with the loss.
    desc
        Label of the progress bar (default ``"pretrain"`` or ``"adapt"``).
    slide_sizes
        Number of patches of each slide, when ``patches`` stacks several slides in this order. With two or more,
        batches are balanced: each batch row draws a slide uniformly, then a patch of that slide uniformly (from
        the step's generator, so resume stays exact). ``None``: patches are drawn uniformly.

    Returns
    -------
    The :class:`~c2lst.models.train.TrainResult` (losses, steps, resumed step, seconds, device). The model is
    trained in place and left in eval mode.

    Examples
    --------
    >>> model = CentralModel.from_preset("tiny")
    >>> patches = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    >>> fit_denoiser(model, patches, n_steps=2, batch_size=4, lr=1e-4, progress=False).steps
    2
    """
    from .._logging import logger
    from .._utils import check_nonneg_float, check_positive_float, check_positive_int, check_seed

    local = isinstance(model, LocalModel)
    if not local and not isinstance(model, CentralModel):
        raise TypeError(f"`model` must be a CentralModel or a LocalModel, got {type(model).__name__}.")
    central = model.central if local else model
    patches = check_patches(patches, "patches")
    if patches.shape[1] != central.image_size:
        raise ValueError(
            f"`patches` are {patches.shape[1]} px but the model makes {central.image_size} px images; extract "
            f"patches with `size={central.image_size}`."
        )
    n_steps = check_positive_int(n_steps, "n_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    seed = check_seed(seed)
    mixed_precision = check_mixed_precision(mixed_precision, device)
    unlabelled_fraction = check_nonneg_float(unlabelled_fraction, "unlabelled_fraction")
    if unlabelled_fraction >= 1:
        raise ValueError(f"`unlabelled_fraction` must be in [0, 1), got {unlabelled_fraction!r}.")
    timestep_bias = check_nonneg_float(timestep_bias, "timestep_bias")
    if not local and timestep_bias:
        raise ValueError("`timestep_bias` applies to a LocalModel only (it biases the conditional loss); pass 0.")
    condition_noise = check_nonneg_float(condition_noise, "condition_noise")
    if not local and condition_noise:
        raise ValueError("`condition_noise` applies to a LocalModel only (it perturbs the conditions); pass 0.")
    if not local:
        for name, value in (("conditions", conditions), ("unlabelled", unlabelled), ("encoder_lr", encoder_lr)):
            if value is not None:
                raise ValueError(f"`{name}` applies to a LocalModel only; pass `{name}=None` for a CentralModel.")
    expr_t = None
    if local:
        expr_t = torch.from_numpy(_check_conditions(conditions, len(patches), len(model.genes)))
        encoder_lr = lr if encoder_lr is None else check_positive_float(encoder_lr, "encoder_lr")
    if unlabelled is not None:
        unlabelled = check_patches(unlabelled, "unlabelled")
        if unlabelled.shape[1:] != patches.shape[1:]:
            raise ValueError(
                f"`unlabelled` patches have shape {unlabelled.shape[1:]}, `patches` {patches.shape[1:]}; extract "
                "both with the same `size=`."
            )
    n = len(patches)
    pick = _balanced_picker(slide_sizes, n)
    if n < batch_size:
        logger.warning("only %d patches for batch_size=%d; batches repeat patches", n, batch_size)
    data = central.encode_patches(patches)
    un = None if unlabelled is None else central.encode_patches(unlabelled)
    if local:
        model.encoder.set_statistics(expr_t.numpy())
    scheduler = central.noise_scheduler
    n_un = 0 if un is None else round(unlabelled_fraction * batch_size)
    cond_dropout = float(model.adapter_config["cond_dropout"]) if local else 0.0
    n_train_t = int(scheduler.config.num_train_timesteps)
    spread = None if expr_t is None or not condition_noise else condition_noise * expr_t.std(0, unbiased=False)

    def loss_fn(m: torch.nn.Module, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
        idx = pick(batch_size - n_un, gen)
        batch = data[idx]
        if n_un:  # unlabelled patches: always the null condition
            batch = torch.cat([batch, un[torch.randint(0, len(un), (n_un,), generator=gen)]])
        x = to_model_input(batch, dev) if batch.dtype == torch.uint8 else batch.to(dev)
        x = dihedral(x, gen)
        if expr_t is None:
            return denoising_loss(m, scheduler, x, gen)
        expr_b = expr_t[idx]
        drop = torch.rand(batch_size - n_un, generator=gen) < cond_dropout
        if spread is not None:  # drawn only when asked, so the default run's random stream is unchanged
            expr_b = expr_b + torch.randn(expr_b.shape, generator=gen) * spread
        if n_un:
            expr_b = torch.cat([expr_b, torch.zeros(n_un, expr_t.shape[1])])
            drop = torch.cat([drop, torch.ones(n_un, dtype=torch.bool)])
        t = None
        if timestep_bias:  # conditioned rows biased to high noise, null rows uniform, from one uniform draw
            u = torch.rand(batch_size, generator=gen)
            t = torch.where(drop, torch.floor(n_train_t * u).long().clamp(max=n_train_t - 1),
                            biased_timesteps(batch_size, n_train_t, timestep_bias, gen, uniform=u))
        return denoising_loss(m, scheduler, x, gen, condition=(expr_b.to(dev), drop.to(dev)), timesteps=t)

    if fingerprint is None:
        fingerprint = {
            "model": type(model).__name__,
            "config": model.adapter_config if local else central.config,
            "batch_size": batch_size,
            "lr": lr,
            "encoder_lr": encoder_lr,
            **({"timestep_bias": timestep_bias} if timestep_bias else {}),
            **({"condition_noise": condition_noise} if condition_noise else {}),
            "ema": bool(ema),
            "seed": seed,
            "n_patches": n,
            "n_unlabelled": 0 if un is None else len(un),
            "unlabelled_fraction": unlabelled_fraction if un is not None else 0.0,
            "mixed_precision": mixed_precision,
        }
    settings = TrainSettings(
        n_steps=n_steps, batch_size=batch_size, lr=lr, ema=ema, mixed_precision=mixed_precision, seed=seed,
        output_dir=None if output_dir is None else Path(output_dir), resume=resume, progress=progress,
        desc=desc or ("adapt" if local else "pretrain"), checkpoint_every=checkpoint_every, device=device,
        fingerprint=dict(fingerprint), lr_multipliers={"encoder.": encoder_lr / lr} if local else {},
    )  # fmt: skip
    result = train(model, loss_fn, settings)
    model.eval()
    return result


def _check_conditions(conditions: Any, n: int, n_genes: int) -> np.ndarray:
    """Return ``conditions`` as a finite float32 ``(n, n_genes)`` array or raise naming ``conditions``."""
    if conditions is None:
        raise ValueError("`conditions` is required for a LocalModel: pass the prepared expression of the patches.")
    arr = np.asarray(conditions)
    if arr.dtype.kind not in "fiu" or arr.shape != (n, n_genes):
        raise ValueError(
            f"`conditions` must be a numeric array of shape {(n, n_genes)} (one row per patch, one column per "
            f"adapter gene), got shape {arr.shape} and dtype {arr.dtype}."
        )
    if not np.isfinite(arr).all():
        raise ValueError("`conditions` contains NaN or Inf values; fix the counts and re-run `prepare_expression`.")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _balanced_picker(slide_sizes: Sequence[int] | None, n: int):
    """Return ``pick(k, generator)`` drawing ``k`` patch rows: uniform, or slide-balanced for several slides."""
    if slide_sizes is None or len(slide_sizes) < 2:
        if slide_sizes is not None and sum(slide_sizes) != n:
            raise ValueError(f"`slide_sizes={list(slide_sizes)}` sums to {sum(slide_sizes)}, not the {n} patches.")
        return lambda k, gen: torch.randint(0, n, (k,), generator=gen)
    sizes = np.asarray([int(v) for v in slide_sizes], dtype=np.int64)
    if (sizes < 1).any() or int(sizes.sum()) != n:
        raise ValueError(
            f"`slide_sizes={sizes.tolist()}` must be positive and sum to the {n} patches (one entry per slide)."
        )
    sizes_t = torch.from_numpy(sizes)
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)[:-1]]))

    def pick(k: int, gen: torch.Generator) -> torch.Tensor:
        slide = torch.randint(0, len(sizes), (k,), generator=gen)
        within = (torch.rand(k, generator=gen, dtype=torch.float64) * sizes_t[slide]).long()
        return offsets[slide] + torch.minimum(within, sizes_t[slide] - 1)

    return pick
