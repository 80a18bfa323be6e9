"""The frozen central denoiser as a patch feature extractor (``features="central"`` of the predictor).

A diffusion UNet pretrained on many unpaired patches has learned what histology looks like; its internal
activations at a small noise level are a generic image representation (as in "denoising diffusion
autoencoders"). :class:`CentralFeatureExtractor` runs the frozen UNet once per patch, with the null
condition, on the patch noised to a fixed timestep ``t`` with one fixed noise field (drawn from ``seed``,
shared by every patch), so the features are deterministic and independent of the batch size. The outputs of
the chosen blocks (``"mid"``: the middle block; ``"down"``: every down block) are pooled over space into their
channel means and standard deviations and concatenated. The up blocks are never run.

Engine code: torch and diffusers only (no AnnData).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._logging import progress as _progress
from .._utils import check_positive_int, check_seed
from .central import CentralModel
from .features import check_patches

#: Blocks whose pooled outputs can form the features: the middle block and the down blocks.
CENTRAL_LAYERS = ("mid", "down")
#: Default timestep (of the scheduler's 1000 training steps): little noise, the content is still visible.
DEFAULT_TIMESTEP = 50


class _Stop(Exception):
    """Raised by the last hook: the up blocks are not needed."""


class CentralFeatureExtractor(nn.Module):
    """Map patches ``(B, 3, H, W)`` in [0, 1] to pooled activations ``(B, D)`` of a frozen central UNet.

    Parameters
    ----------
    central
        The pretrained :class:`~c2lst.models.CentralModel` (used as is: not copied, never trained here).
    t
        Timestep at which the patches are noised, in ``[0, num_train_timesteps)``; small values keep the image.
    layers
        ``("mid",)`` (default), ``("down",)`` or both: which block outputs are pooled.
    seed
        Seed of the one noise field added to every patch.

    Examples
    --------
    >>> model = CentralModel.from_preset("tiny")
    >>> extractor = CentralFeatureExtractor(model, t=10)
    >>> extractor(torch.rand(2, 3, 32, 32)).shape[0]
    2
    """

    def __init__(
        self,
        central: CentralModel,
        *,
        t: int = DEFAULT_TIMESTEP,
        layers: Sequence[str] = ("mid",),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(central, CentralModel):
            raise TypeError(f"`central` must be a CentralModel, got {type(central).__name__}.")
        if central.backbone_kind != "unet":
            raise ValueError(
                f"`central` has a {central.backbone_kind} backbone; denoiser features are read from UNet blocks. "
                "Use `features='morphometric'` (or a UNet central model) for the predictor."
            )
        n_train = int(central.noise_scheduler.config.num_train_timesteps)
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or not (0 <= t < n_train):
            raise ValueError(f"`t={t!r}` must be an integer timestep in [0, {n_train}); e.g. {DEFAULT_TIMESTEP}.")
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        if not layers or any(x not in CENTRAL_LAYERS for x in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"`layers={layers!r}` must be distinct values of {list(CENTRAL_LAYERS)}.")
        self.central = central
        self.t = int(t)
        self.layers = layers
        self.seed = check_seed(seed)
        levels = len(central.unet.config.block_out_channels)
        vae = central.vae
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.multiple = factor * 2 ** (levels - 1)

    def train(self, mode: bool = True) -> CentralFeatureExtractor:
        """Set this wrapper's flag only: the frozen central model keeps its own mode (see :meth:`forward`)."""
        self.training = bool(mode)
        return self

    def settings(self) -> dict[str, Any]:
        """Return the JSON-serialisable settings (everything that shapes the features but the weights)."""
        return {"t": self.t, "layers": list(self.layers), "seed": self.seed}

    def check_size(self, size: int) -> None:
        """Raise a :class:`ValueError` unless patches of ``size`` px pass through the UNet."""
        if size % self.multiple:
            raise ValueError(
                f"{size} px patches do not pass through this central UNet (sides must be multiples of "
                f"{self.multiple}); extract patches of the model's size ({self.central.image_size} px)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_size(int(x.shape[-1]))
        unet = self.central.unet
        clean = self.central.encode(x.to(self.central.device, torch.float32) * 2.0 - 1.0)
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((1, *clean.shape[1:]), generator=gen).to(clean.device, clean.dtype)
        t = torch.full((clean.shape[0],), self.t, dtype=torch.long, device=clean.device)
        noisy = self.central.noise_scheduler.add_noise(clean, noise.expand_as(clean), t)
        blocks: list[nn.Module] = []
        if "down" in self.layers:
            blocks += list(unet.down_blocks)
        if "mid" in self.layers:
            blocks.append(unet.mid_block)
        pooled: dict[int, torch.Tensor] = {}

        def hook(index: int):
            def _hook(_module, _inputs, output):
                h = output[0] if isinstance(output, tuple) else output
                pooled[index] = torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)
                if len(pooled) == len(blocks):
                    raise _Stop

            return _hook

        handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
        was_training = self.central.training
        self.central.eval()
        try:
            self.central(noisy, t)
        except _Stop:
            pass
        finally:
            self.central.train(was_training)
            for h in handles:
                h.remove()
        return torch.cat([pooled[i] for i in range(len(blocks))], dim=1).float()


def central_features(
    model: CentralModel,
    patches: np.ndarray,
    *,
    t: int = DEFAULT_TIMESTEP,
    layers: Sequence[str] = ("mid",),
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Return pooled activations of the frozen central UNet for uint8 patches (see :class:`CentralFeatureExtractor`).

    Parameters
    ----------
    model
        The pretrained :class:`~c2lst.models.CentralModel`.
    patches
        uint8 array ``(n, S, S, 3)``; ``S`` must pass through the UNet (e.g. the model's image size).
    t
        Timestep of the noise added before the forward pass.
    layers
        ``("mid",)``, ``("down",)`` or both.
    batch_size
        Patches per forward pass (the features do not depend on it).
    seed
        Seed of the fixed noise field.
    device
        Torch device; ``None`` uses the model's device.
    progress
        Show a progress bar over batches.

    Returns
    -------
    float64 array ``(n, D)``: per chosen block, the channel means then the channel standard deviations.

    Examples
    --------
    >>> model = CentralModel.from_preset("tiny")
    >>> central_features(model, np.zeros((3, 32, 32, 3), np.uint8)).shape[0]
    3
    """
    patches = check_patches(patches)
    batch_size = check_positive_int(batch_size, "batch_size")
    extractor = CentralFeatureExtractor(model, t=t, layers=layers, seed=seed)
    extractor.check_size(int(patches.shape[1]))
    dev = torch.device(device) if device is not None else model.device
    was_training = model.training
    model.to(dev).eval()
    out = []
    starts = range(0, len(patches), batch_size)
    try:
        with torch.no_grad():
            for start in _progress(starts, enabled=progress, desc="central features", unit="batch"):
                x = torch.from_numpy(patches[start : start + batch_size]).to(dev)
                out.append(extractor(x.permute(0, 3, 1, 2).float().div_(255.0)).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)
