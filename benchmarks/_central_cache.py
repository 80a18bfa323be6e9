"""Pretrain a benchmark's central model once and share it between benchmarks (a lock keeps two runs apart)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import c2lst
from c2lst.models import CentralModel


def corpus(size: int, spots: int = 200) -> list:
    """The unpaired central corpus of the benchmarks: two simulated institutions with their own stains."""
    out = [
        c2lst.datasets.simulated_visium(n_spots=spots, seed=s, stain=st)
        for s, st in ((11, "institution_a"), (12, "institution_b"))
    ]
    for sd in out:
        c2lst.pp.extract_patches(sd, size=size, progress=False)
    return out


def central(cache: str | Path, *, preset: str, kind: str, steps: int, data: list, wait_s: float = 7200) -> CentralModel:
    """Return the cached central model ``(preset, kind, steps)``, pretraining it first if no run holds it."""
    out = Path(cache) / f"central_{preset}_{kind}_{steps}"
    done = out / "model" / "c2lst.json"
    out.mkdir(parents=True, exist_ok=True)
    lock = out / "TRAINING.lock"
    t0 = time.perf_counter()
    while not done.is_file():
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another benchmark is training it: wait for its model
            if time.perf_counter() - t0 > wait_s:
                raise TimeoutError(f"{lock} held for more than {wait_s:.0f}s; delete it if no run is training.") from None
            time.sleep(10)
            continue
        os.close(fd)
        try:
            if not done.is_file():
                model = c2lst.tl.pretrain(
                    data, preset=preset, n_steps=steps, batch_size=16, lr=1e-3, seed=0,
                    config={"scheduler": {"prediction_type": kind}}, output_dir=out, resume=True, progress=False,
                )
                print(f"[{kind}] pretrained {steps} steps in {time.perf_counter() - t0:.0f}s, loss "
                      f"{model.training_summary['loss_last']:.4f}", flush=True)
        finally:
            lock.unlink(missing_ok=True)
    print(f"[{kind}] central model {out / 'model'}", flush=True)
    return CentralModel.from_pretrained(out / "model").eval()
