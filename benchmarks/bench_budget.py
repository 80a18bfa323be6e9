"""The paper's headline on the simulator: does synthesis let fewer real spots match all real spots?

Mean Pearson r over the prepared genes on held-out spatial blocks for 25% real, 25% real + synthetic,
100% real and 100% real + synthetic, over >= 3 repeats, with 95% confidence intervals
(goal: 25% real + synthetic >= 100% real). The peer is the all-real predictor trained in the same run.

Run: ``python benchmarks/bench_budget.py [--spots 300] [--repeats 3]``. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import c2lst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spots", type=int, default=300)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--adapt-steps", type=int, default=200)
    ap.add_argument("--synth-steps", type=int, default=15)
    ap.add_argument("--synthetic-per-spot", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of the synthesis")
    ap.add_argument("--mode", default="cnn", choices=["cnn", "ridge"], help="predictor (see tl.fit_predictor)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    corpus = [
        c2lst.datasets.simulated_visium(n_spots=args.spots, seed=s, stain=st)
        for s, st in ((11, "institution_a"), (12, "institution_b"))
    ]
    local = c2lst.datasets.simulated_visium(n_spots=args.spots, seed=args.seed)
    for sd in [*corpus, local]:
        c2lst.pp.extract_patches(sd, size=args.size, progress=False)
    c2lst.pp.prepare_expression(local.tables["table"], n_top_genes=30)
    central = c2lst.tl.pretrain(
        corpus,
        preset=args.preset,
        n_steps=args.pretrain_steps,
        batch_size=16,
        lr=1e-3,
        seed=args.seed,
        progress=False,
    )
    curve = c2lst.tl.budget_curve(
        local,
        central=central,
        fractions=(0.25, 1.0),
        n_repeats=args.repeats,
        synthetic_per_spot=args.synthetic_per_spot,
        seed=args.seed,
        progress=False,
        adapt_kwargs={"n_steps": args.adapt_steps, "lr": 1e-3},
        synthesize_kwargs={"steps": args.synth_steps, "guidance_scale": args.guidance},
        predictor_kwargs={"mode": args.mode} if args.mode == "ridge" else {"n_epochs": args.epochs},
    )
    plan = c2lst.tl.plan_budget(curve)
    table = plan["table"]
    print(table.to_string(index=False))

    def mean(cond, frac):
        row = table[(table["condition"] == cond) & (table["fraction"] == frac)]
        return float(row["mean"].iloc[0])

    r25, r25s, r100, r100s = (
        mean("real", 0.25),
        mean("real+synthetic", 0.25),
        mean("real", 1.0),
        mean("real+synthetic", 1.0),
    )
    print(
        f"25% real {r25:.3f} | 25% real+synthetic {r25s:.3f} | 100% real {r100:.3f} | "
        f"100% real+synthetic {r100s:.3f}"
    )
    print(
        f"ratio (25% real+synthetic) / (100% real) = {r25s / r100:.3f}; goal >= 1: "
        f"{'met' if r25s >= r100 else 'missed'}"
    )
    out = {
        "benchmark": "budget",
        "spots": args.spots,
        "repeats": args.repeats,
        "preset": args.preset,
        "predictor": args.mode,
        "guidance": args.guidance,
        "mean_r": {"real_25": r25, "real_synthetic_25": r25s, "real_100": r100, "real_synthetic_100": r100s},
        "ratio_25syn_vs_100real": r25s / r100,
        "goal_met": bool(r25s >= r100),
        "plan_budget_fraction": plan["fraction"],
        "ci": table.round(4).to_dict(orient="records"),
        "seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
