"""Reliability round 2 (issue 13): faults that need their own process, a timeout, file modes or a racing writer.

The bad-input matrix (``test_bad_input*.py``) holds the cases that only need an input and an expected error;
the tests here need special setup: a segfault must fail a test, not kill pytest, so degenerate counts run in a
subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import c2lst

SRC = str(Path(c2lst.__file__).resolve().parents[1])


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )


# ============================================================================ 1. never a crash
DEGENERATE = {
    "all-zero": ("np.zeros((20, 8), np.int64)", 3, "ValueError"),
    "all-equal": ("np.full((20, 8), 3, np.int64)", 3, "ValueError"),
    "one-spot": ("rng.poisson(3, (1, 8))", 3, "ValueError"),
    "one-gene": ("rng.poisson(3, (20, 1))", 1, "ok all"),
    "twelve-genes": ("rng.poisson(3, (20, 12))", 3, "ok seurat"),
    "two-spots": ("rng.poisson(3, (2, 12))", 3, "ok seurat"),
    "one-hot": ("np.eye(12, dtype=np.int64)", 3, "ok "),
    "sparse-twelve": ("sparse.csr_matrix(rng.poisson(1, (30, 12)))", 2, "ok seurat"),
}


def test_prepare_expression_degenerate_counts_do_not_crash():
    """Degenerate counts never reach skmisc's loess: a clear ValueError or a logged fallback flavour, no segfault.

    All cases run in one subprocess (one import of scanpy); a segfault there fails this test instead of killing
    pytest, and the cases printed before it show which input crashed.
    """
    cases = "\n".join(f"    ({name!r}, lambda: {x}, {n}, {exp!r})," for name, (x, n, exp) in DEGENERATE.items())
    proc = _run(
        """
import numpy as np, anndata as ad
from scipy import sparse
import c2lst
rng = np.random.default_rng(0)
CASES = [
"""
        + cases
        + """
]
for name, make, n_top, expected in CASES:
    a = ad.AnnData(make())
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    try:
        c2lst.pp.prepare_expression(a, n_top_genes=n_top)
    except ValueError as err:
        assert "n_top_genes" in str(err) or "adata.X" in str(err), err
        got = "ValueError"
    else:
        rec = a.uns["c2lst"]["expr"]["c2lst_expr"]
        assert len(rec["genes"]) == n_top
        got = "ok " + rec["flavor"]
    assert got.startswith(expected), (name, got, expected)
    print(name, got, flush=True)
print("done")
"""
    )
    assert proc.returncode == 0, (
        f"rc={proc.returncode} (negative: killed by a signal)\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    assert proc.stdout.strip().splitlines()[-1] == "done"


def test_prepare_expression_few_genes_logs_the_fallback(caplog):
    import anndata as ad

    a = ad.AnnData(np.random.default_rng(0).poisson(3, (20, 12)))
    a.var_names = [f"g{i}" for i in range(12)]
    with caplog.at_level("INFO", logger="c2lst"):
        c2lst.pp.prepare_expression(a, n_top_genes=3)
    assert a.uns["c2lst"]["expr"]["c2lst_expr"]["flavor"] == "seurat"
    assert "flavor='seurat_v3'" in caplog.text and "flavor='seurat'" in caplog.text


# ============================================================================ 3. integrity: old saves still load
def test_central_saved_by_previous_version_loads_with_warning(tiny_central, tmp_path, caplog):
    """A c2lst.json whose sha256 covers the weights only (previous format) loads, with a logged warning."""
    import json
    import shutil

    from c2lst.models import CentralModel

    d = tmp_path / "old"
    shutil.copytree(tiny_central[1], d)
    meta = json.loads((d / "c2lst.json").read_text())
    meta["sha256"] = meta.pop("weights_sha256")
    del meta["fingerprint"]
    (d / "c2lst.json").write_text(json.dumps(meta))
    c2lst._logging.logger.propagate = True
    try:
        with caplog.at_level("WARNING", logger="c2lst"):
            model = CentralModel.from_pretrained(d)
    finally:
        c2lst._logging.logger.propagate = False
    assert model.sha256 == meta["sha256"]
    assert "older c2lst" in caplog.text
    meta["config"]["scheduler"]["prediction_type"] = "epsilon"  # the old format did not cover this ...
    (d / "c2lst.json").write_text(json.dumps(meta))
    CentralModel.from_pretrained(d)  # ... so it still loads (with the warning), as before


def test_adapter_record_of_previous_version_synthesizes(adapted_sdata, tiny_central, caplog):
    """A v1 record (weights-only sha256, the stored regex pattern) keeps working; the same patches come out."""
    from c2lst.models.local import DEFAULT_TARGETS
    from c2lst.models.store import ADAPTER_FORMAT_V1, sha256_tensors

    kw = {"n_steps": 1, "seed": 3, "progress": False, "central": tiny_central[0]}
    c2lst.tl.synthesize(adapted_sdata, key_added="new", **kw)
    rec = adapted_sdata.tables["table"].uns["c2lst"]["local"]["c2lst_local"]
    cfg = json.loads(rec["config"])
    cfg.update(format=ADAPTER_FORMAT_V1, target_modules=DEFAULT_TARGETS)
    rec.update(format=ADAPTER_FORMAT_V1, config=json.dumps(cfg), sha256=sha256_tensors(dict(rec["weights"])))
    c2lst._logging.logger.propagate = True
    try:
        with caplog.at_level("WARNING", logger="c2lst"):
            c2lst.tl.synthesize(adapted_sdata, key_added="old", **kw)
    finally:
        c2lst._logging.logger.propagate = False
    assert "older c2lst" in caplog.text
    np.testing.assert_array_equal(
        adapted_sdata.tables["old"].obsm["c2lst_patch"], adapted_sdata.tables["new"].obsm["c2lst_patch"]
    )


def test_adapter_record_stores_module_names(adapted_base):
    cfg = json.loads(adapted_base.uns["c2lst"]["local"]["c2lst_local"]["config"])
    names = cfg["target_modules"]
    assert isinstance(names, list) and names and all(isinstance(n, str) for n in names)
    assert any(n.endswith("to_q") for n in names) and any(n.endswith("conv2") for n in names)


# ============================================================================ 10. files others can read
def test_saved_weights_follow_the_umask(tmp_path, adapted_base):
    from c2lst.models import CentralModel

    old = os.umask(0o022)
    try:
        CentralModel.from_preset("tiny").save_pretrained(tmp_path / "m")
        f = c2lst.tl.export_adapter(adapted_base, tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()] + [f]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


# ============================================================================ 4. a failed overwrite loses nothing
def _backed(adapted_base, tmp_path):
    import spatialdata

    store = tmp_path / "s.zarr"
    spatialdata.SpatialData(tables={"table": adapted_base.copy()}).write(store)
    return spatialdata.read_zarr(store), store


def _cond(adapted_base, value=0.0):
    n = len(adapted_base.uns["c2lst"]["local"]["c2lst_local"]["genes"])
    return np.full((1, n), value, np.float32)


def test_failed_overwrite_keeps_the_first_result(adapted_base, tiny_central, tmp_path, monkeypatch):
    from c2lst.tl import _elements

    sdata, store = _backed(adapted_base, tmp_path)
    kw = {"n_steps": 1, "progress": False, "central": tiny_central[0], "key_added": "syn"}
    c2lst.tl.synthesize(sdata, conditions=_cond(adapted_base), **kw)
    first = np.asarray(sdata.tables["syn"].obsm["c2lst_patch"]).copy()
    on_disk = sorted(p.name for p in (store / "tables").iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_elements, "_write_atomic", broken)
    with pytest.raises(OSError, match="disk full"):
        c2lst.tl.synthesize(sdata, conditions=_cond(adapted_base, 1.0), overwrite=True, **kw)
    assert {"syn", "syn_image", "syn_spots"} <= set(sdata.tables) | set(sdata.images) | set(sdata.shapes)
    np.testing.assert_array_equal(np.asarray(sdata.tables["syn"].obsm["c2lst_patch"]), first)
    assert sorted(p.name for p in (store / "tables").iterdir()) == on_disk


def test_racing_writer_gets_already_exists(adapted_base, tiny_central, tmp_path, monkeypatch):
    """Two processes pass the name checks; the one that moves its elements second gets a clear error."""
    import spatialdata

    from c2lst.tl import _synthesize

    a, store = _backed(adapted_base, tmp_path)
    b = spatialdata.read_zarr(store)
    kw = {"n_steps": 1, "progress": False, "central": tiny_central[0], "key_added": "syn"}
    c2lst.tl.synthesize(a, conditions=_cond(adapted_base), **kw)
    winner = sorted(p.name for p in store.rglob("*"))
    # b checked before a wrote: it does not see a's elements
    monkeypatch.setattr(_synthesize, "existing_names", lambda sdata: set())
    with pytest.raises(ValueError, match=r"\['syn_image', 'syn_spots', 'syn'\] already exist in the store"):
        c2lst.tl.synthesize(b, conditions=_cond(adapted_base, 1.0), **kw)
    assert sorted(p.name for p in store.rglob("*")) == winner
    assert "syn" not in b.tables and "syn_image" not in b.images
    spatialdata.read_zarr(store)  # still readable


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_store_fails_before_compute(adapted_base, tiny_central, tmp_path):
    sdata, store = _backed(adapted_base, tmp_path)
    os.chmod(store, 0o555)
    try:
        with pytest.raises(ValueError, match=r"zarr store .*s\.zarr.*not writable"):
            c2lst.tl.synthesize(sdata, conditions=_cond(adapted_base), n_steps=1, progress=False,
                                central=tiny_central[0])
    finally:
        os.chmod(store, 0o755)


# ============================================================================ 8. resume=False keeps the old run
def test_resume_false_sets_the_old_checkpoints_aside(tiny_central, tmp_path, sim_sdata_base):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_central[1].parent, out)
    old = sorted(p.name for p in (out / "checkpoints").iterdir())
    p = np.asarray(sim_sdata_base.tables["table"].obsm["c2lst_patch"])[:8]
    c2lst.tl.pretrain(p, preset="tiny", n_steps=2, batch_size=4, output_dir=out, resume=False, progress=False)
    aside = [d for d in out.iterdir() if d.name.startswith("checkpoints.previous-")]
    assert len(aside) == 1 and sorted(x.name for x in aside[0].iterdir()) == old
    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]  # this run's only


# ============================================================================ 9. CUDA asked for, none there
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_clear_error(adapted_sdata, tiny_central):
    n = len(adapted_sdata.tables["table"].uns["c2lst"]["local"]["c2lst_local"]["genes"])
    with pytest.raises(ValueError, match=r"`device='cuda'` but this PyTorch has no usable CUDA device"):
        c2lst.tl.synthesize(adapted_sdata, conditions=np.zeros((1, n), np.float32), device="cuda", n_steps=1,
                            progress=False, central=tiny_central[0])
    with pytest.raises(ValueError, match=r"`device='cuda'` but this PyTorch has no usable CUDA device"):
        c2lst.tl.pretrain(np.zeros((4, 32, 32, 3), np.uint8), preset="tiny", n_steps=1, device="cuda",
                          progress=False)
