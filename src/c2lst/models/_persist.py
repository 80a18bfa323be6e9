"""Save and load a :class:`~c2lst.models.CentralModel` directory: diffusers layout, one verified fingerprint.

``CentralModel.save_pretrained`` / ``from_pretrained`` are thin wrappers over :func:`save_central` and
:func:`load_central`. Only safetensors are read; a folder of another class or with missing weights is refused
instead of being filled with random weights. The model class is passed in (``cls``), so this module does not
import :mod:`c2lst.models.central` (no import cycle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

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

#: Scheduler settings assumed for a plain diffusers UNet folder without a scheduler config (diffusers' own
#: default parameterisation); c2lst presets use the same with ``prediction_type="v_prediction"``.
PLAIN_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}


def weight_files(directory: str | Path) -> list[Path]:
    """Return the weight files of a saved model directory, in hashing order."""
    directory = Path(directory)
    files = [directory / "unet" / "diffusion_pytorch_model.safetensors", directory / "c2lst_condition.safetensors"]
    if (directory / "vae").is_dir():
        files.append(directory / "vae" / "diffusion_pytorch_model.safetensors")
    return files


def save_central(model: Any, directory: str | Path) -> str:
    """Write ``model`` (a CentralModel) as a diffusers-format directory and return its fingerprint."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(directory / "unet", safe_serialization=True)
    DDPMScheduler(**model.scheduler_config).save_pretrained(directory / "scheduler")
    save_safetensors({"null_embedding": model.null_embedding.detach()}, directory / "c2lst_condition.safetensors")
    if model.vae is not None:
        model.vae.save_pretrained(directory / "vae", safe_serialization=True)
    write_model_index(model, directory)
    return write_central_meta(model, directory, weight_files(directory), model_configs(directory, model.config))


def write_central_meta(
    model: Any, directory: Path, weights: Sequence[Path], configs: Mapping[str, Any]
) -> str:
    """Give the saved files the umask's mode, write ``c2lst.json`` with one fingerprint and return it.

    The fingerprint covers ``weights`` (in order) and ``configs``; both save paths (UNet and transformer) end here.
    """
    from .._version import __version__

    apply_umask(p for p in directory.rglob("*") if p.is_file())  # safetensors writes 0600
    weights_sha = sha256_files(weights)
    sha = fingerprint(weights_sha, configs)
    meta = {
        "format": MODEL_FORMAT,
        "c2lst_version": __version__,
        "config": model.config,
        "sha256": sha,
        "fingerprint": FINGERPRINT_VERSION,
        "weights_sha256": weights_sha,
        "training": model.training_summary,
    }
    (directory / "c2lst.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return sha


def write_model_index(model: Any, directory: Path) -> None:
    """Write diffusers' ``model_index.json`` naming :class:`~c2lst.models.C2LSTPipeline` and its components.

    It lets ``C2LSTPipeline.from_pretrained(directory)`` (and ``DiffusionPipeline.from_pretrained`` with
    ``custom_pipeline=``) sample from the folder. It is not covered by the fingerprint (see
    :data:`~c2lst.models.store.MODEL_CONFIG_FILES`): it only names classes, c2lst never reads it, and its
    ``_diffusers_version`` would otherwise tie a model's sha256 to the diffusers release that saved it.
    """
    from .pipeline import C2LSTPipeline

    pipe = C2LSTPipeline(unet=model.unet, scheduler=DDPMScheduler(**model.scheduler_config), vae=model.vae)
    pipe.save_config(directory)


def load_central(
    cls: type, path: str | Path, *, verify: bool = True, subfolder: str | None = None, **hub_kwargs: Any
) -> Any:
    """Load a CentralModel (``cls``) from a c2lst directory, a plain diffusers UNet folder, a pipeline or a hub id.

    See :meth:`c2lst.models.CentralModel.from_pretrained` for the parameters.
    """
    local = Path(path)
    if not local.exists():
        if str(path).startswith((".", "/", "~")) or local.suffix:
            raise FileNotFoundError(f"`path={str(path)!r}` does not exist; pass a saved model directory.")
        unet = load_strict(UNet2DModel, str(path), path, subfolder=subfolder, **hub_kwargs)
        model = wrap_plain_unet(cls, unet.float())
        model.source = str(path)
        return model.eval()
    if not local.is_dir():
        check_no_pickles([local])
        raise ValueError(
            f"`path={str(path)!r}` is a file, not a model directory; pass the directory written by "
            "`CentralModel.save_pretrained` or `UNet2DModel.save_pretrained`."
        )
    check_no_pickles(list(local.rglob("*")), root=local)
    if (local / "c2lst.json").is_file():
        return _load_c2lst_dir(cls, local, path, verify)
    unet_dir = local / "unet" if (local / "unet" / "config.json").is_file() else local
    if not (unet_dir / "config.json").is_file() and (local / "model_index.json").is_file():
        parts = sorted(p.name for p in local.iterdir() if (p / "config.json").is_file())
        raise ValueError(
            f"`path={str(path)!r}` is a diffusers pipeline without a `unet/` or `transformer/` folder (it has "
            f"{parts}); c2lst central models hold a UNet2DModel (`unet/`) or a PixArtTransformer2DModel "
            "(`transformer/` + `vae/`). Pass a folder written by `CentralModel.save_pretrained`."
        )
    if not (unet_dir / "config.json").is_file():
        raise ValueError(
            f"`path={str(path)!r}` is not a model directory (no c2lst.json, config.json or unet/config.json); "
            "pass the directory written by `CentralModel.save_pretrained` or `UNet2DModel.save_pretrained`."
        )
    unet = load_strict(UNet2DModel, unet_dir, path)
    check_finite(unet.state_dict(), f"`path={str(path)!r}`")
    model = wrap_plain_unet(cls, unet.float())
    model.source = str(local.resolve())
    sched = local / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        conf = json.loads(sched.read_text())
        keep = {k: conf[k] for k in PLAIN_SCHEDULER if k in conf}
        model.scheduler_config.update(keep)
        model.config["scheduler"] = dict(model.scheduler_config)
        model.noise_scheduler = DDPMScheduler(**model.scheduler_config)
    return model.eval()


def _load_c2lst_dir(cls: type, local: Path, path: Any, verify: bool) -> Any:
    """Load a directory written by ``CentralModel.save_pretrained`` (``c2lst.json`` present)."""
    from .._logging import logger

    try:
        meta = json.loads((local / "c2lst.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"`path={str(path)!r}`: c2lst.json is not valid JSON ({err}).") from None
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"`path={str(path)!r}`: c2lst.json has format {meta.get('format')!r}, expected {MODEL_FORMAT!r}."
        )
    files = weight_files(local)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"`path={str(path)!r}` is missing weight files {missing}.")
    if verify:
        verify_fingerprint(local, meta, path, files)
    else:
        logger.warning("loading %s without sha256 verification (verify=False)", path)
    unet = load_strict(UNet2DModel, local / "unet", path)
    vae = load_strict(AutoencoderKL, local / "vae", path) if (local / "vae").is_dir() else None
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


def wrap_plain_unet(cls: type, unet: UNet2DModel) -> Any:
    """Wrap a plain diffusers UNet (no c2lst config) into a CentralModel (``cls``) with an open condition slot."""
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
        "scheduler": dict(PLAIN_SCHEDULER),
    }
    return cls(cfg, unet=unet)


def verify_fingerprint(local: Path, meta: Mapping[str, Any], path: Any, files: Sequence[Path]) -> None:
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


def load_strict(model_cls: type, source: str | Path, path: Any, **kwargs: Any) -> Any:
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
                f"`path={str(path)!r}`: {cfg} describes a {declared!r}, not a diffusers {name}. A transformer backbone "
                "(PixArtTransformer2DModel) loads from its pipeline folder, the parent holding `transformer/`, "
                "`vae/` and `scheduler/`; otherwise pass a folder written by `CentralModel.save_pretrained` or "
                "`UNet2DModel.save_pretrained`."
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
