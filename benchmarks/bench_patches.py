"""Benchmark ``c2lst.pp.extract_patches`` against ``spatialdata.dataloader.ImageTilesDataset(rasterize=True)``.

A 20000 x 20000 RGB slide (0.5 µm/px, 4-level pyramid, 1024-px chunks) is written to zarr once (cached), with a
Visium-like hexagonal grid of >= 4000 spots (55 µm wide, 100 µm apart). The slide is a small simulated H&E
image (``c2lst.datasets.simulated_visium`` when available, else a procedural texture) mirror-tiled with dask,
so it is never held in memory. Then, in a fresh process state:

* ``extract_patches`` cuts all spots (``size`` x ``size``) from the zarr-backed object;
* the peer cuts a random subset of the same spots one tile at a time (its throughput is normalised per tile);
* the crops are compared on that subset (mean absolute difference, grey levels), and again at native
  resolution (no downsampling, so no anti-aliasing difference) on 20 spots;
* tiles/s for both, their ratio and the peak RSS of the process are printed, then one JSON line.

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_patches.py [--peer-tiles 100] [--path /tmp/c2lst_bench]``.
Goal (issue 2): ratio >= 20, peak RSS < 1.5 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MPP = 0.5
SPOT_UM, PITCH_UM = 55.0, 100.0


def peak_rss_gib() -> float:
    """Return the peak resident set size of this process in GiB (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --------------------------------------------------------------------------- slide
def _base_tile(seed: int) -> tuple[np.ndarray, str]:
    """Return a (3, h, w) uint8 H&E-like tile and where it came from."""
    try:
        from c2lst.datasets import simulated_visium

        small = simulated_visium(n_spots=400, seed=seed, mpp=MPP)
        img = small.images["he"]
        arr = img["scale0"]["image"] if hasattr(img, "children") and len(img.children) else img
        return np.asarray(arr.data if hasattr(arr, "data") else arr), "c2lst.datasets.simulated_visium"
    except (ImportError, AttributeError, TypeError):
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(seed)
        nuc = gaussian_filter(rng.random((2048, 2048)), 3) > 0.515  # nuclei-sized blobs
        stroma = gaussian_filter(rng.random((2048, 2048)), 20)
        stroma = (stroma - stroma.min()) / np.ptp(stroma)
        base = np.stack([230 - 40 * stroma, 160 - 50 * stroma, 200 - 20 * stroma])
        img = np.where(nuc[None], np.array([90, 50, 140])[:, None, None], base)
        img = img + rng.normal(0, 6, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8), "procedural texture"


def build(path: Path, side: int, n_spots: int, seed: int) -> None:
    """Write the benchmark slide, spots and table to ``path`` (zarr)."""
    import anndata as ad
    import dask.array as da
    import pandas as pd
    from scipy import sparse
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    tile, origin = _base_tile(seed)
    t = da.from_array(tile, chunks=(3, 1024, 1024))
    variants = [[t, t[:, :, ::-1]], [t[:, ::-1, :], t[:, ::-1, ::-1]]]  # mirror tiling: seamless
    ny, nx = -(-side // tile.shape[1]), -(-side // tile.shape[2])
    rows = [da.concatenate([variants[i % 2][j % 2] for j in range(nx)], axis=2) for i in range(ny)]
    slide = da.concatenate(rows, axis=1)[:, :side, :side].rechunk((3, 1024, 1024))
    image = Image2DModel.parse(
        slide,
        dims=("c", "y", "x"),
        scale_factors=[2, 2, 2],
        chunks=(3, 1024, 1024),
        transformations={"global": Identity()},
    )

    pitch = PITCH_UM / MPP
    n_cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    n_rows = int(np.ceil(n_spots / n_cols))
    rr, cc = np.divmod(np.arange(n_spots), n_cols)
    x = cc * pitch + (rr % 2) * pitch / 2
    y = rr * pitch * np.sqrt(3) / 2
    x += (side - (n_cols - 0.5) * pitch) / 2
    y += (side - (n_rows - 1) * pitch * np.sqrt(3) / 2) / 2
    spots = ShapesModel.parse(
        np.column_stack([x, y]),
        geometry=0,
        radius=np.full(n_spots, SPOT_UM / MPP / 2),
        index=pd.Index(np.arange(n_spots)),
        transformations={"global": Identity()},
    )
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * n_spots), "spot_id": np.arange(n_spots)},
        index=[f"spot{i}" for i in range(n_spots)],
    )
    table = ad.AnnData(sparse.csr_matrix((n_spots, 10), dtype=np.float32), obs=obs)
    table.uns["c2lst"] = {"simulation": {"mpp": MPP}}
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    sdata = SpatialData(images={"he": image}, shapes={"spots": spots}, tables={"table": table})
    t0 = time.perf_counter()
    sdata.write(path, overwrite=True)
    (path.parent / "origin.txt").write_text(origin)
    print(
        f"built {path} ({side}x{side}, {n_spots} spots, tile from {origin}) in {time.perf_counter() - t0:.0f} s"
    )


# --------------------------------------------------------------------------- timing
def run_ours(sdata, size: int) -> tuple[float, np.ndarray]:
    from c2lst.pp import extract_patches

    t0 = time.perf_counter()
    extract_patches(sdata, size=size, progress=False)
    dt = time.perf_counter() - t0
    return dt, sdata.tables["table"].obsm["c2lst_patch"]


def run_peer(sdata, size: int, idx: np.ndarray) -> tuple[float, np.ndarray]:
    from spatialdata.dataloader import ImageTilesDataset

    t0 = time.perf_counter()
    ds = ImageTilesDataset(
        sdata,
        regions_to_images={"spots": "he"},
        regions_to_coordinate_systems={"spots": "global"},
        rasterize=True,
        rasterize_kwargs={"target_width": size},
    )
    setup = time.perf_counter() - t0
    tiles = []
    t0 = time.perf_counter()
    for i in idx:
        tile = ds[int(i)].images["he"]
        arr = tile.data.compute() if hasattr(tile.data, "compute") else np.asarray(tile.data)
        tiles.append(
            np.clip(np.rint(np.asarray(arr, dtype=float)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        )
    dt = time.perf_counter() - t0
    print(f"peer dataset set-up: {setup:.1f} s (not counted)")
    return dt, np.stack(tiles)


def alignment_check(sdata, idx: np.ndarray) -> float:
    """Return the mean |diff| of ours vs the peer at native resolution (1 output px per image px)."""
    from spatialdata import SpatialData

    from c2lst.pp import extract_patches

    table = sdata.tables["table"][idx].copy()
    sub = SpatialData(
        images={"he": sdata.images["he"]},
        shapes={"spots": sdata.shapes["spots"].iloc[idx]},
        tables={"table": table},
    )
    native = round(SPOT_UM / MPP)
    extract_patches(sub, size=native, progress=False)
    _, peer = run_peer(sub, native, np.arange(len(idx)))
    return float(np.abs(sub.tables["table"].obsm["c2lst_patch"].astype(float) - peer).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=Path("/tmp/c2lst_bench"))
    ap.add_argument("--side", type=int, default=20000)
    ap.add_argument("--spots", type=int, default=4096)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--peer-tiles", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    zarr_path = args.path / f"slide_{args.side}_{args.spots}.zarr"
    if args.build_only:
        build(zarr_path, args.side, args.spots, args.seed)
        return
    if args.rebuild or not zarr_path.exists():
        args.path.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--build-only", "--path", str(args.path), "--side", str(args.side)]
        subprocess.run([*cmd, "--spots", str(args.spots), "--seed", str(args.seed)], check=True)

    import spatialdata as sd

    sdata = sd.read_zarr(zarr_path)
    rss_start = peak_rss_gib()
    n = sdata.tables["table"].n_obs
    ours_s, patches = run_ours(sdata, args.size)
    rss_ours = peak_rss_gib()
    idx = np.sort(np.random.default_rng(args.seed).choice(n, size=min(args.peer_tiles, n), replace=False))
    peer_s, peer = run_peer(sdata, args.size, idx)
    rss_all = peak_rss_gib()
    native_diff = alignment_check(sdata, idx[:20])

    diff = np.abs(patches[idx].astype(np.float64) - peer.astype(np.float64))
    ours_tps, peer_tps = n / ours_s, len(idx) / peer_s
    rec = sdata.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    result = {
        "benchmark": "extract_patches_vs_ImageTilesDataset_rasterize",
        "slide_px": args.side,
        "n_spots": n,
        "size": args.size,
        "level": int(rec["level"]),
        "supersampling": int(rec["supersampling"]),
        "ours_seconds": round(ours_s, 3),
        "ours_tiles_per_s": round(ours_tps, 1),
        "peer_tiles": len(idx),
        "peer_seconds": round(peer_s, 3),
        "peer_tiles_per_s": round(peer_tps, 2),
        "ratio": round(ours_tps / peer_tps, 1),
        "crop_mean_abs_diff": round(float(diff.mean()), 3),
        "crop_p99_abs_diff": round(float(np.percentile(diff, 99)), 1),
        "native_resolution_mean_abs_diff": round(native_diff, 3),
        "peak_rss_gib_after_read": round(rss_start, 3),
        "peak_rss_gib_extract": round(rss_ours, 3),
        "peak_rss_gib_with_peer": round(rss_all, 3),
        "tile_origin": (args.path / "origin.txt").read_text() if (args.path / "origin.txt").exists() else "",
    }
    print(f"extract_patches : {n} tiles in {ours_s:.2f} s = {ours_tps:.0f} tiles/s (level {rec['level']})")
    print(f"ImageTilesDataset(rasterize=True): {len(idx)} tiles in {peer_s:.2f} s = {peer_tps:.1f} tiles/s")
    print(f"ratio: {ours_tps / peer_tps:.1f}x (goal >= 20x)")
    print(
        f"crops agree: mean |diff| = {diff.mean():.2f} grey levels (p99 {np.percentile(diff, 99):.0f}; the peer "
        f"does not anti-alias), {native_diff:.2f} at native resolution ({round(SPOT_UM / MPP)} px, no downsampling)"
    )
    print(
        f"peak RSS: {rss_ours:.2f} GiB after extract_patches, {rss_all:.2f} GiB with the peer (goal < 1.5 GiB)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
