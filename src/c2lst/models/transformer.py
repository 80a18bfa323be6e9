"""The transformer backbone of a :class:`~c2lst.models.CentralModel`: a diffusers PixArt latent transformer.

A histology foundation diffusion model such as PixCell is a ``PixArtTransformer2DModel`` (PixArt-Σ, adaLN-single
timestep modulation, cross-attention to a few condition tokens) working on the latents of an ``AutoencoderKL``.
PixCell's condition is one 1536-d UNI2-h patch embedding per patch: a token of width ``caption_channels`` that
``caption_projection`` maps into the cross-attention space.

c2lst puts genes in that slot. The condition vector of the central model is the flattened token block
``(n_tokens * caption_channels,)``: the *null* condition is the backbone's own unconditional embedding (PixCell
ships it as ``caption_projection.uncond_embedding``; a plain PixArt folder without one gets zeros), and the gene
encoder of a :class:`~c2lst.models.LocalModel` adds a zero-initialised offset to it. So the sampler, the condition
dropout, classifier-free guidance and the adapter records are the same as for the UNet's FiLM slot; only the
denoiser call differs (:func:`transformer_forward`).

Engine code: imported by :mod:`c2lst.models.central`, never the other way round (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, PixArtTransformer2DModel
from torch import nn

__all__ = ["BACKBONES", "init_transformer_backbone", "transformer_config", "transformer_forward"]

#: Backbone kinds of a central model, as recorded in adapters (``uns["c2lst"]["local"][key]["backbone"]``).
BACKBONES = ("unet", "transformer")

#: DDPM training schedule assumed for a transformer folder without ``scheduler/`` (PixArt's and PixCell's).
PIXART_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": False,
}


def vae_factor(vae: AutoencoderKL) -> int:
    """Return the spatial downsampling factor of an ``AutoencoderKL`` (2 per extra encoder block)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def transformer_config(
    transformer: PixArtTransformer2DModel,
    vae: AutoencoderKL,
    *,
    n_tokens: int = 1,
    scheduler: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the plain c2lst configuration of a transformer central model (what ``c2lst.json`` records).

    Parameters
    ----------
    transformer
        The diffusers ``PixArtTransformer2DModel``.
    vae
        Its ``AutoencoderKL``; its latent channels must equal the transformer's input channels.
    n_tokens
        Condition tokens the backbone attends to (PixCell-256: one UNI embedding).
    scheduler
        DDPM training settings (default: :data:`PIXART_SCHEDULER`).

    Returns
    -------
    A JSON-serialisable dict with ``backbone="transformer"``, the latent and image sizes and the scheduler.
    """
    c = transformer.config
    if c.caption_channels is None:
        raise ValueError(
            "the transformer has no `caption_channels` (no condition-token projection); c2lst puts genes in the "
            "caption slot, so pass a PixArtTransformer2DModel built with `caption_channels=`."
        )
    if int(vae.config.latent_channels) != int(c.in_channels):
        raise ValueError(
            f"the VAE has {vae.config.latent_channels} latent channels but the transformer takes {c.in_channels}; "
            "pass the VAE the transformer was trained with (`vae=`)."
        )
    size = int(c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0])
    return {
        "preset": "custom",
        "backbone": "transformer",
        "transformer_class": type(transformer).__name__,
        "sample_size": size,
        "in_channels": int(c.in_channels),
        "image_size": size * vae_factor(vae),
        "latent": True,
        "n_tokens": int(n_tokens),
        "caption_channels": int(c.caption_channels),
        "scheduler": dict(scheduler if scheduler is not None else PIXART_SCHEDULER),
    }


def init_transformer_backbone(model: nn.Module, transformer: PixArtTransformer2DModel | None) -> None:
    """Give ``model`` (a CentralModel being built) its transformer, condition width and null condition.

    The null embedding starts at zero; loaders copy the backbone's own unconditional embedding into it.
    """
    if transformer is None:
        raise ValueError(
            "a transformer central model is built from an existing backbone: pass `transformer=` (a diffusers "
            "PixArtTransformer2DModel) or load a folder with `CentralModel.from_pretrained`."
        )
    if not isinstance(transformer, PixArtTransformer2DModel):
        raise TypeError(
            f"`transformer` must be a diffusers PixArtTransformer2DModel, got {type(transformer).__name__}."
        )
    if transformer.config.norm_type != "ada_norm_single":
        raise ValueError(
            f"transformer norm_type {transformer.config.norm_type!r} is not supported; use 'ada_norm_single'."
        )
    cfg = model.config
    model.transformer = transformer
    model.cond_dim = int(cfg["n_tokens"]) * int(cfg["caption_channels"])
    model.null_embedding = nn.Parameter(torch.zeros(model.cond_dim))


def _added_conditions(
    model: nn.Module, batch: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """PixArt's micro-conditions: resolution and aspect ratio when the backbone uses them, else ``None``."""
    if not getattr(model.transformer, "use_additional_conditions", False):
        return {"resolution": None, "aspect_ratio": None}
    side = float(model.config["image_size"])
    return {
        "resolution": torch.tensor([[side, side]], device=device, dtype=dtype).expand(batch, 2),
        "aspect_ratio": torch.ones((batch, 1), device=device, dtype=dtype),
    }


def transformer_forward(
    model: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor
) -> torch.Tensor:
    """Run the transformer of ``model`` on latents under a flat condition ``(B, n_tokens * caption_channels)``.

    The condition is reshaped into ``n_tokens`` caption tokens (``encoder_hidden_states``). A backbone trained with
    a learned variance (``out_channels == 2 * in_channels``) returns mean and variance; the mean half is the
    prediction (as in diffusers' PixArt pipelines).
    """
    b = noisy.shape[0]
    tokens = condition.to(noisy.dtype).reshape(
        b, int(model.config["n_tokens"]), int(model.config["caption_channels"])
    )
    timesteps = timesteps.reshape(-1).expand(b) if timesteps.numel() == 1 else timesteps
    out = model.transformer(
        noisy,
        encoder_hidden_states=tokens,
        timestep=timesteps,
        added_cond_kwargs=_added_conditions(model, b, noisy.device, noisy.dtype),
    ).sample
    c = noisy.shape[1]
    return out[:, :c] if out.shape[1] == 2 * c else out
