"""Model card figures of a shipped central model: FID/KID of its unconditioned samples against real patches.

Real sets are simulated slides the model never saw: the ``local`` stain (unseen stain, unseen tissue seeds) and
``institution_a`` on a new tissue seed (a seen stain). Each distance comes with its floor, two disjoint real
sets of the same kind, and with the peer an untrained model of the same preset (what a first run showed before
c2lst shipped weights). Nuclei per patch are counted with one threshold fixed on the real local patches.

    OMP_NUM_THREADS=2 python benchmarks/bench_pretrained.py --name tiny-sim --n 256
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import c2lst
from c2lst.models import CentralModel
from c2lst.models.features import hematoxylin_threshold, segment_nuclei


def real_patches(stain: str, seed: int, n: int, size: int) -> np.ndarray:
    """``n`` real patches of a fresh simulated slide."""
    sd = c2lst.datasets.simulated_visium(n_spots=n, seed=seed, stain=stain)
    c2lst.pp.extract_patches(sd, size=size, progress=False)
    return np.asarray(sd.tables["table"].obsm["c2lst_patch"])


def nuclei_per_patch(patches: np.ndarray, threshold: float) -> np.ndarray:
    nuc = segment_nuclei(patches, threshold=threshold)
    return np.bincount(nuc["patch"], minlength=len(patches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="tiny-sim")
    parser.add_argument("--n", type=int, default=256, help="patches per set")
    parser.add_argument("--steps", type=int, nargs="+", default=[15, 50], help="few-step sampler steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = c2lst.datasets.pretrained_central(args.name)
    size = model.image_size
    local_a = real_patches("local", 1, args.n, size)
    local_b = real_patches("local", 2, args.n, size)
    seen_a = real_patches("institution_a", 201, args.n, size)
    seen_b = real_patches("institution_a", 202, args.n, size)
    untrained = CentralModel.from_preset(model.config["preset"], seed=args.seed, sample_size=size).eval()
    gen = torch.Generator().manual_seed(args.seed)
    sets: dict[str, np.ndarray] = {"real (other slide)": local_b}
    times: dict[str, float] = {}
    for steps in args.steps:
        t = time.perf_counter()
        sets[f"{args.name}, {steps} steps"] = model.sample(args.n, steps=steps, generator=gen.manual_seed(args.seed))
        times[f"{args.name}, {steps} steps"] = time.perf_counter() - t
    sets["untrained (peer)"] = untrained.sample(args.n, steps=args.steps[0], generator=gen.manual_seed(args.seed))

    thr = hematoxylin_threshold(local_a)
    real_counts = nuclei_per_patch(local_a, thr)
    rows = []
    for label, pats in sets.items():
        fid_local = c2lst.tl.evaluate_fidelity(local_a, pats, seed=args.seed)
        fid_seen = c2lst.tl.evaluate_fidelity(seen_a, seen_b if label.startswith("real") else pats, seed=args.seed)
        counts = nuclei_per_patch(pats, thr)
        rows.append({
            "set": label,
            "fid_local": round(float(fid_local["fid"]), 3),
            "kid_local": round(float(fid_local["kid"]), 4),
            "fid_seen_stain": round(float(fid_seen["fid"]), 3),
            "kid_seen_stain": round(float(fid_seen["kid"]), 4),
            "nuclei_mean": round(float(counts.mean()), 2),
            "nuclei_sd": round(float(counts.std()), 2),
            "nuclei_q": np.percentile(counts, [10, 50, 90]).round(1).tolist(),
            "ms_per_patch": round(1000 * times[label] / args.n, 2) if label in times else None,
        })
    floor = rows[0]["fid_local"]
    best = min(r["fid_local"] for r in rows[1:-1])
    print(f"real local nuclei per patch: mean {real_counts.mean():.2f}, sd {real_counts.std():.2f}, "
          f"q10/50/90 {np.percentile(real_counts, [10, 50, 90]).round(1).tolist()}")
    print("| set | FID vs local (unseen stain) | KID | FID vs institution_a (seen stain) | KID | nuclei/patch "
          "mean ± sd | q10/50/90 | ms/patch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['fid_local']} | {r['kid_local']} | {r['fid_seen_stain']} | {r['kid_seen_stain']} | "
              f"{r['nuclei_mean']} ± {r['nuclei_sd']} | {r['nuclei_q']} | {r['ms_per_patch'] or ''} |")
    print(f"best shipped FID / real-vs-real floor: {best / floor:.2f}x; untrained peer / floor: "
          f"{rows[-1]['fid_local'] / floor:.2f}x; shipped / untrained peer: {best / rows[-1]['fid_local']:.3f}x")
    print(json.dumps({
        "benchmark": "pretrained", "name": args.name, "n": args.n, "sha256": model.sha256,
        "real_nuclei_mean": round(float(real_counts.mean()), 2), "rows": rows,
        "ratio_to_floor": round(best / floor, 3), "ratio_to_untrained": round(best / rows[-1]["fid_local"], 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
