"""Benchmark scale-out: patch extraction on a dask LocalCluster, pretraining with 1 vs 2 accelerate processes.

Extraction, for 1, 2 and 4 zarr-backed simulated slides (``--spots`` spots each, ``--size`` px patches):

* ``single``: ``pp.extract_patches`` slide after slide in this process (dask's threaded scheduler);
* ``cluster-chunks``: the same calls inside ``with Client(LocalCluster(n_workers=2, threads_per_worker=1))``:
  the zarr chunk reads run on the workers, the resampling in this process;
* ``cluster-slides``: ``client.map`` runs read + extraction of whole slides on the workers (one task per slide)
  and the patch arrays come back (workers import c2lst once, untimed warm-up).

Throughput is patches/s; memory is the peak RSS of this process plus its child processes (the workers),
sampled every 20 ms. Pretraining: ``tests/_fault_scripts/ddp_pretrain.py`` under ``accelerate launch`` with 1 and
2 processes (gloo DDP on CPU, batch ``--batch`` per process); steps/s and samples/s come from the training loop's
own timer (imports and process start excluded). Ratios are cluster / single and 2 / 1 processes.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_scale.py [--spots 400] [--steps 30] [--path /tmp/c2lst_scale]``.
Prints a table and one JSON line. On a shared 2-core machine expect ratios near or below 1: the point is that
the same calls run unchanged on a cluster / several processes; speed-ups need free cores.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil

DDP_SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "_fault_scripts" / "ddp_pretrain.py"
_spec = importlib.util.spec_from_file_location("ddp_pretrain", DDP_SCRIPT)
DDP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(DDP)  # launch_command / read_reports: the script's own command line and report files


class PeakRSS:
    """Sample the summed RSS of this process and its children in a background thread; keep the peak."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def make_slides(root: Path, n: int, spots: int) -> list[Path]:
    """Write ``n`` simulated slides to zarr under ``root`` (cached between runs)."""
    import c2lst

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"slide{i}_{spots}.zarr"
        if not path.exists():
            sdata = c2lst.datasets.simulated_visium(
                n_spots=spots, seed=100 + i, stain="local" if i % 2 == 0 else "institution_a"
            )
            sdata.write(path)
        paths.append(path)
    return paths


def extract_slide(path: str, size: int) -> np.ndarray:
    """Read one slide and return its patches (runs in this process or on a dask worker)."""
    import spatialdata

    import c2lst

    sdata = spatialdata.read_zarr(path)
    c2lst.pp.extract_patches(sdata, size=size, progress=False)
    return np.asarray(sdata.tables["table"].obsm["c2lst_patch"])


def _timed(fn) -> tuple[float, int, object]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.peak, out


def bench_extraction(paths: list[Path], size: int) -> list[dict]:
    from dask.distributed import Client, LocalCluster

    rows = []
    reference = {}
    extract_slide(str(paths[0]), size)  # warm-up (imports, page cache), untimed
    for k in (1, 2, 4):
        sec, peak, out = _timed(lambda k=k: [extract_slide(str(p), size) for p in paths[:k]])
        reference[k] = out
        rows.append(
            {
                "mode": "single",
                "slides": k,
                "patches": sum(len(o) for o in out),
                "seconds": sec,
                "peak_rss_gib": peak / 2**30,
                "equal": True,
            }
        )
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("c2lst.pp"))  # warm-up: workers import c2lst once (untimed)
        for k in (1, 2, 4):
            sec, peak, out = _timed(lambda k=k: [extract_slide(str(p), size) for p in paths[:k]])
            rows.append(
                {
                    "mode": "cluster-chunks",
                    "slides": k,
                    "patches": sum(len(o) for o in out),
                    "seconds": sec,
                    "peak_rss_gib": peak / 2**30,
                    "equal": all(np.array_equal(a, b) for a, b in zip(out, reference[k], strict=True)),
                }
            )
        for k in (1, 2, 4):
            sec, peak, out = _timed(
                lambda k=k: client.gather(
                    client.map(extract_slide, [str(p) for p in paths[:k]], size=size, pure=False)
                )
            )
            rows.append(
                {
                    "mode": "cluster-slides",
                    "slides": k,
                    "patches": sum(len(o) for o in out),
                    "seconds": sec,
                    "peak_rss_gib": peak / 2**30,
                    "equal": all(np.array_equal(a, b) for a, b in zip(out, reference[k], strict=True)),
                }
            )
    for row in rows:
        row["patches_per_s"] = row["patches"] / row["seconds"]
    return rows


def bench_pretrain(patches: np.ndarray, work: Path, steps: int, batch: int) -> list[dict]:
    np.save(work / "patches.npy", patches)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    rows = []
    for n in (1, 2):
        out = work / f"pretrain_{n}"
        cmd = DDP.launch_command(work / "patches.npy", out, steps, batch, steps, processes=n)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=900)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        ranks = DDP.read_reports(out, n)
        train = max(r["train_seconds"] for r in ranks)
        rows.append(
            {
                "processes": n,
                "world": ranks[0]["world"],
                "backend": ranks[0]["backend"],
                "steps": steps,
                "batch_per_process": batch,
                "train_seconds": train,
                "wall_seconds": wall,
                "steps_per_s": steps / train,
                "samples_per_s": steps * batch * n / train,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spots", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--path", type=Path, default=Path("/tmp/c2lst_bench_scale"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    paths = make_slides(args.path, 4, args.spots)
    extraction = bench_extraction(paths, args.size)
    patches = extract_slide(str(paths[0]), 32)
    training = bench_pretrain(patches, args.path, args.steps, args.batch)

    print(
        f"\nExtraction ({args.spots} spots/slide, {args.size} px patches; LocalCluster: 2 workers x 1 thread)"
    )
    print(f"{'mode':<15}{'slides':>7}{'patches/s':>12}{'peak RSS GiB':>14}{'ratio':>8}{'equal':>7}")
    single = {r["slides"]: r for r in extraction if r["mode"] == "single"}
    for r in extraction:
        r["ratio_vs_single"] = r["patches_per_s"] / single[r["slides"]]["patches_per_s"]
        print(
            f"{r['mode']:<15}{r['slides']:>7}{r['patches_per_s']:>12.1f}{r['peak_rss_gib']:>14.2f}"
            f"{r['ratio_vs_single']:>8.2f}{r['equal']!s:>7}"
        )
    print(f"\nPretraining (tiny preset, 32 px, {args.steps} steps, batch {args.batch} per process)")
    print(f"{'processes':>9}{'backend':>9}{'steps/s':>10}{'samples/s':>11}{'ratio samples/s':>17}")
    for r in training:
        r["ratio_samples_vs_1"] = r["samples_per_s"] / training[0]["samples_per_s"]
        r["ratio_steps_vs_1"] = r["steps_per_s"] / training[0]["steps_per_s"]
        print(
            f"{r['processes']:>9}{r['backend']:>9}{r['steps_per_s']:>10.2f}{r['samples_per_s']:>11.1f}"
            f"{r['ratio_samples_vs_1']:>17.2f}"
        )
    print(
        f"\ncpu cores: {os.cpu_count()}, load average: {os.getloadavg()}, total {time.perf_counter() - t0:.0f} s"
    )
    summary = {
        "bench": "scale",
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "extraction": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in extraction
        ],
        "pretrain": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in training
        ],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
