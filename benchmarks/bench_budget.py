"""The headline on the simulator, measured right: how many real spots does synthesis save?

Protocol (``c2lst.tl.budget_curve``): every repeat holds out whole spatial blocks as test spots; genes are
chosen on the repeat's training spots only; the central model is pretrained once (unpaired patches of two other
simulated institutions, cached) and adapted per training subset; every arm trains its predictor for the same
number of optimiser steps; arms of one (repeat, fraction) share split, subset and seeds, so differences are
paired. Arms: ``real``, ``real+synthetic`` (synthesized from the training spots' own profiles), and two
controls: ``real+null`` (patches from the null condition: images that ignore the expression) and
``real+copy`` (each parent's own patch again: a perfect but redundant generator); ``synthetic-only``, ``null-only``
and ``copy-only`` train on those rows alone (train on generated patches, test on real ones: how much a generated patch
teaches against a real one, ``share`` between the null floor and the copies). Every added arm is fitted for
each ``--weights`` loss weight of its added rows; ``auto`` lets each fit choose its weight (0, 0.1, 0.3 or 1) by
grouped 3-fold validation on its own training spots, so synthesis that does not help can be switched off
without looking at the test blocks; ``auto-gene`` makes that choice per gene (synthetic rows teach only the
genes they help predict), and the run prints each weight's paired difference to the first one.
``--real-finetune`` shares (e.g. ``0 0.5``) fit every added arm once per share with staged training: the last
share of the predictor's steps on the real rows alone (``fit_predictor(real_finetune=)``); each (weight,
share) is compared with the first, paired. ``--batching mixed stacked`` fits every added arm once per way its
rows enter the predictor's steps (``fit_predictor(batching=)``): shuffled in with the real rows, or stacked as
a batch of their own onto the real batch a real-only fit draws. ``--early-stopping`` makes
``--predictor-steps`` every fit's cap: each fit chooses its steps on a validation slice of its own training
spots (``fit_predictor(early_stopping=True)``; the same cap and rule for every arm), so a fixed step count
cannot under-train the all-real reference or over-train the few-spot arms.

Fair new information (issue 11, item 4), each measured by its own run: ``--conditions mixup`` conditions the
synthetic arms on count-space mixtures of pairs of training spots, ``--conditions unpaired`` on the expression
of another section of the same tissue type (``--unpaired-spots`` spots, seed ``--seed + 100``, the local
slide's gene panel; its images are used only by the ``real+copy`` control, which adds the other slide's real
patches of the profiles the synthetic arm draws: a perfect generator; ``--unpaired-panel own`` draws that
slide's own panel instead, so its genes mean something else: a wrong-biology control);
``--unlabelled`` lets adaptation see the images of the non-labelled training-pool spots; ``--features central``
(with ``--mode ridge``) fits ridge on the frozen central denoiser's pooled activations instead of morphometric
features. Each run writes its curve to ``budget_curve[_<conditions>][_<features>][_unlabelled].csv``.

Figures: mean Pearson r over genes (and per gene kind: ``marker`` genes are visible in the image, ``smooth``
genes follow spatial fields only) on held-out blocks; paired differences with 95% CIs (Student t over
repeats); ``plan_budget`` non-inferiority to 100% real at margin 0.02 r. The named peer is the all-real
predictor of the same repeat. Goals (issue 11): real+synthetic never worse than real by more than 0.01 r;
the smallest non-inferior fraction with synthesis at most half the one without; at 10%, gain > 0 with the CI
excluding 0.

Run: ``python benchmarks/bench_budget.py`` (8 repeats, fractions 5/10/25/100%; about 60 min on 2 CPU cores,
the central model shared with ``bench_sampler.py`` through ``--cache``). Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _central_cache import central, corpus

import c2lst
from c2lst.tl._budget import SOLO
from c2lst.tl._weights import CHOICES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spots", type=int, default=300, help="spots on the local slide")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--kind", default="v_prediction", help="central parameterisation")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--central", default=None, help="a shipped central model (e.g. tiny-sim) instead of pretraining")
    ap.add_argument("--cache", default="benchmarks/_cache")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 1.0])
    ap.add_argument("--synthetic-fractions", type=float, nargs="+", default=None,
                    help="fractions at which the added arms run (default: every fraction below 1); the real arm "
                         "runs at every --fractions")
    ap.add_argument("--arms", nargs="+", default=["real", "real+synthetic", "real+null", "real+copy"])
    ap.add_argument("--weights", type=lambda v: v if v in CHOICES else float(v), nargs="+",
                    default=[1.0, 0.3],
                    help="loss weights of the added rows; 'auto' chooses one per fit by grouped validation on "
                         "its own training spots (fit_predictor(synthetic_weight='auto')), 'auto-gene' one per "
                         "gene the same way")
    ap.add_argument("--cv-split", default=None, choices=["spatial", "random"],
                    help="folds of the weight choice ('auto', 'auto-gene'); default: spatial blocks")
    ap.add_argument("--real-finetune", type=float, nargs="+", default=[0.0],
                    help="staged training: share of the predictor's steps, at the end, on the real rows alone "
                         "(fit_predictor(real_finetune=)); several values give one fit each")
    ap.add_argument("--batching", nargs="+", default=[None], choices=["mixed", "stacked"],
                    help="how the added rows enter the predictor's steps (fit_predictor(batching=); default: "
                         "stacked for the cnn); several values give one fit each")
    ap.add_argument("--adapt-steps", type=int, default=800,
                    help="adaptation steps per training subset (120 in the runs before the reader measure)")
    ap.add_argument("--encoder-lr", type=float, default=None)
    ap.add_argument("--timestep-bias", type=float, default=0.0,
                    help="adaptation timesteps of conditioned spots drawn with density ~ t**bias (0: uniform)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the adapter")
    ap.add_argument("--condition-noise", type=float, default=0.0,
                    help="adaptation: Gaussian noise on the training profiles, in units of each gene's spread")
    ap.add_argument("--hidden", type=int, default=64, help="hidden width of the gene encoder")
    ap.add_argument("--synth-steps", type=int, default=15)
    ap.add_argument("--synthetic-per-spot", type=int, default=3)
    ap.add_argument("--synthetic-candidates", type=int, default=1,
                    help="best-of-k: candidates per synthetic row, the one a ridge reader of the labelled spots "
                         "reads closest to its profile is kept (1: no selection)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--predictor-steps", type=int, default=200,
                    help="every predictor's optimiser steps (with --early-stopping: every predictor's cap)")
    ap.add_argument("--early-stopping", action="store_true",
                    help="each fit chooses its steps on a validation slice of its own training spots")
    ap.add_argument("--validation-fraction", type=float, default=0.25, help="share of them (--early-stopping)")
    ap.add_argument("--validation-folds", type=int, default=1,
                    help="disjoint validation slices; the fit ends at the median of their choices (--early-stopping)")
    ap.add_argument("--mode", default="cnn", choices=["cnn", "ridge"])
    ap.add_argument("--features", default="default", choices=["default", "morphometric", "central"],
                    help="frozen features of --mode ridge (default: morphometric)")
    ap.add_argument("--conditions", default="train", choices=["train", "mixup", "unpaired"],
                    help="profiles the synthetic arms are conditioned on")
    ap.add_argument("--unpaired-spots", type=int, default=300, help="spots of the other slide (--conditions unpaired)")
    ap.add_argument("--unpaired-panel", default="same", choices=["same", "own"],
                    help="--conditions unpaired: the other slide shares the local gene panel (same tissue type) "
                         "or draws its own (genes of the same name mean other things)")
    ap.add_argument("--unlabelled", action="store_true", help="adaptation also sees the unlabelled pool's images")
    ap.add_argument("--genes", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None,
                    help="folder keeping each finished run; the same command again resumes an interrupted curve")
    args = ap.parse_args()
    if args.features != "default" and args.mode != "ridge":
        ap.error(f"--features {args.features} is a frozen feature space: pass --mode ridge.")
    if "real" not in args.arms or not any(a.startswith("real+") for a in args.arms):
        ap.error("--arms needs 'real' (the reference) and at least one added arm, e.g. --arms real real+synthetic.")
    if args.early_stopping and any(a in SOLO for a in args.arms):
        ap.error(f"--arms {' '.join(a for a in args.arms if a in SOLO)} train on added rows alone and take no "
                 "--early-stopping (it validates on real rows).")
    t0 = time.perf_counter()
    size = c2lst.models.PRESETS[args.preset]["sample_size"]
    if args.central:
        model = c2lst.datasets.pretrained_central(args.central)
        size = model.image_size
    else:
        model = central(args.cache, preset=args.preset, kind=args.kind, steps=args.pretrain_steps, data=corpus(size))
    local = c2lst.datasets.simulated_visium(n_spots=args.spots, seed=args.seed)
    c2lst.pp.extract_patches(local, size=size, progress=False)
    c2lst.pp.prepare_expression(local.tables["table"], n_top_genes=args.genes)
    conditions = None if args.conditions == "train" else args.conditions
    if args.conditions == "unpaired":  # another slide's counts; its spots renamed so they never collide
        panel = args.seed if args.unpaired_panel == "same" else None
        other = c2lst.datasets.simulated_visium(n_spots=args.unpaired_spots, seed=args.seed + 100, panel_seed=panel)
        c2lst.pp.extract_patches(other, size=size, progress=False)  # read only by the real+copy control
        conditions = other.tables["table"]
        conditions.obs_names = [f"other_{name}" for name in conditions.obs_names]
    p_kw = {"mode": args.mode, "n_steps": args.predictor_steps}
    if args.early_stopping:
        p_kw.update(early_stopping=True, validation_fraction=args.validation_fraction,
                    validation_folds=args.validation_folds)
    if args.cv_split:
        p_kw["cv_split"] = args.cv_split
    if args.features != "default":
        p_kw["features"] = args.features
    curve = c2lst.tl.budget_curve(
        local,
        central=model,
        fractions=args.fractions,
        synthetic_fractions=args.synthetic_fractions or [f for f in args.fractions if f < 1],
        arms=args.arms,
        n_per_condition=args.synthetic_per_spot,
        n_candidates=args.synthetic_candidates,
        synthetic_weight=args.weights,
        real_finetune=args.real_finetune,
        batching=args.batching,
        n_repeats=args.repeats,
        conditions=conditions,
        unlabelled=args.unlabelled,
        seed=args.seed,
        progress=True,
        checkpoint=args.checkpoint,
        adapt_kwargs={"n_steps": args.adapt_steps, "lr": 1e-3, "encoder_lr": args.encoder_lr,
                      "timestep_bias": args.timestep_bias, "rank": args.rank, "hidden": args.hidden,
                      "condition_noise": args.condition_noise},
        synthesize_kwargs={"steps": args.synth_steps, "guidance_scale": args.guidance},
        predictor_kwargs=p_kw,
    )
    suffix = "".join(
        f"_{v}" for v, default in ((args.conditions, "train"), (args.features, "default")) if v != default
    ) + ("_ownpanel" if args.conditions == "unpaired" and args.unpaired_panel == "own" else "") + (
        "_unlabelled" if args.unlabelled else ""
    )
    Path(args.cache).mkdir(parents=True, exist_ok=True)  # absent when --central skips the pretraining cache
    curve.to_csv(f"{args.cache}/budget_curve{suffix}.csv", index=False)
    t_curve = time.perf_counter() - t0
    pd.set_option("display.width", 160)
    kinds = [c for c in curve.columns if c.startswith("pearson_r_")]
    by = curve.assign(synthetic_weight=curve["synthetic_weight"].astype(str))  # numbers and 'auto' in one key
    keys = ["condition", "synthetic_weight", "real_finetune", "batching", "fraction"]
    means = by.groupby(keys, dropna=False)[["pearson_r", *kinds]].mean()
    print("\nmean Pearson r on held-out blocks (all genes and per gene kind):")
    print(means.round(3).to_string())
    if args.early_stopping:
        print(f"\noptimiser steps chosen by early stopping (cap {args.predictor_steps}), mean [min, max] over repeats:")
        steps = by.groupby(keys, dropna=False)["n_steps"]
        print(pd.DataFrame({"mean": steps.mean().round(1), "min": steps.min(), "max": steps.max()}).to_string())
    auto = curve[curve["synthetic_weight"].astype(str) == "auto"]
    if len(auto):
        print("\nweights chosen by validation ('auto'), runs per fraction:")
        print(auto.groupby("fraction")["chosen_weight"].value_counts().unstack(fill_value=0).to_string())
    per_gene = curve[curve["synthetic_weight"].astype(str) == "auto-gene"]
    if len(per_gene):
        cols = ["chosen_weight", *(c for c in curve.columns if c.startswith("chosen_weight_"))]
        print("\nmean weight chosen per gene ('auto-gene'), all genes and per gene kind:")
        print(per_gene.groupby(["condition", "fraction"])[cols].mean().round(3).to_string())
    plans = {}
    added = [a for a in args.arms if a.startswith("real+")]
    arm = "real+synthetic" if "real+synthetic" in added else added[0]  # planned for; a control when alone
    variants = [(w, ft, b) for w in args.weights for ft in args.real_finetune for b in args.batching]
    named = len(set(args.batching)) > 1  # label stacked rows as such beside mixed ones
    for w, ft, b in variants:
        plan = c2lst.tl.plan_budget(curve, margin=args.margin, synthetic_weight=w, arm=arm, real_finetune=ft,
                                    batching=b)
        plans[variant_label(w, ft, b, named)] = plan
        print(f"\n== synthetic weight {w}, real_finetune {ft}, batching {b}: paired difference to 100% real "
              f"(margin {args.margin}) ==")
        print(plan["differences"].round(4).to_string(index=False))
        print(f"gain of {arm} over real at the same fraction (paired):")
        print(plan["gain"].round(4).to_string(index=False))
        print(f"smallest non-inferior fraction: {arm} {plan['fraction']}, real {plan['fraction_real']}"
              f", saving {plan['saving']}")
        for text in plan["caveats"]:
            print(f"caveat: {text}")
    between = weight_differences(curve, variants, arm, named)
    if len(between):
        print(f"\n{arm}: paired difference of each weight / real_finetune / batching to {variant_label(*variants[0], named)} "
              "(same rows, seeds):")
        print(between.round(4).to_string(index=False))
    alone = solo_differences(curve)
    if len(alone):
        print("\ntrained on added rows alone (no real spot; same rows, seeds, steps), paired differences; "
              "share = (synthetic-only - null-only) / (copy-only - null-only) of the means:")
        print(alone.round(4).to_string(index=False))
    # the default weight: the one with the best mean gain over the augmented fractions (reported as tuned)
    best_w = max(plans, key=lambda w: float(np.nanmean(plans[w]["gain"]["gain"])))
    plan = plans[best_w]
    gain = plan["gain"].set_index("fraction")
    worst = float(gain["gain"].min()) if len(gain) else float("nan")
    g10 = gain.loc[0.1] if 0.1 in gain.index else None
    real_curve = curve[curve["condition"] == "real"].groupby("fraction")["pearson_r"].mean()
    print("\nreal-only learning curve: " + ", ".join(f"{f:g}: {v:.3f}" for f, v in real_curve.items()))
    print(f"chosen weight {best_w}: worst mean gain {worst:+.4f} r (goal >= -0.01); "
          + (f"gain at 10% {g10['gain']:+.4f} [{g10['ci_low']:+.4f}, {g10['ci_high']:+.4f}]" if g10 is not None else ""))
    ratio = plan["saving"]
    print(f"ratio (smallest non-inferior fraction with / without synthesis) = {ratio} (goal <= 0.5)")
    out = {
        "benchmark": "budget",
        "args": vars(args),
        "conditions": args.conditions,
        "unpaired_panel": args.unpaired_panel if args.conditions == "unpaired" else None,
        "features": str(curve["features"].iloc[0]),
        "unlabelled": args.unlabelled,
        "real_curve": real_curve.round(4).to_dict(),
        "steps": {"|".join(map(str, k)): v for k, v in
                  by.groupby(keys, dropna=False)["n_steps"].mean().round(1).to_dict().items()},
        "means": {"|".join(map(str, k)): v for k, v in means["pearson_r"].round(4).to_dict().items()},
        "planned_arm": arm,
        "chosen_weight": best_w,
        "plans": {
            str(w): {
                "fraction": p["fraction"],
                "fraction_real": p["fraction_real"],
                "saving": p["saving"],
                "caveats": p["caveats"],
                "differences": p["differences"].round(4).to_dict(orient="records"),
                "gain": p["gain"].round(4).to_dict(orient="records"),
            }
            for w, p in plans.items()
        },
        "weight_differences": between.round(4).to_dict(orient="records"),
        "solo_differences": alone.round(4).to_dict(orient="records"),
        "worst_gain": worst,
        "seconds": time.perf_counter() - t0,
        "seconds_curve": t_curve,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, default=float))


def variant_label(weight, share: float, batching: str | None = None, name_batching: bool = False) -> str:
    """One fit setting of the added arms: its weight, its staged-training share and its batching.

    The batching is named when several are compared (``name_batching``; ``None`` is the default, stacked), else
    only mixed batches are.
    """
    named = f", {batching or 'stacked'}" if name_batching else ""
    way = named or (", mixed" if batching == "mixed" else "")
    return str(weight) + (f", real_finetune {share:g}" if share else "") + way


def weight_differences(curve: pd.DataFrame, variants: list, arm: str, name_batching: bool = False) -> pd.DataFrame:
    """Paired r difference (mean, 95% CI) of each (weight, share, batching) to the first, per fraction and kind."""
    rows = []
    added = curve[curve["condition"] == arm]
    label = [variant_label(w, ft, b, name_batching) for w, ft, b in
             zip(added["synthetic_weight"], added["real_finetune"], added["batching"], strict=True)]
    added = added.assign(w=label)
    scores = [c for c in curve.columns if c.startswith("pearson_r")]
    first = variant_label(*variants[0], name_batching)
    for variant in variants[1:]:
        for f, at in added.groupby("fraction"):
            a = at[at["w"] == variant_label(*variant, name_batching)].set_index("repeat")
            b = at[at["w"] == first].set_index("repeat")
            if not len(a.index.intersection(b.index)):
                continue
            rows.append({"weight": variant_label(*variant, name_batching), "fraction": f,
                         **paired_differences(a, b, scores)})
    return pd.DataFrame(rows)


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, scores: list[str]) -> dict[str, float]:
    """Mean paired difference ``a - b`` of each score over the repeats both have (index: repeat), 95% CI of r."""
    common = a.index.intersection(b.index)
    row = {}
    for c in scores:
        mean, low, high, _ = c2lst.metrics.paired_ci(a.loc[common, c].to_numpy(), b.loc[common, c].to_numpy())
        row[c.replace("pearson_r", "diff")] = mean
        if c == "pearson_r":
            row["ci_low"], row["ci_high"] = low, high
    return row


def solo_differences(curve: pd.DataFrame) -> pd.DataFrame:
    """Paired r differences between the arms trained on added rows alone (and real alone), per fraction.

    Rows: ``synthetic-only - null-only`` (what the condition teaches), ``copy-only - synthetic-only`` (what a
    perfect generator would add) and ``synthetic-only - real`` (generated rows against the real spots their
    generator was adapted on), each with the mean per gene kind; and ``share``, the synthetic arm's place
    between the null floor (0) and the copies (1).
    """
    pairs = [("synthetic-only", "null-only"), ("copy-only", "synthetic-only"), ("copy-only", "null-only"),
             ("synthetic-only", "real")]
    scores = [c for c in curve.columns if c.startswith("pearson_r")]
    rows = []
    for f, at in curve.groupby("fraction"):
        arms = {a: g.set_index("repeat") for a, g in at.groupby("condition") if a in (*SOLO, "real")}
        for a, b in pairs:
            if a not in arms or b not in arms:
                continue
            common = arms[a].index.intersection(arms[b].index)
            rows.append({"pair": f"{a} - {b}", "fraction": f, "repeats": len(common),
                         **paired_differences(arms[a], arms[b], scores)})
        if all(a in arms for a in SOLO):
            m = {a.removesuffix("-only"): float(arms[a]["pearson_r"].mean()) for a in SOLO}
            span = m["copy"] - m["null"]
            rows.append({"pair": "share", "fraction": f, "repeats": len(arms["synthetic-only"]),
                         "diff": (m["synthetic"] - m["null"]) / span if span else float("nan")})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
