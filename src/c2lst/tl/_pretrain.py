"""``tl.pretrain``: learn histology morphology from unpaired patches (the *central* model)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._logging import logger
from .._records import record_lineage, store
from .._utils import (
    check_positive_float,
    check_positive_int,
    check_seed,
)
from ..models import PRESETS, CentralModel, check_mixed_precision, fit_denoiser, preset_config
from ._inputs import check_output_dir, collect_patches


def pretrain(
    data: Any,
    *,
    preset: Literal["tiny", "small", "base"] = "small",
    config: dict[str, Any] | None = None,
    n_steps: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-4,
    ema: bool = True,
    output_dir: str | os.PathLike | None = None,
    resume: bool = True,
    seed: int = 0,
    mixed_precision: Literal["no", "bf16", "fp16"] = "no",
    patch_key: str = "c2lst_patch",
    key_added: str | None = "c2lst_central",
    vae: Any = None,
    checkpoint_every: int | None = None,
    device: str | None = None,
    progress: bool = True,
    balance: Literal["slides", "patches"] = "slides",
) -> CentralModel:
    """Pretrain the central diffusion model on unpaired histology patches.

    One accelerate loop (CPU, one GPU, or several via ``accelerate launch``) with diffusers' DDPM noise
    schedule and EMA, dihedral augmentation, gradient clipping, a NaN/Inf guard, periodic checkpoints and
    exact resume.

    Parameters
    ----------
    data
        Patches: a :class:`~spatialdata.SpatialData` or :class:`~anndata.AnnData` with ``obsm[patch_key]``
        (see :func:`c2lst.pp.extract_patches`), a uint8 array ``(N, H, W, 3)``, or a list of them (one slide per
        institution, e.g. several :func:`c2lst.datasets.read_hest` samples). Every slide seen (its name, number
        of patches and a sha256 of its patches) is recorded, so a local slide can be kept out of pretraining
        (:func:`c2lst.tl.pretrained_on` tells whether a slide was seen).
    preset
        Architecture preset: ``"tiny"`` (tests, the shipped ``"tiny-sim"`` model), ``"small"`` (CPU), ``"base"``
        (GPU). Time per step at ``batch_size=32`` on one CPU thread (torch 2.13, measured on a 2-core machine):
        ``tiny`` 0.5 s idle, about 1 s while the other core is busy; ``small`` about 4 s; ``base`` minutes (use a
        GPU). The shipped ``tiny-sim`` model took 6 000 such steps (about 50 min on one core); a lab's own cohort
        needs this function, a first run can start from :func:`c2lst.datasets.pretrained_central`.
    config
        Overrides of the preset's configuration (see :func:`c2lst.models.preset_config`). The model's image
        size defaults to the patch size.
    n_steps
        Optimisation steps.
    batch_size
        Patches per step (per process).
    lr
        AdamW learning rate.
    ema
        Keep an exponential moving average of the weights and return it.
    output_dir
        Directory for checkpoints (``checkpoints/``) and the final model (``model/``, see
        :meth:`~c2lst.models.CentralModel.save_pretrained`). ``None`` trains in memory only.
    resume
        Continue from the newest checkpoint in ``output_dir`` when there is one.
    seed
        Seeds initialisation, batches, augmentation and noise.
    mixed_precision
        ``"no"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU).
    patch_key
        Key of the patches in ``obsm``.
    key_added
        Key under ``uns["c2lst"]["central"]`` of each AnnData in ``data`` where the model is registered (its
        path, sha256, configuration and training summary, plus a lineage record), so later calls can name it
        (``central=key_added``). ``None`` writes nothing into ``data``.
    vae
        Optional :class:`diffusers.AutoencoderKL` for latent diffusion.
    checkpoint_every
        Steps between checkpoints (default: a quarter of ``n_steps``, at most 500).
    device
        ``"cpu"`` to force the CPU; ``None`` picks CUDA when available.
    progress
        Show a progress bar with the loss.
    balance
        With several slides: ``"slides"`` draws every batch row from a slide chosen uniformly, then a patch of
        it uniformly, so a large slide does not dominate; ``"patches"`` draws patches uniformly from the pooled
        stack. One slide: both are the same.

    Returns
    -------
    The trained :class:`~c2lst.models.CentralModel` (EMA weights when ``ema=True``), in eval mode. Unless
    ``key_added=None``, each AnnData in ``data`` (or table of a SpatialData) also gains, in place,
    ``uns["c2lst"]["central"][key_added]`` and a lineage record; nothing else in ``data`` is changed. The
    model's ``training_summary`` (saved in ``c2lst.json``) and the lineage parameters list the slides seen
    (``"slides"``: ``name``, ``n_patches``, ``sha256``) and the ``balance`` rule.

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.simulated_visium(n_spots=100)
    >>> c2lst.pp.extract_patches(sdata, size=32)
    >>> model = c2lst.tl.pretrain(sdata, preset="tiny", n_steps=20, batch_size=8)
    >>> other = c2lst.datasets.simulated_visium(n_spots=300, seed=1)
    >>> c2lst.pp.extract_patches(other, size=32)
    >>> model = c2lst.tl.pretrain([sdata, other], preset="tiny", n_steps=20, batch_size=8, key_added=None)
    >>> [s["n_patches"] for s in model.training_summary["slides"]]
    [100, 300]
    """
    if preset not in PRESETS:
        raise ValueError(f"`preset={preset!r}` is unknown; valid presets are {sorted(PRESETS)}.")
    n_steps = check_positive_int(n_steps, "n_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    seed = check_seed(seed)
    mixed_precision = check_mixed_precision(mixed_precision, device)
    if key_added is not None and (not isinstance(key_added, str) or not key_added):
        raise TypeError(f"`key_added` must be a non-empty string or None, got {key_added!r}.")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"`config` must be a dict of preset overrides, got {type(config).__name__}.")
    if balance not in ("slides", "patches"):
        raise ValueError(
            f"`balance={balance!r}` is unknown; pass 'slides' (balanced across slides) or 'patches'."
        )
    patches, tables, names, sources = collect_patches(data, patch_key, per_source=True)
    slides = _slides(patches, sources)
    sizes = [s["n_patches"] for s in slides]
    overrides = dict(config or {})
    size = patches.shape[1]
    if "sample_size" in overrides and overrides["sample_size"] != size:
        raise ValueError(
            f"`config['sample_size']={overrides['sample_size']}` does not match the patch size {size}; "
            "re-extract patches with that `size=` or drop the override."
        )
    overrides["sample_size"] = size
    cfg = preset_config(preset, **overrides)
    levels = len(cfg["block_out_channels"]) - 1
    if size % (2**levels):
        raise ValueError(f"patch size {size} must be divisible by {2**levels} for preset {preset!r}.")
    out = check_output_dir(output_dir)
    model = CentralModel.from_preset(preset, vae=vae, seed=seed, **overrides)
    n = len(patches)
    fingerprint = {
        "function": "pretrain",
        "config": cfg,
        "batch_size": batch_size,
        "lr": lr,
        "ema": bool(ema),
        "seed": seed,
        "n_patches": int(n),
        "mixed_precision": mixed_precision,
        "balance": balance,
        "slides": slides,
    }
    result = fit_denoiser(
        model, patches, n_steps=n_steps, batch_size=batch_size, lr=lr, seed=seed, ema=ema,
        mixed_precision=mixed_precision, device=device, output_dir=out, resume=resume,
        checkpoint_every=checkpoint_every, fingerprint=fingerprint, progress=progress, desc="pretrain",
        slide_sizes=sizes if balance == "slides" else None,
    )  # fmt: skip
    model.training_summary = {
        **result.summary(), "n_patches": int(n), "sources": names, "seed": seed, "slides": slides,
        "balance": balance,
    }  # fmt: skip
    sha = None
    if out is not None:
        sha = _save_on_main_process(model, out / "model")
        model.sha256 = sha
    _register(tables, model, out, sha, key_added, fingerprint, seed)
    return model


def pretrained_on(data: Any, *, central: Any, patch_key: str = "c2lst_patch") -> list[str]:
    """Return the slides of ``data`` that ``central`` was pretrained on (empty: all were held out).

    A slide counts as seen when its sample id (as a reader such as :func:`c2lst.datasets.read_hest` records it)
    or the sha256 of its patches is among the slides of the central model's training summary.

    Parameters
    ----------
    data
        The local slide(s), as accepted by :func:`pretrain` (SpatialData, AnnData, patch arrays or a list).
    central
        A :class:`~c2lst.models.CentralModel` from :func:`pretrain` (or its ``training_summary`` dict).
    patch_key
        Key of the patches in ``obsm``.

    Returns
    -------
    The names of the slides of ``data`` that were seen, in the order of ``data``.

    Examples
    --------
    >>> import c2lst
    >>> a, b = (c2lst.datasets.simulated_visium(n_spots=60, seed=s) for s in (0, 1))
    >>> for sd in (a, b):
    ...     c2lst.pp.extract_patches(sd, size=32, progress=False)
    >>> model = c2lst.tl.pretrain([a], preset="tiny", n_steps=2, batch_size=4, key_added=None)
    >>> c2lst.tl.pretrained_on(b, central=model)
    []
    """
    summary = central if isinstance(central, dict) else getattr(central, "training_summary", None)
    if not isinstance(summary, dict):
        raise TypeError(
            f"`central` must be a CentralModel or its `training_summary` dict, got {type(central).__name__}."
        )
    if "slides" not in summary:
        raise KeyError(
            "`central` records no pretraining slides (`training_summary['slides']`); it was trained or saved by an "
            "older c2lst, so held-out slides cannot be checked."
        )
    seen = summary["slides"]
    ids = {str(s.get("sample_id", "")) for s in seen} - {""}
    hashes = {str(s["sha256"]) for s in seen}
    patches, _, _, sources = collect_patches(data, patch_key, per_source=True)
    return [s["name"] for s in _slides(patches, sources) if s["sample_id"] in ids or s["sha256"] in hashes]


def _slides(patches, sources: list[dict]) -> list[dict]:
    """Return ``sources`` with the sha256 of each slide's patches (over their shape and bytes) added."""
    out, start = [], 0
    for source in sources:
        size = source["n_patches"]
        block = np.ascontiguousarray(patches[start : start + size])
        start += size
        digest = hashlib.sha256(repr(block.shape).encode())
        digest.update(memoryview(block.reshape(-1)))
        out.append({**source, "n_patches": int(size), "sha256": digest.hexdigest()})
    return out


def _save_on_main_process(model: CentralModel, directory: Path) -> str:
    """Save once (by the main process under ``accelerate launch``) and return the sha256 on every process."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        model.save_pretrained(directory)
    state.wait_for_everyone()
    return str(json.loads((directory / "c2lst.json").read_text())["sha256"])


def _register(tables, model: CentralModel, out: Path | None, sha: str | None, key: str | None, params, seed) -> None:
    if not tables or key is None:
        return
    if out is None:
        logger.warning("`output_dir=None`: the model is registered without a path; save it to reuse it later")
    entry = {
        "path": "" if out is None else str((out / "model").resolve()),
        "sha256": sha or "",
        "config": json.dumps(model.config, sort_keys=True),
        "summary": json.dumps(model.training_summary, sort_keys=True),
    }
    for table in tables:
        store(table, "central", key, dict(entry))
        record_lineage(
            table,
            function="c2lst.tl.pretrain",
            parameters=params,
            seed=seed,
            input_table=None,
            model_sha256={"central": sha or ""},
        )
