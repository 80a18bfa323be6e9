"""The runs of :func:`c2lst.tl.budget_curve`: the checks of its options, each repeat's table, the synthetic arms' conditions and scoring."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._weights import CHOICES, check_batching, check_real_finetune


def check_conditions(conditions, table, record, gene_selection, syn_fracs, test_fraction, arms, patch_key):
    """Validate ``conditions=`` of :func:`budget_curve`; return its result label and the unpaired table."""
    layer = str(record.get("layer", "X"))
    if conditions is None:
        return "train", None
    if isinstance(conditions, str):
        if conditions != "mixup":
            raise ValueError(
                f"`conditions={conditions!r}` is unknown; use None (the training spots), 'mixup' or an AnnData of "
                "another slide's expression."
            )
        if (layer != "X" and layer not in table.layers) or (layer == "X" and table.X is None):
            raise ValueError(
                f"`conditions='mixup'` mixes raw counts, but the table lacks {layer!r} the expression was "
                "prepared from; restore the counts."
            )
        n_pool = (1 - test_fraction) * table.n_obs
        if "real+synthetic" in arms or "real+null" in arms:
            small = [f for f in syn_fracs if round(f * n_pool) < 2]
            if small:
                raise ValueError(
                    f"`conditions='mixup'` needs at least 2 training spots to mix, but `synthetic_fractions` "
                    f"{small} leave fewer; drop those fractions from the synthetic arms (`synthetic_fractions=`)."
                )
        return "mixup", None
    if not isinstance(conditions, AnnData):
        raise TypeError(
            f"`conditions` must be None, 'mixup' or an AnnData of another slide, got {type(conditions).__name__}."
        )
    if conditions.n_obs == 0:
        raise ValueError("`conditions` is an empty AnnData; pass another slide's table with at least one spot.")
    shared = conditions.obs_names.intersection(table.obs_names)
    if len(shared):
        raise ValueError(
            f"`conditions` shares {len(shared)} spot names with the table (e.g. {list(shared[:3])}): unpaired "
            "expression must come from another slide or source. The local slide's other sequenced spots each "
            "have their image, so conditioning on them would use labelled spots without counting them; pass "
            "another slide's table (rename its spots if the names only collide by chance)."
        )
    needed = (
        [str(g) for g in np.asarray(record["genes"]).tolist()] if gene_selection == "given"
        else [str(g) for g in table.var_names]
    )
    missing = [g for g in needed if g not in conditions.var_names]
    if missing:
        raise KeyError(
            f"`conditions` lacks {len(missing)} of the {len(needed)} genes budget_curve may select "
            f"(e.g. {missing[:5]}; genes are matched by name); subset both tables to their shared genes first."
        )
    if layer != "X" and layer not in conditions.layers:
        raise KeyError(
            f"`conditions` lacks layer {layer!r}, where the table's raw counts are; store the other slide's raw "
            f"counts there (`conditions.layers[{layer!r}] = ...`)."
        )
    if "real+copy" in arms:  # the perfect generator for unpaired profiles: their own real patches
        if patch_key not in conditions.obsm:
            raise KeyError(
                f"`arms` has 'real+copy' or 'copy-only', whose rows for unpaired `conditions` are the other slide's own "
                f"patches (a perfect generator for those profiles), but `conditions.obsm` lacks {patch_key!r}; run "
                "`c2lst.pp.extract_patches` on the other slide (same `size`) or drop the copy arms."
            )
        theirs, ours = np.shape(conditions.obsm[patch_key])[1:], np.shape(table.obsm[patch_key])[1:]
        if theirs != ours:
            raise ValueError(
                f"`conditions.obsm[{patch_key!r}]` holds patches of shape {theirs}, the table {ours}; extract the "
                "other slide's patches at the same `size`."
            )
    return "unpaired", conditions


def unpaired_rows(other: AnnData, n: int, seed: int) -> np.ndarray:
    """Rows of the unpaired table one run conditions on: ``n`` drawn without replacement while they last."""
    return np.sort(np.random.default_rng([seed, 11]).choice(other.n_obs, n, replace=n > other.n_obs))


def unpaired_counts(other: AnnData, idx: np.ndarray, layer: str) -> AnnData:
    """Rows ``idx`` of the unpaired table: its raw counts (in ``X``, and in ``layer`` when that is not X)."""
    mat = other.X if layer == "X" else other.layers[layer]
    counts = AnnData(X=mat[idx], var=pd.DataFrame(index=other.var_names.copy()))
    counts.obs_names = np.asarray(other.obs_names, dtype=str)[idx]
    if layer != "X":
        counts.layers[layer] = counts.X
    return counts


def conditions_kwargs(label, other, record, n_real, per_spot, seed) -> dict[str, Any]:
    """``synthesize`` options of one run: ``per_spot`` rows per training spot from the chosen conditions."""
    if label == "train":
        return {"n_per_condition": per_spot}
    n = n_real * per_spot
    if label == "mixup":
        return {"conditions": "mixup", "n_conditions": n, "n_per_condition": 1}
    cond = unpaired_counts(other, unpaired_rows(other, n, seed), str(record.get("layer", "X")))
    if n > other.n_obs:
        cond.obs_names_make_unique()
    return {"conditions": cond, "n_per_condition": 1}


def generated_arms(real: AnnData, needed: set[str], *, model: Any, unlabelled: np.ndarray | None,
                   adapt_kwargs: dict[str, Any], synthesize_kwargs: dict[str, Any], n_candidates: int, seed: int,
                   expr_key: str, patch_key: str) -> dict[str, AnnData]:
    """Adapt on one run's labelled spots ``real`` and synthesize the ``"real+synthetic"`` / ``"real+null"`` rows.

    With ``n_candidates > 1`` each synthetic row is the best of that many candidates for its profile, as read by
    a ridge fitted on ``real`` (:func:`c2lst.tl.select_synthetic`); the null control is drawn as it is.
    """
    from ._adapt import adapt
    from ._predict import fit_predictor
    from ._select import select_synthetic
    from ._synthesize import synthesize

    # `real` is a fresh subset: an adapter it inherited from `adata` is replaced on purpose
    adapt(real, central=model, expr_key=expr_key, patch_key=patch_key, seed=seed, progress=False,
          unlabelled=unlabelled, **{"overwrite": True, **adapt_kwargs})
    out: dict[str, AnnData] = {}
    for arm, guidance in (("real+synthetic", None), ("real+null", 0.0)):
        if arm not in needed:
            continue
        kw = dict(synthesize_kwargs) if guidance is None else {**synthesize_kwargs, "guidance_scale": guidance}
        k = n_candidates if guidance is None else 1
        n_keep = int(kw.get("n_per_condition", 1))
        kw["n_per_condition"] = n_keep * k
        out[arm] = synthesize(real, central=model, seed=seed, patch_key=patch_key, key_added=arm.replace("+", "_"),
                              progress=False, **kw)
        if k > 1:
            reader = fit_predictor(real, mode="ridge", expr_key=expr_key, patch_key=patch_key, seed=seed,
                                   progress=False)
            out[arm] = select_synthetic(out[arm], predictor=reader, n_keep=n_keep, expr_key=expr_key,
                                        patch_key=patch_key, progress=False)
    return out


def repeat_table(table, pool, gene_selection, record, expr_key, patch_key, prepare, apply) -> AnnData:
    """A light table of one repeat: patches, coordinates, raw counts and expression over genes chosen on ``pool``."""
    layer = str(record.get("layer", "X"))
    counts = table.X if layer == "X" else table.layers.get(layer)
    base = AnnData(X=counts, obs=pd.DataFrame(index=table.obs_names.copy()),
                   var=pd.DataFrame(index=table.var_names.copy()))
    if layer != "X" and counts is not None:
        base.layers[layer] = counts  # mixup conditions mix these raw counts
    for key in (patch_key, "spatial"):
        base.obsm[key] = np.asarray(table.obsm[key])
    if gene_selection == "given":
        base.obsm[expr_key] = np.asarray(table.obsm[expr_key])
        base.uns["c2lst"] = {"expr": {expr_key: dict(record)}}
        return base
    sub = AnnData(X=counts[pool], var=pd.DataFrame(index=table.var_names.copy()))
    sub.obs_names = table.obs_names[pool]
    prepare(sub, n_top_genes=int(record["n_top_genes"]))
    new = dict(sub.uns["c2lst"]["expr"]["c2lst_expr"])
    new["layer"] = layer
    full = AnnData(X=counts, var=pd.DataFrame(index=table.var_names.copy()))
    base.obsm[expr_key] = apply(full, genes=list(new["genes"]), params={**new, "layer": "X"})
    base.uns["c2lst"] = {"expr": {expr_key: new}}
    return base


def copy_arm(real: AnnData, k: int, patch_key: str, expr_key: str) -> AnnData:
    """The "perfect but redundant" control: each real spot's own patch and expression, ``k`` times."""
    idx = np.repeat(np.arange(real.n_obs), k)
    obs = pd.DataFrame(
        {"c2lst_synthetic": True, "c2lst_parent": np.asarray(real.obs_names, dtype=str)[idx]},
        index=[f"copy_{i}" for i in range(len(idx))],
    )
    out = AnnData(obs=obs)
    out.obsm[patch_key] = np.asarray(real.obsm[patch_key])[idx]
    out.obsm[expr_key] = np.asarray(real.obsm[expr_key])[idx]
    out.uns["c2lst"] = {"expr": {expr_key: dict(real.uns["c2lst"]["expr"][expr_key])}}
    return out


def unpaired_copy_arm(other: AnnData, idx: np.ndarray, real: AnnData, patch_key: str, expr_key: str,
                      apply) -> AnnData:
    """The perfect generator for unpaired profiles: rows ``idx`` of the other slide, its own patch and expression.

    The expression is the other slide's counts preprocessed like the repeat's (same genes, same parameters),
    so these rows are what a generator that got every unpaired profile's image exactly right would add.
    """
    rec = dict(real.uns["c2lst"]["expr"][expr_key])
    counts = unpaired_counts(other, idx, str(rec.get("layer", "X")))
    expr = apply(counts, genes=[str(g) for g in np.asarray(rec["genes"]).tolist()], params={**rec, "layer": "X"})
    obs = pd.DataFrame(
        {"c2lst_synthetic": True, "c2lst_parent": np.asarray(counts.obs_names, dtype=str)},
        index=[f"copy_{i}" for i in range(len(idx))],
    )
    out = AnnData(obs=obs)
    out.obsm[patch_key] = np.asarray(other.obsm[patch_key])[idx]
    out.obsm[expr_key] = np.asarray(expr, dtype=np.float32)
    out.uns["c2lst"] = {"expr": {expr_key: rec}}
    return out


def score_run(pred, held: AnnData, expr_key: str, patch_key: str, gene_kind) -> dict[str, float]:
    """Pearson r, MSE and Moran's I difference of ``pred`` on the held-out spots, per gene kind too."""
    from ..get import metrics as prediction_metrics
    from ._evaluate_prediction import evaluate_prediction
    from ._predict_expression import predict_expression

    ev = held.copy()
    predict_expression(ev, predictor=pred, patch_key=patch_key, expr_key=expr_key, progress=False)
    evaluate_prediction(ev, expr_key=expr_key, spatial=True)
    rec = ev.uns["c2lst"]["evaluation"]["c2lst_pred"]
    out = {
        "pearson_r": float(rec["mean_pearson_r"]),
        "mse": float(rec["mean_mse"]),
        "moran_difference": float(rec.get("mean_abs_moran_difference", math.nan)),
    }
    if gene_kind is not None:
        r = prediction_metrics(ev)["pearson_r"].to_numpy()
        for kind in sorted(set(gene_kind) - {"nan", ""}):
            vals = r[gene_kind == kind]
            out[f"pearson_r_{kind}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return out


def check_finetunes(share: float | Sequence[float], mode: str) -> list[float]:
    """Validate ``real_finetune=`` of :func:`budget_curve` (a share or distinct shares); return them as floats."""
    return _distinct(share, lambda v: check_real_finetune(v, mode),
                     f"`real_finetune={share!r}` must be a number in [0, 1) or a sequence of distinct ones (e.g. (0, "
                     "0.33)).")


def check_batchings(batching: str | Sequence[str] | None, mode: str) -> list[str | None]:
    """Validate ``batching=`` of :func:`budget_curve` (``"mixed"``, ``"stacked"``, both or ``None``); return a list.

    ``None`` resolves as in :func:`~c2lst.tl.fit_predictor`: ``"stacked"`` for the CNN, ``None`` for ridge.
    """
    return _distinct(batching, lambda v: check_batching(v, mode),
                     f"`batching={batching!r}` must be 'mixed', 'stacked', None (the predictor's default) or a "
                     "sequence of distinct ones (e.g. ('mixed', 'stacked')).")


def _distinct(value: Any, check: Callable[[Any], Any], message: str) -> list:
    """One value or a sequence of them (not a string), each resolved by ``check``, all distinct once resolved.

    Return the resolved values; raise ``message`` when there are none or two resolve to the same (``None`` and
    the value it stands for, ``0`` and ``0.0``).
    """
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    values = [check(v) for v in values]
    if not values or len(set(values)) != len(values):
        raise ValueError(message)
    return values


def kind_weights(pred, gene_kind) -> dict[str, float]:
    """Mean chosen weight per gene kind (``chosen_weight_<kind>``) of a fit with weights per gene."""
    per_gene = pred.training.get("synthetic_weight_genes")
    if per_gene is None or gene_kind is None:
        return {}
    w = np.array([per_gene[g] for g in pred.genes])
    return {f"chosen_weight_{k}": float(w[gene_kind == k].mean()) for k in sorted(set(gene_kind))}


def check_weights(weight: float | str | Sequence[float | str]) -> list[float | str]:
    values = list(weight) if isinstance(weight, Sequence) and not isinstance(weight, str) else [weight]
    ok = values and all(
        v in CHOICES
        if isinstance(v, str)
        else not isinstance(v, bool) and isinstance(v, int | float) and np.isfinite(v) and v >= 0
        for v in values
    )
    if not ok or len(set(values)) != len(values):
        raise ValueError(
            f"`synthetic_weight={weight!r}` must be a number >= 0, one of {list(CHOICES)} or a sequence of distinct "
            "ones (e.g. (0.3, 'auto-gene'))."
        )
    return [v if isinstance(v, str) else float(v) for v in values]


def check_fractions(fractions: Sequence[float], name: str) -> list[float]:
    try:
        values = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"`{name}={fractions!r}` must be a sequence of numbers in (0, 1].") from None
    if not values or any(not np.isfinite(f) or not (0 < f <= 1) for f in values):
        raise ValueError(f"`{name}={values}` must be non-empty values in (0, 1]; e.g. (0.1, 0.25, 1.0).")
    return values
