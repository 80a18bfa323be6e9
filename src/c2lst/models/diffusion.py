"""Diffusion maths shared by the denoisers: the denoising loss and the uint8 patch <-> model-input maps.

Engine code (torch + diffusers, no AnnData). Used by :class:`~c2lst.models.CentralModel` (latent encoding) and
:func:`~c2lst.models.fit_denoiser` (the training batches).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

__all__ = ["denoising_loss", "patches_to_tensor", "to_model_input"]


def denoising_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    generator: torch.Generator,
    condition: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Return the denoising MSE of ``model`` on ``clean`` samples (already on the model's device).

    The target follows the scheduler's ``prediction_type``: the noise (``"epsilon"``) or the velocity
    ``v = sqrt(abar) noise - sqrt(1 - abar) x0`` (``"v_prediction"``). Noise and timesteps are drawn on the CPU
    from ``generator`` so the loss is reproducible on any device.

    Parameters
    ----------
    model
        A denoiser ``model(noisy, timesteps, condition)``: a :class:`~c2lst.models.CentralModel` or
        :class:`~c2lst.models.LocalModel`.
    scheduler
        The training :class:`~diffusers.DDPMScheduler` (its ``prediction_type`` sets the target).
    clean
        Clean samples ``(B, C, H, W)`` in the model's space.
    generator
        CPU generator of the noise and the timesteps.
    condition
        Passed to ``model`` unchanged (``None``: the null condition).

    Returns
    -------
    The scalar loss (float32).
    """
    noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator)
    t = t.to(clean.device)
    noisy = scheduler.add_noise(clean, noise, t)
    pred = model(noisy, t, condition)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(clean, noise, t)
    else:
        raise ValueError(f"prediction_type={kind!r} is not supported; use 'epsilon' or 'v_prediction'.")
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def patches_to_tensor(patches: np.ndarray) -> torch.Tensor:
    """Convert uint8 ``(N, H, W, 3)`` patches to a uint8 ``(N, 3, H, W)`` CPU tensor (no copy of floats).

    Parameters
    ----------
    patches
        uint8 RGB patches.

    Returns
    -------
    A contiguous uint8 tensor, channels first.
    """
    return torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()


def to_model_input(batch_uint8: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Map a uint8 ``(B, 3, H, W)`` batch to floats in [-1, 1] on ``device``.

    Parameters
    ----------
    batch_uint8
        uint8 images, channels first.
    device
        Target device.

    Returns
    -------
    float32 images in [-1, 1].
    """
    return batch_uint8.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
