"""``tl.synthesize``: generate patches for expression profiles and write them back with lineage."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .. import _records as records
from .._logging import logger
from .._utils import (
    as_table,
    check_device,
    check_element_name,
    check_guidance_scale,
    check_memory,
    check_positive_int,
    check_seed,
    check_seed_range,
    renamed_arguments,
)
from ..models import DEFAULT_SCHEDULER, SCHEDULERS, check_mixed_precision
from ._adapters import get_adapter, load_local_model
from ._central import central_for_adapter
from ._conditions import check_mixup_options, resolve_conditions
from ._elements import add_elements, build_elements, check_store_writable, existing_names, foreign_elements


@renamed_arguments(table_added="key_added", steps="n_steps")
def synthesize(
    data: Any,
    *,
    table_key: str = "table",
    adapter_key: str = "c2lst_local",
    central: Any = None,
    conditions: Any = None,
    n_conditions: int | None = None,
    mixup_alpha: float = 1.0,
    n_per_condition: int = 1,
    guidance_scale: float = 2.0,
    n_steps: int = 25,
    scheduler: Literal["sde-dpmsolver++", "dpmsolver++", "unipc", "ddim", "ddpm"] = DEFAULT_SCHEDULER,
    batch_size: int = 32,
    seed: int = 0,
    key_added: str = "c2lst_synthetic",
    patch_key: str = "c2lst_patch",
    overwrite: bool = False,
    verify: bool = True,
    device: str | None = None,
    mixed_precision: Literal["no", "bf16", "fp16"] = "no",
    progress: bool = True,
) -> AnnData | None:
    """Synthesize histology patches conditioned on expression profiles and add them to ``data``.

    Parameters
    ----------
    data
        SpatialData whose table ``table_key`` holds the adapter (see :func:`c2lst.tl.adapt`): the synthetic
        table, its tiled image and circles are added to it. Or the adapted AnnData itself: the synthetic table
        is returned (an AnnData has no room for new elements).
    table_key
        Table of a SpatialData holding the adapter and, by default, the conditioning spots.
    adapter_key
        Key of the adapter in ``uns["c2lst"]["local"]``.
    central
        The central model (object, directory or registry key). ``None`` reloads it from the path recorded
        by the adapter and checks its sha256.
    conditions
        ``None`` (the table's own spots), an AnnData of spots measured on the adapter's genes (prepared with the
        adapter's recorded preprocessing), a DataFrame with one column per adapter gene, or an array
        ``(n_profiles, n_genes)``; DataFrame and array values are preprocessed (log-normalised) profiles.
        An AnnData may come from another slide (unpaired expression): genes are matched by name, all adapter
        genes must be present, and its raw counts must sit in the layer the adapter was prepared from. Such
        profiles should describe the same tissue type: a table whose genes share names but mark other cell
        types pairs the patches with wrong labels (docs: benchmarks, unpaired profiles).
        ``"mixup"``: new profiles as count-space convex mixtures of pairs of the table's spots: two distinct
        spots ``a``, ``b`` and ``u ~ Beta(mixup_alpha, mixup_alpha)`` are drawn from ``seed``; the first parent's
        weight is ``w = max(u, 1 - u)`` (it always dominates); raw counts and library sizes are mixed as
        ``w c_a + (1 - w) c_b`` and the adapter's recorded normalisation turns them into the model input.
    n_conditions
        Number of mixtures of ``conditions="mixup"`` (default: one per spot of the table); only with mixup.
    mixup_alpha
        Beta parameter of the mixing weight of ``conditions="mixup"`` (1: uniform; small: near a parent).
    n_per_condition
        Synthetic patches per profile.
    guidance_scale
        Classifier-free guidance weight (0: null condition only, 1: condition only, > 1: stronger conditioning).
    n_steps
        Denoising steps of the sampler.
    scheduler
        ``"sde-dpmsolver++"`` (default), ``"dpmsolver++"``, ``"unipc"``, ``"ddim"`` or ``"ddpm"``.
    batch_size
        Patches per UNet call.
    seed
        Synthetic row ``i`` is drawn with seed ``seed + i`` (stored in ``obs["c2lst_seed"]``).
    key_added
        Name of the new table; the image is ``f"{key_added}_image"``, the circles ``f"{key_added}_spots"``,
        both in coordinate system ``key_added`` (with an AnnData: the prefix of the new rows' names).
    patch_key
        ``obsm`` key of the synthetic patches in the new table.
    overwrite
        Replace existing elements of those names, if c2lst wrote them (a synthetic table, its image and circles);
        elements of the user's are never replaced. The new elements are written before the old ones are dropped.
    verify
        Check the central model against the sha256 the adapter recorded.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or ``"mps"``; ``None`` picks CUDA (or MPS) when available.
    mixed_precision
        ``"no"``, ``"bf16"`` (CPU or GPU) or ``"fp16"`` (GPU): the UNet runs in that precision under autocast,
        as in :func:`c2lst.tl.adapt` (faster on GPUs; patches differ from ``"no"`` by rounding).
    progress
        Show a progress bar.

    Returns
    -------
    ``None`` for a SpatialData, which gains the elements ``key_added`` (table), ``f"{key_added}_image"`` and
    ``f"{key_added}_spots"``; for an AnnData, the new synthetic table. The table has one row per synthetic
    spot: ``obs["c2lst_synthetic"]=True``, ``obs["c2lst_parent"]``, ``obs["c2lst_condition"]`` (the profile's
    index in this run: rows sharing it are candidates of one profile), ``obs["c2lst_replicate"]``,
    ``obs["c2lst_seed"]``, ``obs["c2lst_run_id"]``;
    ``X`` holds the conditioning expression in **count space** over the adapter's genes (the parent spot's raw
    counts for table/AnnData conditions; ``expm1`` of log-normalised profiles, i.e. counts per
    ``target_sum``, for DataFrame/array conditions); ``obsm[expr_key]`` the preprocessed profile the model
    saw; ``obsm[patch_key]`` the patches; a lineage record in ``uns["c2lst"]["lineage"]``. With
    ``conditions="mixup"`` also ``obs["c2lst_parent_b"]`` (the second parent) and ``obs["c2lst_mix_weight"]``
    (the first parent's weight); ``obs["c2lst_parent"]`` is the first (dominant) parent, so
    :func:`c2lst.tl.concat_augmented` places a mixed row at its first parent's coordinates and the predictor's
    grouped validation keeps it with that parent; ``X`` holds the mixed counts. When the SpatialData is
    backed by zarr, the elements are written there too, each atomically.

    Examples
    --------
    >>> c2lst.tl.synthesize(sdata, n_per_condition=2, n_steps=20)
    >>> c2lst.pp.extract_patches(sdata, table_key="c2lst_synthetic", key_added="check")
    >>> syn = c2lst.tl.synthesize(sdata.tables["table"], n_per_condition=2)  # an AnnData in, a table out
    """
    in_memory = isinstance(data, AnnData)
    table = as_table(data, table_key, arg="data")
    record = get_adapter(table, adapter_key)
    n_per_condition = check_positive_int(n_per_condition, "n_per_condition")
    n_steps = check_positive_int(n_steps, "n_steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    guidance_scale = check_guidance_scale(guidance_scale)
    seed = check_seed(seed)
    n_conditions, mixup_alpha = check_mixup_options(conditions, n_conditions, mixup_alpha)
    device = check_device(device)
    mixed_precision = check_mixed_precision(mixed_precision, device)
    if not isinstance(scheduler, str) or scheduler not in SCHEDULERS:
        raise ValueError(f"`scheduler={scheduler!r}` is unknown; valid schedulers are {list(SCHEDULERS)}.")
    key_added = check_element_name(key_added, "key_added")
    if not isinstance(patch_key, str) or not patch_key:
        raise TypeError(f"`patch_key` must be a non-empty string, got {patch_key!r}.")
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be True or False, got {overwrite!r}.")
    if not in_memory:
        _check_new_elements(data, key_added, table_key, overwrite)
    genes = [str(g) for g in np.asarray(record["genes"]).tolist()]
    expr_params = json.loads(str(record["expr"]))
    expr_key = str(record.get("expr_key", "")) or records.expression_key_of(table, genes)
    conds = resolve_conditions(conditions, table, genes=genes, params=expr_params, expr_key=expr_key,
                               n_conditions=n_conditions, mixup_alpha=mixup_alpha, seed=seed)
    n_total = conds.expr.shape[0] * n_per_condition
    check_seed_range(seed, n_total)
    model_c = central_for_adapter(central, record, table, verify)
    side = model_c.image_size
    check_memory(
        2.0 * n_total * side * side * 3, "n_per_condition", f"{n_total} patches of {side} px (and their tiled image)"
    )
    # the local model owns a copy of the central model, so the LoRA weights can be fused for speed
    local = load_local_model(record, model_c).fuse_adapters()
    m = conds.expr.shape[0]
    n = m * n_per_condition
    cond_idx = np.repeat(np.arange(m), n_per_condition)
    seeds = seed + np.arange(n, dtype=np.int64)  # row i is drawn with seed + i (see LocalModel.generate)
    patches = local.generate(
        conds.expr, n_per_condition=n_per_condition, seed=seed, steps=n_steps, scheduler=scheduler,
        guidance_scale=guidance_scale, batch_size=batch_size, device=device, mixed_precision=mixed_precision,
        progress=progress,
    )  # fmt: skip
    run_id = records.new_run_id()
    obs = pd.DataFrame(
        {
            "c2lst_synthetic": np.ones(n, dtype=bool),
            "c2lst_parent": conds.parents[cond_idx],
            "c2lst_condition": cond_idx,
            "c2lst_replicate": np.tile(np.arange(n_per_condition), m),
            "c2lst_seed": seeds,
            "c2lst_run_id": run_id,
        },
        index=[f"{key_added}_{run_id}_{i}" for i in range(n)],
    )
    if conds.parents_b is not None:
        obs["c2lst_parent_b"] = conds.parents_b[cond_idx]
        obs["c2lst_mix_weight"] = conds.weights[cond_idx]
    new = AnnData(X=sparse.csr_matrix(conds.counts[cond_idx]), obs=obs, var=pd.DataFrame(index=genes))
    new.obsm[patch_key] = patches
    new.obsm[expr_key] = conds.expr[cond_idx].astype(np.float32)
    new.uns["c2lst"] = {"expr": {expr_key: records.expression_entry(expr_params, genes)}}
    params = {
        "table_key": table_key,
        "adapter_key": adapter_key,
        "n_per_condition": n_per_condition,
        "guidance_scale": guidance_scale,
        "n_steps": n_steps,
        "scheduler": scheduler,
        "batch_size": batch_size,
        "key_added": key_added,
        "patch_key": patch_key,
        "conditions": conds.source,
        "n_conditions": m,
        **({"mixup_alpha": mixup_alpha} if conds.source == "mixup" else {}),
        "verify": verify,
        "mixed_precision": mixed_precision,
    }
    records.record_lineage(
        new,
        function="c2lst.tl.synthesize",
        parameters=params,
        seed=seed,
        input_table=table_key,
        model_sha256={"central": str(record["central_sha256"]), "adapter": str(record["sha256"])},
        run_id=run_id,
    )
    if in_memory:
        logger.info("synthesize: %d patches from %d profiles", n, m)
        return new
    elements = build_elements(patches, new, name=key_added, coordinate_system=key_added)
    add_elements(data, elements, overwrite=overwrite)
    logger.info("synthesize: %d patches from %d profiles written to %r", n, m, key_added)
    return None


def _check_new_elements(sdata: Any, key_added: str, table_key: str, overwrite: bool) -> None:
    """Refuse element names that clash (without ``overwrite``), belong to the user, or a read-only store."""
    if key_added == table_key:
        raise ValueError(f"`key_added={key_added!r}` equals `table_key`; choose a new name.")
    new_names = {key_added, f"{key_added}_image", f"{key_added}_spots"}
    clash = sorted(new_names & existing_names(sdata))
    if clash and not overwrite:
        raise ValueError(
            f"`key_added={key_added!r}`: elements {clash} already exist; pass `overwrite=True` or another name."
        )
    foreign = foreign_elements(sdata, key_added)
    if foreign:
        raise ValueError(
            f"`key_added={key_added!r}` would replace elements {foreign} that c2lst did not write (not a "
            "synthetic table / image / circles of that name); even with `overwrite=True` they are kept. Choose "
            "another `key_added=`."
        )
    check_store_writable(sdata)
