"""Save and load a transformer central model: a folder laid out like the public checkpoints.

Layout: ``transformer/`` (a diffusers ``PixArtTransformer2DModel``, or PixCell's ``PixCellTransformer2DModel`` with
one condition token, which has the same weights plus its unconditional embedding), ``vae/`` (``AutoencoderKL``),
``scheduler/`` and, for folders written by c2lst, ``c2lst_condition.safetensors`` (the null condition) and
``c2lst.json`` (config and one sha256 over weights and configs). Only safetensors are read, no remote code is
executed (``trust_remote_code`` is never used): the transformer is always diffusers' own class. A missing VAE is
an error naming ``vae=``.

The model class is passed in (``cls``) so this module does not import :mod:`c2lst.models.central`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, PixArtTransformer2DModel

from ._persist import load_strict, write_central_meta
from .store import (
    MODEL_FORMAT,
    check_finite,
    check_no_pickles,
    fingerprint,
    load_safetensors,
    model_configs,
    save_safetensors,
    sha256_files,
)
from .transformer import PIXART_SCHEDULER, transformer_config

__all__ = ["is_transformer_dir", "load_transformer_central", "save_transformer_central"]

#: ``_class_name`` values of ``transformer/config.json`` that load into diffusers' PixArtTransformer2DModel.
PIXART_CLASSES = ("PixArtTransformer2DModel", "PixCellTransformer2DModel")
#: PixCell stores its learned unconditional UNI embedding here (``(n_tokens, caption_channels)``).
UNCOND_KEY = "caption_projection.uncond_embedding"
#: Scheduler keys taken from a folder's ``scheduler/scheduler_config.json`` (the DDPM training schedule).
_SCHEDULER_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def is_transformer_dir(path: Any) -> bool:
    """Whether ``path`` is a local folder holding ``transformer/config.json`` (a transformer pipeline)."""
    try:
        return (Path(path) / "transformer" / "config.json").is_file()
    except (TypeError, OSError):
        return False


def weight_files(directory: Path) -> list[Path]:
    """Weight files of a c2lst transformer folder, in hashing order (transformer shards, condition, VAE)."""
    return [
        *sorted((directory / "transformer").glob("*.safetensors")),
        directory / "c2lst_condition.safetensors",
        *sorted((directory / "vae").glob("*.safetensors")),
    ]


def _configs(directory: Path, config: dict) -> dict[str, Any]:
    """Configurations covered by the fingerprint: c2lst's config, ``transformer/config.json`` and the others."""
    out = model_configs(directory, config)
    doc = json.loads((directory / "transformer" / "config.json").read_text())
    out["transformer/config.json"] = {k: v for k, v in doc.items() if not str(k).startswith("_")}
    return out


def save_transformer_central(model: Any, directory: str | Path) -> str:
    """Write a transformer CentralModel as ``transformer/``, ``vae/``, ``scheduler/`` + c2lst files; return its sha256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
    model.vae.save_pretrained(directory / "vae", safe_serialization=True)
    DDPMScheduler(**model.scheduler_config).save_pretrained(directory / "scheduler")
    save_safetensors(
        {"null_embedding": model.null_embedding.detach()}, directory / "c2lst_condition.safetensors"
    )
    return write_central_meta(model, directory, weight_files(directory), _configs(directory, model.config))


def _read_json(file: Path, path: Any) -> dict:
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"`path={str(path)!r}`: {file} is not valid JSON ({err}).") from None
    if not isinstance(doc, dict):
        raise ValueError(f"`path={str(path)!r}`: {file} must hold a JSON object.")
    return doc


def _load_transformer(folder: Path, path: Any) -> tuple[PixArtTransformer2DModel, torch.Tensor | None]:
    """Load ``folder`` (a transformer/ subfolder) into diffusers' class; return it and PixCell's null tokens."""
    cfg = _read_json(folder / "config.json", path)
    declared = cfg.get("_class_name")
    if declared not in PIXART_CLASSES:
        raise ValueError(
            f"`path={str(path)!r}`: transformer/config.json describes a {declared!r}; c2lst loads "
            f"{list(PIXART_CLASSES)} (cross-attention to condition tokens). Class-conditioned backbones such as "
            "DiTTransformer2DModel have no token slot for genes and are not supported."
        )
    n_tokens = int(cfg.get("caption_num_tokens", 1))
    if n_tokens != 1:
        raise ValueError(
            f"`path={str(path)!r}`: this {declared} takes {n_tokens} condition tokens with a position embedding that "
            "only its remote code adds (PixCell-1024); c2lst runs no remote code. Use a one-token model "
            "(PixCell-256) or convert the checkpoint to a plain PixArtTransformer2DModel."
        )
    if not cfg.get("caption_channels"):
        raise ValueError(
            f"`path={str(path)!r}`: transformer/config.json has no `caption_channels`; c2lst puts genes in the "
            "caption-token slot, so the backbone needs one."
        )
    files = sorted(folder.glob("*.safetensors"))
    null = None
    for f in files:  # PixCell keeps its unconditional embedding as a buffer of the projection
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as fh:
            if UNCOND_KEY in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
                null = fh.get_tensor(UNCOND_KEY).float()
    try:
        model, info = PixArtTransformer2DModel.from_pretrained(
            folder, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise ValueError(
            f"`path={str(path)!r}`: could not load the transformer from safetensors ({err})."
        ) from None
    info = {k: [x for x in v if x != UNCOND_KEY] for k, v in info.items()}
    bad = {k: v for k, v in info.items() if v}
    if bad:
        detail = "; ".join(
            f"{len(v)} {k.replace('_', ' ')} (e.g. {', '.join(map(str, v[:3]))})" for k, v in bad.items()
        )
        raise ValueError(
            f"`path={str(path)!r}`: the weights in {folder} do not fit the PixArtTransformer2DModel its config.json "
            f"describes ({detail}); c2lst refuses to fill the rest with random weights."
        )
    if null is not None and null.shape != (1, int(cfg["caption_channels"])):
        raise ValueError(
            f"`path={str(path)!r}`: {UNCOND_KEY} has shape {tuple(null.shape)}, expected (1, caption_channels)."
        )
    return model.float(), null


def _resolve_vae(vae: Any, local: Path, path: Any) -> AutoencoderKL:
    """Return the VAE: the ``vae=`` argument (an AutoencoderKL or a folder), else the folder's ``vae/``."""
    if isinstance(vae, AutoencoderKL):
        return vae.float()
    if vae is not None:
        folder = Path(vae)
        if not folder.is_dir():
            raise ValueError(
                f"`vae={str(vae)!r}` is not a directory; pass an AutoencoderKL or a diffusers VAE folder."
            )
        check_no_pickles(list(folder.rglob("*")), root=folder)
        return load_strict(AutoencoderKL, folder, vae).float()
    if (local / "vae" / "config.json").is_file():
        return load_strict(AutoencoderKL, local / "vae", path).float()
    raise ValueError(
        f"`path={str(path)!r}` has a transformer but no `vae/` folder (PixCell ships without its SD3.5 VAE); pass "
        "`vae=` (an AutoencoderKL or the folder of the VAE it was trained with), e.g. "
        "`CentralModel.from_pretrained(path, vae='sd3.5-large/vae')`, then `save_pretrained` a complete folder."
    )


def _scheduler(local: Path, path: Any) -> dict[str, Any]:
    """DDPM training settings from ``scheduler/scheduler_config.json`` (PixArt's defaults when absent)."""
    conf = dict(PIXART_SCHEDULER)
    file = local / "scheduler" / "scheduler_config.json"
    if file.is_file():
        doc = _read_json(file, path)
        conf.update({k: doc[k] for k in _SCHEDULER_KEYS if k in doc})
        conf["clip_sample"] = bool(doc.get("clip_sample", False))  # latents are not bounded by [-1, 1]
    return conf


def load_transformer_central(cls: type, path: str | Path, *, verify: bool = True, vae: Any = None) -> Any:
    """Load a transformer CentralModel (``cls``) from a c2lst folder or a public transformer pipeline folder.

    See :meth:`c2lst.models.CentralModel.from_pretrained` for the parameters.
    """
    from .._logging import logger

    local = Path(path)
    check_no_pickles(list(local.rglob("*")), root=local)
    meta = _read_json(local / "c2lst.json", path) if (local / "c2lst.json").is_file() else None
    if meta is not None:
        if meta.get("format") != MODEL_FORMAT:
            raise ValueError(
                f"`path={str(path)!r}`: c2lst.json has format {meta.get('format')!r}, expected {MODEL_FORMAT!r}."
            )
        if vae is not None:
            raise ValueError(
                f"`path={str(path)!r}` is a complete c2lst folder with its own VAE; pass `vae=None`."
            )
        files = weight_files(local)
        if (
            not (local / "c2lst_condition.safetensors").is_file()
            or not any(f.parent.name == "transformer" for f in files)
            or not any(f.parent.name == "vae" for f in files)
        ):
            raise ValueError(
                f"`path={str(path)!r}` is missing weight files (transformer/, vae/ safetensors or "
                "c2lst_condition.safetensors); pass the folder written by `save_pretrained`."
            )
        if not isinstance(meta.get("config"), dict):
            raise ValueError(f"`path={str(path)!r}`: c2lst.json has no `config` object.")
        if verify:
            actual = fingerprint(sha256_files(files), _configs(local, meta["config"]))
            if actual != meta.get("sha256"):
                raise ValueError(
                    f"`path={str(path)!r}`: sha256 of the weights and configuration {actual[:12]}… does not match the "
                    f"recorded {str(meta.get('sha256'))[:12]}…; the files (weights, c2lst.json, transformer, vae or "
                    "scheduler config) were changed or corrupted. Pass `verify=False` to load anyway."
                )
        else:
            logger.warning("loading %s without sha256 verification (verify=False)", path)
    transformer, null = _load_transformer(local / "transformer", path)
    vae_model = _resolve_vae(vae, local, path)
    if meta is not None:
        config = meta["config"]
    else:
        config = transformer_config(transformer, vae_model, scheduler=_scheduler(local, path))
        if null is None:
            logger.warning(
                "%s ships no unconditional embedding (%s); the null condition is a zero token.",
                path,
                UNCOND_KEY,
            )
    if int(config.get("image_size", 0)) != int(config["sample_size"]) * 2 ** (
        len(vae_model.config.block_out_channels) - 1
    ):
        raise ValueError(
            f"`path={str(path)!r}`: the VAE's downsampling does not match the recorded image size."
        )
    model = cls(config, transformer=transformer, vae=vae_model)
    with torch.no_grad():
        if meta is not None:
            cond = load_safetensors(local / "c2lst_condition.safetensors")
            if "null_embedding" not in cond or cond["null_embedding"].shape != model.null_embedding.shape:
                raise ValueError(
                    f"`path={str(path)!r}`: c2lst_condition.safetensors does not match the transformer."
                )
            model.null_embedding.copy_(cond["null_embedding"])
        elif null is not None:
            model.null_embedding.copy_(null.reshape(-1))
    check_finite(model.state_dict(), f"`path={str(path)!r}`")
    if meta is not None:
        model.training_summary = dict(meta.get("training", {}))
        model.sha256 = meta.get("sha256")
    # a folder completed by `vae=` cannot be reloaded from its path alone: record no source then
    model.source = str(local.resolve()) if vae is None else ""
    return model.eval()
