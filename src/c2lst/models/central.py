"""The central model: a diffusers UNet whose time embedding has a FiLM condition slot.

The UNet is built with ``class_embed_type="identity"`` and ``resnet_time_scale_shift="scale_shift"``: a
float condition vector of size ``cond_dim`` (= the time-embedding width) is added to the timestep embedding,
and every ResNet block turns that sum into a per-channel scale and shift (FiLM). During central pretraining
the condition is a learned *null* embedding; local adaptation plugs a gene encoder into the same slot.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from torch import nn

from .sampling import DEFAULT_SCHEDULER, sample_images
from .store import (
    FINGERPRINT_VERSION,
    MODEL_FORMAT,
    apply_umask,
    check_finite,
    check_no_pickles,
    fingerprint,
    load_safetensors,
    model_configs,
    save_safetensors,
    sha256_files,
)

__all__ = ["PRESETS", "CentralModel", "denoising_loss", "preset_config"]

#: Architecture presets. ``tiny`` is for tests (32 px, < 1 M parameters), ``small`` the CPU demo
#: (64 px, ~3 M), ``base`` a GPU model (128 px, ~28 M).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "sample_size": 32,
        "block_out_channels": [16, 32, 64],
        "attention_levels": [2],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "attention_head_dim": 64,
    },
    "small": {
        "sample_size": 64,
        "block_out_channels": [32, 64, 96, 96],
        "attention_levels": [2, 3],
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "attention_head_dim": 32,
    },
    "base": {
        "sample_size": 128,
        "block_out_channels": [64, 128, 256, 256],
        "attention_levels": [2, 3],
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "attention_head_dim": 64,
    },
}

_SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": True,
}
#: Scheduler settings assumed for a plain diffusers UNet folder without a scheduler config (diffusers' own
#: default parameterisation).
_PLAIN_SCHEDULER: dict[str, Any] = {**_SCHEDULER_DEFAULTS, "prediction_type": "epsilon"}


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
    ) -> None:
        super().__init__()
        self.config = json.loads(json.dumps(dict(config)))
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
        """Number of UNet parameters."""
        return sum(p.numel() for p in self.unet.parameters())

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
        return self.unet(noisy, timesteps, class_labels=condition.to(noisy.dtype)).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] to the UNet's space (identity in pixel mode, scaled latents in latent mode)."""
        if self.vae is None:
            return images
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return latents * float(getattr(self.vae.config, "scaling_factor", 1.0))

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Map UNet samples back to images in [-1, 1]."""
        if self.vae is None:
            return samples
        scale = float(getattr(self.vae.config, "scaling_factor", 1.0))
        return self.vae.decode(samples.to(self.vae.dtype) / scale).sample

    def sample(
        self,
        n: int,
        *,
        steps: int = 25,
        scheduler: str = DEFAULT_SCHEDULER,
        condition: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ):
        """Generate ``n`` RGB patches.

        Parameters
        ----------
        n
            Number of patches.
        steps
            Number of denoising steps.
        scheduler
            One of :data:`~c2lst.models.sampling.SCHEDULERS`: ``"sde-dpmsolver++"`` (default), ``"dpmsolver++"``,
            ``"unipc"``, ``"ddim"`` or ``"ddpm"`` (the 1000-step ancestral reference with ``steps=1000``).
        condition
            Condition embeddings ``(n, cond_dim)``; ``None`` uses the null embedding.
        guidance_scale
            Classifier-free guidance weight: ``eps = eps_null + w (eps_cond - eps_null)``. ``1`` runs only the
            conditional branch, ``0`` only the null branch.
        generator
            One :class:`torch.Generator` for all initial noise, or one per sample (reproducible per row,
            whatever the batch size). ``None`` uses a fresh unseeded draw.
        batch_size
            Samples per UNet call (classifier-free guidance doubles the forward batch internally).
        progress
            Show a progress bar over batches.

        Returns
        -------
        :class:`numpy.ndarray` of uint8, shape ``(n, H, W, 3)``.
        """
        return sample_images(
            self,
            n,
            steps=steps,
            scheduler=scheduler,
            condition=condition,
            guidance_scale=guidance_scale,
            generator=generator,
            batch_size=batch_size,
            progress=progress,
        )

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def weight_files(directory: str | Path) -> list[Path]:
        """Return the weight files of a saved model directory, in hashing order."""
        directory = Path(directory)
        files = [directory / "unet" / "diffusion_pytorch_model.safetensors", directory / "c2lst_condition.safetensors"]
        if (directory / "vae").is_dir():
            files.append(directory / "vae" / "diffusion_pytorch_model.safetensors")
        return files

    def save_pretrained(self, directory: str | Path) -> str:
        """Write a diffusers-format directory and return its fingerprint.

        Layout: ``unet/`` and ``scheduler/`` (loadable by diffusers), ``vae/`` in latent mode,
        ``c2lst_condition.safetensors`` (the null embedding) and ``c2lst.json`` (format, config, sha256,
        training summary). The ``sha256`` is one fingerprint over the weight files and every configuration that
        changes the output (``c2lst.json``'s config with the scheduler, ``unet/config.json``, ``vae/config.json``,
        ``scheduler/scheduler_config.json``). Files get the process umask's mode (safetensors writes ``0600``).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        DDPMScheduler(**self.scheduler_config).save_pretrained(directory / "scheduler")
        save_safetensors({"null_embedding": self.null_embedding.detach()}, directory / "c2lst_condition.safetensors")
        if self.vae is not None:
            self.vae.save_pretrained(directory / "vae", safe_serialization=True)
        apply_umask(p for p in directory.rglob("*") if p.is_file())  # safetensors writes 0600
        weights_sha = sha256_files(self.weight_files(directory))
        sha = fingerprint(weights_sha, model_configs(directory, self.config))
        from .._version import __version__

        meta = {
            "format": MODEL_FORMAT,
            "c2lst_version": __version__,
            "config": self.config,
            "sha256": sha,
            "fingerprint": FINGERPRINT_VERSION,
            "weights_sha256": weights_sha,
            "training": self.training_summary,
        }
        (directory / "c2lst.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return sha

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, verify: bool = True, subfolder: str | None = None, **hub_kwargs: Any
    ) -> CentralModel:
        """Load a model saved by :meth:`save_pretrained`, a plain diffusers ``UNet2DModel`` or a pipeline.

        Parameters
        ----------
        path
            A local directory: a c2lst model directory (``c2lst.json``), a directory written by
            ``UNet2DModel.save_pretrained`` (``config.json`` + safetensors), or a diffusers pipeline directory
            with a ``unet/`` subfolder. A Hugging Face hub id works for users with network access.
        verify
            Check the weights against the sha256 recorded in ``c2lst.json``.
        subfolder
            Subfolder of a hub repository holding the UNet.
        **hub_kwargs
            Passed to :meth:`diffusers.UNet2DModel.from_pretrained` for hub ids (``revision`` ...).

        Returns
        -------
        The loaded model in eval mode. Only safetensors are read; pickle-based files are refused.
        """
        from .._logging import logger

        local = Path(path)
        if not local.exists():
            if str(path).startswith((".", "/", "~")) or local.suffix:
                raise FileNotFoundError(f"`path={str(path)!r}` does not exist; pass a saved model directory.")
            unet = _load_strict(UNet2DModel, str(path), path, subfolder=subfolder, **hub_kwargs)
            model = cls._wrap_plain_unet(unet.float())
            model.source = str(path)
            return model.eval()
        if not local.is_dir():
            check_no_pickles([local])
            raise ValueError(
                f"`path={str(path)!r}` is a file, not a model directory; pass the directory written by "
                "`CentralModel.save_pretrained` or `UNet2DModel.save_pretrained`."
            )
        check_no_pickles(list(local.rglob("*")), root=local)
        meta_file = local / "c2lst.json"
        if meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"`path={str(path)!r}`: c2lst.json is not valid JSON ({err}).") from None
            if meta.get("format") != MODEL_FORMAT:
                raise ValueError(f"`path={str(path)!r}`: c2lst.json has format {meta.get('format')!r}, "
                                 f"expected {MODEL_FORMAT!r}.")
            files = cls.weight_files(local)
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ValueError(f"`path={str(path)!r}` is missing weight files {missing}.")
            if verify:
                _verify_fingerprint(local, meta, path, files)
            else:
                logger.warning("loading %s without sha256 verification (verify=False)", path)
            unet = _load_strict(UNet2DModel, local / "unet", path)
            vae = _load_strict(AutoencoderKL, local / "vae", path) if (local / "vae").is_dir() else None
            # weights stored in float16 (the shipped models) are upcast: c2lst trains and samples in float32
            model = cls(meta["config"], unet=unet.float(), vae=vae.float() if vae is not None else None)
            cond = load_safetensors(local / "c2lst_condition.safetensors")
            if "null_embedding" not in cond or cond["null_embedding"].shape != model.null_embedding.shape:
                raise ValueError(f"`path={str(path)!r}`: c2lst_condition.safetensors does not match the UNet.")
            with torch.no_grad():
                model.null_embedding.copy_(cond["null_embedding"])
            check_finite(model.state_dict(), f"`path={str(path)!r}`")
            model.training_summary = dict(meta.get("training", {}))
            model.sha256 = meta.get("sha256")
            model.source = str(local.resolve())
            return model.eval()
        unet_dir = local / "unet" if (local / "unet" / "config.json").is_file() else local
        if not (unet_dir / "config.json").is_file() and (local / "model_index.json").is_file():
            parts = sorted(p.name for p in local.iterdir() if (p / "config.json").is_file())
            raise ValueError(
                f"`path={str(path)!r}` is a diffusers pipeline without a `unet/` folder (it has {parts}); c2lst "
                "central models are UNet2DModel folders (transformer backbones such as PixArtTransformer2DModel are "
                "not supported yet). Pass a folder written by `CentralModel.save_pretrained`."
            )
        if not (unet_dir / "config.json").is_file():
            raise ValueError(
                f"`path={str(path)!r}` is not a model directory (no c2lst.json, config.json or unet/config.json); "
                "pass the directory written by `CentralModel.save_pretrained` or `UNet2DModel.save_pretrained`."
            )
        unet = _load_strict(UNet2DModel, unet_dir, path)
        check_finite(unet.state_dict(), f"`path={str(path)!r}`")
        model = cls._wrap_plain_unet(unet.float())
        model.source = str(local.resolve())
        sched = local / "scheduler" / "scheduler_config.json"
        if sched.is_file():
            conf = json.loads(sched.read_text())
            keep = {k: conf[k] for k in _SCHEDULER_DEFAULTS if k in conf}
            if "beta_schedule" in conf:
                keep["beta_schedule"] = conf["beta_schedule"]
            model.scheduler_config.update(keep)
            model.config["scheduler"] = dict(model.scheduler_config)
            model.noise_scheduler = DDPMScheduler(**model.scheduler_config)
        return model.eval()

    @classmethod
    def _wrap_plain_unet(cls, unet: UNet2DModel) -> CentralModel:
        c = unet.config
        boc = list(c.block_out_channels)
        cfg = {
            "preset": "custom",
            "sample_size": int(c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]),
            "in_channels": int(c.in_channels),
            "block_out_channels": boc,
            "attention_levels": [i for i, b in enumerate(c.down_block_types) if "Attn" in b],
            "layers_per_block": int(c.layers_per_block),
            "norm_num_groups": int(c.norm_num_groups),
            "attention_head_dim": int(c.attention_head_dim or boc[-1]),
            "scheduler": dict(_PLAIN_SCHEDULER),
        }
        return cls(cfg, unet=unet)

    sha256: str | None = None
    #: Where the model was loaded from (a directory, a hub id or a shipped model's name); ``""`` if built here.
    source: str = ""


def _verify_fingerprint(local: Path, meta: Mapping[str, Any], path: Any, files: Sequence[Path]) -> None:
    """Check a saved model against the fingerprint in its ``c2lst.json`` (weights + configuration).

    Models saved before the fingerprint covered the configuration (no ``fingerprint`` field) are checked on
    their weights only, with a logged warning, so they keep loading.
    """
    from .._logging import logger

    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"`path={str(path)!r}`: c2lst.json has no `config` object.")
    weights = sha256_files(files)
    recorded = str(meta.get("sha256"))
    legacy = meta.get("fingerprint") != FINGERPRINT_VERSION
    actual = weights if legacy else fingerprint(weights, model_configs(local, meta["config"]))
    if actual != recorded:
        what = "weights sha256" if legacy else "sha256 of the weights and configuration"
        raise ValueError(
            f"`path={str(path)!r}`: {what} {actual[:12]}… does not match the recorded {recorded[:12]}…; the "
            "files (weights, c2lst.json, unet/config.json, scheduler or vae config) were changed or corrupted. Pass "
            "`verify=False` to load anyway."
        )
    if legacy:
        logger.warning(
            "%s was saved by an older c2lst: its sha256 covers the weights only, not c2lst.json or the diffusers "
            "configs; save it again with `CentralModel.save_pretrained` to cover them.",
            path,
        )


def _load_strict(model_cls: type, source: str | Path, path: Any, **kwargs: Any) -> Any:
    """Load a diffusers model from ``source``, refusing another class's folder and weights that do not fit.

    diffusers fills missing weights with a random initialisation and only logs it, so a folder of another
    architecture (e.g. a ``PixArtTransformer2DModel``) would "load" as a random UNet. Here the folder's
    ``config.json`` must name ``model_cls`` and every weight must be present, expected and of the right shape.
    """
    name = model_cls.__name__
    cfg = Path(source) / (kwargs.get("subfolder") or "") / "config.json"
    if cfg.is_file():
        try:
            declared = json.loads(cfg.read_text()).get("_class_name")
        except json.JSONDecodeError as err:
            raise ValueError(f"`path={str(path)!r}`: {cfg} is not valid JSON ({err}).") from None
        if declared is not None and declared != name:
            raise ValueError(
                f"`path={str(path)!r}`: {cfg} describes a {declared!r}, not a diffusers {name}; c2lst central models "
                "are UNet2DModel folders (transformer backbones such as PixArtTransformer2DModel are not supported "
                "yet). Pass a folder written by `CentralModel.save_pretrained` or `UNet2DModel.save_pretrained`."
            )
    try:
        model, info = model_cls.from_pretrained(source, use_safetensors=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"`path={str(path)!r}`: could not load a {name} from safetensors ({err}).") from None
    bad = {key: list(val) for key, val in info.items() if val}
    if bad:
        detail = "; ".join(
            f"{len(v)} {k.replace('_', ' ')} (e.g. {', '.join(str(x) for x in v[:3])})" for k, v in bad.items()
        )
        raise ValueError(
            f"`path={str(path)!r}`: the weights in {source} do not fit the {name} its config.json describes "
            f"({detail}); c2lst refuses to fill the rest with random weights. Pass the folder the model was saved to."
        )
    return model


def denoising_loss(
    model: nn.Module,
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    generator: torch.Generator,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the denoising MSE of ``model`` on ``clean`` samples (already on the model's device).

    The target follows the scheduler's ``prediction_type``: the noise (``"epsilon"``) or the velocity
    ``v = sqrt(abar) noise - sqrt(1 - abar) x0`` (``"v_prediction"``). Noise and timesteps are drawn on the CPU
    from ``generator`` so the loss is reproducible on any device.
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


def patches_to_tensor(patches) -> torch.Tensor:
    """Convert uint8 ``(N, H, W, 3)`` patches to a uint8 ``(N, 3, H, W)`` CPU tensor (no copy of floats)."""
    return torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()


def to_model_input(batch_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Map a uint8 ``(B, 3, H, W)`` batch to floats in [-1, 1] on ``device``."""
    return batch_uint8.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
