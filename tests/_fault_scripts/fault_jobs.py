"""Jobs the fault tests run in child processes, with optional self-inflicted SIGKILLs at precise points.

The tests start these jobs from a ``multiprocessing`` forkserver that has imported c2lst once, so every child
starts in milliseconds instead of re-importing torch/diffusers/spatialdata. A job is described by a JSON string
(plain data only); it writes its result as JSON/safetensors files and its traceback to ``error.txt``.

Kill points (``spec["kill"] = {"where": ..., "n": k}``) send SIGKILL to the child itself, so nothing (no
``finally``, no ``atexit``) runs afterwards, exactly like an external ``kill -9``:

- ``after_checkpoint``: right after the k-th training checkpoint is complete;
- ``torch_save``: inside the k-th ``torch.save`` of ``accelerator.save_state`` (a torn ``optimizer.bin`` /
  ``random_states_0.pkl`` in the temporary checkpoint directory);
- ``before_rename``: after the k-th checkpoint is fully written to its temporary directory, before the rename;
- ``write_shapes`` / ``write_table``: while ``tl.synthesize`` writes its temporary store (image written, shapes
  or table not yet);
- ``replace``: right after the k-th ``os.replace`` that moves a finished element into the store;
- ``rmtree``: with ``overwrite=True``, right after the k-th old element folder was deleted (its successor not yet
  moved in);
- ``consolidate``: after every element was moved, before the consolidated metadata is refreshed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

import c2lst


def die() -> None:
    """Send SIGKILL to this process (no cleanup of any kind runs)."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _counter(n: int):
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return hit


def install_kill(kill: dict[str, Any] | None) -> None:
    """Patch the code path named by ``kill["where"]`` to SIGKILL this process at its ``kill["n"]``-th pass."""
    if not kill:
        return
    where, hit = kill["where"], _counter(int(kill.get("n", 1)))
    if where == "after_checkpoint":
        import c2lst.models.train as train

        real = train._save_checkpoint

        def after_checkpoint(*args, **kwargs):
            real(*args, **kwargs)
            if hit():
                die()

        train._save_checkpoint = after_checkpoint
    elif where == "torch_save":
        real_save = torch.save

        def torn_save(obj, f, *args, **kwargs):
            if hit():
                Path(f).write_bytes(b"PK\x03\x04torn")  # a truncated zip/pickle file, then die
                die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = torn_save
    elif where == "before_rename":
        import c2lst.models._checkpoint as checkpoint

        real_state = checkpoint.save_safetensors

        def state_then_die(*args, **kwargs):
            real_state(*args, **kwargs)
            if hit():
                die()

        checkpoint.save_safetensors = state_then_die
    elif where in ("write_shapes", "write_table"):
        import spatialdata._io as sio

        real_writer = getattr(sio, where)

        def writer(*args, **kwargs):
            if hit():
                die()
            return real_writer(*args, **kwargs)

        setattr(sio, where, writer)
    elif where == "replace":
        import c2lst.tl._elements as elements

        real_os = elements.os

        class _OS:
            def __getattr__(self, name):
                return getattr(real_os, name)

            @staticmethod
            def replace(src, dst):
                real_os.replace(src, dst)
                if hit():
                    die()

        elements.os = _OS()
    elif where == "rmtree":
        import c2lst.tl._elements as elements

        real_shutil = elements.shutil

        class _Shutil:
            def __getattr__(self, name):
                return getattr(real_shutil, name)

            @staticmethod
            def rmtree(path, *args, **kwargs):
                real_shutil.rmtree(path, *args, **kwargs)
                if (
                    ".tmp.zarr" not in str(path) and hit()
                ):  # an old element deleted, its successor not moved in
                    die()

        elements.shutil = _Shutil()
    elif where == "consolidate":
        import spatialdata

        def consolidate(self):
            die()

        spatialdata.SpatialData.write_consolidated_metadata = consolidate
    else:
        raise ValueError(f"unknown kill point {where!r}")


def job_pretrain(spec: dict[str, Any]) -> dict[str, Any]:
    """Pretrain the tiny preset on ``spec["patches"]`` (a .npy file) with a checkpoint every step."""
    patches = np.load(spec["patches"], allow_pickle=False)
    model = c2lst.tl.pretrain(
        patches,
        preset="tiny",
        n_steps=int(spec["n_steps"]),
        batch_size=4,
        lr=1e-3,
        output_dir=spec["output_dir"],
        checkpoint_every=int(spec.get("checkpoint_every", 1)),
        seed=3,
        device="cpu",
        progress=False,
    )
    return {"sha256": model.sha256, "resumed_from": model.training_summary["resumed_from"]}


def job_adapt(spec: dict[str, Any]) -> dict[str, Any]:
    """Adapt the central model ``spec["central"]`` on a table rebuilt from .npy files."""
    import anndata as ad
    import pandas as pd

    patches = np.load(spec["patches"], allow_pickle=False)
    expr = np.load(spec["expr"], allow_pickle=False)
    genes = json.loads(Path(spec["genes"]).read_text())
    adata = ad.AnnData(
        obs=pd.DataFrame(index=[f"s{i}" for i in range(len(expr))]),
        obsm={"c2lst_patch": patches, "c2lst_expr": expr},
        uns={"c2lst": {"expr": {"c2lst_expr": {"genes": np.asarray(genes, dtype=str)}}}},
    )
    c2lst.tl.adapt(
        adata,
        central=spec["central"],
        n_steps=int(spec["n_steps"]),
        batch_size=4,
        seed=5,
        output_dir=spec["output_dir"],
        device="cpu",
        progress=False,
    )
    rec = adata.uns["c2lst"]["local"]["c2lst_local"]
    c2lst.tl.export_adapter(adata, spec["adapter_out"])
    return {"sha256": str(rec["sha256"]), "resumed_from": json.loads(rec["summary"])["resumed_from"]}


def job_synthesize(spec: dict[str, Any]) -> dict[str, Any]:
    """Synthesize into the zarr-backed SpatialData at ``spec["store"]``."""
    import spatialdata

    sdata = spatialdata.read_zarr(spec["store"])
    c2lst.tl.synthesize(
        sdata,
        conditions=np.load(spec["conditions"], allow_pickle=False),
        n_steps=2,
        seed=11,
        key_added=spec["table_added"],
        overwrite=bool(spec.get("overwrite", False)),
        device="cpu",
        progress=False,
    )
    return {"elements": sorted(c2lst.tl._elements.existing_names(sdata))}


JOBS = {"pretrain": job_pretrain, "adapt": job_adapt, "synthesize": job_synthesize}


def run(spec_json: str) -> None:
    """Run the job ``spec_json`` describes; write ``result.json`` (or ``error.txt``) into ``spec["workdir"]``."""
    spec = json.loads(spec_json)
    work = Path(spec["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(spec.get("threads", 1)))
    try:
        install_kill(spec.get("kill"))
        (work / "started").write_text("1")
        result = JOBS[spec["job"]](spec)
    except BaseException:
        (work / "error.txt").write_text(traceback.format_exc())
        raise
    (work / "result.json").write_text(json.dumps(result))
