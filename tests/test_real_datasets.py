"""Readers of real data: a Visium mouse-brain crop and real H&E images / slides (../shared/data)."""

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image
from scipy import sparse
from spatialdata.models import get_table_keys
from spatialdata.transformations import Identity, get_transformation

from c2lst import datasets
from c2lst.datasets._io import read_rgb


def _data_dir() -> Path:
    env = os.environ.get("C2LST_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real test data folder {path} is absent (set C2LST_SHARED_DATA to its location)")
    return path


@pytest.fixture(scope="module")
def crop_paths():
    folder = _data_dir() / "visium_mouse_brain_crop"
    return folder / "test_data.h5ad", folder / "test_img.jpg"


@pytest.fixture(scope="module")
def crop(crop_paths):
    return datasets.from_visium_crop(*crop_paths)


@pytest.fixture(scope="module")
def he_dir():
    return _data_dir() / "he"


# ------------------------------------------------------------------ from_visium_crop
def test_from_visium_crop_layout(crop):
    assert set(crop.images) == {"he"}
    assert set(crop.shapes) == {"spots"}
    image = crop.images["he"]["scale0"]["image"]
    assert image.shape == (3, 1717, 950)
    assert image.dtype == np.uint8
    assert list(image.coords["c"].values) == ["r", "g", "b"]
    for element in (crop.images["he"], crop.shapes["spots"]):
        assert isinstance(get_transformation(element, "global"), Identity)
    table = crop.tables["table"]
    assert get_table_keys(table) == ("spots", "region", "spot_id")
    assert table.shape == (49, 1999)
    np.testing.assert_allclose(crop.shapes["spots"]["radius"], 89.44476 / 2, rtol=1e-5)
    g = crop.shapes["spots"].geometry
    np.testing.assert_allclose(np.stack([g.x, g.y], 1), table.obsm["spatial"])
    source = table.uns["c2lst"]["source"]
    assert source["pseudo_counts"]
    np.testing.assert_allclose(source["mpp"], 55 / 89.44476, rtol=1e-5)


def test_from_visium_crop_recovers_pseudo_counts(crop, crop_paths):
    table = crop.tables["table"]
    original = ad.read_h5ad(crop_paths[0])
    np.testing.assert_allclose(table.layers["lognorm"].toarray(), original.X.toarray(), rtol=1e-6)
    counts = table.X.toarray()
    assert table.X.dtype == np.float32
    assert np.array_equal(counts, np.rint(counts))
    assert counts.min() == 0
    assert (counts.max(1) >= 1).all()
    # each row is expm1(lognorm) up to one per-row factor; its smallest non-zero count is 1
    expd = np.expm1(original.X.toarray())
    nz = counts > 0
    np.testing.assert_array_equal(nz, expd > 0)
    ratio = expd[nz] / counts[nz]
    rows = np.nonzero(nz)[0]
    per_row = np.array([np.ptp(ratio[rows == r]) / ratio[rows == r].mean() for r in np.unique(rows)])
    assert per_row.max() < 0.01
    assert (np.where(nz, counts, np.inf).min(1) == 1).all()
    assert table.uns["c2lst"]["source"]["max_rounding_error"] < 0.05


def test_from_visium_crop_integer_counts_kept(crop_paths, tmp_path):
    adata = ad.read_h5ad(crop_paths[0])
    adata.X = sparse.csr_matrix(np.rint(np.expm1(adata.X.toarray()) * 3))
    adata.write_h5ad(tmp_path / "counts.h5ad")
    table = datasets.from_visium_crop(tmp_path / "counts.h5ad", crop_paths[1]).tables["table"]
    assert "lognorm" not in table.layers
    np.testing.assert_array_equal(table.X.toarray(), adata.X.toarray())
    assert not table.uns["c2lst"]["source"]["pseudo_counts"]


def test_from_visium_crop_spot_diameter(crop_paths, tmp_path):
    adata = ad.read_h5ad(crop_paths[0])
    del adata.uns["spatial"]
    adata.write_h5ad(tmp_path / "nodiam.h5ad")
    with pytest.raises(ValueError, match="spot_diameter_px"):
        datasets.from_visium_crop(tmp_path / "nodiam.h5ad", crop_paths[1])
    sdata = datasets.from_visium_crop(tmp_path / "nodiam.h5ad", crop_paths[1], spot_diameter_px=80)
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 40.0)


def test_from_visium_crop_bad_input(crop_paths, tmp_path):
    h5ad, image = crop_paths
    with pytest.raises(FileNotFoundError, match="h5ad_path"):
        datasets.from_visium_crop(tmp_path / "missing.h5ad", image)
    with pytest.raises(FileNotFoundError, match="image_path"):
        datasets.from_visium_crop(h5ad, tmp_path / "missing.png")
    with pytest.raises(ValueError, match="spot_diameter_px"):
        datasets.from_visium_crop(h5ad, image, spot_diameter_px=0)
    adata = ad.read_h5ad(h5ad)
    scaled = adata.copy()
    scaled.X = sparse.csr_matrix(scaled.X.toarray() - 1.0)
    scaled.write_h5ad(tmp_path / "scaled.h5ad")
    with pytest.raises(ValueError, match="negative"):
        datasets.from_visium_crop(tmp_path / "scaled.h5ad", image)
    far = adata.copy()
    far.obsm["spatial"] = adata.obsm["spatial"] + 10_000
    far.write_h5ad(tmp_path / "far.h5ad")
    with pytest.raises(ValueError, match="inside"):
        datasets.from_visium_crop(tmp_path / "far.h5ad", image)
    nospatial = adata.copy()
    del nospatial.obsm["spatial"]
    nospatial.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(KeyError, match="spatial"):
        datasets.from_visium_crop(tmp_path / "nospatial.h5ad", image)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="RGB"):
        datasets.from_visium_crop(h5ad, tmp_path / "grey.png")


# ------------------------------------------------------------------ he_patches
def test_read_svs_records_mpp(he_dir):
    image, mpp = read_rgb(he_dir / "cmu_small_region.svs")
    assert image.shape == (2967, 2220, 3)
    assert mpp == pytest.approx(0.499)


def test_he_patches_svs_in_microns(he_dir):
    tiles = datasets.he_patches(he_dir / "cmu_small_region.svs", size=32, patch_um=64.0)
    # 64 µm at 0.499 µm/px = 128 px tiles: a 17 x 23 grid, about a third of it tissue
    assert tiles.shape[1:] == (32, 32, 3)
    assert tiles.dtype == np.uint8
    assert 60 < tiles.shape[0] < 17 * 23
    od = -np.log10((tiles.astype(float) + 1) / 256).mean(-1)
    assert ((od > 0.1).mean((1, 2)) >= 0.4).all()  # background tiles were rejected
    everything = datasets.he_patches(
        he_dir / "cmu_small_region.svs", size=32, patch_um=64.0, tissue_threshold=0
    )
    assert everything.shape[0] == 17 * 23


def test_he_patches_several_images_subsampled(he_dir):
    paths = [he_dir / "target_image.png", he_dir / "histo.jpg"]
    tiles = datasets.he_patches(paths, size=16, patch_px=64, n_per_image=5, seed=1)
    assert tiles.shape == (10, 16, 16, 3)
    np.testing.assert_array_equal(
        tiles, datasets.he_patches(paths, size=16, patch_px=64, n_per_image=5, seed=1)
    )
    assert not np.array_equal(tiles, datasets.he_patches(paths, size=16, patch_px=64, n_per_image=5, seed=2))
    native = datasets.he_patches(he_dir / "histo.jpg", size=50)
    assert native.shape[1:] == (50, 50, 3)  # patch_px defaults to size: native resolution
    assert native.shape[0] <= (300 // 50) * (500 // 50)
    # 50 µm at 0.5 µm/px = 100 px tiles: a 10 x 10 grid of the 1000 px image
    tiles = datasets.he_patches(
        he_dir / "target_image.png", size=32, patch_um=50.0, mpp=0.5, tissue_threshold=0
    )
    assert tiles.shape[0] == 100


def test_he_patches_bad_input(he_dir, tmp_path):
    png = he_dir / "histo.jpg"
    with pytest.raises(ValueError, match="mpp"):
        datasets.he_patches(png, patch_um=50.0)
    with pytest.raises(ValueError, match="not both"):
        datasets.he_patches(png, patch_px=64, patch_um=50.0)
    with pytest.raises(ValueError, match="tissue_threshold"):
        datasets.he_patches(png, tissue_threshold=1.5)
    with pytest.raises(ValueError, match="empty"):
        datasets.he_patches([])
    with pytest.raises(FileNotFoundError, match="paths"):
        datasets.he_patches(tmp_path / "nope.png")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="suffix"):
        datasets.he_patches(tmp_path / "x.txt")
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tmp_path / "glass.png")
    with pytest.raises(ValueError, match="No tile"):
        datasets.he_patches(tmp_path / "glass.png", size=16)
