"""Real data: does synthesis help on the 49 real Visium mouse-brain spots? Leave-block-out, real H&E central.

Central model: the ``tiny`` preset pretrained on unpaired real H&E tiles cut at 55 µm (one Visium spot) from the
three images of ``../shared/data/he`` (Aperio SVS skin at its recorded 0.499 µm/px; the PNG tumour tile and the
JPEG crop at an assumed 0.5 µm/px), optionally plus the scikit-image IHC tiles (``--ihc``). Local slide: the 49
real spots of ``visium_mouse_brain_crop`` (pseudo-counts recovered from its log-normalised ``X``), one 32 px
patch per spot (the spot's 55 µm footprint), the top ``--genes`` highly variable genes.

The spots are cut into ``--folds`` contiguous bands of spot rows along the crop's long axis; each band is held
out once (leave-block-out). Per fold: adapt the central model on the other bands, synthesize
``--synthetic-per-spot`` patches per training spot, fit each predictor (``cnn`` as in ``bench_budget.py``, and
``ridge`` on morphometric features) on the real training spots and on real + synthetic, and score both on the
held-out band (mean Pearson r over genes). Means come with 95% Student-t intervals over folds, and the paired
difference (real+synthetic - real) with its own interval. FID/KID (morphometric features) of the synthetic
patches against the real training patches sit next to the same distances between held-out and training real
patches (the floor). Gene selection (HVG on all 49 spots) is unsupervised and shared by both arms.
``--local simulated`` runs the same protocol, with the same central model, on 49 spots of
:func:`c2lst.datasets.simulated_visium`: the simulator's figure at this scale.

Run: ``python benchmarks/bench_real.py [--folds 3] [--pretrain-steps 300] [--adapt-steps 60]``. Needs
``../shared/data`` (or ``$C2LST_SHARED_DATA``). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from spatialdata import SpatialData

import c2lst

CI = 0.95
CONDITIONS = ("real", "real+synthetic")


def data_dir() -> Path:
    """Return ``../shared/data`` next to the repository, or ``$C2LST_SHARED_DATA``."""
    env = os.environ.get("C2LST_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        raise SystemExit(f"real data folder {path} is absent; set C2LST_SHARED_DATA to its location.")
    return path


def row_bands(y: np.ndarray, n_folds: int) -> np.ndarray:
    """Assign whole spot rows (equal ``y``) to ``n_folds`` contiguous bands of about equal spot counts."""
    _rows, inverse, counts = np.unique(np.round(y), return_inverse=True, return_counts=True)
    before = np.cumsum(counts) - counts
    band_of_row = np.minimum((before + counts / 2) / len(y) * n_folds, n_folds - 1).astype(int)
    return band_of_row[inverse]


def mean_ci(values) -> dict:
    """Return mean and 95% Student-t interval of finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    m = float(v.mean()) if len(v) else float("nan")
    half = (
        float(stats.t.ppf(0.5 + CI / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    )
    return {"mean": m, "ci_low": m - half, "ci_high": m + half, "n": len(v)}


def central_tiles(root: Path, size: int, ihc: bool) -> np.ndarray:
    """Return unpaired real H&E tiles of one spot's footprint (55 µm), resized to ``size``."""
    he = root / "he"
    tiles = [
        c2lst.datasets.he_patches(he / "cmu_small_region.svs", size=size, patch_um=55.0),
        c2lst.datasets.he_patches(
            [he / "target_image.png", he / "histo.jpg"], size=size, patch_um=55.0, mpp=0.5
        ),
    ]
    if ihc:
        tiles.append(c2lst.datasets.ihc_patches(size=size))
    return np.concatenate(tiles)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--genes", type=int, default=30)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--adapt-steps", type=int, default=60)
    ap.add_argument("--synth-steps", type=int, default=10)
    ap.add_argument("--synthetic-per-spot", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--ihc", action="store_true", help="add the scikit-image IHC tiles to the central corpus")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numba may reset them; re-pinned)")
    ap.add_argument(
        "--local",
        choices=("real", "simulated"),
        default="real",
        help="local slide: the 49 real spots, or 49 simulated spots (same protocol, for comparison)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    root = data_dir()

    if args.local == "real":
        crop = root / "visium_mouse_brain_crop"
        sdata = c2lst.datasets.from_visium_crop(crop / "test_data.h5ad", crop / "test_img.jpg")
    else:
        sdata = c2lst.datasets.simulated_visium(n_spots=49, seed=args.seed)
    c2lst.pp.extract_patches(sdata, size=args.size, progress=False)
    table = sdata.tables["table"]
    c2lst.pp.prepare_expression(table, n_top_genes=args.genes)
    torch.set_num_threads(args.threads)  # scanpy's seurat_v3 (numba) resets the OpenMP thread count
    tiles = central_tiles(root, args.size, args.ihc)
    central = c2lst.tl.pretrain(
        tiles,
        preset="tiny",
        n_steps=args.pretrain_steps,
        batch_size=16,
        lr=1e-3,
        seed=args.seed,
        device="cpu",
        progress=False,
    )
    t_central = time.perf_counter() - t0

    bands = row_bands(table.obsm["spatial"][:, 1], args.folds)
    results = {(mode, cond): [] for mode in ("cnn", "ridge") for cond in CONDITIONS}
    fidelity = {"synthetic_vs_train": [], "heldout_vs_train": []}
    folds = []
    for fold in range(args.folds):
        seed = args.seed + 1000 * fold
        test = bands == fold
        train, held = table[~test].copy(), table[test].copy()
        c2lst.tl.adapt(
            train,
            central=central,
            n_steps=args.adapt_steps,
            batch_size=16,
            lr=1e-3,
            seed=seed,
            device="cpu",
            progress=False,
        )
        sd = SpatialData(shapes={"spots": sdata.shapes["spots"]}, tables={"train": train})
        c2lst.tl.synthesize(
            sd,
            table_key="train",
            central=central,
            n_per_condition=args.synthetic_per_spot,
            n_steps=args.synth_steps,
            seed=seed,
            device="cpu",
            progress=False,
        )
        syn = sd.tables["c2lst_synthetic"]
        row = {
            "fold": fold,
            "n_train": int(train.n_obs),
            "n_test": int(held.n_obs),
            "n_synthetic": int(syn.n_obs),
        }
        for mode in ("cnn", "ridge"):
            for cond, tables in zip(CONDITIONS, ([train], [train, syn]), strict=True):
                pred = c2lst.tl.fit_predictor(
                    tables, mode=mode, n_epochs=args.epochs, seed=seed, device="cpu", progress=False
                )
                key = f"{mode}_{cond}"
                c2lst.tl.predict_expression(held, predictor=pred, key_added=key)
                c2lst.tl.evaluate_prediction(held, pred_key=key)
                r = float(held.uns["c2lst"]["evaluation"][key]["mean_pearson_r"])
                results[(mode, cond)].append(r)
                row[key] = r
        for name, other in (("synthetic_vs_train", syn), ("heldout_vs_train", held)):
            fid = c2lst.tl.evaluate_fidelity(train, other, seed=seed)
            fidelity[name].append((fid["fid"], fid["kid"]))
            row[f"fid_{name}"] = float(fid["fid"])
        folds.append(row)
        print(json.dumps(row), flush=True)

    summary = {}
    for mode in ("cnn", "ridge"):
        real, aug = np.array(results[(mode, "real")]), np.array(results[(mode, "real+synthetic")])
        summary[mode] = {
            "real": mean_ci(real),
            "real+synthetic": mean_ci(aug),
            "difference": mean_ci(aug - real),
        }
        for cond in (*CONDITIONS, "difference"):
            s = summary[mode][cond]
            print(
                f"{mode:5s} {cond:15s} mean r {s['mean']:+.3f}  95% CI [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"
                f"  (n={s['n']} folds)"
            )
    fid_summary = {
        name: {"fid": mean_ci([f for f, _ in v]), "kid": mean_ci([k for _, k in v])}
        for name, v in fidelity.items()
    }
    print(
        f"FID synthetic vs train {fid_summary['synthetic_vs_train']['fid']['mean']:.2f} | held-out real vs train "
        f"{fid_summary['heldout_vs_train']['fid']['mean']:.2f} (floor)"
    )
    out = {
        "benchmark": "real_visium_leave_block_out",
        "local": "squidpy visium_mouse_brain_crop (49 real spots)"
        if args.local == "real"
        else "c2lst.datasets.simulated_visium(n_spots=49)",
        "central": "3 real H&E images" + (" + IHC" if args.ihc else ""),
        "n_spots": int(table.n_obs),
        "n_central_tiles": len(tiles),
        "args": vars(args),
        "central_loss_first_last": [
            central.training_summary["loss_first"],
            central.training_summary["loss_last"],
        ],
        "mean_r": {m: {c: summary[m][c]["mean"] for c in (*CONDITIONS, "difference")} for m in summary},
        "ci95": summary,
        "fidelity": fid_summary,
        "folds": folds,
        "seconds_central": t_central,
        "seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
