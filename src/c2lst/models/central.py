"""The central model: a diffusers UNet whose time embedding has a FiLM condition slot, or a latent transformer.

The UNet is built with ``class_embed_type="identity"`` and ``resnet_time_scale_shift="scale_shift"``: a
float condition vector of size ``cond_dim`` (= the time-embedding width) is added to the timestep embedding,
and every ResNet block turns that sum into a per-channel scale and shift (FiLM). During central pretraining
the condition is a learned *null* embedding; local adaptation plugs a gene encoder into the same slot.

The other backbone is a PixArt latent transformer (a histology foundation model such as PixCell, see
:mod:`c2lst.models.transformer`): its condition slot is the caption-token block it cross-attends to. One interface
serves both (:attr:`CentralModel.backbone_kind`, :attr:`CentralModel.denoiser`, ``forward``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel, UNet2DModel
from torch import nn

from ._persist import PLAIN_SCHEDULER, load_central, save_central, weight_files
from ._transformer_io import is_transformer_dir, load_transformer_central, save_transformer_central
from ._transformer_io import weight_files as transformer_weight_files
from .diffusion import denoising_loss, patches_to_tensor, to_model_input
from .sampling import sample_images
from .transformer import init_transformer_backbone, transformer_forward

__all__ = ["PRESETS", "CentralModel", "denoising_loss", "preset_config"]

_PRESET_FIELDS = (
    "sample_size", "block_out_channels", "attention_levels", "layers_per_block", "norm_num_groups",
    "attention_head_dim",
)  # fmt: skip
#: Architecture presets. ``tiny`` is for tests (32 px, < 1 M parameters), ``small`` the CPU demo
#: (64 px, ~3 M), ``base`` a GPU model (128 px, ~28 M).
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(zip(_PRESET_FIELDS, row, strict=True))
    for name, row in {
        #         size  block_out_channels    attention  layers  groups  head_dim
        "tiny":  (32,   [16, 32, 64],         [2],       1,      8,      64),
        "small": (64,   [32, 64, 96, 96],     [2, 3],    1,      16,     32),
        "base":  (128,  [64, 128, 256, 256],  [2, 3],    2,      32,     64),
    }.items()
}  # fmt: skip

#: DDPM training schedule of the presets (v-prediction); plain diffusers folders default to epsilon.
_SCHEDULER_DEFAULTS: dict[str, Any] = {**PLAIN_SCHEDULER, "prediction_type": "v_prediction"}


def preset_config(preset: str = "small", **overrides: Any) -> dict[str, Any]:
    """Return the plain, JSON-serialisable configuration of a preset, with ``overrides`` applied.

    Parameters
    ----------
    preset
        One of :data:`PRESETS` (``"tiny"``, ``"small"``, ``"base"``).
    **overrides
        Keys of the preset to replace (e.g. ``sample_size=48``) and ``scheduler`` (a dict merged into the
        DDPM scheduler settings).

    Returns
    -------
    A new dict with ``preset``, the architecture keys and ``scheduler``.
    """
    if preset not in PRESETS:
        raise ValueError(f"`preset={preset!r}` is unknown; valid presets are {sorted(PRESETS)}.")
    cfg = copy.deepcopy(PRESETS[preset])
    cfg["preset"] = preset
    cfg["in_channels"] = 3
    cfg["scheduler"] = dict(_SCHEDULER_DEFAULTS)
    unknown = set(overrides) - set(cfg) - {"scheduler"}
    if unknown:
        raise ValueError(f"`config` has unknown keys {sorted(unknown)}; valid keys are {sorted(cfg)}.")
    for key, value in overrides.items():
        if key == "scheduler":
            cfg["scheduler"].update(dict(value))
        else:
            cfg[key] = list(value) if isinstance(value, tuple) else value
    return cfg


def _build_unet(cfg: Mapping[str, Any]) -> UNet2DModel:
    boc = list(cfg["block_out_channels"])
    attn = set(cfg["attention_levels"])
    down = ["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(boc))]
    up = ["AttnUpBlock2D" if (len(boc) - 1 - i) in attn else "UpBlock2D" for i in range(len(boc))]
    return UNet2DModel(
        sample_size=cfg["sample_size"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["in_channels"],
        block_out_channels=boc,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=cfg["layers_per_block"],
        norm_num_groups=cfg["norm_num_groups"],
        attention_head_dim=cfg["attention_head_dim"],
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
    )


class CentralModel(nn.Module):
    """A pixel- or latent-space diffusion model of histology patches with a FiLM condition slot.

    Parameters
    ----------
    config
        Plain dict as returned by :func:`preset_config`.
    unet
        An existing :class:`~diffusers.UNet2DModel` (built from ``config`` when omitted).
    vae
        Optional :class:`~diffusers.AutoencoderKL`; the UNet then works on its (scaled) latents. The VAE is
        frozen and not part of :meth:`parameters`.
    transformer
        A :class:`~diffusers.PixArtTransformer2DModel` instead of the UNet (``config["backbone"] ==
        "transformer"``, see :func:`~c2lst.models.transformer.transformer_config`); it needs ``vae``.

    Examples
    --------
    >>> from c2lst.models import CentralModel
    >>> model = CentralModel.from_preset("tiny")
    >>> images = model.sample(2, steps=5, generator=torch.Generator().manual_seed(0))
    >>> images.shape
    (2, 32, 32, 3)
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        unet: UNet2DModel | None = None,
        vae: AutoencoderKL | None = None,
        transformer: PixArtTransformer2DModel | None = None,
    ) -> None:
        super().__init__()
        self.config = json.loads(json.dumps(dict(config)))
        if transformer is not None or self.config.get("backbone") == "transformer":
            if vae is None:
                raise ValueError("a transformer central model works on VAE latents; pass `vae=` (an AutoencoderKL).")
            self.config["backbone"] = "transformer"
            init_transformer_backbone(self, transformer)
        else:
            self.unet = unet if unet is not None else _build_unet(self.config)
            if getattr(self.unet, "class_embedding", None) is None:
                # a plain diffusers UNet: open the slot; a zero null embedding keeps its outputs unchanged
                self.unet.class_embedding = nn.Identity()
                self.unet.register_to_config(class_embed_type="identity")
            self.cond_dim = int(self.unet.time_embedding.linear_2.out_features)
            self.null_embedding = nn.Parameter(torch.zeros(self.cond_dim))
        self.scheduler_config = dict(self.config.get("scheduler", _SCHEDULER_DEFAULTS))
        self.noise_scheduler = DDPMScheduler(**self.scheduler_config)
        self._vae = [vae] if vae is not None else []  # a list keeps the VAE out of .parameters()
        if vae is not None:
            vae.requires_grad_(False).eval()
        self.training_summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls, preset: str = "small", *, vae: AutoencoderKL | None = None, seed: int = 0, **overrides: Any
    ) -> CentralModel:
        """Build a model from a preset (see :data:`PRESETS`), initialised from ``seed``."""
        cfg = preset_config(preset, **overrides)
        if vae is not None:
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            if cfg["sample_size"] % factor:
                raise ValueError(
                    f"`sample_size={cfg['sample_size']}` is not divisible by the VAE downsampling factor {factor}."
                )
            cfg["image_size"] = cfg["sample_size"]
            cfg["sample_size"] = cfg["sample_size"] // factor
            cfg["in_channels"] = int(vae.config.latent_channels)
            cfg["latent"] = True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(cfg, vae=vae)

    # ------------------------------------------------------------------ properties
    @property
    def backbone_kind(self) -> str:
        """``"unet"`` or ``"transformer"``: the denoiser architecture (recorded in adapters)."""
        return str(self.config.get("backbone", "unet"))

    @property
    def denoiser(self) -> nn.Module:
        """The diffusers denoiser: the ``UNet2DModel`` or the ``PixArtTransformer2DModel`` (LoRA goes here)."""
        return self.transformer if self.backbone_kind == "transformer" else self.unet

    @property
    def vae(self) -> AutoencoderKL | None:
        """The frozen autoencoder in latent mode, else ``None``."""
        return self._vae[0] if self._vae else None

    @property
    def image_size(self) -> int:
        """Side of the RGB patches the model generates, in pixels."""
        return int(self.config.get("image_size", self.config["sample_size"]))

    @property
    def device(self) -> torch.device:
        """Device of the UNet weights."""
        return self.null_embedding.device

    def n_parameters(self) -> int:
        """Number of parameters of the denoiser (UNet or transformer)."""
        return sum(p.numel() for p in self.denoiser.parameters())

    def to(self, *args: Any, **kwargs: Any) -> CentralModel:  # noqa: D102
        super().to(*args, **kwargs)
        if self.vae is not None:
            self.vae.to(*args, **kwargs)
        return self

    # ------------------------------------------------------------------ maths
    def null_condition(self, n: int) -> torch.Tensor:
        """Return the null (unconditional) embedding repeated ``n`` times."""
        return self.null_embedding.unsqueeze(0).expand(n, -1)

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the noise of ``noisy`` at ``timesteps`` under a condition embedding (null if ``None``)."""
        if condition is None:
            condition = self.null_condition(noisy.shape[0])
        if self.backbone_kind == "transformer":
            return transformer_forward(self, noisy, timesteps, condition)
        return self.unet(noisy, timesteps, class_labels=condition.to(noisy.dtype)).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] to the UNet's space (identity in pixel mode, scaled latents in latent mode)."""
        if self.vae is None:
            return images
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None)  # SD3-style VAEs (PixCell) centre their latents
        if shift is not None:
            latents = latents - float(shift)
        return latents * float(getattr(self.vae.config, "scaling_factor", 1.0))

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Map UNet samples back to images in [-1, 1]."""
        if self.vae is None:
            return samples
        scale = float(getattr(self.vae.config, "scaling_factor", 1.0))
        shift = getattr(self.vae.config, "shift_factor", None)
        latents = samples.to(self.vae.dtype) / scale
        if shift is not None:
            latents = latents + float(shift)
        return self.vae.decode(latents).sample

    #: Generate ``n`` RGB patches: :func:`c2lst.models.sampling.sample_images` with this model (the one sampler).
    sample = sample_images

    def encode_patches(self, patches: np.ndarray | torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Return uint8 patches as the training data of this model, on the CPU.

        Parameters
        ----------
        patches
            uint8 RGB patches ``(N, H, W, 3)`` (or a uint8 tensor ``(N, 3, H, W)``).
        batch_size
            Patches per VAE call in latent mode.

        Returns
        -------
        Pixel mode: the uint8 tensor ``(N, 3, H, W)`` (batches are mapped to [-1, 1] by
        :func:`~c2lst.models.diffusion.to_model_input` when drawn: a quarter of the memory of floats). Latent
        mode: the scaled VAE latents ``(N, C, h, w)`` as float32, encoded once on the model's device.
        """
        data = patches_to_tensor(patches) if isinstance(patches, np.ndarray) else patches
        if self.vae is None:
            return data
        chunks = [
            self.encode(to_model_input(data[i : i + batch_size], self.device))
            for i in range(0, len(data), batch_size)
        ]
        return torch.cat(chunks).cpu()

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def weight_files(directory: str | Path) -> list[Path]:
        """Return the weight files of a saved model directory, in hashing order."""
        return transformer_weight_files(Path(directory)) if is_transformer_dir(directory) else weight_files(directory)

    def save_pretrained(self, directory: str | Path) -> str:
        """Write a diffusers-format directory and return its fingerprint.

        Layout: ``unet/`` and ``scheduler/`` (loadable by diffusers), ``vae/`` in latent mode,
        ``c2lst_condition.safetensors`` (the null embedding) and ``c2lst.json`` (format, config, sha256,
        training summary). The ``sha256`` is one fingerprint over the weight files and every configuration that
        changes the output (``c2lst.json``'s config with the scheduler, ``unet/config.json``, ``vae/config.json``,
        ``scheduler/scheduler_config.json``). A UNet model's folder also gets a diffusers ``model_index.json``
        naming :class:`~c2lst.models.C2LSTPipeline` (outside the fingerprint: it only names classes). Files get
        the process umask's mode (safetensors writes ``0600``). A transformer model writes ``transformer/``
        instead of ``unet/`` (and always ``vae/``).
        """
        if self.backbone_kind == "transformer":
            return save_transformer_central(self, directory)
        return save_central(self, directory)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        subfolder: str | None = None,
        vae: AutoencoderKL | str | Path | None = None,
        **hub_kwargs: Any,
    ) -> CentralModel:
        """Load a model saved by :meth:`save_pretrained`, a plain diffusers ``UNet2DModel`` or a pipeline.

        A folder with ``transformer/`` (a PixArt latent transformer such as PixCell-256, plus ``vae/`` and
        ``scheduler/``) loads as a transformer central model (:attr:`backbone_kind` ``"transformer"``); see the
        foundation-model page of the docs.

        Parameters
        ----------
        path
            A local directory: a c2lst model directory (``c2lst.json``), a directory written by
            ``UNet2DModel.save_pretrained`` (``config.json`` + safetensors), or a diffusers pipeline directory
            with a ``unet/`` or ``transformer/`` subfolder. A Hugging Face hub id works for users with network access
            (UNet only).
        verify
            Check the weights against the sha256 recorded in ``c2lst.json``.
        subfolder
            Subfolder of a hub repository holding the UNet.
        vae
            Transformer folders without ``vae/`` (PixCell ships without its SD3.5 VAE): the ``AutoencoderKL`` or its
            folder. Such a model records no ``source``; save it with :meth:`save_pretrained` to get a complete
            folder that ``tl`` functions can reload by path.
        **hub_kwargs
            Passed to :meth:`diffusers.UNet2DModel.from_pretrained` for hub ids (``revision`` ...).

        Returns
        -------
        The loaded model in eval mode. Only safetensors are read; pickle-based files are refused.
        """
        if is_transformer_dir(path) and subfolder is None:
            return load_transformer_central(cls, path, verify=verify, vae=vae)
        if vae is not None:
            raise ValueError(f"`vae=` applies to transformer folders (with `transformer/`); {str(path)!r} is not one.")
        return load_central(cls, path, verify=verify, subfolder=subfolder, **hub_kwargs)

    sha256: str | None = None
    #: Where the model was loaded from (a directory, a hub id or a shipped model's name); ``""`` if built here.
    source: str = ""

