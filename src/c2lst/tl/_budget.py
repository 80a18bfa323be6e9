"""``tl.budget_curve``: how many real spots does synthesis save (planned by :func:`~c2lst.tl.plan_budget`)."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._logging import logger
from .._logging import progress as _progress
from .._utils import as_table, check_kwargs, check_positive_int, check_seed, renamed_arguments, require_obsm
from ._budget_arms import (
    check_batchings,
    check_conditions,
    check_finetunes,
    check_fractions,
    check_weights,
    conditions_kwargs,
    copy_arm,
    generated_arms,
    kind_weights,
    repeat_table,
    score_run,
    unpaired_copy_arm,
    unpaired_rows,
)
from ._budget_resume import open_run_log
from ._steps import check_early_stopping
from ._weights import _weight_grid, hold_out_units, spatial_blocks

SPLITS = ("spatial", "random")
#: Training sets compared by :func:`budget_curve` at each fraction. ``"real+null"`` adds patches generated
#: from the null condition (images that ignore the expression: a control no generator should fall below);
#: ``"real+copy"`` adds copies of each parent's own patch (a perfect but redundant generator), or with unpaired
#: ``conditions`` the other slide's own patches of the profiles the synthetic arm draws (a perfect generator).
#: Arms that train on the added rows of ``"real+<name>"`` alone, without the real spots, on the same rows and
#: steps: how much a predictor learns from generated patches by themselves (train on generated, test on real).
SOLO = {"synthetic-only": "real+synthetic", "null-only": "real+null", "copy-only": "real+copy"}
ARMS = ("real", "real+synthetic", "real+null", "real+copy", *SOLO)
CONDITIONS = ARMS[:2]  # the default arms
GENE_SELECTION = ("train", "given")


def spatial_split(
    coords: np.ndarray, *, test_fraction: float = 0.25, n_blocks: int = 4, seed: int = 0
) -> np.ndarray:
    """Return a boolean test mask that holds out whole spatial blocks.

    The slide's bounding box is cut into ``n_blocks x n_blocks`` tiles; tiles are drawn in a seeded random
    order until at least ``test_fraction`` of the spots are held out, so neighbouring spots never straddle
    train and test except along block borders.
    """
    test = hold_out_units(spatial_blocks(coords, n_blocks), test_fraction, np.random.default_rng(seed))[0]
    if test.all():  # a single occupied block: keep at least one training spot
        test[np.random.default_rng(seed).integers(len(test))] = False
    return test


#: Default adaptation steps per training subset (see the ``adapt_kwargs`` parameter).
ADAPT_STEPS = 800


@renamed_arguments(synthetic_per_spot="n_per_condition")
def budget_curve(
    sdata: Any,
    *,
    central: Any,
    table_key: str = "table",
    fractions: Sequence[float] = (0.05, 0.1, 0.25, 1.0),
    synthetic_fractions: Sequence[float] | None = None,
    arms: Sequence[str] = CONDITIONS,
    n_per_condition: int = 2,
    n_candidates: int = 1,
    synthetic_weight: float | str | Sequence[float | str] = 0.3,
    real_finetune: float | Sequence[float] = 0.0,
    batching: str | Sequence[str] | None = None,
    n_repeats: int = 8,
    split: Literal["spatial", "random"] = "spatial",
    test_fraction: float = 0.25,
    n_blocks: int = 4,
    gene_selection: Literal["train", "given"] = "train",
    unlabelled: bool = False,
    conditions: str | AnnData | None = None,
    expr_key: str = "c2lst_expr",
    patch_key: str = "c2lst_patch",
    adapt_kwargs: Mapping[str, Any] | None = None,
    synthesize_kwargs: Mapping[str, Any] | None = None,
    predictor_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Measure image→expression accuracy against the number of real spots, with and without synthesis.

    Each repeat holds out whole spatial blocks of spots as the test set (``split="spatial"``: neighbouring
    spots do not leak between train and test). Genes are re-selected on the repeat's training spots
    (``gene_selection="train"``), so the test spots never shape the gene panel. For each fraction ``f`` of the
    training spots a seeded subset is drawn; the central model is adapted on it (:func:`c2lst.tl.adapt`) and
    ``n_per_condition`` patches per spot are synthesized (:func:`c2lst.tl.synthesize`). Every arm then fits a
    predictor (:func:`c2lst.tl.fit_predictor`) **for the same number of optimiser steps** and is scored on the
    held-out real spots. All arms of one (repeat, fraction) share the split, the subset and the seeds, so their
    differences are paired: compare them with :func:`plan_budget`.

    Parameters
    ----------
    sdata
        SpatialData (or an AnnData table) with ``obsm[patch_key]``, ``obsm[expr_key]`` and ``obsm["spatial"]``.
    central
        The central model (object, directory or registry key) to adapt.
    table_key
        Table of the real spots.
    fractions
        Fractions of the training spots, each in (0, 1]; include 1.0 (the reference of :func:`plan_budget`).
    synthetic_fractions
        Fractions at which the arms other than ``"real"`` run (default: all ``fractions``). Leaving out 1.0
        saves the largest adaptation when only the all-real reference is needed there.
    arms
        Training sets to compare (see :data:`ARMS`): ``"real"``, ``"real+synthetic"``, and the controls
        ``"real+null"`` (patches from the null condition, which ignore expression) and ``"real+copy"`` (the
        parent's own patch, repeated ``n_per_condition`` times; with unpaired ``conditions``, the rows the
        synthetic arm is conditioned on, each with its own real patch from ``conditions.obsm[patch_key]`` and its
        expression prepared like the repeat's: what a perfect generator would add. With ``"mixup"`` it stays the
        parents' copies, since a mixture has no real patch). ``"synthetic-only"``, ``"null-only"`` and
        ``"copy-only"`` train on those arms' added rows alone (the same rows, seeds and steps, weight 1, no real
        spot): train on generated patches, test on real ones. Set against ``"copy-only"``,
        ``"synthetic-only"`` says how much of what a real patch teaches the generated ones teach;
        ``"null-only"`` is their floor. They take no ``early_stopping``, which validates on real rows.
    n_per_condition
        Added rows per real training spot.
    n_candidates
        Best-of-k synthesis: generate ``n_candidates`` patches per added row and keep the one a ridge reader,
        fitted on the run's labelled spots only, reads closest to its profile (:func:`c2lst.tl.select_synthetic`).
        1 (default) keeps every patch; 3 moved the 10 % gain by +0.002 r [-0.008, +0.013] on two simulated slides
        (docs: benchmarks). The ``"real+null"`` control is never selected.
    synthetic_weight
        Loss weight of added rows relative to real rows (see :func:`c2lst.tl.fit_predictor`). A sequence fits
        every added arm once per weight on the same synthetic rows (column ``synthetic_weight``); choose one in
        :func:`plan_budget`. Choosing the weight on the test blocks makes that arm's figures slightly optimistic.
        ``"auto"`` (alone or in the sequence) lets each fit choose its weight by grouped cross-validation on its
        own training spots (spatial blocks of them unless ``predictor_kwargs={"cv_split": "random"}``; see
        :func:`c2lst.tl.fit_predictor`), never on the test blocks; such rows hold
        ``"auto"`` in ``synthetic_weight`` and the weight chosen in ``chosen_weight``. ``"auto-gene"`` chooses
        one weight per gene the same way (``chosen_weight`` is then their mean over genes).
    real_finetune
        Staged training of the CNN predictor (:func:`c2lst.tl.fit_predictor`): the share of its steps, at the
        end, on the real rows alone. A sequence fits every added arm once per (weight, share) on the same rows
        (column ``real_finetune``; NaN for ``"real"``, which has no added rows); choose one in
        :func:`plan_budget`.
    batching
        How the CNN predictor's steps take added rows (:func:`c2lst.tl.fit_predictor`): ``"stacked"`` (``None``,
        the default, for the CNN) adds a batch of them to the real batch a real-only fit would draw, ``"mixed"``
        shuffles them in with the real rows. A sequence fits every added arm once per (weight, share, batching)
        on the same rows (column ``batching``; NaN for ``"real"`` and for ridge); choose one in
        :func:`plan_budget`.
    n_repeats
        Repeats (different held-out blocks, subsets and seeds); :func:`plan_budget` needs at least 3.
    split
        ``"spatial"`` (held-out blocks) or ``"random"`` (held-out spots; optimistic, for comparison only).
    test_fraction
        Fraction of spots held out per repeat.
    n_blocks
        Blocks per side of the spatial grid.
    gene_selection
        ``"train"``: re-run :func:`c2lst.pp.prepare_expression` (same ``n_top_genes``, layer and flavour) on
        each repeat's training spots and use those genes; needs the counts the table was prepared from.
        ``"given"``: use ``obsm[expr_key]`` as it is (only when its genes were chosen without the test spots,
        e.g. from a panel or another slide).
    unlabelled
        Let the adaptation also see the images of the repeat's other training-pool spots (outside the labelled
        subset; never test spots) through ``adapt(unlabelled=...)``: on a real slide the whole H&E is free and
        only sequencing costs. Their expression is never used.
    conditions
        Expression profiles the synthetic arms are conditioned on (column ``conditions`` of the result):
        ``None`` (``"train"``): the labelled training spots, ``n_per_condition`` patches each (no new
        expression: even a perfect generator only adds views of known spots). ``"mixup"``: ``n_per_condition``
        new count-space mixtures per training spot (``synthesize(conditions="mixup")``, one patch each) of pairs
        of the labelled training spots; a mixed row's group for the ridge penalty's grouped validation is its
        first (dominant) parent, and :func:`c2lst.tl.concat_augmented` would place it there. An AnnData
        (``"unpaired"``): expression of *another* slide or source (raw counts in the layer the expression was
        prepared from, genes matched by name, at least every gene of the table when genes are re-selected);
        per repeat ``n_per_condition`` profiles per training spot are drawn from it (without replacement
        while it lasts); it should be the same tissue type (on simulated slides, a section with the local gene
        panel helped at 10 %, one with another panel cost about 0.13 r; docs: benchmarks). Its
        ``obs_names`` must not overlap the table's: the local slide's other sequenced
        spots each have their image, so conditioning on them would use labelled spots without counting them.
    expr_key, patch_key
        Prepared expression and patches.
    adapt_kwargs, synthesize_kwargs, predictor_kwargs
        Extra options for :func:`c2lst.tl.adapt`, :func:`c2lst.tl.synthesize` and :func:`c2lst.tl.fit_predictor`.
        Adaptation runs 800 steps unless ``adapt_kwargs`` says otherwise: on 22 spots, 120 steps put about a third
        of the expression a reader finds in a real patch into the synthetic ones and 800 steps about four fifths
        (:func:`c2lst.tl.evaluate_conditioning`, ``benchmarks/bench_local.py --adapt-spots 22``; docs: benchmarks).
        The predictor's ``n_steps`` (default 200) is the same for every arm; an ``n_epochs`` without
        ``n_steps`` is turned into the steps that many epochs take on the largest real training set. With
        ``"early_stopping": True`` it is every arm's cap instead: each fit chooses its steps on a validation
        slice of its own training spots (column ``n_steps``), never on the test blocks.
        ``predictor_kwargs={"mode": "ridge", "features": "central"}`` fits ridge on the frozen central
        denoiser's features (``central`` is passed for you).
    seed
        Seeds splits, subsets, adaptation, synthesis and predictors.
    progress
        Show a progress bar over the runs.
    checkpoint
        Folder (created if absent) that keeps each finished (repeat, fraction) run with a fingerprint of the slide,
        central model and settings. Called again with it, finished runs are read back, not redone (same result as
        one uninterrupted call); a larger ``n_repeats`` extends the curve. Another configuration's folder raises
        ``ValueError``, another call's runs appended while this one ran ``RuntimeError``; neither writes anything.

    Returns
    -------
    One row per (repeat, fraction, arm, weight, fine-tuning share, batching): ``fraction``, ``repeat``,
    ``condition`` (the arm), ``conditions`` (``"train"``, ``"mixup"`` or ``"unpaired"``), ``features`` (the
    predictor's feature space: ``"cnn"``, ``"morphometric"``, ``"central"`` or ``"backbone"``),
    ``synthetic_weight`` (NaN for ``"real"``, ``"auto"`` or ``"auto-gene"`` for weights chosen per fit),
    ``real_finetune`` (NaN for ``"real"``), ``batching`` (NaN for ``"real"`` and ridge), ``chosen_weight`` (the
    weight the fit used, the mean over genes for ``"auto-gene"``; NaN for ``"real"`` and the arms of added rows
    alone), ``n_real`` and ``n_synthetic`` (the real and added rows the fit trained on; ``n_real`` is 0 for
    ``"synthetic-only"``, ``"null-only"`` and ``"copy-only"``), ``n_test``, ``n_steps`` (predictor optimiser
    steps), ``pearson_r`` (mean over genes),
    ``mse``, ``moran_difference`` (mean absolute Moran's I difference, predicted vs observed) and, when the table
    has ``var["c2lst_gene_kind"]`` (simulated data), ``pearson_r_<kind>`` per gene kind (``marker`` genes are
    visible in the image, ``smooth`` genes follow spatial fields only), with ``"auto-gene"`` also
    ``chosen_weight_<kind>`` (the mean chosen weight of each kind's genes).

    Examples
    --------
    >>> curve = c2lst.tl.budget_curve(sdata, central=model, fractions=(0.1, 0.25, 1.0), n_repeats=8)
    >>> c2lst.tl.plan_budget(curve, margin=0.02)
    """
    from .._utils import quiet_io_warnings
    from ..pp._expression import apply_expression, prepare_expression
    from ._predict import fit_predictor

    table = as_table(sdata, table_key, arg="sdata")
    fractions = check_fractions(fractions, "fractions")
    syn_fracs = fractions if synthetic_fractions is None else check_fractions(synthetic_fractions, "synthetic_fractions")
    arms = list(arms) if not isinstance(arms, str) else [arms]
    bad = [a for a in arms if a not in ARMS]
    if not arms or bad or len(set(arms)) != len(arms):
        raise ValueError(f"`arms={arms}` must be distinct values of {list(ARMS)}.")
    if split not in SPLITS:
        raise ValueError(f"`split={split!r}` is unknown; use one of {list(SPLITS)}.")
    if gene_selection not in GENE_SELECTION:
        raise ValueError(f"`gene_selection={gene_selection!r}` is unknown; use one of {list(GENE_SELECTION)}.")
    if not (0 < test_fraction < 1):
        raise ValueError(f"`test_fraction={test_fraction}` must be in (0, 1).")
    n_per_condition = check_positive_int(n_per_condition, "n_per_condition")
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    n_repeats = check_positive_int(n_repeats, "n_repeats")
    n_blocks = check_positive_int(n_blocks, "n_blocks")
    seed = check_seed(seed)
    require_obsm(table, patch_key, "patch_key", "run `c2lst.pp.extract_patches` first.")
    require_obsm(table, expr_key, "expr_key", "run `c2lst.pp.prepare_expression` first.")
    coords = require_obsm(
        table, "spatial", "obsm key", "the table needs spot coordinates in obsm['spatial']."
    )
    record = table.uns.get("c2lst", {}).get("expr", {}).get(expr_key)
    if record is None:
        raise KeyError(f"`expr_key={expr_key!r}` has no record in `uns['c2lst']['expr']`; run `prepare_expression`.")
    if gene_selection == "train" and str(record.get("flavor")) == "given":
        gene_selection = "given"  # the genes were listed by the user, not chosen from these spots
    if gene_selection == "train" and str(record.get("layer", "X")) not in ("X", *table.layers.keys()):
        raise ValueError(
            f"`gene_selection='train'` needs the counts in layer {record.get('layer')!r}, which the table lacks; "
            "restore it or pass `gene_selection='given'`."
        )
    own = {k: f"pass `{k}=` to budget_curve" for k in ("seed", "expr_key", "patch_key", "progress")}
    adapt_kwargs = check_kwargs(adapt_kwargs, "adapt_kwargs", {**own, "central": "pass `central=` to budget_curve",
                                                                "unlabelled": "pass `unlabelled=` to budget_curve",
                                                                "overwrite": "set by budget_curve"})
    synthesize_kwargs = check_kwargs(synthesize_kwargs, "synthesize_kwargs", {
        **own, "central": "pass `central=` to budget_curve", "table_key": "set by budget_curve",
        "key_added": "set by budget_curve", "n_per_condition": "pass `n_per_condition=` to budget_curve"})
    p_kw = check_kwargs(predictor_kwargs, "predictor_kwargs", own)
    if "n_steps" not in p_kw:
        epochs = p_kw.pop("n_epochs", None)
        pool_max = round((1 - test_fraction) * table.n_obs)
        bs = int(p_kw.get("batch_size", 64))
        p_kw["n_steps"] = 200 if epochs is None else int(epochs) * math.ceil(pool_max / min(bs, pool_max))
    for key in ("synthetic_weight", "real_finetune", "batching"):
        if key in p_kw:
            raise ValueError(f"pass `{key}=` to `budget_curve` itself, not in `predictor_kwargs`.")
    solo = [a for a in arms if a in SOLO]
    if solo and p_kw.get("early_stopping", False):
        raise ValueError(
            f"`arms` has {solo}, which train on added rows alone, but `predictor_kwargs` asks for early stopping, "
            "which validates on real rows; drop those arms or early stopping."
        )
    weights = check_weights(synthetic_weight)
    mode = p_kw.get("mode", "cnn")
    tunes = check_finetunes(real_finetune, mode)
    batchings = check_batchings(batching, mode)
    for w in weights:  # refuse what fit_predictor would, before any adaptation
        for ft in tunes:
            check_early_stopping(p_kw.get("early_stopping", False), p_kw.get("validation_fraction", 0.25),
                                 mode, _weight_grid(w), ft, p_kw.get("validation_folds", 1))
    sources = list(dict.fromkeys(SOLO.get(a, a) for a in arms))  # the rows each arm needs
    cond_label, other = check_conditions(conditions, table, record, gene_selection, syn_fracs, test_fraction,
                                         sources, patch_key)
    from ._central import resolve_central

    model = resolve_central(central, table)
    log = open_run_log(checkpoint, table=table, model=model, other=other, record=record,
        expr_key=expr_key, patch_key=patch_key, fractions=fractions, synthetic_fractions=syn_fracs, arms=arms,
        n_per_condition=n_per_condition, n_candidates=n_candidates, synthetic_weight=weights, real_finetune=tunes, batching=batchings,
        split=split, test_fraction=test_fraction, n_blocks=n_blocks, gene_selection=gene_selection,
        unlabelled=unlabelled, conditions=cond_label, adapt_kwargs=adapt_kwargs,
        synthesize_kwargs=synthesize_kwargs, predictor_kwargs=p_kw, seed=seed)
    if p_kw.get("features") == "central" and p_kw.get("central") is None:
        p_kw["central"] = model
    kinds = table.var["c2lst_gene_kind"].astype(str) if "c2lst_gene_kind" in table.var else None
    a_kw = {"n_steps": ADAPT_STEPS, "batch_size": 16, **dict(adapt_kwargs or {})}
    s_kw = dict(synthesize_kwargs or {})
    s_kw.setdefault("n_steps", s_kw.pop("steps", 20))  # `steps` is the old spelling
    rows: list[dict[str, Any]] = []
    runs = [(r, f) for r in range(n_repeats) for f in fractions]
    bar = _progress(runs, enabled=progress, desc="budget curve", unit="run")
    repeat_data: dict[int, tuple] = {}
    for r, f in bar:
        if log is not None and (r, f) in log.done:  # finished by an earlier call with this checkpoint
            rows.extend(log.done[(r, f)])
            continue
        rseed = seed + 1000 * r
        if r not in repeat_data:
            test = (
                spatial_split(coords, test_fraction=test_fraction, n_blocks=n_blocks, seed=rseed)
                if split == "spatial"
                else np.random.default_rng(rseed).random(table.n_obs) < test_fraction
            )
            pool = np.flatnonzero(~test)
            if test.sum() < 3 or len(pool) == 0:
                raise ValueError(
                    f"the {split} split left {int(test.sum())} test and {len(pool)} training spots; use more "
                    "spots, a larger `test_fraction` or more `n_blocks`."
                )
            with quiet_io_warnings():
                base = repeat_table(table, pool, gene_selection, record, expr_key, patch_key,
                                    prepare_expression, apply_expression)
            repeat_data = {r: (test, pool, base)}
        test, pool, base = repeat_data[r]
        n_real = max(1, round(f * len(pool)))
        train_idx = np.sort(np.random.default_rng([rseed, int(f * 1e6)]).choice(pool, n_real, replace=False))
        real = base[train_idx].copy()
        held = base[np.flatnonzero(test)].copy()
        real.obs["c2lst_synthetic"] = False
        genes = [str(g) for g in real.uns["c2lst"]["expr"][expr_key]["genes"]]
        gene_kind = None if kinds is None else kinds.reindex(genes).to_numpy()
        extra: dict[str, AnnData] = {}
        todo = [a for a in arms if a == "real" or any(np.isclose(f, syn_fracs))]
        needed = {SOLO.get(a, a) for a in todo}
        if any(a in ("real+synthetic", "real+null") for a in needed):
            cond_kw = conditions_kwargs(cond_label, other, record, n_real, n_per_condition, rseed)
            others = np.setdiff1d(pool, train_idx)
            un = np.asarray(base.obsm[patch_key])[others] if unlabelled and len(others) else None
            extra.update(generated_arms(real, needed, model=model, unlabelled=un, adapt_kwargs=a_kw,
                                        synthesize_kwargs={**s_kw, **cond_kw}, n_candidates=n_candidates,
                                        seed=rseed, expr_key=expr_key, patch_key=patch_key))
        if "real+copy" in needed and cond_label == "unpaired":  # the same profiles as the synthetic arm
            idx = unpaired_rows(other, n_real * n_per_condition, rseed)
            extra["real+copy"] = unpaired_copy_arm(other, idx, real, patch_key, expr_key, apply_expression)
        elif "real+copy" in needed:
            extra["real+copy"] = copy_arm(real, n_per_condition, patch_key, expr_key)
        plain = {"real", *SOLO}  # one kind of row: no weight, share or batching
        fits = [(a, *v) for a in todo
                for v in ([(math.nan,) * 3] if a in plain else itertools.product(weights, tunes, batchings))]
        for arm, w, ft, b in fits:
            tables = [real] if arm == "real" else [extra[SOLO[arm]]] if arm in SOLO else [real, extra[arm]]
            pred = fit_predictor(tables, expr_key=expr_key, patch_key=patch_key, seed=rseed, progress=False,
                                 synthetic_weight=1.0 if arm in plain else w,
                                 real_finetune=0.0 if arm in plain else ft,
                                 batching=None if arm in plain else b, **p_kw)
            rows.append({
                "fraction": f,
                "repeat": r,
                "condition": arm,
                "conditions": cond_label,
                "features": pred.feature_space,
                "synthetic_weight": w,
                "real_finetune": ft,
                "batching": math.nan if b is None else b,
                "chosen_weight": math.nan if arm in plain else float(pred.training["synthetic_weight"]),
                "n_real": int(pred.training["n_real"]),
                "n_synthetic": int(pred.training["n_synthetic"]),
                "n_test": int(test.sum()),
                "n_steps": int(pred.training.get("n_steps", 0)),
                **score_run(pred, held, expr_key, patch_key, gene_kind),
                **kind_weights(pred, gene_kind),
            })
        logger.info("budget: fraction %.2f repeat %d: %s", f, r,
                    ", ".join(f"{row['condition']} r={row['pearson_r']:.3f}" for row in rows[-len(fits):]))
        if log is not None:
            log.add(r, f, rows[-len(fits):])
    return pd.DataFrame(rows)

