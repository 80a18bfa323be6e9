"""Reading HEST-1k samples: ``read_hest`` + ``extract_patches`` on a lazy pyramidal TIFF against its peers.

Setup (generated, then deleted): a ``--side``² px (default 20 000²) tiled (256 px), JPEG-compressed pyramidal
TIFF at 0.5 µm/px with 2×, 4×, 8× and 16× SubIFD levels, written tile by tile (never whole in memory) into a
HEST-like folder under ``/tmp`` (``wsis/``, ``st/``, ``metadata/``, ``patches/``), with ``--spots`` Visium spots
(55 µm, 100 µm pitch) in the slide's centre and HEST's patches file (224 px at 0.5 µm/px per spot).

Arms, each in a fresh subprocess (so its peak resident memory is its own), timing the read of all spots:

- ``read_hest+extract_patches``: ``c2lst.datasets.read_hest`` (lazy TIFF pyramid) then
  ``c2lst.pp.extract_patches(patch_um=112, size=224)``;
- ``hest_patches_h5``: ``read_hest(patches=True)``, the spots' patches straight from ``patches/{id}.h5``;
- ``tifffile_region``: one ``tifffile`` zarr region read per spot (the TIFF's level 0, 224² px);
- ``openslide_region``: one ``openslide.read_region`` per spot (skipped when openslide is not installed).

Each arm prints tiles/s (wall and CPU time: CPU time is the fairer figure on a shared machine), seconds, peak RSS and its ratio against its named peer measured in the same run
(``read_hest+extract_patches`` against ``tifffile_region``; ``hest_patches_h5`` and ``openslide_region``
against ``read_hest+extract_patches``), then one JSON line. ``extract_patches`` and ``tifffile_region`` must
agree pixel for pixel up to resampling (mean |difference| printed).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_hest.py`` (a few minutes on one core; ``--side 4096 --spots
100`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MPP = 0.5
PATCH_PX = 224
SAMPLE = "BENCH0"
TILE = 256


def _tile_bank(rng: np.random.Generator, n: int = 16) -> np.ndarray:
    """Return ``n`` H&E-coloured textured 256² tiles (smooth noise, pink/purple), reused over the slide."""
    base = rng.random((n, TILE // 8, TILE // 8))
    tex = np.kron(base, np.ones((8, 8)))[:, :TILE, :TILE] * 0.6 + rng.random((n, TILE, TILE)) * 0.4
    pink, purple = np.array([235, 160, 200]), np.array([120, 70, 160])
    rgb = pink[None, None, None] * (1 - tex[..., None]) + purple[None, None, None] * tex[..., None]
    return rgb.astype(np.uint8)


def write_slide(path: Path, side: int, seed: int = 0) -> list[tuple[int, int]]:
    """Write the tiled pyramidal JPEG TIFF tile by tile; return the level shapes."""
    import tifffile

    bank = _tile_bank(np.random.default_rng(seed))
    factors = [f for f in (1, 2, 4, 8, 16) if side // f >= TILE]
    shapes = [(side // f, side // f) for f in factors]

    def tiles(f: int):
        h, w = side // f, side // f
        small = bank[:, ::f, ::f] if f < TILE else bank[:, :1, :1]
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                out = np.empty((TILE, TILE, 3), np.uint8)
                k = (ty // TILE * 7 + tx // TILE * 3) % len(bank)
                reps = TILE // small.shape[1]
                out[:] = np.tile(small[k], (reps, reps, 1))[:TILE, :TILE]
                yield out

    opts = {"tile": (TILE, TILE), "compression": "jpeg", "photometric": "rgb", "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(1), shape=(side, side, 3), subifds=len(factors) - 1, **opts)
        for f in factors[1:]:
            tw.write(tiles(f), shape=(side // f, side // f, 3), subfiletype=1, **opts)
    return shapes


def spot_centres(side: int, n: int) -> np.ndarray:
    """Visium-like 100 µm grid of ``n`` spots in the slide's centre (x, y full-resolution px)."""
    pitch = 100.0 / MPP
    k = int(np.ceil(np.sqrt(n)))
    grid = (np.arange(k) - (k - 1) / 2) * pitch + side / 2
    xy = np.array([[x, y] for y in grid for x in grid])[:n]
    if xy.min() < PATCH_PX or xy.max() > side - PATCH_PX:
        raise SystemExit(f"--spots {n} does not fit a {side}² slide; use fewer spots or a larger --side.")
    return xy


def tifffile_region_reads(wsi: Path, xy: np.ndarray) -> np.ndarray:
    """Read every spot's 224² window from level 0, one zarr region read per spot."""
    import tifffile
    import zarr

    store = tifffile.imread(wsi, aszarr=True, series=0, level=0)
    z = zarr.open(store, mode="r")
    half = PATCH_PX // 2
    out = np.empty((len(xy), PATCH_PX, PATCH_PX, 3), np.uint8)
    for i, (x, y) in enumerate(np.rint(xy).astype(int)):
        out[i] = z[y - half : y + half, x - half : x + half]
    store.close()
    return out


def build_folder(root: Path, side: int, n_spots: int) -> dict:
    import anndata as ad
    import h5py

    for d in ("wsis", "st", "metadata", "patches"):
        (root / d).mkdir(parents=True, exist_ok=True)
    wsi = root / "wsis" / f"{SAMPLE}.tif"
    t0 = time.perf_counter()
    shapes = write_slide(wsi, side)
    xy = spot_centres(side, n_spots)
    barcodes = [f"B{i:06d}-1" for i in range(len(xy))]
    adata = ad.AnnData(np.random.default_rng(0).poisson(2.0, (len(xy), 20)).astype(np.float32))
    adata.obs_names = barcodes
    adata.obsm["spatial"] = xy
    adata.write_h5ad(root / "st" / f"{SAMPLE}.h5ad")
    meta = {"pixel_size_um_estimated": MPP, "spot_diameter": 55.0, "inter_spot_dist": 100.0, "patient": "P0"}
    (root / "metadata" / f"{SAMPLE}.json").write_text(json.dumps(meta))
    patches = tifffile_region_reads(wsi, xy)
    with h5py.File(root / "patches" / f"{SAMPLE}.h5", "w") as f:
        f.create_dataset("img", data=patches, chunks=(1, PATCH_PX, PATCH_PX, 3))
        f["barcode"] = np.array([b.encode() for b in barcodes])[:, None]
        f["coords"] = (np.rint(xy) - PATCH_PX // 2).astype(np.int64)
    return {"levels": shapes, "tiff_mb": wsi.stat().st_size / 2**20, "setup_s": time.perf_counter() - t0}


def run_arm(arm: str, root: Path) -> dict:
    """Read all spots with ``arm`` (in this process) and return timing, peak RSS and a pixel checksum."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import anndata  # noqa: F401  (imports are warmed up outside the timed block)
    import dask.array  # noqa: F401
    import h5py  # noqa: F401
    import spatialdata.models  # noqa: F401
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    import c2lst
    import c2lst.datasets
    import c2lst.pp

    xy = None
    if arm != "hest_patches_h5":
        import anndata as ad

        xy = np.asarray(ad.read_h5ad(root / "st" / f"{SAMPLE}.h5ad").obsm["spatial"])
    wsi = root / "wsis" / f"{SAMPLE}.tif"
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after imports and the spot table
    t0, c0 = time.perf_counter(), time.process_time()
    if arm == "read_hest+extract_patches":
        sdata = c2lst.datasets.read_hest(root, SAMPLE)
        c2lst.pp.extract_patches(sdata, patch_um=PATCH_PX * MPP, size=PATCH_PX, progress=False)
        patches = sdata.tables["table"].obsm["c2lst_patch"]
    elif arm == "hest_patches_h5":
        sdata = c2lst.datasets.read_hest(root, SAMPLE, patches=True)
        patches = sdata.tables["table"].obsm["c2lst_patch"]
    elif arm == "tifffile_region":
        patches = tifffile_region_reads(wsi, xy)
    elif arm == "openslide_region":
        import openslide

        slide = openslide.OpenSlide(str(wsi))
        half = PATCH_PX // 2
        patches = np.stack(
            [np.asarray(slide.read_region((x - half, y - half), 0, (PATCH_PX, PATCH_PX)))[..., :3]
             for x, y in np.rint(xy).astype(int)]
        )  # fmt: skip
    else:
        raise SystemExit(f"unknown arm {arm!r}")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(root / f"{arm}.npy", patches[: min(64, len(patches))])
    return {"arm": arm, "n": len(patches), "seconds": seconds, "cpu_seconds": cpu,
            "tiles_per_s": len(patches) / seconds, "tiles_per_cpu_s": len(patches) / cpu,
            "peak_rss_mb": peak_mb, "peak_rss_above_imports_mb": peak_mb - base_mb,
            "output_mb": patches.nbytes / 2**20}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=20000, help="slide side in px (0.5 µm/px)")
    ap.add_argument("--spots", type=int, default=1000)
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:  # child process: one arm
        print(json.dumps(run_arm(args.arm, Path(args.root))))
        return
    try:
        import openslide  # noqa: F401

        arms = ["read_hest+extract_patches", "hest_patches_h5", "tifffile_region", "openslide_region"]
    except ImportError:
        arms = ["read_hest+extract_patches", "hest_patches_h5", "tifffile_region"]
        print("openslide is not installed: the openslide_region arm is skipped")
    root = Path(tempfile.mkdtemp(prefix="c2lst_bench_hest_", dir="/tmp"))
    try:
        setup = build_folder(root, args.side, args.spots)
        print(f"slide {args.side}² px, levels {setup['levels']}, {setup['tiff_mb']:.0f} MB JPEG TIFF, "
              f"{args.spots} spots; setup {setup['setup_s']:.1f} s")  # fmt: skip
        results = {}
        for arm in arms:
            out = subprocess.run(
                [sys.executable, __file__, "--arm", arm, "--root", str(root)],
                check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            results[arm] = json.loads(out.stdout.strip().splitlines()[-1])
        a = np.load(root / "read_hest+extract_patches.npy").astype(float)
        b = np.load(root / "tifffile_region.npy").astype(float)
        agreement = float(np.abs(a - b).mean())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peers = {"read_hest+extract_patches": "tifffile_region", "hest_patches_h5": "read_hest+extract_patches",
             "openslide_region": "read_hest+extract_patches", "tifffile_region": None}  # fmt: skip
    print(f"{'arm':26s} {'tiles/s':>8s} {'tiles/cpu-s':>11s} {'wall s':>7s} {'peak RSS MB (+reading)':>22s}  ratio vs peer")
    for arm, r in results.items():
        peer = peers[arm]
        ratio = r["tiles_per_s"] / results[peer]["tiles_per_s"] if peer in results else None
        ratio_cpu = r["tiles_per_cpu_s"] / results[peer]["tiles_per_cpu_s"] if peer in results else None
        r["peer"], r["ratio_vs_peer"], r["ratio_vs_peer_cpu"] = peer, ratio, ratio_cpu
        rtxt = (f"{ratio:.2f}x wall, {ratio_cpu:.2f}x cpu vs {peer}" if ratio is not None
                else "(the peer of read_hest+extract_patches)")  # fmt: skip
        mem = f"{r['peak_rss_mb']:.0f} (+{r['peak_rss_above_imports_mb']:.0f})"
        print(f"{arm:26s} {r['tiles_per_s']:8.1f} {r['tiles_per_cpu_s']:11.1f} {r['seconds']:7.2f} {mem:>22s}  {rtxt}")
    print(f"patches kept in memory by every arm: {results['tifffile_region']['output_mb']:.0f} MB")
    print(f"extract_patches vs tifffile region reads: mean |difference| {agreement:.3f} (0-255)")
    print(json.dumps({"benchmark": "bench_hest", "side": args.side, "spots": args.spots, **setup,
                      "mean_abs_difference": agreement, "arms": results}))  # fmt: skip


if __name__ == "__main__":
    main()
