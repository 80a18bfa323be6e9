"""Scale-out on existing engines: dask.distributed for patch extraction, accelerate DDP for training (issue 6).

How a user runs them (no c2lst-specific API):

- ``pp.extract_patches`` reads the image chunks it needs with ``dask.compute``; inside ``with Client(cluster):``
  those reads (zarr decompression) run on the cluster's workers and the resampling stays in the client, so the
  same call scales to a ``dask.distributed`` cluster and gives the same bytes.
- ``tl.pretrain`` is one accelerate loop: the same script runs as several processes under
  ``accelerate launch --multi_gpu --num_processes N`` (on CPU-only machines the processes use gloo DDP).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata

import c2lst
from c2lst.models import CentralModel

SCRIPTS = Path(__file__).parent / "_fault_scripts"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three small simulated slides (two stains) written to zarr, as a multi-slide study would be."""
    root = tmp_path_factory.mktemp("slides")
    paths = []
    for i, stain in enumerate(("local", "institution_a", "local")):
        sdata = c2lst.datasets.simulated_visium(n_spots=24, seed=10 + i, stain=stain)
        sdata.write(root / f"slide{i}.zarr")
        paths.append(root / f"slide{i}.zarr")
    return paths


def _extract_all(paths) -> list:
    out = []
    for path in paths:
        sdata = spatialdata.read_zarr(path)
        c2lst.pp.extract_patches(sdata, size=32, progress=False)
        t = sdata.tables["table"]
        out.append(
            (
                np.asarray(t.obsm["c2lst_patch"]),
                t.obs["c2lst_patch_clipped"].to_numpy(),
                dict(t.uns["c2lst"]["patches"]["c2lst_patch"]),
            )
        )
    return out


def test_extract_patches_on_a_local_cluster_equals_single_process(slides):
    import dask
    from dask.distributed import Client, LocalCluster, get_task_stream

    with dask.config.set(scheduler="synchronous"):
        single = _extract_all(slides)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        distributed = _extract_all(slides)
        workers = set(client.scheduler_info()["workers"])
    assert len(workers) == 2
    used = {task["worker"] for task in stream.data}
    assert used and used <= workers, "the chunk reads did not run on the cluster"
    assert len(distributed) == len(single) == 3
    for (pa, ca, ua), (pb, cb, ub) in zip(single, distributed, strict=True):
        assert pa.dtype == np.uint8 and pa.shape == (24, 32, 32, 3)
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ca, cb)
        assert ua == ub


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pretrain_under_accelerate_launch_ddp_is_loaded_by_one_process(tmp_path, sim_sdata_base):
    patches = np.asarray(sim_sdata_base.tables["table"].obsm["c2lst_patch"][:16])
    np.save(tmp_path / "patches.npy", patches)
    out = tmp_path / "run"
    ddp = _load_script("ddp_pretrain")
    cmd = ddp.launch_command(tmp_path / "patches.npy", out, 4, processes=2)
    if not Path(cmd[0]).exists():
        pytest.skip(f"the `accelerate` launcher is not installed next to {sys.executable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = ddp.read_reports(out, 2)
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert {(r["world"], r["backend"]) for r in ranks} == {(2, "gloo")}
    assert len({r["sha256"] for r in ranks}) == 1  # DDP kept the replicas identical
    # every rank wrote its random state into the shared checkpoints; the model was saved once
    assert {p.name for p in (out / "checkpoints" / "step_4").glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    model = CentralModel.from_pretrained(out / "model")  # a single process, sha256 verified
    assert model.sha256 == ranks[0]["sha256"]
    assert model.training_summary["steps"] == 4
    assert model.sample(2, steps=2).shape == (2, 32, 32, 3)
    # and a single process can continue the DDP run from its checkpoint
    more = c2lst.tl.pretrain(
        patches,
        preset="tiny",
        n_steps=5,
        batch_size=4,
        output_dir=out,
        checkpoint_every=2,
        device="cpu",
        seed=0,
        progress=False,
    )
    assert more.training_summary["resumed_from"] == 4
    shutil.rmtree(out)
