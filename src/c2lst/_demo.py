"""``c2lst demo``: the whole C2L-ST path on embedded simulated data, with figures and a markdown report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._utils import quiet_io_warnings


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (``quick`` is the CI smoke test)."""

    corpus_spots: int
    local_spots: int
    size: int
    preset: str
    pretrain_steps: int
    adapt_steps: int
    synth_steps: int
    fractions: tuple[float, ...]
    repeats: int
    budget_adapt_steps: int
    budget_synth_steps: int
    predictor_steps: int
    synthetic_per_spot: int
    synthetic_weight: float = 0.3
    #: a shipped central model (:func:`c2lst.datasets.pretrained_central`); ``None`` pretrains one on the
    #: simulated corpus for ``pretrain_steps`` steps
    central: str | None = "tiny-sim"


# the budget runs synthesis at the smaller fraction only; fraction 1.0 is the all-real reference
QUICK = DemoSettings(40, 80, 32, "tiny", 40, 20, 10, (0.25, 1.0), 3, 8, 6, 20, 1)
FULL = DemoSettings(200, 200, 32, "tiny", 400, 150, 15, (0.1, 1.0), 4, 60, 10, 150, 2)
TEST = DemoSettings(12, 40, 32, "tiny", 2, 2, 2, (0.5, 1.0), 3, 1, 2, 2, 1)


def run_demo(
    out: str | Path = "c2lst_demo",
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    settings: DemoSettings | None = None,
    pretrain: bool = False,
) -> dict:
    """Run the demo and return its figures (also written to ``out/report.md`` and ``out/summary.json``).

    Steps: simulate a local slide and extract its patches; load the central model shipped with c2lst
    (``"tiny-sim"``; with ``pretrain=True``, simulate a corpus from two other "institutions" and pretrain one
    instead); adapt it on the local spots; synthesize one patch set per spot; compute the spot-budget curve;
    measure fidelity; save the SpatialData zarr, PNG figures and a report.
    """
    import matplotlib

    matplotlib.use("Agg")
    import c2lst
    from c2lst import datasets, get, pl, pp, tl

    cfg = settings or (QUICK if quick else FULL)
    if pretrain:
        cfg = replace(cfg, central=None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 2)
        if progress:
            print(f"[c2lst demo] {name}: {timings[name]:.1f} s", flush=True)

    corpus = []
    if cfg.central is None:
        corpus = [
            datasets.simulated_visium(n_spots=cfg.corpus_spots, seed=seed + 11, stain="institution_a"),
            datasets.simulated_visium(n_spots=cfg.corpus_spots, seed=seed + 12, stain="institution_b"),
        ]
    local = datasets.simulated_visium(n_spots=cfg.local_spots, seed=seed, stain="local")
    for sd in [*corpus, local]:
        pp.extract_patches(sd, size=cfg.size, progress=False)
    table = local.tables["table"]
    pp.prepare_expression(table, n_top_genes=30)
    lap("simulate + extract")

    if cfg.central is None:
        central = tl.pretrain(
            corpus,
            preset=cfg.preset,
            n_steps=cfg.pretrain_steps,
            batch_size=16,
            lr=1e-3,
            output_dir=out / "central",
            resume=False,
            seed=seed,
            progress=progress,
        )
        lap("pretrain central")
    else:
        central = datasets.pretrained_central(cfg.central)
        lap("load shipped central")
    tl.adapt(
        table, central=central, n_steps=cfg.adapt_steps, batch_size=16, lr=1e-3, seed=seed, progress=progress
    )
    adapter = json.loads(table.uns["c2lst"]["local"]["c2lst_local"]["summary"])
    lap("adapt")
    tl.synthesize(
        local, central=central, n_steps=cfg.synth_steps, n_per_condition=1, seed=seed, progress=progress
    )
    syn = local.tables["c2lst_synthetic"]
    lap("synthesize")

    curve = tl.budget_curve(
        local,
        central=central,
        fractions=cfg.fractions,
        synthetic_fractions=[f for f in cfg.fractions if f < 1] or None,
        n_repeats=cfg.repeats,
        n_per_condition=cfg.synthetic_per_spot,
        synthetic_weight=cfg.synthetic_weight,
        seed=seed,
        progress=progress,
        adapt_kwargs={"n_steps": cfg.budget_adapt_steps, "lr": 1e-3},
        synthesize_kwargs={"steps": cfg.budget_synth_steps},
        predictor_kwargs={"n_steps": cfg.predictor_steps},
    )
    plan = tl.plan_budget(curve, margin=0.02)
    lap("budget curve")

    fid_syn = tl.evaluate_fidelity(table, syn, seed=seed, progress=progress)
    half = np.random.default_rng(seed).permutation(table.n_obs)
    real_p = np.asarray(table.obsm["c2lst_patch"])
    fid_floor = tl.evaluate_fidelity(real_p[half[::2]], real_p[half[1::2]], seed=seed, progress=progress)
    central_samples = central.sample(syn.n_obs, steps=cfg.synth_steps, generator=_gen(seed))
    fid_central = tl.evaluate_fidelity(table, central_samples, seed=seed, progress=progress)
    comp = tl.evaluate_composition(table, syn, progress=progress)
    comp_summary = {k: float(v) for k, v in comp.attrs.get("spearman", {}).items()}
    lap("fidelity")

    # a predictor on all real spots for the figures
    pred = tl.fit_predictor([table], n_steps=cfg.predictor_steps, seed=seed, progress=False)
    tl.predict_expression(table, predictor=pred, progress=progress)
    tl.evaluate_prediction(table)
    metrics = get.metrics(table)
    top = metrics.sort_values("pearson_r", ascending=False).index[:3].tolist()
    figs = {
        "patches.png": pl.patches(table, syn, n=6, show=False),
        "budget_curve.png": pl.budget_curve(curve, show=False),
        "gene_correlation.png": pl.gene_correlation(table, show=False),
        "spatial_expression.png": pl.spatial_expression(table, top, show=False),
    }
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        matplotlib.pyplot.close(fig)
    curve.to_csv(out / "budget_curve.csv", index=False)
    zarr_path = out / "local.zarr"
    with quiet_io_warnings():
        local.write(zarr_path, overwrite=True)
    lap("figures + zarr")

    summary: dict[str, Any] = {
        "c2lst_version": c2lst.__version__,
        "settings": asdict(cfg),
        "quick": quick,
        "label": "custom" if settings is not None else ("quick" if quick else "full"),
        "seed": seed,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - t0, 1),
        "central": {
            "name": cfg.central or "pretrained in this run",
            **{k: central.training_summary.get(k) for k in ("loss_first", "loss_last", "steps", "n_patches")},
        },
        "central_parameters": central.n_parameters(),
        "adapter": {k: adapter.get(k) for k in ("loss_first", "loss_last", "trainable", "unet", "ratio")},
        "fidelity_synthetic": _scalars(fid_syn),
        "fidelity_central_unconditioned": _scalars(fid_central),
        "fidelity_real_vs_real": _scalars(fid_floor),
        "composition": comp_summary,
        "budget": plan["table"].round(4).to_dict(orient="records"),
        "budget_gain": plan["gain"].round(4).to_dict(orient="records"),
        "budget_verdict": _verdict(plan),
        "plan_budget_fraction": plan["fraction"],
        "plan_budget_fraction_real": plan["fraction_real"],
        "plan_budget_caveats": plan["caveats"],
        "all_real_mean_r": plan["reference_mean"],
        "prediction_mean_r_in_sample": float(metrics["pearson_r"].mean()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "report.md").write_text(_report(summary, plan, zarr_path))
    if progress:
        print(f"[c2lst demo] done in {summary['total_s']:.0f} s; report: {out / 'report.md'}", flush=True)
    return summary


def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _scalars(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float | np.floating | np.integer)}


def _verdict(plan: dict) -> str:
    """Return one plain sentence: did synthesis help at the fractions tried (paired gain, 95% CI)."""
    gain = plan["gain"]
    if not len(gain):
        return "Synthesis was not measured (no fraction below 1 ran a synthetic arm)."
    parts = [f"{g['gain']:+.3f} r [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}] at {g['fraction']:.0%}" for _, g in gain.iterrows()]
    if (gain["ci_low"] > 0).all():
        head = "Synthesis helped"
    elif (gain["ci_high"] < 0).any():
        head = "Synthesis hurt"
    else:
        head = "Synthesis made no measurable difference"
    return f"{head}: real+synthetic minus real on the same spots, {'; '.join(parts)} (paired, 95% CI)."


def _report(s: dict, plan: dict, zarr_path: Path) -> str:
    tbl = plan["table"]
    lines = [
        "# c2lst demo report",
        "",
        f"c2lst {s['c2lst_version']}, {s['label']} settings, seed {s['seed']}, "
        f"{s['total_s']:.0f} s in total. All data are simulated (`c2lst.datasets.simulated_visium`).",
        "",
        "## Central model",
        *(
            [
                f"- shipped model `{s['central']['name']}` (`c2lst.datasets.pretrained_central`): "
                f"{s['central_parameters']:,} UNet parameters, {s['central']['steps']} steps on "
                f"{s['central']['n_patches']} unpaired simulated patches of four other stains; the local slide and "
                "its stain were never seen."
            ]
            if s["settings"]["central"]
            else [
                f"- `{s['settings']['preset']}` preset pretrained in this run, {s['central_parameters']:,} UNet "
                f"parameters, {s['central']['steps']} steps on {s['central']['n_patches']} unpaired patches from "
                "two other institutions (different stains)."
            ]
        ),
        f"- loss {s['central']['loss_first']:.3f} (first steps) -> {s['central']['loss_last']:.3f} (last steps).",
        "",
        "## Local adaptation",
        f"- trainable parameters (LoRA + gene encoder): {s['adapter']['trainable']:,} = "
        f"{100 * s['adapter']['ratio']:.2f}% of the UNet; loss {s['adapter']['loss_first']:.3f} -> "
        f"{s['adapter']['loss_last']:.3f}.",
        "",
        *(
            [
                "> **Quick settings**: the adapters and the budget's predictors train for seconds (only the central "
                "model is fully trained); the budget figures show that the pipeline runs, not what c2lst can do. "
                "Run `c2lst demo` without `--quick` for meaningful numbers.",
                "",
            ]
            if s["label"] == "quick"
            else []
        ),
        "## Fidelity (morphometric features, offline)",
        f"- floor: one half of the real local patches vs the other: FID "
        f"{s['fidelity_real_vs_real'].get('fid', float('nan')):.3f}, KID "
        f"{s['fidelity_real_vs_real'].get('kid', float('nan')):.4f}",
        f"- synthetic (gene-conditioned) vs real local: FID {s['fidelity_synthetic'].get('fid', float('nan')):.3f}, "
        f"KID {s['fidelity_synthetic'].get('kid', float('nan')):.4f}",
        f"- central model, unconditioned, vs real local: FID "
        f"{s['fidelity_central_unconditioned'].get('fid', float('nan')):.3f}, KID "
        f"{s['fidelity_central_unconditioned'].get('kid', float('nan')):.4f}",
        "- nuclei per patch, Spearman across parent spots: "
        + (", ".join(f"{k} {v:.2f}" for k, v in s["composition"].items()) or "n/a"),
        "",
        "## Spot budget (held-out spatial blocks, mean Pearson r over genes)",
        "",
        f"**{s['budget_verdict']}**",
        "",
        "Every arm trains its predictor for the same optimiser steps; genes are chosen on training spots only; "
        "arms share splits and seeds, so differences are paired.",
        "",
        "| condition | fraction of real spots | mean r | 95% CI | repeats |",
        "|---|---|---|---|---|",
    ]
    for _, row in tbl.iterrows():
        lines.append(
            f"| {row['condition']} | {row['fraction']:.2f} | {row['mean']:.3f} | "
            f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {row['n']} |"
        )
    frac, frac_real = plan["fraction"], plan["fraction_real"]

    def name(f):
        return f"{f:.0%}" if f is not None else "none of those tried"

    lines += [
        "",
        f"Smallest fraction non-inferior to all real spots (paired, margin {plan['margin']} r): real+synthetic "
        f"{name(frac)}, real alone {name(frac_real)}.",
        "",
        *([*(f"- Caveat: {c}" for c in plan["caveats"]), ""] if plan["caveats"] else []),
        f"In-sample check (a predictor trained and scored on all real spots, not a held-out figure): mean r "
        f"{s['prediction_mean_r_in_sample']:.3f}; `gene_correlation.png` and `spatial_expression.png` show it.",
        "",
        "Synthetic rows copy their parent's counts and coordinates: cluster or embed the augmented table on image "
        "features, never on its expression.",
        "",
        "Figures: `patches.png`, `budget_curve.png`, `gene_correlation.png`, `spatial_expression.png`.",
        f"SpatialData with the synthetic table, image and circles: `{zarr_path.name}`.",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in s["timings_s"].items()),
        "",
    ]
    return "\n".join(lines)
