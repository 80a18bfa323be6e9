"""Bad-input matrix across ``pp`` and ``tl`` (issue 6); model and adapter loading: ``test_bad_input_loading.py``.

Every case asserts the exception type, that the message names the argument (or the file) at fault, that the
input objects are deeply unchanged (X, obs, var, obsm, uns of every table, element names, shapes, image
pixels, transformations) and that no file was written or changed in the watched folders. The cases complement
the per-function tests in ``test_patches_errors.py``, ``test_expression.py``, ``test_central.py`` and
``test_local.py`` rather than repeating them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata
import torch
from _bad_input_common import (  # noqa: F401 - the *_fixture names are fixtures
    Cases,
    adapter,
    backed_store_fixture,
    env_fixture,
    genes,
    model_copy,
    patches,
    run_case,
    table,
)

import c2lst
from c2lst.models import CentralModel

CASES = Cases()


def _synth(env, sdata=None, **kwargs):
    kw = {"n_steps": 1, "progress": False, "conditions": np.zeros((1, len(genes(env))), np.float32), **kwargs}
    return lambda: c2lst.tl.synthesize(sdata if sdata is not None else env.sdata, **kw)


def _adapt(env, adata, **kwargs):
    kw = {"central": str(env.central_dir), "n_steps": 1, "batch_size": 2, "progress": False, **kwargs}
    return lambda: c2lst.tl.adapt(adata, **kw)


def _pretrain(data, **kwargs):
    kw = {"preset": "tiny", "n_steps": 1, "batch_size": 2, "progress": False, **kwargs}
    return lambda: c2lst.tl.pretrain(data, **kw)


# ============================================================================ pp.extract_patches
@CASES("pp-anndata-without-spatial-elements", TypeError, r"`sdata` must be a SpatialData")
def _(env):
    t = table(env)
    return lambda: c2lst.pp.extract_patches(t, progress=False), [t]


@CASES("pp-coordinate-system-not-a-string", TypeError, r"`coordinate_system`")
def _(env):
    return lambda: c2lst.pp.extract_patches(env.sdata, coordinate_system=1, progress=False), [env.sdata]


@CASES("pp-key-added-not-a-string", TypeError, r"`key_added`")
def _(env):
    return lambda: c2lst.pp.extract_patches(env.sdata, key_added=3, progress=False), [env.sdata]


@CASES("pp-patch-um-nan", ValueError, r"`patch_um`")
def _(env):
    return lambda: c2lst.pp.extract_patches(env.sdata, patch_um=float("nan"), progress=False), [env.sdata]


@CASES("pp-zarr-store-missing-shapes-element", KeyError, r"table_key='table'.*'spots'.*not an element")
def _(env):
    store = env.tmp / "missing.zarr"
    spatialdata.SpatialData(
        images={"he": env.sdata.images["he"]},
        shapes={"spots": env.sdata.shapes["spots"]},
        tables={
            "table": ad.AnnData(
                obs=table(env).obs.copy(), uns={"spatialdata_attrs": table(env).uns["spatialdata_attrs"]}
            )
        },
    ).write(store)
    shutil.rmtree(store / "shapes" / "spots")  # the element vanished from the store
    back = spatialdata.read_zarr(store, on_bad_files="warn")
    return lambda: c2lst.pp.extract_patches(back, progress=False), [back]


def _image_store(env, name: str) -> Path:
    store = env.tmp / name
    spatialdata.SpatialData(
        images={"he": env.sdata.images["he"]},
        shapes={"spots": env.sdata.shapes["spots"]},
        tables={"table": ad.AnnData(obs=table(env).obs.copy(), uns={"spatialdata_attrs": table(env).uns["spatialdata_attrs"]})},
    ).write(store)
    return store


def _chunk_files(level: Path) -> list[Path]:
    meta = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
    return sorted(p for p in level.rglob("*") if p.is_file() and p.name not in meta)


@CASES("pp-level0-chunks-missing", ValueError, r"image 'he'.*pure fill value.*chunks under them are missing")
def _(env):
    store = _image_store(env, "nochunks.zarr")
    back = spatialdata.read_zarr(store)
    for f in _chunk_files(store / "images" / "he"):  # deleted after read_zarr: the lazy image reads zeros
        f.unlink()
    return lambda: c2lst.pp.extract_patches(back, size=16, progress=False), [back]


@CASES("pp-corrupt-chunk-names-the-image", ValueError, r"image 'he': reading its pixels failed")
def _(env):
    store = _image_store(env, "corrupt.zarr")
    back = spatialdata.read_zarr(store)
    for f in _chunk_files(store / "images" / "he"):
        f.write_bytes(b"\x00garbage" * 7)
    # `back` itself is not snapshotted: reading its pixels is what fails; its table is
    return lambda: c2lst.pp.extract_patches(back, size=16, progress=False), [back.tables["table"]]


# ============================================================================ pp.prepare_expression
def _counts(x) -> ad.AnnData:
    return ad.AnnData(np.asarray(x), var=pd.DataFrame(index=[f"g{i}" for i in range(np.shape(x)[1])]))


@CASES("expr-inf-counts", ValueError, r"adata\.X.*NaN/inf")
def _(env):
    a = _counts(np.ones((4, 3), np.float32))
    a.X[1, 2] = np.inf
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=2), [a]


@CASES("expr-boolean-matrix", TypeError, r"adata\.X.*dtype bool")
def _(env):
    a = _counts(np.ones((4, 3), bool))
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=2), [a]


@CASES("expr-empty-gene-list", ValueError, r"`genes` is empty")
def _(env):
    a = _counts(np.ones((4, 3), np.float32))
    return lambda: c2lst.pp.prepare_expression(a, genes=[]), [a]


@CASES("expr-all-zero-counts", ValueError, r"adata\.X.*no non-zero value.*layer=")
def _(env):
    a = _counts(np.zeros((20, 8), np.int64))
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=3), [a]


@CASES("expr-all-counts-equal", ValueError, r"`n_top_genes=3`: no gene.*varies.*`genes=`")
def _(env):
    a = _counts(np.full((20, 8), 3, np.int64))
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=3), [a]


@CASES("expr-single-spot", ValueError, r"`n_top_genes=3`.*at least 2 spots.*`genes=`")
def _(env):
    a = _counts(np.random.default_rng(0).poisson(3, (1, 8)))
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=3), [a]


@CASES("expr-float-counts-with-noise", ValueError, r"within .* of an integer.*counts with floating-point noise")
def _(env):
    rng = np.random.default_rng(0)
    a = _counts(rng.poisson(3, (20, 12)) + rng.random((20, 12)) * 1e-6)
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=3), [a]


@CASES("expr-float-values-too-large-for-log", ValueError, r"not integer-valued.*reach 99.*log1p")
def _(env):
    a = _counts(np.random.default_rng(0).random((20, 12)) * 100)
    return lambda: c2lst.pp.prepare_expression(a, n_top_genes=3), [a]


# ============================================================================ tl.pretrain
@CASES("pretrain-float-patches-in-obsm", TypeError, r"obsm\['c2lst_patch'\].*uint8")
def _(env):
    a = ad.AnnData(obsm={"c2lst_patch": patches().astype(np.float32)})
    return _pretrain(a), [a]


@CASES("pretrain-non-square-patches", ValueError, r"`data` patches must have shape")
def _(env):
    p = patches(size=32)[:, :, :16]
    return _pretrain(np.ascontiguousarray(p)), [p]


@CASES("pretrain-rgba-patches", ValueError, r"`data` patches must have shape")
def _(env):
    p = np.zeros((4, 32, 32, 4), np.uint8)
    return _pretrain(p), [p]


@CASES("pretrain-one-bad-slide-in-list", TypeError, r"`data` items")
def _(env):
    p = patches()
    return _pretrain([p, {"patches": p}]), [p]


@CASES("pretrain-config-not-a-dict", TypeError, r"`config` must be a dict")
def _(env):
    return _pretrain(patches(), config=[("layers_per_block", 2)]), []


@CASES("pretrain-config-unknown-key", ValueError, r"`config` has unknown keys \['depth'\]")
def _(env):
    cfg = {"depth": 3}
    return _pretrain(patches(), config=cfg), [cfg]


@CASES("pretrain-config-sample-size-mismatch", ValueError, r"`config\['sample_size'\]=64`")
def _(env):
    return _pretrain(patches(), config={"sample_size": 64}), []


@CASES("pretrain-patch-size-not-divisible", ValueError, r"patch size 30 must be divisible")
def _(env):
    return _pretrain(patches(size=30)), []


@CASES("pretrain-lr-nan", ValueError, r"`lr`")
def _(env):
    return _pretrain(patches(), lr=float("nan")), []


@CASES("pretrain-negative-seed", TypeError, r"`seed`")
def _(env):
    return _pretrain(patches(), seed=-1), []


@CASES("pretrain-unknown-patch-key-in-spatialdata", KeyError, r"obsm\['nope'\].*`patch_key`")
def _(env):
    return _pretrain(env.sdata, patch_key="nope"), [env.sdata]


@CASES("pretrain-output-dir-is-a-file", ValueError, r"`output_dir=.*not writable")
def _(env):
    f = env.tmp / "a_file"
    f.write_text("x")
    return _pretrain(patches(), output_dir=f), []


@CASES("pretrain-bad-mixed-precision-writes-nothing", ValueError, r"`mixed_precision='fp8'`")
def _(env):
    return _pretrain(patches(), mixed_precision="fp8", output_dir=env.tmp / "new_run"), []


@CASES("pretrain-fp16-on-cpu-writes-nothing", ValueError, r"`mixed_precision='fp16'`")
def _(env):
    return _pretrain(patches(), mixed_precision="fp16", device="cpu", output_dir=env.tmp / "new_run"), []


# ============================================================================ tl.adapt
@CASES("adapt-spatialdata-unknown-table-key", KeyError, r"`table_key='nope'` is not a table")
def _(env):
    return _adapt(env, env.sdata, table_key="nope"), [env.sdata]


@CASES("adapt-not-a-table", TypeError, r"`adata` must be an AnnData or a SpatialData")
def _(env):
    return _adapt(env, {"obsm": {}}), []


@CASES("adapt-patch-size-differs-from-central", ValueError, r"obsm\['big'\].*64 px.*size=32")
def _(env):
    t = table(env)
    t.obsm["big"] = np.repeat(np.repeat(np.asarray(t.obsm["c2lst_patch"]), 2, axis=1), 2, axis=2)
    return _adapt(env, t, patch_key="big"), [t]


@CASES("adapt-expression-columns-differ-from-genes", ValueError, r"obsm\['short'\].*shape")
def _(env):
    t = table(env)
    t.obsm["short"] = np.asarray(t.obsm["c2lst_expr"])[:, :-1].copy()
    t.uns["c2lst"]["expr"]["short"] = dict(t.uns["c2lst"]["expr"]["c2lst_expr"])
    return _adapt(env, t, expr_key="short"), [t]


@CASES("adapt-expression-without-gene-record", KeyError, r"`expr_key='orphan'`.*prepare_expression")
def _(env):
    t = table(env)
    t.obsm["orphan"] = np.asarray(t.obsm["c2lst_expr"]).copy()
    return _adapt(env, t, expr_key="orphan"), [t]


@CASES("adapt-hidden-zero", ValueError, r"`hidden`")
def _(env):
    t = table(env)
    return _adapt(env, t, hidden=0), [t]


@CASES("adapt-central-pickle-file", ValueError, r"refusing to load pickle-based weight files")
def _(env):
    t = table(env)
    f = env.tmp / "central.pt"
    torch.save({"w": torch.zeros(1)}, f)
    return _adapt(env, t, central=str(f)), [t]


@CASES("adapt-central-with-corrupt-json", ValueError, r"`path=.*c2lst\.json is not valid JSON")
def _(env):
    t = table(env)
    d = model_copy(env, "corrupt_json")
    (d / "c2lst.json").write_text("{not json")
    return _adapt(env, t, central=str(d)), [t]


@CASES("adapt-bad-mixed-precision-writes-nothing", ValueError, r"`mixed_precision='fp8'`")
def _(env):
    t = table(env)
    return _adapt(env, t, mixed_precision="fp8", output_dir=env.tmp / "adapt_run"), [t]


@CASES("adapt-existing-key-without-overwrite", ValueError, r"`key_added='c2lst_local'` already holds.*overwrite=True")
def _(env):
    t = table(env)
    return _adapt(env, t), [t]


# ============================================================================ tl.synthesize
@CASES("synth-steps-zero", ValueError, r"`n_steps`")
def _(env):
    return _synth(env, n_steps=0), [env.sdata]


@CASES("synth-batch-size-zero", ValueError, r"`batch_size`")
def _(env):
    return _synth(env, batch_size=0), [env.sdata]


@CASES("synth-negative-seed", TypeError, r"`seed`")
def _(env):
    return _synth(env, seed=-3), [env.sdata]


@CASES("synth-nan-in-dataframe-conditions", ValueError, r"`conditions` \(dataframe\) contains NaN")
def _(env):
    df = pd.DataFrame(np.zeros((2, len(genes(env))), np.float32), columns=genes(env))
    df.iloc[1, 3] = np.nan
    return _synth(env, conditions=df), [env.sdata, df]


@CASES("synth-inf-in-array-conditions", ValueError, r"`conditions` \(array\) contains NaN or Inf")
def _(env):
    arr = np.zeros((2, len(genes(env))), np.float32)
    arr[0, 0] = np.inf
    return _synth(env, conditions=arr), [env.sdata, arr]


@CASES("synth-nan-counts-in-anndata-conditions", ValueError, r"`conditions`.*NaN")
def _(env):
    cond = ad.AnnData(np.ones((2, len(genes(env))), np.float32), var=pd.DataFrame(index=genes(env)))
    cond.X[0, 1] = np.nan
    return _synth(env, conditions=cond), [env.sdata, cond]


@CASES("synth-empty-dataframe-conditions", ValueError, r"`conditions` has no rows")
def _(env):
    df = pd.DataFrame(np.zeros((0, len(genes(env))), np.float32), columns=genes(env))
    return _synth(env, conditions=df), [env.sdata, df]


@CASES("synth-empty-anndata-conditions", ValueError, r"`conditions` is an empty AnnData")
def _(env):
    cond = ad.AnnData(np.zeros((0, len(genes(env))), np.float32), var=pd.DataFrame(index=genes(env)))
    return _synth(env, conditions=cond), [env.sdata, cond]


@CASES("synth-3d-array-conditions", ValueError, r"`conditions` array has shape \(1, 2, 20\)")
def _(env):
    return _synth(env, conditions=np.zeros((1, 2, 20), np.float32)), [env.sdata]


@CASES("synth-recorded-central-directory-gone", KeyError, r"`central=.*gone.*neither a registered")
def _(env):
    adapter(env)["central_path"] = str(env.tmp / "gone")
    return _synth(env, central=None), [env.sdata]


@CASES("synth-backed-store-bad-argument-writes-nothing", ValueError, r"`n_per_condition`")
def _(env):
    back = spatialdata.read_zarr(env.store)
    return _synth(env, back, n_per_condition=0), [back]


@CASES(
    "synth-backed-store-with-orphan-element",
    ValueError,
    r"`key_added='syn'`.*\['syn_image'\].*overwrite=True",
)
def _(env):
    # an interrupted earlier run moved `syn_image` into the store before the metadata was refreshed: zarr does
    # not list it, yet it must neither be clobbered nor make the write fail after all the compute
    (env.store / "images" / "syn_image").mkdir(parents=True)
    (env.store / "images" / "syn_image" / "zarr.json").write_text("{}")
    back = spatialdata.read_zarr(env.store)
    assert "syn_image" not in back.images
    return _synth(env, back, key_added="syn"), [back]


# ============================================================================ issue 13: overwrite, names, storage
@CASES("synth-overwrite-user-shapes-refused", ValueError, r"`key_added='spots'` would replace elements \['spots'\]")
def _(env):
    return _synth(env, key_added="spots", overwrite=True), [env.sdata]


@CASES("synth-overwrite-user-image-refused", ValueError, r"would replace elements \['he'\] that c2lst did not")
def _(env):
    return _synth(env, key_added="he", overwrite=True), [env.sdata]  # "he" is the slide image


@CASES("synth-table-added-empty", ValueError, r"`key_added=''` is not a valid element name")
def _(env):
    return _synth(env, key_added=""), [env.sdata]


@CASES("synth-table-added-path-traversal", ValueError, r"`key_added='\.\./\.\./evil'` is not a valid element")
def _(env):
    back = spatialdata.read_zarr(env.store)
    return _synth(env, back, key_added="../../evil"), [back]


@CASES("synth-table-added-not-a-string", TypeError, r"`key_added` must be a string")
def _(env):
    return _synth(env, key_added=3), [env.sdata]


@CASES("synth-backed-store-deleted-before-compute", ValueError, r"zarr store '.*store\.zarr', which no longer exists")
def _(env):
    back = spatialdata.read_zarr(env.store)
    shutil.rmtree(env.store)
    return _synth(env, back), [back]


# ============================================================================ issue 13: bounds before allocation
@CASES("synth-n-per-condition-beyond-memory", ValueError, r"`n_per_condition`: .* GiB.*smaller `n_per_condition`")
def _(env):
    return _synth(env, n_per_condition=10**12), [env.sdata]


@CASES("central-sample-n-beyond-memory", ValueError, r"`n`: .* GiB")
def _(env):
    model = CentralModel.from_pretrained(env.central_dir)
    return lambda: model.sample(10**12, steps=1), []


@CASES("pp-size-beyond-memory", ValueError, r"`size`: .* GiB.*smaller `size`")
def _(env):
    return lambda: c2lst.pp.extract_patches(env.sdata, size=300_000, progress=False), [env.sdata]


@CASES("pp-patch-px-larger-than-image", ValueError, r"`patch_px` gives patches of 1e\+09 px.*larger than the image")
def _(env):
    return lambda: c2lst.pp.extract_patches(env.sdata, patch_px=1e9, progress=False), [env.sdata]


@CASES("pp-circle-radius-huge", ValueError, r"circle radius of shapes 'spots'.*larger than the image")
def _(env):
    env.sdata.shapes["spots"]["radius"] = 1e12
    return lambda: c2lst.pp.extract_patches(env.sdata, progress=False), [env.sdata]


# ============================================================================ issue 13: values stay valid
@CASES("synth-conditions-beyond-log-range", ValueError, r"`conditions` \(array\) holds values up to 100.*log1p")
def _(env):
    return _synth(env, conditions=np.full((1, len(genes(env))), 100.0, np.float32)), [env.sdata]


@CASES("synth-conditions-negative", ValueError, r"`conditions` \(dataframe\) holds negative values")
def _(env):
    df = pd.DataFrame(np.full((1, len(genes(env))), -5.0, np.float32), columns=genes(env))
    return _synth(env, conditions=df), [env.sdata, df]


@CASES("synth-seed-wraps-int64", ValueError, r"`seed=9223372036854775807` with 2 rows.*int64")
def _(env):
    return _synth(env, seed=2**63 - 1, n_per_condition=2), [env.sdata]


@CASES("synth-guidance-scale-1e30", ValueError, r"`guidance_scale=1e\+30` is beyond")
def _(env):
    return _synth(env, guidance_scale=1e30), [env.sdata]


@CASES("central-sample-guidance-scale-1e30", ValueError, r"`guidance_scale=1e\+30` is beyond")
def _(env):
    model = CentralModel.from_pretrained(env.central_dir)
    return lambda: model.sample(1, steps=1, guidance_scale=1e30), []


# ============================================================================ issue 13: resume means resume
def _run_copy(env, name: str) -> Path:
    dst = env.tmp / name
    shutil.copytree(env.central_dir.parent, dst)
    return dst


def _same_run(env, out: Path, **kwargs):
    """pretrain with the settings of the session's tiny central run (so its checkpoints match)."""
    p = np.asarray(table(env).obsm["c2lst_patch"])
    return _pretrain(p, batch_size=8, output_dir=out, **kwargs)


@CASES("pretrain-n-steps-below-checkpoint", ValueError, r"`n_steps=2` is below the step of the newest checkpoint")
def _(env):
    return _same_run(env, _run_copy(env, "run"), n_steps=2), []


@CASES("pretrain-fingerprint-file-missing", ValueError, r"step_8 has no readable c2lst_fingerprint\.json")
def _(env):
    out = _run_copy(env, "run")
    (out / "checkpoints" / "step_8" / "c2lst_fingerprint.json").unlink()
    return _same_run(env, out, n_steps=9), []


@CASES("pretrain-fingerprint-file-malformed", ValueError, r"step_8 has no readable c2lst_fingerprint\.json")
def _(env):
    out = _run_copy(env, "run")
    (out / "checkpoints" / "step_8" / "c2lst_fingerprint.json").write_text("{not json")
    return _same_run(env, out, n_steps=9), []


@CASES("pretrain-checkpoints-is-a-file", ValueError, r"file named 'checkpoints'")
def _(env):
    out = env.tmp / "run"
    out.mkdir()
    (out / "checkpoints").write_text("not a folder")
    return _pretrain(patches(), output_dir=out), []


# ============================================================================ issue 13: one error vocabulary
@CASES("central-sample-steps-string", TypeError, r"`steps` must be a positive integer")
def _(env):
    model = CentralModel.from_pretrained(env.central_dir)
    return lambda: model.sample(1, steps="a"), []


@CASES("synth-steps-string", TypeError, r"`n_steps` must be a positive integer")
def _(env):
    return _synth(env, n_steps="a"), [env.sdata]


@CASES("synth-device-banana", ValueError, r"`device='banana'` is not a device")
def _(env):
    return _synth(env, device="banana"), [env.sdata]


@CASES("pretrain-device-banana", ValueError, r"`device='banana'` is not a device")
def _(env):
    a = ad.AnnData(obsm={"c2lst_patch": patches()})
    return _pretrain(a, device="banana"), [a]


@CASES("synth-conditions-duplicate-gene-columns", ValueError, r"`conditions` has duplicate gene columns")
def _(env):
    g = genes(env)
    df = pd.DataFrame(np.zeros((1, len(g) + 1), np.float32), columns=[*g, g[0]])
    return _synth(env, conditions=df), [env.sdata, df]


@CASES("synth-conditions-ragged-list", ValueError, r"`conditions` is a ragged list")
def _(env):
    n = len(genes(env))
    return _synth(env, conditions=[[0.0] * n, [0.0] * (n - 1)]), [env.sdata]


@CASES("synth-conditions-string-cells", TypeError, r"`conditions` has non-numeric columns")
def _(env):
    df = pd.DataFrame(np.zeros((1, len(genes(env))), np.float32), columns=genes(env)).astype(object)
    df.iloc[0, 2] = "high"
    return _synth(env, conditions=df), [env.sdata, df]


@CASES("budget-adapt-kwargs-duplicate-seed", ValueError, r"`adapt_kwargs` sets \['seed'\].*pass `seed=` to budget")
def _(env):
    return lambda: c2lst.tl.budget_curve(
        env.sdata, central=str(env.central_dir), adapt_kwargs={"seed": 3}, progress=False
    ), [env.sdata]


@CASES("budget-synthesize-kwargs-duplicate-n", ValueError, r"`synthesize_kwargs` sets \['n_per_condition'\]")
def _(env):
    return lambda: c2lst.tl.budget_curve(
        env.sdata, central=str(env.central_dir), synthesize_kwargs={"n_per_condition": 3}, progress=False
    ), [env.sdata]


# ============================================================================ the test
def test_matrix_is_large_enough():
    assert len(CASES) >= 60  # plus the loading cases of test_bad_input_loading.py


@pytest.mark.parametrize(("build", "exc", "match"), CASES)
def test_bad_input(build, exc, match, env):
    run_case(build, exc, match, env)


# ============================================================================ gene order is data, not an error
def test_gene_order_of_conditions_does_not_matter(adapted_sdata, tiny_central):
    """Profiles given with columns / var in another order synthesize the same bytes as in adapter order."""
    t = adapted_sdata.tables["table"]
    genes = [str(g) for g in t.uns["c2lst"]["local"]["c2lst_local"]["genes"]]
    expr = np.asarray(t.obsm["c2lst_expr"][:2])
    ordered = pd.DataFrame(expr, columns=genes, index=["a", "b"])
    shuffled = ordered[list(reversed(genes))]
    kw = {"n_steps": 2, "seed": 4, "progress": False, "central": tiny_central[0]}
    a = c2lst.tl.synthesize(t, conditions=ordered, **kw)  # an AnnData in: the synthetic table comes back
    b = c2lst.tl.synthesize(t, conditions=shuffled, **kw)
    np.testing.assert_array_equal(a.obsm["c2lst_patch"], b.obsm["c2lst_patch"])
    assert list(b.var_names) == genes
    # an AnnData with its genes in reverse order (and extra genes) is matched by name, too
    sub = t[:2].copy()
    rev = sub[:, list(reversed(sub.var_names))].copy()
    c = c2lst.tl.synthesize(t, conditions=sub, **kw)
    d = c2lst.tl.synthesize(t, conditions=rev, **kw)
    np.testing.assert_array_equal(c.obsm["c2lst_patch"], d.obsm["c2lst_patch"])
    np.testing.assert_array_equal(c.X.toarray(), d.X.toarray())
