"""``tl.adapt``: gene-conditioned local adaptation of a frozen central model (FiLM encoder + LoRA)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from anndata import AnnData

from .. import _records as records
from .._logging import logger
from .._records import expression_matrix
from .._utils import (
    as_table,
    check_nonneg_float,
    check_positive_float,
    check_positive_int,
    check_seed,
    require_obsm,
)
from ..models import DEFAULT_TARGETS, LocalModel, check_mixed_precision, fit_denoiser
from ..models.store import (
    ADAPTER_FORMAT,
)
from ._adapters import check_key_added
from ._central import resolve_central
from ._inputs import check_output_dir, check_patches


def adapt(
    adata: Any,
    *,
    table_key: str = "table",
    central: Any,
    expr_key: str = "c2lst_expr",
    patch_key: str = "c2lst_patch",
    n_steps: int = 1000,
    rank: int = 8,
    lr: float = 1e-3,
    encoder_lr: float | None = None,
    timestep_bias: float = 0.0,
    condition_noise: float = 0.0,
    batch_size: int = 16,
    cond_dropout: float = 0.1,
    hidden: int = 64,
    target_modules: str = DEFAULT_TARGETS,
    unlabelled: np.ndarray | AnnData | None = None,
    unlabelled_fraction: float = 0.5,
    seed: int = 0,
    key_added: str = "c2lst_local",
    overwrite: bool = False,
    output_dir: str | os.PathLike | None = None,
    resume: bool = True,
    ema: bool = True,
    mixed_precision: Literal["no", "bf16", "fp16"] = "no",
    device: str | None = None,
    verify: bool = True,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Adapt a frozen central model to paired image–gene spots with a gene encoder and LoRA.

    The gene encoder feeds the central UNet's FiLM slot (scale-and-shift of every ResNet block) and LoRA
    adapters (peft) bend its attention and convolution layers; the central weights stay frozen. With a
    transformer central model (a histology foundation model such as PixCell, see the foundation-model page) the
    genes become offsets of its condition tokens and LoRA goes on its attention projections. Condition
    dropout trains the null branch so :func:`c2lst.tl.synthesize` can use classifier-free guidance.

    Parameters
    ----------
    adata
        Table with patches in ``obsm[patch_key]`` and prepared expression in ``obsm[expr_key]``.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    central
        A :class:`~c2lst.models.CentralModel`, a model directory, or a key of ``uns["c2lst"]["central"]``.
    expr_key
        Prepared expression (see :func:`c2lst.pp.prepare_expression`); its genes become the adapter's genes.
    patch_key
        Patches (see :func:`c2lst.pp.extract_patches`); their size must match the central model.
    n_steps, lr, batch_size
        Optimisation settings. With fewer spots than ``batch_size`` the batch shrinks to the number of spots.
    encoder_lr
        Learning rate of the gene encoder (``None``: ``lr``). LoRA alone can lower the loss without using the
        condition; a higher encoder rate lets the expression pathway carry more of the fit.
    timestep_bias
        Draw the timesteps of the spots that keep their condition with density proportional to
        ``t ** timestep_bias``: ``1`` grows linearly with the noise level, ``2`` quadratically. High noise is where
        the denoiser decides which cells a patch shows, so a bias spends more of the conditional loss where the
        genes matter. Spots with the condition dropped (the null branch) and unlabelled patches stay uniform.
        ``0`` (default): uniform, as before the option existed. On the simulator with the shipped ``tiny-sim``
        model and 15 sampler steps, a bias of 1 or 2 lowered how much expression a reader finds in the synthetic
        patches (benchmarks page); it is there for larger models and other samplers.
    condition_noise
        Gaussian noise added to the training profiles at every step, with standard deviation
        ``condition_noise`` times each gene's spread over the spots (dropped conditions stay null). A few spots
        let the gene encoder memorise their profiles; jittered profiles ask it to map their neighbourhoods, which
        is what synthesis from new profiles (``synthesize(conditions=...)``) needs. ``0`` (default): none.
    rank
        LoRA rank.
    cond_dropout
        Probability of dropping the condition during training (enables classifier-free guidance).
    hidden
        Width of the gene encoder.
    target_modules
        Regex of UNet module names that receive LoRA.
    unlabelled
        Patches of non-sequenced tissue of the same slide (uint8 ``(m, S, S, 3)``, or an AnnData with
        ``obsm[patch_key]``). The whole H&E is free; only sequencing costs. They train the unconditional (null)
        branch with the LoRA adapters, so the local stain and tissue are learned from more than the paired spots.
    unlabelled_fraction
        Share of each batch drawn from ``unlabelled`` (in [0, 1)).
    seed
        Seeds adapter initialisation, batches, augmentation, noise and dropout.
    key_added
        The adapter is stored in ``uns["c2lst"]["local"][key_added]``.
    overwrite
        Replace an existing adapter of that key (as :func:`load_adapter`); without it an existing key is an
        error raised before any training.
    output_dir
        Directory for checkpoints (enables resume); ``None`` trains in memory.
    resume
        Continue from the newest checkpoint in ``output_dir``.
    ema
        Keep and return an exponential moving average of the adapter weights.
    mixed_precision
        ``"no"``, ``"bf16"`` or ``"fp16"`` (GPU).
    device
        ``"cpu"`` to force the CPU; ``None`` picks CUDA when available.
    verify
        Check the central model's sha256 when it is loaded from a path or the registry.
    progress
        Show a progress bar with the loss.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``. Sets ``uns["c2lst"]["local"][key_added]``: LoRA and
    encoder weights (float32 arrays), gene list, configuration, the central model's path, sha256 and backbone kind
    (``"unet"`` or ``"transformer"``), the expression preprocessing, the training summary and the adapter's sha256; adds a lineage record.

    Examples
    --------
    >>> c2lst.tl.adapt(adata, central=model, n_steps=200)
    >>> adata.uns["c2lst"]["local"]["c2lst_local"]["genes"][:3]
    """
    adata = as_table(adata, table_key, arg="adata")
    n_steps = check_positive_int(n_steps, "n_steps")
    rank = check_positive_int(rank, "rank")
    batch_size = check_positive_int(batch_size, "batch_size")
    hidden = check_positive_int(hidden, "hidden")
    lr = check_positive_float(lr, "lr")
    encoder_lr = lr if encoder_lr is None else check_positive_float(encoder_lr, "encoder_lr")
    timestep_bias = check_nonneg_float(timestep_bias, "timestep_bias")
    condition_noise = check_nonneg_float(condition_noise, "condition_noise")
    cond_dropout = check_nonneg_float(cond_dropout, "cond_dropout")
    if cond_dropout >= 1:
        raise ValueError(f"`cond_dropout` must be in [0, 1), got {cond_dropout}.")
    seed = check_seed(seed)
    mixed_precision = check_mixed_precision(mixed_precision, device)
    if isinstance(unlabelled_fraction, bool) or not isinstance(unlabelled_fraction, int | float) or not (
        0 <= unlabelled_fraction < 1
    ):
        raise ValueError(f"`unlabelled_fraction` must be in [0, 1), got {unlabelled_fraction!r}.")
    if adata.n_obs == 0:
        raise ValueError("`adata` has zero spots; adaptation needs at least one paired image–gene spot.")
    patches = check_patches(
        np.asarray(require_obsm(adata, patch_key, "patch_key", "run `c2lst.pp.extract_patches` first.")),
        f"obsm[{patch_key!r}]",
    )
    expr, genes, expr_record = expression_matrix(adata, expr_key)
    model_c = resolve_central(central, adata, verify=verify)
    if patches.shape[1] != model_c.image_size:
        raise ValueError(
            f"patches in `obsm[{patch_key!r}]` are {patches.shape[1]} px but the central model makes "
            f"{model_c.image_size} px images; re-run `c2lst.pp.extract_patches(..., size={model_c.image_size})`."
        )
    un = None
    if unlabelled is not None:
        raw = unlabelled.obsm.get(patch_key) if isinstance(unlabelled, AnnData) else unlabelled
        if raw is None:
            raise KeyError(f"`unlabelled` has no `obsm[{patch_key!r}]`; run `c2lst.pp.extract_patches` on it first.")
        un = check_patches(np.asarray(raw), "unlabelled")
        if un.shape[1:] != patches.shape[1:]:
            raise ValueError(
                f"`unlabelled` patches have shape {un.shape[1:]}, the paired patches {patches.shape[1:]}; extract "
                "both with the same `size=`."
            )
    check_key_added(adata, key_added, overwrite)  # after the input checks, before anything is written
    out = check_output_dir(output_dir)
    n = adata.n_obs
    if n < batch_size:
        logger.warning("adapt: %d spots < batch_size=%d; using batch_size=%d", n, batch_size, n)
        batch_size = n
    local = LocalModel(
        model_c,
        genes,
        rank=rank,
        hidden=hidden,
        cond_dropout=cond_dropout,
        target_modules=target_modules,
        seed=seed,
    )
    params = {
        "expr_key": expr_key,
        "patch_key": patch_key,
        "n_steps": n_steps,
        "rank": rank,
        "lr": lr,
        "encoder_lr": encoder_lr,
        "timestep_bias": timestep_bias,
        "condition_noise": condition_noise,
        "batch_size": batch_size,
        "cond_dropout": cond_dropout,
        "hidden": hidden,
        "target_modules": target_modules,
        "n_unlabelled": 0 if un is None else len(un),
        "unlabelled_fraction": float(unlabelled_fraction) if un is not None else 0.0,
        "ema": bool(ema),
        "mixed_precision": mixed_precision,
        "key_added": key_added,
    }
    fingerprint = {
        **params,
        "function": "adapt",
        "seed": seed,
        "n_spots": n,
        "central": local.central_sha256,
        "genes": genes,
    }
    fingerprint.pop("n_steps")
    if not timestep_bias:  # checkpoints written before the option resume unchanged
        fingerprint.pop("timestep_bias")
    if not condition_noise:
        fingerprint.pop("condition_noise")
    # the engine encodes the patches, sets the encoder's statistics from `expr` and runs the shared loop
    result = fit_denoiser(
        local, patches, conditions=expr, unlabelled=un, unlabelled_fraction=unlabelled_fraction,
        n_steps=n_steps, batch_size=batch_size, lr=lr, encoder_lr=encoder_lr, timestep_bias=timestep_bias,
        condition_noise=condition_noise, seed=seed, ema=ema,
        mixed_precision=mixed_precision, device=device, output_dir=out, resume=resume,
        fingerprint=fingerprint, progress=progress, desc="adapt",
    )  # fmt: skip
    summary = {**result.summary(), "n_spots": n, **local.parameter_report()}
    adata = adata.copy() if copy else adata
    entry = {
        "format": ADAPTER_FORMAT,
        "weights": local.adapter_state(),
        "genes": np.asarray(genes, dtype=object),
        "config": local.config_json(),
        "central_path": _central_path(central, adata, model_c),
        "central_sha256": local.central_sha256,
        "backbone": model_c.backbone_kind,
        "central_file_sha256": str(model_c.sha256 or ""),
        "expr_key": expr_key,
        "patch_key": patch_key,
        "expr": json.dumps(
            records.to_jsonable({k: v for k, v in expr_record.items() if k != "genes"}), sort_keys=True
        ),
        "summary": json.dumps(records.to_jsonable(summary), sort_keys=True),
        "sha256": local.adapter_sha256(),
    }
    records.store(adata, "local", key_added, entry)
    records.record_lineage(
        adata,
        function="c2lst.tl.adapt",
        parameters=params,
        seed=seed,
        input_table=None,
        model_sha256={"central": local.central_sha256, "adapter": entry["sha256"]},
    )
    logger.info(
        "adapt: %d trainable parameters (%.2f%% of the %s)", summary["trainable"], 100 * summary["ratio"],
        model_c.backbone_kind,
    )
    return adata if copy else None


def _central_path(central: Any, adata: AnnData, model) -> str:
    """Best-effort path of the central model, so ``synthesize(central=None)`` can reload it."""
    if isinstance(central, str | os.PathLike) and Path(central).exists():
        return str(Path(central).resolve())
    registry = records.section(adata, "central")
    if isinstance(central, str) and central in registry:
        return str(registry[central].get("path", ""))
    for entry in registry.values():
        if model.sha256 and entry.get("sha256") == model.sha256:
            return str(entry.get("path", ""))
    return str(getattr(model, "source", "") or "")  # a loaded model knows its directory or shipped name
