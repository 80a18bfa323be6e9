"""Diffusion maths shared by the denoisers: the denoising loss and the uint8 patch <-> model-input maps.

Engine code (torch + diffusers, no AnnData). Used by :class:`~c2lst.models.CentralModel` (latent encoding) and
:func:`~c2lst.models.fit_denoiser` (the training batches).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

__all__ = ["biased_timesteps", "denoising_loss", "patches_to_tensor", "to_model_input"]


def denoising_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    generator: torch.Generator,
    condition: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    timesteps: torch.Tensor | None = None,
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
    timesteps
        Integer timesteps ``(B,)`` on the CPU, one per sample (e.g. from :func:`biased_timesteps`); ``None`` draws
        them uniformly from ``generator`` after the noise.

    Returns
    -------
    The scalar loss (float32).
    """
    noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
    if timesteps is None:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=generator)
    else:
        if timesteps.shape != (clean.shape[0],):
            raise ValueError(f"`timesteps` must have shape ({clean.shape[0]},), got {tuple(timesteps.shape)}.")
        t = timesteps.long()
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


def biased_timesteps(
    n: int, n_train_timesteps: int, bias: float, generator: torch.Generator, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """Draw ``n`` training timesteps with density proportional to ``t ** bias`` on ``[0, n_train_timesteps)``.

    ``bias=0`` is uniform; ``bias=1`` makes the density grow linearly with the noise level (mean at two thirds
    of the schedule), ``bias=2`` quadratically (mean at three quarters). High noise is where a denoiser decides
    what the image shows (which cells, how many), so a bias there spends more of a conditional loss where the
    condition matters. Inverse-CDF sampling: ``t = floor(T * u ** (1 / (1 + bias)))`` with ``u`` uniform.

    Parameters
    ----------
    n
        Number of timesteps.
    n_train_timesteps
        Length ``T`` of the training schedule.
    bias
        Exponent of the density, ``>= 0``.
    generator
        CPU generator of the uniform draws (unused when ``uniform`` is given).
    uniform
        Uniform draws in [0, 1) ``(n,)`` to transform instead of drawing new ones.

    Returns
    -------
    Long tensor ``(n,)`` on the CPU.

    Examples
    --------
    >>> t = biased_timesteps(10_000, 1000, 1.0, torch.Generator().manual_seed(0))
    >>> round(t.float().mean().item() / 1000, 1)
    0.7
    """
    u = torch.rand(n, generator=generator) if uniform is None else uniform
    t = torch.floor(n_train_timesteps * u.double() ** (1.0 / (1.0 + float(bias)))).long()
    return t.clamp_(0, n_train_timesteps - 1)


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
