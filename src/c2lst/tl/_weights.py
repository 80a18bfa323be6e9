"""The loss weight of synthetic rows for ``fit_predictor``: fixed, or chosen by grouped validation on the real spots.

One weight for all genes (``"auto"``, a sequence, a number) or one per gene (``"auto-gene"``, a mapping).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._logging import logger
from .._logging import progress as _progress
from ..metrics import pearson
from ..models import ExpressionPredictor

#: Candidate weights of ``synthetic_weight="auto"`` and ``"auto-gene"``.
AUTO_WEIGHTS = (0.0, 0.1, 0.3, 1.0)

#: The string values of ``synthetic_weight``: one weight chosen for all genes, or one per gene.
CHOICES = ("auto", "auto-gene")


def _weight_grid(weight: Any) -> list[float] | None:
    """Validate ``synthetic_weight``; return the candidate weights to choose from, or ``None`` for a fixed one.

    A mapping (gene -> weight) is fixed per gene and checked against the genes by :func:`_gene_weights`.
    """
    if isinstance(weight, str):
        if weight not in CHOICES:
            raise ValueError(
                f"`synthetic_weight={weight!r}` is unknown; pass a number >= 0, a sequence of them, a mapping "
                f"gene -> weight or one of {list(CHOICES)}."
            )
        return list(AUTO_WEIGHTS)
    if isinstance(weight, Mapping | pd.Series):
        return None
    values = list(weight) if isinstance(weight, Sequence) else [weight]
    ok = bool(values) and all(_is_weight(v) for v in values)
    if not ok or len(set(values)) != len(values):
        raise ValueError(
            f"`synthetic_weight` must be a finite number >= 0 (1 = as much as a real row), a sequence of distinct "
            f"ones to choose from by validation, a mapping gene -> weight, or one of {list(CHOICES)}; got {weight!r}."
        )
    return sorted(float(v) for v in values) if isinstance(weight, Sequence) else None


def _is_weight(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating) and bool(np.isfinite(v)) \
        and v >= 0


def _gene_weights(weight: Mapping | pd.Series, genes: Sequence[str]) -> np.ndarray:
    """Return a per-gene weight mapping as an array in the order of ``genes``; raise on missing or extra genes."""
    given = {str(k): v for k, v in dict(weight).items()}
    missing = [g for g in genes if g not in given]
    if missing:
        raise KeyError(
            f"`synthetic_weight` gives no weight for {len(missing)} gene(s) of the tables, e.g. {missing[:3]}; "
            "map every prepared gene to a weight (e.g. `predictor.training['synthetic_weight_genes']`)."
        )
    extra = sorted(set(given) - set(genes))
    if extra:
        raise ValueError(
            f"`synthetic_weight` maps {len(extra)} gene(s) the tables do not predict, e.g. {extra[:3]}; "
            "drop them or prepare the tables with those genes."
        )
    bad = {g: given[g] for g in genes if not _is_weight(given[g])}
    if bad:
        raise ValueError(f"`synthetic_weight` per gene must be finite numbers >= 0, got {dict(list(bad.items())[:3])}.")
    return np.array([float(given[g]) for g in genes])


def check_real_finetune(real_finetune: float, mode: str) -> float:
    """Validate ``real_finetune=`` of :func:`~c2lst.tl.fit_predictor` (a share in [0, 1), CNN only); return it."""
    if isinstance(real_finetune, bool) or not isinstance(real_finetune, int | float) or not 0 <= real_finetune < 1:
        raise ValueError(f"`real_finetune={real_finetune!r}` must be a number in [0, 1); 0 turns staged training off.")
    if real_finetune and mode != "cnn":
        raise ValueError(
            f"`real_finetune={real_finetune}` is staged training of the CNN; `mode={mode!r}` solves its head in one "
            "step. Pass `real_finetune=0` or `mode='cnn'`."
        )
    return float(real_finetune)


#: How synthetic rows enter the CNN's optimiser steps (``fit_predictor(batching=)``).
BATCHING = ("mixed", "stacked")


def check_batching(batching: str | None, mode: str) -> str | None:
    """Validate ``batching=`` of :func:`~c2lst.tl.fit_predictor`; return it, ``None`` resolved.

    ``None`` is ``"stacked"`` for the CNN and ``None`` for ridge (no batches); ``"stacked"`` is the CNN's only.
    """
    if batching is None:
        return "stacked" if mode == "cnn" else None
    if not isinstance(batching, str) or batching not in BATCHING:
        raise ValueError(
            f"`batching={batching!r}` is unknown; pass 'mixed' (real and synthetic rows shuffled together) or "
            "'stacked' (every step: a batch of real rows plus one of synthetic rows)."
        )
    if batching == "stacked" and mode != "cnn":
        raise ValueError(
            f"`batching='stacked'` sets the batches of the CNN; `mode={mode!r}` solves its head in one step on all "
            "rows. Pass `batching=None` or `mode='cnn'`."
        )
    return batching


def _fit_weighted(x, y, is_syn, groups, weight, model_args, fit_kw, progress) -> ExpressionPredictor:
    """Fit one predictor with synthetic rows weighted ``weight`` (grouped ridge penalty as in fit_predictor).

    ``weight`` is a number or one number per gene ``(n_genes,)``; equal per-gene weights fit as the number.
    ``fit_kw["finetune_fraction"]`` > 0 ends the fit on the real rows alone (when there are synthetic rows);
    ``fit_kw["batching"] == "stacked"`` stacks a batch of synthetic rows onto every batch of real rows.
    """
    genes, mode, backbone, alpha = model_args
    n_syn, n_real = int(is_syn.sum()), int((~is_syn).sum())
    weight = np.asarray(weight, dtype=float)
    if weight.ndim and np.all(weight == weight[0]):
        weight = weight[:1].reshape(())
    if weight.ndim:
        sample_weight = np.where(is_syn[:, None], weight[None, :], 1.0) if n_syn else None
    else:
        sample_weight = np.where(is_syn, float(weight), 1.0) if n_syn and weight != 1 else None
    grouped = n_syn > 0 and n_real > 1
    fit_kw = dict(fit_kw)
    stacked = fit_kw.pop("batching", None) == "stacked" and n_syn > 0 and n_real > 0
    if not (n_syn and n_real > 1):  # staged training needs synthetic rows to start on and real rows to end on
        fit_kw["finetune_fraction"] = 0.0
    model = ExpressionPredictor(genes, mode=mode, backbone=backbone, alpha=alpha)
    return model.fit(
        x, y, sample_weight=sample_weight, groups=groups if grouped else None, eval_mask=~is_syn if grouped else None,
        finetune_mask=~is_syn if fit_kw.get("finetune_fraction") else None, stack_mask=~is_syn if stacked else None,
        progress=progress, **fit_kw,
    )


def mean_scores(scores: dict[float, np.ndarray]) -> dict[float, float]:
    """Mean out-of-fold r over genes per candidate weight (``-inf`` where no gene could be scored)."""
    return {w: float(np.nanmean(r)) if np.isfinite(r).any() else -np.inf for w, r in scores.items()}


def _choose(scores: dict[float, np.ndarray], per_gene: bool) -> float | np.ndarray:
    """The best candidate weight by mean r over genes, or per gene (ties and NaN go to the smaller weight)."""
    grid = sorted(scores)
    if not per_gene:
        means = mean_scores(scores)
        best = max(means.values())
        return min(w for w in grid if means[w] >= best - 1e-12)
    table = np.stack([np.where(np.isfinite(scores[w]), scores[w], -np.inf) for w in grid])  # (weights, genes)
    best = table.max(axis=0)
    first = np.argmax(table >= best - 1e-12, axis=0)  # the smallest weight within float noise of the best
    return np.asarray(grid)[first]


#: Tiles per side of the spatial validation blocks (as the budget curve's test blocks).
CV_BLOCKS = 4


def spatial_blocks(coords: np.ndarray, n_blocks: int = CV_BLOCKS) -> np.ndarray:
    """Return the tile index of each spot when the bounding box of ``coords`` is cut into ``n_blocks²`` tiles."""
    coords = np.asarray(coords, dtype=float)[:, :2]
    lo, hi = coords.min(0), coords.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    cell = np.minimum((coords - lo) / span * n_blocks, n_blocks - 1).astype(int)
    return cell[:, 0] * n_blocks + cell[:, 1]


def hold_out_units(unit: np.ndarray, fraction: float, rng: np.random.Generator, folds: int = 1) -> np.ndarray:
    """Hold out whole units (e.g. spatial blocks) in ``rng``'s order until >= ``fraction`` of the rows are held.

    Returns ``(folds, n)`` disjoint boolean masks: each fold takes the next units of the same order until it holds
    ``fraction`` of the rows (the first fold is the same for any ``folds``; a fold left short when the units run
    out is returned as it is, for the caller to check).
    """
    held = np.zeros((folds, len(unit)), dtype=bool)
    fold = 0
    for label in rng.permutation(np.unique(unit)):
        if held[fold].sum() >= fraction * len(unit):
            fold += 1
            if fold == folds:
                break
        held[fold] |= unit == label
    return held


def _cv_weights(
    x, y, is_syn, groups, groups_b, grid, folds, model_args, fit_kw, progress, blocks=None
) -> dict[float, np.ndarray]:
    """Out-of-fold Pearson r per gene ``(n_genes,)`` of the real spots, per candidate synthetic weight.

    Folds split the real spots (seeded by ``fit_kw["seed"]``), or with ``blocks`` (a label per row, read on
    the real rows) whole spatial blocks, so that a held-out spot has no neighbour in its fold's training rows.
    A fold's training rows leave out its real spots and every synthetic row conditioned on one of them (first
    or second parent), so no profile of a held-out spot reaches its own validation.
    """
    real_idx = np.flatnonzero(~is_syn)
    spots = np.unique(groups[real_idx])
    rng = np.random.default_rng([int(fit_kw["seed"]), 7])
    if blocks is None:
        order = rng.permutation(len(spots))
        fold_of = dict(zip(spots[order], np.arange(len(spots)) % folds, strict=True))
    else:
        block_of = dict(zip(groups[real_idx], np.asarray(blocks)[real_idx], strict=True))
        labels = np.unique(list(block_of.values()))
        fold_of_block = dict(zip(labels[rng.permutation(len(labels))], np.arange(len(labels)) % folds, strict=True))
        fold_of = {spot: fold_of_block[block_of[spot]] for spot in spots}
    # each row's fold through its (first and second) parent; -1: a parent that is no real spot here, never held out
    fold, fold_b = (np.array([fold_of.get(g, -1) for g in gs]) for gs in (groups, groups_b))
    real_fold = fold[real_idx]
    oof = {w: np.full((len(real_idx), y.shape[1]), np.nan) for w in grid}
    runs = [(k, w) for k in range(folds) for w in grid]
    for k, w in _progress(runs, enabled=progress, desc="synthetic_weight", unit="fit"):
        train = (fold != k) & (fold_b != k)
        if not (train & ~is_syn).any() and w == 0:
            continue  # nothing to learn from: this weight scores NaN on the fold
        model = _fit_weighted(x[train], y[train], is_syn[train], groups[train], w, model_args, fit_kw, False)
        rows = real_fold == k
        oof[w][rows] = model.predict(x[real_idx[rows]], device=fit_kw["device"])
    scores = {}
    for w in grid:
        done = np.isfinite(oof[w]).all(axis=1)
        with np.errstate(all="ignore"):
            r = np.asarray(pearson(oof[w][done], y[real_idx[done]]), dtype=np.float64) if done.sum() > 2 else None
        scores[w] = np.full(y.shape[1], np.nan) if r is None else r
    return scores


def table_blocks(table: AnnData, index: int, syn: np.ndarray, keep: np.ndarray) -> np.ndarray | None:
    """Spatial block label (``"<table>:<tile>"``) of each kept row from its real rows' coordinates, else ``None``."""
    coords = table.obsm.get("spatial")
    real = ~syn
    if coords is None or not real.any():
        return None if real.any() else np.full(int(keep.sum()), "", dtype=object)
    xy = np.asarray(coords, dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy[real, :2]).all():
        return None
    labels = np.full(table.n_obs, "", dtype=object)  # synthetic rows: never read (they follow their parent)
    labels[real] = [f"{index}:{b}" for b in spatial_blocks(xy[real])]
    return labels[keep]


def _cv_blocks(cv_split: str | None, blocks: list, folds: int) -> tuple[str, np.ndarray | None]:
    """Resolve ``cv_split`` to ``"spatial"`` (with block labels per row) or ``"random"``."""
    have = all(b is not None for b in blocks)
    if cv_split == "random" or (cv_split is None and not have):
        return "random", None
    if not have:
        raise KeyError(
            "`cv_split='spatial'` needs the coordinates of the real spots in `obsm['spatial']` of every table; "
            "add them or pass `cv_split='random'`."
        )
    labels = np.concatenate(blocks)
    if len(set(labels[labels != ""])) < folds:
        if cv_split == "spatial":
            raise ValueError(
                f"`cv_split='spatial'` found fewer occupied blocks than `cv_folds={folds}`; pass fewer "
                "`cv_folds` or `cv_split='random'`."
            )
        return "random", None
    return "spatial", labels


def resolve_weight(weight, grid, rows, n_real, folds, cv_split, model_args, fit_kw, progress):
    """Return the synthetic weight to fit with (a number, or one per gene) and what to record in ``training``.

    ``rows`` is ``(x, y, is_syn, groups, groups_b, blocks)`` of :func:`~c2lst.tl.fit_predictor`; a weight to
    choose (``grid`` not ``None``) is chosen by :func:`_cv_weights`, one for all genes or per gene.
    """
    x, y, is_syn, groups, groups_b, blocks = rows
    genes = model_args[0]
    n_syn = int(is_syn.sum())
    record: dict[str, Any] = {}
    if isinstance(weight, Mapping | pd.Series):
        weight = _gene_weights(weight, genes)
    if grid is not None and n_syn:
        if n_real < folds:
            raise ValueError(
                f"choosing `synthetic_weight` by {folds}-fold validation needs at least {folds} real spots, "
                f"got {n_real}; pass a fixed `synthetic_weight=` (e.g. 0.3) or fewer `cv_folds`."
            )
        cv_split, cv_blocks = _cv_blocks(cv_split, blocks, folds)
        scores = _cv_weights(x, y, is_syn, groups, groups_b, grid, folds, model_args, fit_kw, progress, blocks=cv_blocks)
        per_gene = weight == "auto-gene"
        means = mean_scores(scores)
        weight = _choose(scores, per_gene)
        chosen = (
            f"per gene ({', '.join(f'{w:g}: {int(np.sum(weight == w))}' for w in grid)} genes)"
            if per_gene else f"{weight:g}"
        )
        logger.info(
            "synthetic_weight chosen by %d-fold %s validation: %s (mean r %s)",
            folds, cv_split, chosen, ", ".join(f"{w:g}: {r:.3f}" for w, r in means.items()),
        )
        record.update({"synthetic_weight_cv": {f"{w:g}": r for w, r in means.items()}, "cv_folds": int(folds),
                       "cv_split": cv_split})
    elif grid is not None:
        weight = 1.0  # no synthetic rows: the weight changes nothing
    weight = np.asarray(weight, dtype=float)
    if n_syn and n_real == 0 and np.any(weight == 0):
        raise ValueError(
            "`synthetic_weight=0` (for some genes) leaves no row to learn from: the tables hold only synthetic rows."
        )
    if weight.ndim:
        record["synthetic_weight_genes"] = {str(g): float(v) for g, v in zip(genes, weight, strict=True)}
    return weight, record
