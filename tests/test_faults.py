"""Faults: SIGKILL during training or synthesis loses nothing and tears nothing (issue 6).

Jobs run in child processes forked from a ``multiprocessing`` forkserver that imported c2lst once (see
``_fault_scripts/fault_jobs.py``), so each child starts at once. A child is killed with SIGKILL either from
outside (the test polls its checkpoints or waits a random delay) or by itself at a precise point of the code
(inside a checkpoint write, between two element moves...). SIGKILL runs no cleanup, like a power cut of the
process. Kill points are drawn with ``random.Random(0)``.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import spatialdata
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "_fault_scripts"))
import fault_jobs
from _reliability_helpers import assert_same, snapshot_adata

RNG = random.Random(0)
PRETRAIN_STEPS = 6  # a checkpoint after every step
ADAPT_STEPS = 8  # tl.adapt checkpoints every n_steps // 4 = 2 steps
PRETRAIN_KILLS = [
    ("external", RNG.randint(1, PRETRAIN_STEPS - 2)),  # kill -9 from outside once step_k is on disk
    ("after_checkpoint", RNG.randint(1, PRETRAIN_STEPS - 2)),  # right after checkpoint k completed
    ("torch_save", RNG.randint(2, 2 * (PRETRAIN_STEPS - 2))),  # inside the n-th torch.save of save_state
    ("before_rename", RNG.randint(2, PRETRAIN_STEPS - 2)),  # checkpoint k written, not yet renamed
]
ADAPT_KILLS = [("external", RNG.randint(1, 3)), ("after_checkpoint", RNG.randint(1, 3))]
SYNTH_KILLS = [
    ("write_shapes", 1),  # temp store: image written, shapes not yet
    ("write_table", 1),  # temp store: image and shapes written, table not yet
    ("replace", 1),  # image moved into the store, shapes and table not
    ("replace", 2),  # image and shapes moved, table not
    ("consolidate", 1),  # everything moved, consolidated metadata not refreshed
    ("external", 0),  # kill -9 from outside after a random delay
    ("external", 1),
]
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def fork_ctx():
    """A forkserver context whose server imports c2lst (and the jobs) once."""
    ctx = mp.get_context("forkserver")
    # installed packages only: Python 3.11's forkserver ignores sys.path when it preloads
    ctx.set_forkserver_preload(["c2lst.tl", "c2lst.pp", "spatialdata", "accelerate", "safetensors.torch"])
    return ctx


def run_job(
    ctx,
    spec: dict,
    *,
    kill_when: Path | None = None,
    kill_after: float | None = None,
    expect_error: bool = False,
) -> int:
    """Run ``spec`` in a child; SIGKILL it once ``kill_when`` exists or ``kill_after`` s after it started."""
    work = Path(spec["workdir"])
    shutil.rmtree(work, ignore_errors=True)
    spec.setdefault("threads", 1)
    proc = ctx.Process(target=fault_jobs.run, args=(json.dumps(spec),))
    proc.start()
    if kill_when is not None or kill_after is not None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not (work / "started").exists() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        t0 = time.monotonic()
        while proc.is_alive() and time.monotonic() < deadline:
            if kill_when is not None and kill_when.exists():
                break
            if kill_after is not None and time.monotonic() - t0 >= kill_after:
                break
            time.sleep(0.002)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
    proc.join(JOB_TIMEOUT)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        pytest.fail(f"job {spec['job']} did not finish within {JOB_TIMEOUT} s")
    error = work / "error.txt"
    if proc.exitcode not in (0, -signal.SIGKILL) and not expect_error:
        pytest.fail(
            f"job {spec['job']} failed ({proc.exitcode}):\n{error.read_text() if error.exists() else ''}"
        )
    return proc.exitcode


def result(spec: dict) -> dict:
    return json.loads((Path(spec["workdir"]) / "result.json").read_text())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sim_sdata_base, tiny_central):
    """Small training inputs as .npy files (plain arrays, loaded with ``allow_pickle=False``)."""
    root = tmp_path_factory.mktemp("fault_inputs")
    table = sim_sdata_base.tables["table"]
    np.save(root / "patches.npy", np.asarray(table.obsm["c2lst_patch"][:24]))
    np.save(root / "expr.npy", np.asarray(table.obsm["c2lst_expr"][:24], dtype=np.float32))
    genes = [str(g) for g in table.uns["c2lst"]["expr"]["c2lst_expr"]["genes"]]
    (root / "genes.json").write_text(json.dumps(genes))
    return {"root": root, "central": str(tiny_central[1])}


def _tensors(*files: Path) -> dict:
    out = {}
    for f in files:
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    different = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].equal(b[k]))]
    assert not different, f"tensors differ: {different[:5]}"


def _model_tensors(out: Path) -> dict:
    return _tensors(
        out / "model" / "unet" / "diffusion_pytorch_model.safetensors",
        out / "model" / "c2lst_condition.safetensors",
    )


# ================================================================================================ training
def _pretrain_spec(inputs, out: Path, work: Path, kill=None) -> dict:
    return {
        "job": "pretrain",
        "workdir": str(work),
        "patches": str(inputs["root"] / "patches.npy"),
        "n_steps": PRETRAIN_STEPS,
        "output_dir": str(out),
        "kill": kill,
    }


@pytest.fixture(scope="module")
def pretrain_reference(fork_ctx, inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_reference")
    spec = _pretrain_spec(inputs, root / "run", root / "job")
    assert run_job(fork_ctx, spec) == 0
    return result(spec), _model_tensors(root / "run")


@pytest.mark.parametrize(("where", "n"), PRETRAIN_KILLS, ids=[f"{w}-{n}" for w, n in PRETRAIN_KILLS])
def test_pretrain_sigkill_then_resume_is_bit_identical(
    fork_ctx, inputs, pretrain_reference, tmp_path, where, n
):
    ref, ref_tensors = pretrain_reference
    out = tmp_path / "run"
    killed = _pretrain_spec(
        inputs, out, tmp_path / "killed", None if where == "external" else {"where": where, "n": n}
    )
    code = run_job(
        fork_ctx, killed, kill_when=out / "checkpoints" / f"step_{n}" if where == "external" else None
    )
    assert code == -signal.SIGKILL, "the child finished before it was killed"
    assert not (out / "model").exists()
    # a new process resumes from the newest complete checkpoint and finishes the run
    resumed = _pretrain_spec(inputs, out, tmp_path / "resumed")
    assert run_job(fork_ctx, resumed) == 0
    got = result(resumed)
    expected_start = {"after_checkpoint": n, "torch_save": math.ceil(n / 2) - 1, "before_rename": n - 1}
    if where == "external":
        assert got["resumed_from"] >= n
    else:
        assert got["resumed_from"] == expected_start[where]
    assert got["sha256"] == ref["sha256"]
    _assert_same_tensors(_model_tensors(out), ref_tensors)
    assert not list((out / "checkpoints").glob(".tmp_*")), "a torn temporary checkpoint was left behind"


def _adapt_spec(inputs, out: Path, work: Path, kill=None) -> dict:
    root = inputs["root"]
    return {
        "job": "adapt",
        "workdir": str(work),
        "patches": str(root / "patches.npy"),
        "expr": str(root / "expr.npy"),
        "genes": str(root / "genes.json"),
        "central": inputs["central"],
        "n_steps": ADAPT_STEPS,
        "output_dir": str(out),
        "adapter_out": str(work / "adapter.safetensors"),
        "kill": kill,
    }


@pytest.fixture(scope="module")
def adapt_reference(fork_ctx, inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt_reference")
    spec = _adapt_spec(inputs, root / "run", root / "job")
    assert run_job(fork_ctx, spec) == 0
    return result(spec), _tensors(Path(spec["adapter_out"]))


@pytest.mark.parametrize(("where", "k"), ADAPT_KILLS, ids=[f"{w}-{k}" for w, k in ADAPT_KILLS])
def test_adapt_sigkill_then_resume_is_bit_identical(fork_ctx, inputs, adapt_reference, tmp_path, where, k):
    ref, ref_tensors = adapt_reference
    out = tmp_path / "run"
    kill = None if where == "external" else {"where": where, "n": k}
    killed = _adapt_spec(inputs, out, tmp_path / "killed", kill)
    step = 2 * k  # the k-th checkpoint
    code = run_job(
        fork_ctx, killed, kill_when=out / "checkpoints" / f"step_{step}" if where == "external" else None
    )
    assert code == -signal.SIGKILL, "the child finished before it was killed"
    resumed = _adapt_spec(inputs, out, tmp_path / "resumed")
    assert run_job(fork_ctx, resumed) == 0
    got = result(resumed)
    assert got["resumed_from"] >= step if where == "external" else got["resumed_from"] == step
    assert got["sha256"] == ref["sha256"]
    _assert_same_tensors(_tensors(Path(resumed["adapter_out"])), ref_tensors)


# ================================================================================================ synthesis
NEW = ("syn", "syn_image", "syn_spots")


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory, sim_sdata_base, adapted_base):
    """A zarr store with an image, the spots and a small adapted table (the elements that must survive)."""
    from spatialdata.models import Image2DModel, TableModel

    root = tmp_path_factory.mktemp("synth")
    table = adapted_base[:12].copy()
    keep = {k: table.uns["c2lst"][k] for k in ("local", "expr")}
    table.uns = {"c2lst": keep, "spatialdata_attrs": table.uns["spatialdata_attrs"]}
    pixels = np.random.default_rng(0).integers(0, 255, (3, 96, 96), dtype=np.uint8)
    spatialdata.SpatialData(
        images={"he": Image2DModel.parse(pixels, dims=("c", "y", "x"))},
        shapes={"spots": sim_sdata_base.shapes["spots"]},
        tables={"table": TableModel.parse(table)},
    ).write(root / "base.zarr")
    expr = np.asarray(adapted_base.obsm["c2lst_expr"], dtype=np.float32)
    np.save(root / "conditions.npy", expr[:3])
    np.save(root / "conditions_b.npy", expr[5:7])  # a second, different synthesis (to overwrite the first)
    return root


def _synth_spec(root: Path, store: Path, work: Path, kill=None, overwrite=False, version="") -> dict:
    return {
        "job": "synthesize",
        "workdir": str(work),
        "store": str(store),
        "table_added": "syn",
        "conditions": str(root / f"conditions{version}.npy"),
        "kill": kill,
        "overwrite": overwrite,
    }


def _new_elements(sdata) -> dict:
    """The synthetic elements' contents, without the per-run id."""
    out = {}
    if "syn" in sdata.tables:
        t = sdata.tables["syn"]
        out["syn"] = {
            "obs": t.obs.drop(columns=["c2lst_run_id"]).reset_index(drop=True),
            "X": t.X.toarray(),
            "obsm": {k: np.asarray(v) for k, v in t.obsm.items()},
        }
    if "syn_image" in sdata.images:
        out["syn_image"] = np.asarray(sdata.images["syn_image"].values)
    if "syn_spots" in sdata.shapes:
        out["syn_spots"] = sdata.shapes["syn_spots"].copy()
    return out


def _old_elements(sdata) -> dict:
    return {
        "names": {k: sorted(set(getattr(sdata, k)) - set(NEW)) for k in ("images", "shapes", "tables")},
        "table": snapshot_adata(sdata.tables["table"]),
        "he": np.asarray(sdata.images["he"].values),
        "spots": sdata.shapes["spots"].copy(),
    }


@pytest.fixture(scope="module")
def synth_reference(fork_ctx, synth_store, tmp_path_factory):
    """The store's old elements and the new elements of two complete syntheses (A: 3 profiles, B: 2)."""
    root = tmp_path_factory.mktemp("synth_reference")
    ref = {"old": _old_elements(spatialdata.read_zarr(synth_store / "base.zarr"))}
    for version in ("", "_b"):
        store = root / f"ref{version}.zarr"
        shutil.copytree(synth_store / "base.zarr", store)
        spec = _synth_spec(synth_store, store, root / f"job{version}", version=version)
        t0 = time.monotonic()
        assert run_job(fork_ctx, spec) == 0
        ref["seconds"] = time.monotonic() - t0
        ref[f"new{version}"] = _new_elements(spatialdata.read_zarr(store))
        assert sorted(ref[f"new{version}"]) == sorted(NEW)
    return ref


def _check_store(store: Path, reference: dict, versions=("new",)) -> set[str]:
    """Assert the store opens, the old elements are intact and each new one is complete (one of ``versions``)."""
    back = spatialdata.read_zarr(store)  # must open
    assert_same(reference["old"], _old_elements(back))
    new = _new_elements(back)
    matched = {}
    for name, content in new.items():  # complete, never torn
        errors = []
        for version in versions:
            try:
                assert_same(reference[version][name], content)
                matched[name] = version
                break
            except AssertionError as err:
                errors.append(str(err))
        else:
            pytest.fail(f"element {name!r} matches no complete version: {errors}")
    if "syn" in new:  # the table moves last: it never annotates missing elements or those of another run
        assert {"syn_image", "syn_spots"} <= set(new)
        assert matched["syn"] == matched["syn_spots"] == matched["syn_image"]
    assert not [p.name for p in store.iterdir() if "tmp" in p.name]
    return set(new)


@pytest.mark.parametrize(("where", "n"), SYNTH_KILLS, ids=[f"{w}-{n}" for w, n in SYNTH_KILLS])
def test_synthesize_sigkill_leaves_a_readable_store(
    fork_ctx, synth_store, synth_reference, tmp_path, where, n
):
    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store / "base.zarr", store)
    if where == "external":
        delay = random.Random(n).uniform(0.2, 1.0) * synth_reference["seconds"]
        run_job(fork_ctx, _synth_spec(synth_store, store, tmp_path / "killed"), kill_after=delay)
    else:
        spec = _synth_spec(synth_store, store, tmp_path / "killed", {"where": where, "n": n})
        assert run_job(fork_ctx, spec) == -signal.SIGKILL
    present = _check_store(store, synth_reference)
    if where != "external":
        # the consolidated metadata is refreshed last: it is the commit point of the whole set
        assert present == set()
    # the store stays usable: the same synthesis with overwrite=True completes it
    assert run_job(fork_ctx, _synth_spec(synth_store, store, tmp_path / "again", overwrite=True)) == 0
    assert _check_store(store, synth_reference) == set(NEW)


@pytest.mark.parametrize(
    ("where", "n"), [("rmtree", 1), ("rmtree", 3), ("replace", 2)], ids=["rmtree-1", "rmtree-3", "replace-2"]
)
def test_overwrite_killed_midway_leaves_a_readable_store(
    fork_ctx, synth_store, synth_reference, tmp_path, where, n
):
    """``overwrite=True`` on a backed store: killed between swapping elements, every element is old or new."""
    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store / "base.zarr", store)
    assert run_job(fork_ctx, _synth_spec(synth_store, store, tmp_path / "first")) == 0
    spec = _synth_spec(
        synth_store, store, tmp_path / "killed", {"where": where, "n": n}, overwrite=True, version="_b"
    )
    assert run_job(fork_ctx, spec) == -signal.SIGKILL
    present = _check_store(store, synth_reference, versions=("new", "new_b"))
    assert present < set(NEW)  # something was mid-swap
    spec = _synth_spec(synth_store, store, tmp_path / "again", overwrite=True, version="_b")
    assert run_job(fork_ctx, spec) == 0
    assert _check_store(store, synth_reference, versions=("new_b",)) == set(NEW)


def test_interrupted_elements_need_overwrite(fork_ctx, synth_store, tmp_path):
    """Elements moved in by a killed run are invisible to zarr, yet block a plain rerun with a clear error."""
    store = tmp_path / "s.zarr"
    shutil.copytree(synth_store / "base.zarr", store)
    spec = _synth_spec(synth_store, store, tmp_path / "killed", {"where": "replace", "n": 1})
    assert run_job(fork_ctx, spec) == -signal.SIGKILL
    assert (store / "images" / "syn_image").is_dir()
    assert run_job(fork_ctx, _synth_spec(synth_store, store, tmp_path / "plain"), expect_error=True) == 1
    error = (tmp_path / "plain" / "error.txt").read_text()
    assert "ValueError" in error and "overwrite=True" in error and "syn_image" in error
