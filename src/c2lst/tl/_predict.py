"""``tl.fit_predictor``: the image -> expression skin (``tl.predict_expression`` applies it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._logging import logger
from .._records import EXPR_HINT, synthetic_mask
from .._tables import _check_adata, _gene_diff, _patches, expression_genes
from .._utils import check_positive_int, check_seed, renamed_arguments
from ..models import ExpressionPredictor
from ._central import feature_backbone
from ._steps import check_early_stopping, choose_steps
from ._weights import (
    _fit_weighted,
    _weight_grid,
    check_batching,
    check_real_finetune,
    resolve_weight,
    table_blocks,
)

__all__ = ["fit_predictor"]


# --------------------------------------------------------------------------- fit
@renamed_arguments(backbone="feature_extractor")
def fit_predictor(
    tables: AnnData | Sequence[AnnData],
    *,
    expr_key: str = "c2lst_expr",
    patch_key: str = "c2lst_patch",
    include_synthetic: bool = True,
    mode: Literal["cnn", "ridge"] = "cnn",
    features: Literal["morphometric", "central"] | None = None,
    central: Any = None,
    central_timestep: int = 50,
    feature_extractor: Any = None,
    alpha: float | None = None,
    n_epochs: int = 30,
    n_steps: int | None = None,
    synthetic_weight: float | Sequence[float] | Mapping[str, float] | Literal["auto", "auto-gene"] = 0.3,
    cv_folds: int = 3,
    cv_split: Literal["spatial", "random"] | None = None,
    real_finetune: float = 0.0,
    batching: Literal["mixed", "stacked"] | None = None,
    early_stopping: bool = False,
    validation_fraction: float = 0.25,
    validation_folds: int = 1,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> ExpressionPredictor:
    """Fit an image -> expression predictor on the patches and prepared expression of one or more tables.

    Parameters
    ----------
    tables
        An AnnData or a list of them (e.g. the real table and a synthetic table from :func:`c2lst.tl.synthesize`,
        or their :func:`c2lst.tl.concat_augmented`). Each needs ``obsm[patch_key]`` and ``obsm[expr_key]`` over
        the same genes (order may differ; the first table's order is used).
    expr_key
        Prepared expression (:func:`c2lst.pp.prepare_expression`), the regression target.
    patch_key
        Patches (:func:`c2lst.pp.extract_patches`), the input.
    include_synthetic
        Keep rows with ``obs["c2lst_synthetic"] == True``; ``False`` trains on real rows only.
    mode
        ``"cnn"`` (small CNN from scratch) or ``"ridge"`` (frozen features + ridge); see
        :class:`~c2lst.models.predictor.ExpressionPredictor`.
    features
        Frozen feature space of ``mode="ridge"``: ``None`` (the mode's default: morphometric features for
        ridge, a CNN trained from scratch for cnn; or ``feature_extractor`` when given), ``"morphometric"``, or
        ``"central"``: the pooled mid-block activations of the frozen central denoiser ``central`` at timestep
        ``central_timestep`` (see :func:`c2lst.models.central_features`), which learned
        histology from the unpaired pretraining patches. Reload such a predictor with
        ``ExpressionPredictor.from_pretrained(path, backbone=CentralFeatureExtractor(central, t=central_timestep))``.
    central
        The central model (object, directory or registry key of the first table) for ``features="central"``.
    central_timestep
        Noise timestep of ``features="central"`` (small: the patch stays visible to the UNet).
    feature_extractor
        Optional frozen :class:`torch.nn.Module` ``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` built with local weights
        (as in :func:`c2lst.tl.evaluate_fidelity`); the ridge head is fitted on its features.
    alpha
        Ridge penalty; ``None`` chooses it by leave-one-out error.
    n_epochs, batch_size, lr
        CNN training settings.
    n_steps
        CNN optimiser steps; overrides ``n_epochs``. Epochs give more steps to more rows, so compare a real
        and a real+synthetic training set at a fixed ``n_steps`` (as :func:`c2lst.tl.budget_curve` does).
    synthetic_weight
        Loss weight of synthetic rows relative to real rows (1 = equal; 0 = ignore them). The default 0.3 was
        the less harmful of 1.0 and 0.3 in ``benchmarks/bench_budget.py`` at every fraction (docs: benchmarks). In ridge mode the
        penalty is then chosen by grouped cross-validation on the real rows, holding out each real spot with
        its synthetic children (``obs["c2lst_parent"]``), so siblings never leak into their own validation.

        ``"auto"`` (the grid ``(0.0, 0.1, 0.3, 1.0)``) or a sequence of weights chooses the weight on the data:
        grouped ``cv_folds``-fold cross-validation over the real spots, each fold holding out real spots together
        with every synthetic row conditioned on them (``obs["c2lst_parent"]`` and, for mixtures,
        ``obs["c2lst_parent_b"]``); the weight whose out-of-fold predictions of the held-out real spots have the
        best mean Pearson r over genes is refitted on all rows (ties go to the smaller weight). A grid with 0
        can fall back to ignoring synthetic rows that do not help on these spots. It costs
        ``cv_folds * len(grid)`` extra fits.

        ``"auto-gene"`` makes the same choice (same grid, folds and fits) for each gene on its own out-of-fold
        r: synthetic rows then teach only the genes they help predict on these spots, e.g. the marker genes a
        generator carries and not the spatial genes no image shows. A mapping gene -> weight (e.g. a fitted
        predictor's ``training["synthetic_weight_genes"]``) fixes one weight per gene. Per gene, each gene's
        loss is its weighted mean over rows, so a gene at weight 0 learns from the real rows at full strength.
    cv_folds
        Folds of the weight choice (``synthetic_weight="auto"``, ``"auto-gene"`` or a sequence); at least 2, and
        at most the number of real spots.
    cv_split
        How the weight choice splits the real spots into folds: ``"spatial"`` holds out whole blocks of the
        slide (its bounding box cut into 4 x 4 tiles, per table, from ``obsm["spatial"]`` of the real rows), as
        the budget curve's test blocks do, so a held-out spot has no neighbour in training; ``"random"`` draws
        spots, which rewards genes that follow the tissue's layout more than they would be rewarded on a new
        region. ``None``: ``"spatial"`` when every table's real rows have coordinates, else ``"random"``.
    real_finetune
        Staged training (``mode="cnn"``): the share of the ``n_steps`` optimiser steps, at the end, trained on
        the real rows alone, after a start on real and synthetic rows: a fine-tuning stage with a
        learning-rate schedule of its own (warm-up, cosine to 0; the total stays ``n_steps``). Synthetic rows
        then shape the features and the real rows have the last word, e.g. on genes another section's profiles
        would contradict. ``0`` (default) mixes them throughout; with no synthetic rows it changes nothing.
        In ``benchmarks/bench_budget.py`` 0.33 took most of the loss at 25 % of the spots away and about half
        of the gain at 10 % (docs: benchmarks, *Staged training*).
    batching
        How synthetic rows enter the CNN's optimiser steps. ``"stacked"`` (``None``, the default, for
        ``mode="cnn"``) gives every step the batch of real rows a fit on the real rows alone would draw, plus a
        batch of at most ``batch_size`` synthetic rows: the real spots are visited as often as without
        synthesis, and each step processes more rows instead; ``n_epochs`` counts passes over the real rows, so
        without ``n_steps`` the fit takes the real-only fit's steps. ``"mixed"`` shuffles real and synthetic
        rows together into batches of ``batch_size``, so in a fixed ``n_steps`` every added row thins how often
        each real spot is visited (with ``k`` synthetic rows per spot, about ``1 / (1 + k)`` as often once the
        real spots fill a batch). In ``benchmarks/bench_budget.py`` stacked synthesis never lost to real spots
        alone on eight slides (worst mean gain +0.001 r; mixed down to −0.041 at 25 % of the spots), with a
        pooled gain of +0.022 r at 10 % (mixed +0.030); docs: benchmarks, *Stacked batches*. With no synthetic
        rows both are the same fit; ridge has no batches (``None`` only).
    early_stopping
        ``mode="cnn"``: choose the optimiser steps on a validation slice of the real spots, up to ``n_steps`` (or
        what ``n_epochs`` gives): a fit on the other rows is scored (MSE of the standardised expression) every
        1/16 of the cap and stops after 4 checks without a lower error; the predictor returned is fitted on all
        rows on the cap's learning-rate schedule, ended at the best check (``training["early_stopping"]``). The
        slice holds ``validation_fraction`` of the real spots (whole spatial blocks as ``cv_split`` says), each
        with every synthetic row conditioned on it. It costs up to twice the cap's steps; it needs a fixed
        ``synthetic_weight`` and no ``real_finetune``. An option, not a protocol default (docs: benchmarks).
    validation_fraction
        Share of the real spots held out to choose the steps (``early_stopping=True``), in (0, 0.5].
    validation_folds
        Disjoint validation slices (``early_stopping=True``), each of ``validation_fraction`` of the real spots
        (so at most ``1 / validation_fraction``): each chooses its steps as above and the final fit ends at the
        median of their choices, a steadier choice on few spots at one more validation run per fold.
    seed
        Seed of initialisation, shuffling and augmentation.
    device
        Torch device; ``None`` = cuda if available, else cpu.
    progress
        Show a progress bar.

    Returns
    -------
    The fitted :class:`~c2lst.models.predictor.ExpressionPredictor`; ``predictor.training`` records
    ``n_real``, ``n_synthetic`` and ``synthetic_weight`` (the weight used; the mean over genes for weights per
    gene, which are in ``synthetic_weight_genes``); a chosen weight also ``synthetic_weight_cv`` (mean
    out-of-fold Pearson r per candidate weight) and ``cv_folds``; ``real_finetune`` and ``batching`` as given;
    staged training ``finetune_steps``; stacked batches ``stacked_rows`` (the real rows); early stopping
    ``early_stopping`` (cap, chosen steps, and per fold its choice, validation spots and score per check). Tables are not modified.

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.simulated_visium(n_spots=60)
    >>> table = sdata.tables["table"]
    >>> c2lst.pp.prepare_expression(table, n_top_genes=10)
    >>> c2lst.pp.extract_patches(sdata, size=32, progress=False)
    >>> model = c2lst.tl.fit_predictor(table, mode="ridge")
    >>> model
    ExpressionPredictor(mode='ridge', features='morphometric', n_genes=10, fitted)
    """
    items = [tables] if isinstance(tables, AnnData) else list(tables) if isinstance(tables, Sequence) else None
    if not items:
        raise TypeError(
            f"`tables` must be an AnnData or a non-empty list of AnnData, got {type(tables).__name__}"
            f"{' (empty)' if items == [] else ''}."
        )
    for i, t in enumerate(items):
        _check_adata(t, f"tables[{i}]")
    n_epochs = check_positive_int(n_epochs, "n_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    if not (isinstance(lr, int | float) and np.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a finite number > 0, got {lr!r}.")
    if mode not in ("cnn", "ridge"):
        raise ValueError(f"`mode` must be 'cnn' or 'ridge', got {mode!r}.")
    n_steps = None if n_steps is None else check_positive_int(n_steps, "n_steps")
    backbone = feature_backbone(features, mode, central, central_timestep, feature_extractor, items[0])
    grid = _weight_grid(synthetic_weight)
    if grid is not None and (cv_folds := check_positive_int(cv_folds, "cv_folds")) < 2:
        raise ValueError(f"`cv_folds={cv_folds}` must be at least 2 to choose `synthetic_weight` by validation.")
    check_real_finetune(real_finetune, mode)
    early = check_early_stopping(early_stopping, validation_fraction, mode, grid, real_finetune, validation_folds)
    batching = check_batching(batching, mode)
    if cv_split not in (None, "spatial", "random"):
        raise ValueError(f"`cv_split={cv_split!r}` is unknown; pass 'spatial', 'random' or None.")
    ref_genes = None
    xs, ys, synth, groups, groups_b, blocks = [], [], [], [], [], []
    n_real = n_syn = 0
    for i, t in enumerate(items):
        patches = _patches(t, patch_key)
        genes = expression_genes(t, expr_key)
        expr = np.asarray(t.obsm[expr_key], dtype=np.float32)
        if ref_genes is None:
            ref_genes = genes
        elif set(genes) != set(ref_genes) or len(genes) != len(ref_genes):
            raise ValueError(
                f"`tables[{i}]` has other genes in `obsm[{expr_key!r}]` than `tables[0]` "
                f"({_gene_diff(ref_genes, genes)}); prepare all tables with the same `genes=`."
            )
        else:
            order = pd.Index(genes).get_indexer(ref_genes)
            expr = expr[:, order]
        syn = synthetic_mask(t)
        keep = np.ones(t.n_obs, dtype=bool) if include_synthetic else ~syn
        n_real += int((keep & ~syn).sum())
        n_syn += int((keep & syn).sum())
        xs.append(patches[keep])
        ys.append(expr[keep])
        synth.append(syn[keep])
        parent = t.obs["c2lst_parent"].astype(str).to_numpy() if "c2lst_parent" in t.obs else None
        names = np.asarray(t.obs_names, dtype=str)
        groups.append(np.where(syn, parent, names)[keep] if parent is not None else names[keep])
        second = t.obs["c2lst_parent_b"].astype(str).to_numpy() if "c2lst_parent_b" in t.obs else None
        groups_b.append(np.where(syn, second, groups[-1])[keep] if second is not None else groups[-1])
        blocks.append(table_blocks(t, i, syn, keep) if grid is not None or early else None)  # read by CV only
    sizes = sorted({x.shape[1] for x in xs})
    if len(sizes) > 1:
        raise ValueError(f"`tables` mix patch sizes {sizes}; extract all tables with the same `size=`.")
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    if len(x) < 2:
        raise ValueError(
            f"only {len(x)} usable row(s) in `tables` (include_synthetic={include_synthetic}); need at least 2."
        )
    if not np.all(np.isfinite(y)):
        raise ValueError(f"`obsm[{expr_key!r}]` contains NaN or inf; {EXPR_HINT}")
    is_syn = np.concatenate(synth)
    fit_kw = {
        "n_epochs": n_epochs, "n_steps": n_steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
        "finetune_fraction": float(real_finetune), "batching": batching,
    }
    rows = (x, y, is_syn, np.concatenate(groups), np.concatenate(groups_b), blocks)
    model_args = (list(ref_genes), mode, backbone, alpha)
    weight, record = resolve_weight(synthetic_weight, grid, rows, n_real, cv_folds, cv_split, model_args, fit_kw,
                                    progress)
    if early:  # the steps, chosen on a validation slice of the real spots
        more = choose_steps(rows, weight, model_args, fit_kw, validation_fraction, cv_split, progress,
                            validation_folds)
        fit_kw.update(more.pop("fit"))  # the cap's schedule, ended at the chosen step
        record.update(more)
    model = _fit_weighted(x, y, is_syn, rows[3], weight, model_args, fit_kw, progress)
    model.training.update(record)
    model.training.update(
        {
            "n_real": n_real,
            "n_synthetic": n_syn,
            "synthetic_weight": float(weight.mean()),
            "real_finetune": float(real_finetune),
            "batching": batching,
            "expr_key": expr_key,
            "patch_key": patch_key,
        }
    )
    logger.info(f"fitted {model!r} on {n_real} real + {n_syn} synthetic spots")
    return model
