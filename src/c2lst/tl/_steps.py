"""Early stopping of the CNN predictor: ``fit_predictor(early_stopping=True)`` chooses its optimiser steps.

The steps are chosen on a validation slice of the real training spots (whole spatial blocks of them, or random
spots), each held out together with every synthetic row conditioned on it, so no profile of a validation spot
reaches the fit that is scored on it. A fit on the other rows runs up to the step cap and is scored at evenly
spaced checkpoints by its mean squared error on the standardised expression of the slice (the training loss:
on a handful of spots it is steadier than a Pearson r, which an almost constant early prediction can win by
chance); the final fit trains on all rows on the same learning-rate schedule and ends at the best checkpoint.
With several validation folds (disjoint slices) each fold chooses its steps this way and the final fit ends at
their median, which steadies a choice made on a handful of spots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._logging import logger
from .._utils import check_positive_int
from ..metrics import pearson
from ..models.train import total_steps
from ._weights import _cv_blocks, _fit_weighted, hold_out_units

#: Validation checkpoints over the step cap.
CHECKPOINTS = 16
#: Checkpoints without a lower validation error that end the validation run.
PATIENCE = 4
#: Fewest real spots in the validation slice (a Pearson r over spots needs a few).
MIN_VALIDATION = 3


def check_early_stopping(early_stopping: bool, validation_fraction: float, mode: str, grid: Any,
                         real_finetune: float, validation_folds: int = 1) -> bool:
    """Validate ``early_stopping=``, ``validation_fraction=`` and ``validation_folds=`` of ``fit_predictor``."""
    if not isinstance(early_stopping, bool | np.bool_):
        raise TypeError(f"`early_stopping` must be True or False, got {early_stopping!r}.")
    frac = validation_fraction
    if isinstance(frac, bool) or not isinstance(frac, int | float) or not np.isfinite(frac) or not 0 < frac <= 0.5:
        raise ValueError(
            f"`validation_fraction={frac!r}` must be a number in (0, 0.5], the share of the real spots held out to "
            "choose the steps (e.g. 0.25)."
        )
    folds = check_positive_int(validation_folds, "validation_folds")
    if folds * frac > 1:
        raise ValueError(
            f"`validation_folds={folds}` disjoint slices of `validation_fraction={frac}` of the real spots need "
            f"{folds * frac:.0%} of them; pass at most {int(1 / frac)} folds or a smaller fraction."
        )
    if not early_stopping:
        return False
    if mode != "cnn":
        raise ValueError(
            f"`early_stopping=True` chooses the optimiser steps of `mode='cnn'`; the ridge head of `mode={mode!r}` "
            "is solved in one step. Pass `early_stopping=False` or use `mode='cnn'`."
        )
    if grid is not None:
        raise ValueError(
            "`early_stopping=True` chooses the steps at one fixed `synthetic_weight`; choosing the weight too "
            "('auto', 'auto-gene' or a sequence) is not supported. Pass a number (e.g. `synthetic_weight=0.3`)."
        )
    if real_finetune:
        raise ValueError(
            f"`early_stopping=True` cannot score staged training (`real_finetune={real_finetune}`): its stage "
            "starts at a share of the steps. Pass `real_finetune=0`."
        )
    return True


def validation_slices(
    groups: np.ndarray, groups_b: np.ndarray, is_syn: np.ndarray, blocks: np.ndarray | None, fraction: float, seed: int,
    folds: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return the training rows (boolean) and the validation rows (real row indices) of each validation fold.

    Units (spatial blocks of the real spots, read from ``blocks``, or single spots without them) are held out
    in a seeded random order until at least ``fraction`` of the real spots are; each further fold takes the next
    units of the same order, so the folds are disjoint. A synthetic row leaves a fold's training rows when its
    first or second parent (``groups``, ``groups_b``) is held out there.
    """
    real_idx = np.flatnonzero(~is_syn)
    spots = groups[real_idx]
    unit = spots if blocks is None else np.asarray(blocks)[real_idx]
    held = hold_out_units(unit, fraction, np.random.default_rng([int(seed), 11]), folds)
    out = []
    for mask in held:
        gone = np.isin(groups, spots[mask]) | np.isin(groups_b, spots[mask])
        out.append((~gone, real_idx[mask]))
    return out


def choose_steps(rows: tuple, weight: Any, model_args: tuple, fit_kw: dict, fraction: float, cv_split: str | None,
                 progress: bool, folds: int = 1) -> dict[str, Any]:
    """Choose the optimiser steps on validation slices; return the final fit's settings and the record.

    ``rows`` is ``(x, y, is_syn, groups, groups_b, blocks)`` of :func:`~c2lst.tl.fit_predictor`; ``fit_kw`` its
    fit settings, whose ``n_steps`` (or ``n_epochs`` over all rows) is the cap. Each of ``folds`` disjoint slices
    chooses its steps (:func:`_fold_steps`); the median of their choices is the final fit's. The returned
    ``"fit"`` settings run the final fit on the cap's learning-rate schedule and end it at the chosen step, as
    the validation runs were at their checkpoints (a fit of only that many steps would anneal its rate to 0 far
    sooner); ``"early_stopping"`` is the record for ``training``.
    """
    x, _, is_syn, groups, groups_b, blocks = rows
    split, labels = _cv_blocks(cv_split, blocks, 2)
    slices = validation_slices(groups, groups_b, is_syn, labels, fraction, fit_kw["seed"], folds)
    n_real = int((~is_syn).sum())
    for k, (train, val) in enumerate(slices):
        n_left = int((train & ~is_syn).sum())
        if len(val) < MIN_VALIDATION or n_left < 2:
            fold = f"validation fold {k + 1} of {folds}" if folds > 1 else "the validation slice"
            raise ValueError(
                f"`early_stopping=True`: {fold} holds {len(val)} of {n_real} real spots ({split} validation, "
                f"`validation_fraction={fraction}`); it needs at least {MIN_VALIDATION} held out and 2 left to "
                "train on. Add real spots, change `validation_fraction` or `validation_folds`, pass "
                "`cv_split='random'`, or fix `n_steps` instead."
            )
    stacked = fit_kw.get("batching") == "stacked" and is_syn.any()  # epochs then pass over the real rows
    cap = total_steps(fit_kw["n_steps"], fit_kw["n_epochs"], n_real if stacked else len(x), fit_kw["batch_size"])
    records = [_fold_steps(rows, train, val, weight, model_args, {**fit_kw, "n_steps": cap}, progress)
               for train, val in slices]
    chosen = round(float(np.median([r["chosen_steps"] for r in records])))
    logger.info("early stopping: %d of at most %d steps chosen on %d fold(s) of %s validation spots (%s)",
                chosen, cap, folds, split, ", ".join(str(r["chosen_steps"]) for r in records))
    return {"fit": {"n_steps": cap, "callback": lambda _model, done: done >= chosen}, "early_stopping": {
        "max_steps": int(cap), "chosen_steps": chosen, "validation_split": split, "folds": records}}


def _fold_steps(rows: tuple, train: np.ndarray, val: np.ndarray, weight: Any, model_args: tuple, fit_kw: dict,
                progress: bool) -> dict[str, Any]:
    """One validation run: fit on ``train`` rows up to the cap, score on the ``val`` spots; return its record."""
    x, y, is_syn, groups = rows[:4]
    cap = fit_kw["n_steps"]
    every = max(1, cap // CHECKPOINTS)
    spread = y[train & ~is_syn].std(axis=0)
    scale = np.where(spread > 1e-8, spread, 1.0)  # the error in units of each gene's spread over training spots
    history: list[tuple[int, float, float]] = []  # (steps, standardised MSE, mean r)

    def monitor(model, done: int) -> bool:
        if done % every and done != cap:
            return False
        pred = model.predict(x[val], device=fit_kw["device"])
        model.network.train()
        with np.errstate(all="ignore"):
            r = np.asarray(pearson(pred, y[val]), dtype=float)
        mse = float(np.mean(((pred - y[val]) / scale) ** 2))
        history.append((done, mse, float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")))
        best = int(np.argmin([h[1] for h in history]))
        return len(history) - 1 - best >= PATIENCE

    _fit_weighted(x[train], y[train], is_syn[train], groups[train], weight, model_args,
                  {**fit_kw, "callback": monitor}, progress)
    steps, losses, scores = (list(v) for v in zip(*history, strict=True))
    best = int(np.argmin(losses))  # the first best: the fewest steps
    return {"chosen_steps": int(steps[best]), "validation_spots": len(val), "checkpoints": steps,
            "validation_mse": losses, "validation_r": scores}
