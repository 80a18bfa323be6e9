"""Benchmark few-step samplers against the 1000-step ancestral sampler on the same trained central model.

For each parameterisation (``epsilon``, the old default, and ``v_prediction``, the new one) a central model is
pretrained on two simulated institutions (cached in ``--cache`` and reused), then sampled with every sampler x
step count. Each sample set is compared with real patches: morphometric FID / KID (offline features, in units
of real variability), roughness (mean |difference of horizontally neighbouring pixels|), the share of saturated
pixels, the nuclei count per patch, and the time per patch. The 1000-step DDPM sampler is the reference; two
disjoint sets of real patches give the real-vs-real floor. A diagnostic prints the x0 error of each model's
prediction by noise level (what a few-step solver integrates).

Goal (issue 17): the default sampler at <= 25 steps has a FID within 10 % of 1000-step DDPM's and a roughness
within 1.2x the real patches'.

Run: ``python benchmarks/bench_sampler.py`` (2 x 1500 pretraining steps + sampling: about 35 min on 2 CPU
cores; ``--quick`` for a 3-minute smoke run). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _central_cache import central, corpus

import c2lst
from c2lst.metrics import frechet_distance, kernel_distance
from c2lst.models import CentralModel
from c2lst.models.features import hematoxylin_threshold, morphometric_features, segment_nuclei
from c2lst.models.sampling import DEFAULT_SCHEDULER, make_scheduler


def roughness(x: np.ndarray) -> float:
    """Mean absolute difference of horizontally neighbouring pixels (grey levels)."""
    return float(np.abs(np.diff(x.astype(np.float32), axis=2)).mean())


def saturation(x: np.ndarray) -> float:
    """Share of channel values within 10 grey levels of 0 or 255."""
    return float(((x < 10) | (x > 245)).mean())


class Judge:
    """Compare sample sets with one fixed set of real patches in one feature space."""

    def __init__(self, real: np.ndarray, seed: int = 0) -> None:
        self.real = real
        self.thr = hematoxylin_threshold(real)
        self.f_real = morphometric_features(real, threshold=self.thr)
        self.nuclei_real = self.nuclei(real)
        self.seed = seed

    def nuclei(self, x: np.ndarray) -> np.ndarray:
        nuc = segment_nuclei(x, threshold=self.thr)
        return np.bincount(nuc["patch"], minlength=len(x))

    def __call__(self, x: np.ndarray) -> dict[str, float]:
        f = morphometric_features(x, threshold=self.thr)
        kid, _ = kernel_distance(self.f_real, f, seed=self.seed)
        n = self.nuclei(x)
        return {
            "fid": frechet_distance(self.f_real, f),
            "kid": kid,
            "roughness": roughness(x),
            "saturation": saturation(x),
            "nuclei_mean": float(n.mean()),
            "nuclei_sd": float(n.std()),
        }


@torch.no_grad()
def x0_error_by_t(model: CentralModel, real: np.ndarray, ts=(999, 950, 900, 800, 600, 400, 200, 50)) -> dict:
    """Mean squared error of the model's x0 estimate (before clipping) at fixed noise levels."""
    sched = model.noise_scheduler
    x = torch.from_numpy(real[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    out = {}
    for t in ts:
        noise = torch.randn(x.shape, generator=g)
        tt = torch.full((len(x),), t, dtype=torch.long)
        xt = sched.add_noise(x, noise, tt)
        pred = model(xt, tt)
        a = sched.alphas_cumprod[t].sqrt()
        s = (1 - sched.alphas_cumprod[t]).sqrt()
        x0 = (xt - s * pred) / a if sched.config.prediction_type == "epsilon" else a * xt - s * pred
        out[int(t)] = float(((x0 - x) ** 2).mean())
    return out


def sample(model: CentralModel, n: int, steps: int, scheduler: str, seed: int) -> tuple[np.ndarray, float]:
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    t0 = time.perf_counter()
    x = model.sample(n, steps=steps, scheduler=scheduler, generator=gens, batch_size=64)
    return x, (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--spots", type=int, default=200, help="spots per simulated institution")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--kinds", nargs="+", default=["epsilon", "v_prediction"])
    ap.add_argument("--n", type=int, default=128, help="samples per few-step configuration")
    ap.add_argument("--ref-n", type=int, default=128, help="samples of the 1000-step DDPM reference")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 15, 25, 50])
    ap.add_argument("--samplers", nargs="+", default=["sde-dpmsolver++", "dpmsolver++", "unipc", "ddim"])
    ap.add_argument("--cache", default="benchmarks/_cache", help="pretrained models are kept here and reused")
    ap.add_argument("--quick", action="store_true", help="smoke run: 150 steps, 24 samples, 100-step reference")
    args = ap.parse_args()
    if args.quick:
        args.pretrain_steps, args.n, args.ref_n, args.steps = 150, 24, 24, [10, 25]
    ref_steps = 100 if args.quick else 1000
    size = c2lst.models.PRESETS[args.preset]["sample_size"]
    t_start = time.perf_counter()

    data = corpus(size, args.spots)
    real = np.concatenate([sd.tables["table"].obsm["c2lst_patch"] for sd in data])
    perm = np.random.default_rng(0).permutation(len(real))
    n_judge = min(len(real) // 2, max(args.n, args.ref_n))
    real_a, real_b = real[perm[:n_judge]], real[perm[n_judge : 2 * n_judge]]
    judge = Judge(real_a)
    floor = judge(real_b[: args.n])
    print(f"real patches: roughness {roughness(real_a):.1f}; real-vs-real ({args.n}) FID {floor['fid']:.1f} "
          f"KID {floor['kid']:.3f} nuclei {floor['nuclei_mean']:.1f}", flush=True)
    results: dict = {"real_vs_real": floor, "real_roughness": roughness(real_a), "models": {}}
    for kind in args.kinds:
        model = central(args.cache, preset=args.preset, kind=kind, steps=args.pretrain_steps, data=data)
        res: dict = {"x0_mse_by_t": x0_error_by_t(model, real_a), "samplers": {}}
        print(f"[{kind}] x0 MSE by t: " + ", ".join(f"{t}: {v:.3f}" for t, v in res["x0_mse_by_t"].items()))
        ref, t_ref = sample(model, args.ref_n, ref_steps, "ddpm", seed=10_000)
        res["reference"] = {**judge(ref), "steps": ref_steps, "s_per_patch": t_ref}
        if args.ref_n != args.n:  # FID is biased by the set size: compare equal sizes
            res["reference"]["fid_at_n"] = judge(ref[: args.n])["fid"]
        print(f"[{kind}] ddpm x{ref_steps}: " + _fmt(res["reference"]), flush=True)
        for name in args.samplers:
            make_scheduler(name, model.scheduler_config)
            for steps in args.steps:
                x, t = sample(model, args.n, steps, name, seed=10_000)
                r = {**judge(x), "s_per_patch": t}
                res["samplers"][f"{name}@{steps}"] = r
                print(f"[{kind}] {name:>16} x{steps:<3}: " + _fmt(r), flush=True)
        results["models"][kind] = res

    # the goal, for the default sampler and the new parameterisation
    default = results["models"].get("v_prediction") or next(iter(results["models"].values()))
    ref_fid = default["reference"].get("fid_at_n", default["reference"]["fid"])
    best = {
        k: v for k, v in default["samplers"].items() if k.startswith(DEFAULT_SCHEDULER + "@") and int(k.split("@")[1]) <= 25
    }
    summary = {
        k: {"fid_ratio_to_ddpm1000": v["fid"] / ref_fid, "roughness_ratio_to_real": v["roughness"] / results["real_roughness"]}
        for k, v in best.items()
    }
    print("\ndefault sampler", DEFAULT_SCHEDULER, "vs 1000-step DDPM (FID ratio) and real (roughness ratio):")
    for k, v in summary.items():
        print(f"  {k}: FID x{v['fid_ratio_to_ddpm1000']:.3f}, roughness x{v['roughness_ratio_to_real']:.3f}")
    if "epsilon" in results["models"] and "v_prediction" in results["models"]:
        old = results["models"]["epsilon"]["samplers"].get("dpmsolver++@15")
        new = results["models"]["v_prediction"]["samplers"].get(f"{DEFAULT_SCHEDULER}@15")
        if old and new:
            print(f"before (epsilon, dpmsolver++ x15): FID {old['fid']:.1f}, roughness {old['roughness']:.1f}; "
                  f"after (v, {DEFAULT_SCHEDULER} x15): FID {new['fid']:.1f}, roughness {new['roughness']:.1f}")
    results["goal"] = summary
    results["seconds"] = time.perf_counter() - t_start
    results["args"] = vars(args)
    print(json.dumps({"benchmark": "sampler", **results}, default=float))


def _fmt(r: dict) -> str:
    return (f"FID {r['fid']:7.1f}  KID {r['kid']:6.3f}  rough {r['roughness']:5.1f}  sat {r['saturation']:.3f}  "
            f"nuclei {r['nuclei_mean']:4.1f}±{r['nuclei_sd']:.1f}  {1000 * r['s_per_patch']:.0f} ms/patch")


if __name__ == "__main__":
    main()
