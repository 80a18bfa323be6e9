"""The whole C2L-ST pipeline on real data (../shared/data): real Visium spots, real H&E, a real 10x folder.

Smoke tests with the tiny preset and a handful of optimisation steps: they check shapes, keys, lineage and that
metrics are finite, not the quality of the models (see ``benchmarks/bench_real.py`` for that).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_data_dir
from PIL import Image
from scipy.ndimage import map_coordinates

import c2lst
from c2lst._records import lineage

SIZE = 32
N_GENES = 12


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real test data ../shared/data is absent (set C2LST_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # scanpy's seurat_v3 HVG runs numba, which resets the OpenMP thread count torch uses; on a busy shared CPU
    # several spinning OpenMP threads make the tiny training steps 10x slower, so pin torch to one thread here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the real 49-spot crop, end to end
@pytest.fixture(scope="module")
def crop(data_dir):
    folder = data_dir / "visium_mouse_brain_crop"
    sdata = c2lst.datasets.from_visium_crop(folder / "test_data.h5ad", folder / "test_img.jpg")
    c2lst.pp.extract_patches(sdata, size=SIZE, progress=False)
    c2lst.pp.prepare_expression(sdata.tables["table"], n_top_genes=N_GENES)
    torch.set_num_threads(1)  # numba (seurat_v3 HVG) has just reset it
    return sdata


@pytest.fixture(scope="module")
def he_tiles(data_dir):
    paths = sorted((data_dir / "he").iterdir())
    return c2lst.datasets.he_patches(paths, size=SIZE, patch_px=64, n_per_image=8, seed=0)


@pytest.fixture(scope="module")
def held_out(crop):
    """Hold out the spots of the top quarter of the crop (a spatial block, not random spots)."""
    y = crop.tables["table"].obsm["spatial"][:, 1]
    return y <= np.quantile(y, 0.25)


@pytest.fixture(scope="module")
def pipeline(crop, he_tiles, held_out, tmp_path_factory):
    """pretrain on real H&E -> adapt on the 49 real spots -> synthesize -> predictor on held-out spots."""
    out = tmp_path_factory.mktemp("real_central")
    central = c2lst.tl.pretrain(
        he_tiles, preset="tiny", n_steps=3, batch_size=8, output_dir=out, device="cpu", progress=False
    )
    table = crop.tables["table"]
    # smoke test: the adapter sees every spot's image; benchmarks/bench_real.py adapts per held-out fold
    c2lst.tl.adapt(table, central=str(out / "model"), n_steps=3, batch_size=8, device="cpu", progress=False)
    c2lst.tl.synthesize(crop, n_steps=2, n_per_condition=1, seed=5, device="cpu", progress=False)
    syn = crop.tables["c2lst_synthetic"]
    train_names = set(table.obs_names[~held_out])
    syn_train = syn[syn.obs["c2lst_parent"].isin(train_names).to_numpy()].copy()
    real_train, test = table[~held_out].copy(), table[held_out].copy()
    predictors = {}
    for cond, tables in (("real", [real_train]), ("real+synthetic", [real_train, syn_train])):
        predictors[cond] = c2lst.tl.fit_predictor(tables, mode="ridge", seed=0, progress=False)
        c2lst.tl.predict_expression(test, predictor=predictors[cond], key_added=f"pred_{cond}")
        c2lst.tl.evaluate_prediction(test, pred_key=f"pred_{cond}")
    return {"central": central, "dir": out / "model", "predictors": predictors, "test": test, "syn": syn}


def test_crop_patches_are_real_tissue(crop):
    table = crop.tables["table"]
    patches = table.obsm["c2lst_patch"]
    assert patches.shape == (49, SIZE, SIZE, 3)
    assert patches.dtype == np.uint8
    assert not table.obs["c2lst_patch_clipped"].any()  # the crop keeps >= 200 px around every spot
    params = table.uns["c2lst"]["patches"]["c2lst_patch"]
    assert params["extent_rule"] == "spot_diameter"
    assert params["extent_px"] == pytest.approx(89.44476, rel=1e-4)
    od = -np.log10((patches.astype(np.float64) + 1) / 256).mean(-1)
    assert ((od > 0.1).mean((1, 2)) > 0.8).all()  # stained tissue, not glass or white padding
    assert (patches.reshape(49, -1).std(1) > 5).all()  # texture, not a flat fill
    flat = patches.reshape(49, -1).astype(np.float64)
    diff = np.abs(flat[:, None] - flat[None]).mean(-1)
    np.fill_diagonal(diff, np.inf)
    assert diff.min() > 5  # every spot has its own patch


def test_crop_patch_is_cut_at_its_spot(crop, data_dir):
    # one spot, cut again 1:1 (patch_px = size) and compared with a bilinear crop of the JPEG at its centre
    c2lst.pp.extract_patches(crop, size=SIZE, patch_px=SIZE, key_added="one_to_one", progress=False)
    table = crop.tables["table"]
    image = np.asarray(Image.open(data_dir / "visium_mouse_brain_crop" / "test_img.jpg").convert("RGB"))
    x, y = table.obsm["spatial"][7]
    grid = np.arange(SIZE) - SIZE / 2  # output pixel centres, in image pixel indices
    yy, xx = np.meshgrid(y + grid, x + grid, indexing="ij")
    manual = np.stack([map_coordinates(image[..., c].astype(float), [yy, xx], order=1) for c in range(3)], -1)
    got = table.obsm["one_to_one"][7].astype(float)
    assert np.abs(got - manual).mean() < 1.0
    shifted = np.stack(
        [map_coordinates(image[..., c].astype(float), [yy, xx + 3], order=1) for c in range(3)], -1
    )
    assert np.abs(got - shifted).mean() > 3 * np.abs(got - manual).mean()


def test_crop_expression_from_pseudo_counts(crop):
    table = crop.tables["table"]
    expr = table.obsm["c2lst_expr"]
    assert expr.shape == (49, N_GENES)
    assert expr.dtype == np.float32
    assert np.isfinite(expr).all()
    record = table.uns["c2lst"]["expr"]["c2lst_expr"]
    # pseudo-counts are integers, so scanpy's count path is used (not the "already log-normalised" one)
    assert record["normalization"] == "normalize_total+log1p"
    assert record["flavor"] == "seurat_v3"
    assert set(record["genes"]) <= set(table.var_names)


def test_he_tiles_from_three_real_images(he_tiles):
    assert he_tiles.shape == (24, SIZE, SIZE, 3)  # 8 tissue tiles from each of the SVS, PNG and JPEG
    assert he_tiles.dtype == np.uint8
    assert len({t.tobytes() for t in he_tiles}) == 24


def test_pretrain_on_real_he(pipeline):
    central = pipeline["central"]
    assert central.image_size == SIZE
    summary = central.training_summary
    assert summary["n_patches"] == 24
    assert summary["steps"] == 3
    assert np.isfinite(summary["loss_last"])
    assert (pipeline["dir"]).is_dir()
    assert len(central.sha256) == 64


def test_adapt_on_real_spots(crop, pipeline):
    table = crop.tables["table"]
    record = table.uns["c2lst"]["local"]["c2lst_local"]
    genes = list(table.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])
    assert [str(g) for g in record["genes"]] == genes
    assert record["central_file_sha256"] == pipeline["central"].sha256
    assert json.loads(record["summary"])["n_spots"] == 49
    records = lineage(table)
    assert [rec["function"] for rec in records[:2]] == [
        "c2lst.pp.extract_patches",
        "c2lst.pp.prepare_expression",
    ]
    (rec,) = [rec for rec in records if rec["function"] == "c2lst.tl.adapt"]
    assert rec["model_sha256"] == {"central": record["central_sha256"], "adapter": record["sha256"]}
    assert rec["parameters"]["n_steps"] == 3


def test_synthesize_from_real_spots(crop, pipeline):
    table, syn = crop.tables["table"], pipeline["syn"]
    assert syn.n_obs == 49
    assert syn.obsm["c2lst_patch"].shape == (49, SIZE, SIZE, 3)
    assert syn.obsm["c2lst_patch"].dtype == np.uint8
    assert syn.obs["c2lst_synthetic"].all()
    assert list(syn.obs["c2lst_parent"]) == list(table.obs_names)
    np.testing.assert_array_equal(syn.obs["c2lst_seed"], 5 + np.arange(49))
    genes = list(syn.var_names)
    np.testing.assert_array_equal(syn.X.toarray(), table[:, genes].X.toarray())  # the parents' pseudo-counts
    assert "c2lst_synthetic" in crop.tables
    assert "c2lst_synthetic_image" in crop.images
    assert "c2lst_synthetic_spots" in crop.shapes
    (rec,) = lineage(syn)
    assert rec["function"] == "c2lst.tl.synthesize"
    assert rec["input_table"] == "table"
    adapter = table.uns["c2lst"]["local"]["c2lst_local"]
    assert rec["model_sha256"] == {"central": adapter["central_sha256"], "adapter": adapter["sha256"]}


def test_predictor_on_held_out_real_spots(pipeline, held_out):
    test = pipeline["test"]
    n_test, n_train = int(held_out.sum()), int((~held_out).sum())
    assert 10 <= n_test <= 15
    assert pipeline["predictors"]["real"].training["n_real"] == n_train
    assert pipeline["predictors"]["real"].training["n_synthetic"] == 0
    assert pipeline["predictors"]["real+synthetic"].training["n_synthetic"] == n_train
    for cond in ("real", "real+synthetic"):
        assert test.obsm[f"pred_{cond}"].shape == (n_test, N_GENES)
        ev = test.uns["c2lst"]["evaluation"][f"pred_{cond}"]
        assert ev["n_obs"] == n_test
        assert len(ev["pearson_r"]) == N_GENES
        assert np.isfinite(ev["mean_pearson_r"])
        assert np.isfinite(ev["mean_mse"])
        assert len(ev["moran_difference"]) == N_GENES
    metrics = c2lst.tl.prediction_metrics(test, key="pred_real")
    assert isinstance(metrics, pd.DataFrame)
    assert len(metrics) == N_GENES


# ------------------------------------------------------------------ the real 10x Space Ranger folder
@pytest.fixture(scope="module")
def visium_dir(data_dir):
    return data_dir / "visium_10x_folder"


@pytest.fixture(scope="module")
def visium(visium_dir):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    return spatialdata_io.visium(visium_dir, dataset_id="brain")


@pytest.fixture(scope="module")
def scalefactors(visium_dir):
    return json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())


def test_visium_folder_reader(visium, scalefactors):
    from spatialdata.transformations import get_transformation

    assert set(visium.images) == {"brain_hires_image", "brain_lowres_image"}
    assert set(visium.shapes) == {"brain"}
    table = visium.tables["table"]
    assert table.shape == (100, 100)
    low = get_transformation(visium.images["brain_lowres_image"], "brain")
    np.testing.assert_allclose(
        low.to_affine_matrix(("x", "y"), ("x", "y"))[:2, :2],
        np.eye(2) / scalefactors["tissue_lowres_scalef"],
        rtol=1e-5,
    )
    np.testing.assert_allclose(visium.shapes["brain"]["radius"], scalefactors["spot_diameter_fullres"] / 2)
    # the hires image of this folder is a placeholder: RGB all black (alpha 255), so patches come from lowres
    hires = visium.images["brain_hires_image"]
    assert int(np.asarray(hires.data[:3]).max()) == 0


def test_extract_patches_needs_image_key_on_visium(visium):
    with pytest.raises(ValueError, match="image_key"):
        c2lst.pp.extract_patches(visium, size=16, progress=False)
    assert "c2lst_patch" not in visium.tables["table"].obsm


def _manual_lowres_crops(visium_dir, scalefactors, names, side, shift=0.0):
    """Bilinear crops of the lowres PNG at the spots of tissue_positions_list.csv, in lowres pixels."""
    low = np.asarray(Image.open(visium_dir / "spatial" / "tissue_lowres_image.png").convert("RGB"), float)
    pos = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    s = scalefactors["tissue_lowres_scalef"]
    ys, xs = pos.loc[names, 4].to_numpy() * s, pos.loc[names, 5].to_numpy() * s  # pxl_row_in_fullres, pxl_col
    grid = np.arange(side) - side / 2 + shift  # pixel i covers [i, i + 1): centres at i + 0.5
    out = []
    for x, y in zip(xs, ys, strict=True):
        yy, xx = np.meshgrid(y + grid, x + grid, indexing="ij")
        out.append(
            np.stack([map_coordinates(low[..., c], [yy, xx], order=1, mode="nearest") for c in range(3)], -1)
        )
    return np.stack(out)


def test_extract_patches_lowres_through_scale(visium, visium_dir, scalefactors):
    table = visium.tables["table"]
    s = scalefactors["tissue_lowres_scalef"]
    side = 16  # lowres pixels, i.e. 16 / s full-resolution pixels, cut 1:1
    c2lst.pp.extract_patches(
        visium, image_key="brain_lowres_image", patch_px=side / s, size=side, progress=False
    )
    patches = table.obsm["c2lst_patch"]
    params = table.uns["c2lst"]["patches"]["c2lst_patch"]
    assert patches.shape == (100, side, side, 3)
    assert params["coordinate_system"] == "brain"
    assert params["level_pixel_size"] == pytest.approx(1 / s, rel=1e-5)
    assert params["extent_px"] == pytest.approx(side, rel=1e-5)
    assert params["supersampling"] == 1
    assert params["n_clipped"] == 0
    assert (patches.reshape(100, -1).mean(1) > 60).all()  # real tissue, not the black hires placeholder
    manual = _manual_lowres_crops(visium_dir, scalefactors, table.obs_names, side)
    err = np.abs(patches - manual).mean()
    assert err < 1.0  # centred on the spots
    for shift in (-1.0, 1.0):
        off = _manual_lowres_crops(visium_dir, scalefactors, table.obs_names, side, shift=shift)
        assert np.abs(patches - off).mean() > 3 * err


def test_extract_patches_lowres_spot_extent(visium, scalefactors):
    c2lst.pp.extract_patches(visium, image_key="brain_lowres_image", size=8, key_added="spot", progress=False)
    table = visium.tables["table"]
    params = table.uns["c2lst"]["patches"]["spot"]
    # the default extent is the spot: 89.4 full-resolution px = about 4 lowres px, upsampled to 8 px
    assert params["extent"] == pytest.approx(scalefactors["spot_diameter_fullres"], rel=1e-5)
    assert params["extent_px"] == pytest.approx(
        scalefactors["spot_diameter_fullres"] * scalefactors["tissue_lowres_scalef"], rel=1e-5
    )
    assert table.obsm["spot"].shape == (100, 8, 8, 3)
    assert (table.obsm["spot"].reshape(100, -1).mean(1) > 60).all()
