"""Behaviour of ``c2lst.pp.extract_patches`` on hand-made images with known patterns and transforms."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
from _pp_helpers import (
    circles,
    expected_linear_patch,
    image,
    linear_field_image,
    make_sdata,
    pattern,
    table,
)
from shapely.geometry import Polygon
from spatialdata import SpatialData
from spatialdata.models import ShapesModel
from spatialdata.transformations import Affine, Identity, Scale, Sequence, Translation

from c2lst.pp import extract_patches

XY = ("x", "y")


def _patches(sdata, key="table", name="c2lst_patch"):
    return sdata.tables[key].obsm[name]


def test_identity_aligned_crop_is_exact_and_in_table_order():
    img = pattern(120, 160)
    centres = [[40, 30], [100, 80], [20, 90]]
    sdata = make_sdata(img, centres, 8, instance_ids=[2, 0, 1])  # table rows point at spots 2, 0, 1
    extract_patches(sdata, size=16, progress=False)
    p = _patches(sdata)
    assert p.shape == (3, 16, 16, 3)
    assert p.dtype == np.uint8
    for row, spot in enumerate([2, 0, 1]):
        x, y = centres[spot]
        np.testing.assert_array_equal(p[row], img[:, y - 8 : y + 8, x - 8 : x + 8].transpose(1, 2, 0))
    t = sdata.tables["table"]
    assert not t.obs["c2lst_patch_clipped"].any()
    rec = t.uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["image_key"] == "he"
    assert rec["shapes_key"] == "spots"
    assert rec["coordinate_system"] == "global"
    assert rec["size"] == 16
    assert rec["extent"] == pytest.approx(16.0)
    assert rec["level"] == 0
    assert rec["n_clipped"] == 0
    assert rec["rescale"].startswith("uint8")
    assert any(r["function"] == "c2lst.pp.extract_patches" for r in t.uns["c2lst"]["lineage"].values())


@pytest.mark.parametrize(
    "a_img",
    [
        np.eye(3),
        np.diag([2.0, 2.0, 1.0]),  # Space Ranger hires style: image is a downscaled copy
        np.diag([0.5, 1.5, 1.0]),  # anisotropic
        np.array([[np.cos(0.5), -np.sin(0.5), 0], [np.sin(0.5), np.cos(0.5), 0], [0, 0, 1]])
        * [[1.3], [1.3], [1]],
        np.array([[0.0, -1.0, 0], [1.0, 0.0, 0], [0, 0, 1]]),  # 90 degree rotation
        np.array([[1.0, 0.4, 0], [0.1, 1.2, 0], [0, 0, 1]]),  # shear
    ],
    ids=["identity", "scale2", "anisotropic", "rotation_scale", "rot90", "shear"],
)
def test_affine_transforms_give_the_right_crops(a_img):
    # image values are a linear function of the coordinate-system position: the right crop is known exactly
    img, t = linear_field_image(a_img)
    centres = np.array([[150.0, 150.0], [90.0, 200.0], [210.5, 120.25]])
    sdata = make_sdata(img, centres, 20.0, img_t=t)
    extract_patches(sdata, size=12, progress=False)
    p = _patches(sdata).astype(float)
    for i, c in enumerate(centres):
        exp = expected_linear_patch(c, 40.0, 12)
        assert np.abs(p[i] - exp).max() <= 1.6, np.abs(p[i] - exp).max()


def test_sequence_transform_and_scaled_shapes():
    # shapes in a different unit (Scale) and image behind Sequence(Scale, Translation)
    img, t = linear_field_image(np.diag([2.0, 2.0, 1.0]))
    m = t.to_affine_matrix(input_axes=XY, output_axes=XY)
    seq = Sequence([Scale([m[0, 0], m[1, 1]], axes=XY), Translation([m[0, 2], m[1, 2]], axes=XY)])
    centres_um = np.array([[75.0, 75.0], [45.0, 100.0]])  # shapes in half units: Scale(2) to the cs
    sdata = make_sdata(img, centres_um, 10.0, img_t=seq, shapes_t=Scale([2.0, 2.0], axes=XY))
    extract_patches(sdata, size=10, progress=False)
    p = _patches(sdata).astype(float)
    for i, c in enumerate(centres_um):
        assert np.abs(p[i] - expected_linear_patch(2 * c, 40.0, 10)).max() <= 1.6


def test_rotated_shapes_give_patches_oriented_like_the_coordinate_system():
    img, t = linear_field_image(np.eye(3))
    rot = np.array([[0.0, -1.0, 300.0], [1.0, 0.0, 0.0], [0, 0, 1]])  # shapes intrinsic -> cs
    centres_cs = np.array([[150.0, 150.0], [100.0, 210.0]])
    intrinsic = (np.linalg.inv(rot) @ np.c_[centres_cs, np.ones(2)].T)[:2].T
    shapes_t = Affine(rot, input_axes=XY, output_axes=XY)
    sdata = make_sdata(img, intrinsic, 15.0, img_t=t, shapes_t=shapes_t)
    extract_patches(sdata, size=10, progress=False)
    for i, c in enumerate(centres_cs):
        assert np.abs(_patches(sdata)[i] - expected_linear_patch(c, 30.0, 10)).max() <= 1.6


def test_rot90_matches_identity_exactly():
    c_img = pattern(90, 120)
    rot = np.ascontiguousarray(np.rot90(c_img, k=1, axes=(1, 2)))  # I[:, i, j] = C[:, j, W - 1 - i]
    a = Affine(np.array([[0.0, -1.0, 120.0], [1.0, 0.0, 0.0], [0, 0, 1]]), input_axes=XY, output_axes=XY)
    centres = [[40, 30], [80, 60]]
    ref = make_sdata(c_img, centres, 6)
    rotd = make_sdata(rot, centres, 6, img_t=a)
    extract_patches(ref, size=12, progress=False)
    extract_patches(rotd, size=12, progress=False)
    np.testing.assert_array_equal(_patches(ref), _patches(rotd))
    assert "affine" in rotd.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]["resampling"]


def test_scale_hires_copy_matches_fullres_block_average():
    full = pattern(128, 128)
    half = full.reshape(3, 64, 2, 64, 2).astype(float).mean(axis=(2, 4))
    half = np.rint(half).astype(np.uint8)
    centres = [[32, 32], [64, 80], [100, 40]]
    a = make_sdata(full, centres, 8)
    b = make_sdata(half, centres, 8, img_t=Scale([2.0, 2.0], axes=("y", "x")))
    extract_patches(a, size=8, progress=False)
    extract_patches(b, size=8, progress=False)
    diff = np.abs(_patches(a).astype(int) - _patches(b).astype(int))
    assert diff.max() <= 1
    rec_a = a.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    rec_b = b.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec_a["supersampling"] == 2
    assert rec_b["supersampling"] == 1
    assert rec_b["extent_px"] == pytest.approx(8.0)  # 16 full-res units = 8 hires pixels


@pytest.mark.parametrize(("size", "level"), [(16, 2), (20, 1), (32, 1), (64, 0), (128, 0)])
def test_pyramid_level_choice(size, level):
    img, _ = linear_field_image(np.eye(3), roi=256)
    sdata = make_sdata(img, [[128, 128], [100, 150]], 32, scale_factors=[2, 2])
    extract_patches(sdata, size=size, progress=False)
    rec = sdata.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["level"] == level
    assert rec["level_downsample"] == pytest.approx(2**level)
    exp = expected_linear_patch([128, 128], 64, size)
    assert np.abs(_patches(sdata)[0].astype(float) - exp).max() <= 2.0


def test_reads_only_the_chunks_under_the_spots_once_each():
    base = da.from_array(pattern(512, 512), chunks=(3, 64, 64))
    touched = []

    def record(block, block_info=None):
        touched.append(tuple(block_info[None]["chunk-location"]))
        return block

    lazy = base.map_blocks(record, dtype=np.uint8)
    # spots straddling chunk borders, in two batches of one spot each sharing chunks (0, 1)
    sdata = SpatialData(
        images={"he": image(lazy)},
        shapes={"spots": circles([[60, 40], [90, 30]], 10)},
        tables={"table": table(2)},
    )
    extract_patches(sdata, size=8, batch_size=1, progress=False)
    assert sorted(touched) == [(0, 0, 0), (0, 0, 1)]  # only the 2 of 64 chunks needed, each read once
    ref = make_sdata(pattern(512, 512), [[60, 40], [90, 30]], 10)
    extract_patches(ref, size=8, progress=False)
    np.testing.assert_array_equal(_patches(sdata), _patches(ref))


def test_clipped_spots_are_padded_white_and_flagged():
    img = pattern(100, 100)
    centres = [[50, 50], [95, 50], [-30, 50], [50, 3]]
    sdata = make_sdata(img, centres, 10)
    extract_patches(sdata, size=20, progress=False)
    p = _patches(sdata)
    flags = sdata.tables["table"].obs["c2lst_patch_clipped"].to_numpy()
    np.testing.assert_array_equal(flags, [False, True, True, True])
    assert (p[1][:, 15:] == 255).all()  # x 100..105 is outside
    np.testing.assert_array_equal(p[1][:, :15], img[:, 40:60, 85:100].transpose(1, 2, 0))
    assert (p[2] == 255).all()  # entirely outside
    assert (p[3][:7] == 255).all()
    rec = sdata.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["n_clipped"] == 3
    assert rec["n_outside"] == 1


def _pixel_kinds():
    base = pattern(60, 80)
    alpha = np.full((1, 60, 80), 7, np.uint8)
    return {
        "rgba": np.concatenate([base, alpha]),
        "uint16": base.astype(np.uint16) * 257,
        "float32": base.astype(np.float32) / 255.0,
        "float64": base.astype(np.float64) / 255.0,
    }


@pytest.mark.parametrize("kind", ["rgba", "uint16", "float32", "float64"])
def test_rgba_uint16_float_inputs(kind):
    centres = [[30, 30], [70, 30]]  # the second is clipped: background must be white in every dtype
    ref = make_sdata(pattern(60, 80), centres, 8)
    other = make_sdata(_pixel_kinds()[kind], centres, 8)
    extract_patches(ref, size=16, progress=False)
    extract_patches(other, size=16, progress=False)
    diff = np.abs(_patches(ref).astype(int) - _patches(other).astype(int))
    assert diff.max() <= (0 if kind != "float32" else 1)
    rec = other.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert ("alpha dropped" in rec["rescale"]) == (kind == "rgba")


def test_patch_px_and_patch_um_extents():
    img, _ = linear_field_image(np.eye(3))
    centres = [[150, 150]]
    sim = {"c2lst": {"simulation": {"mpp": 0.5}}}
    a = make_sdata(img, centres, 10, uns=sim)
    extract_patches(a, patch_px=60, size=12, progress=False)
    assert np.abs(_patches(a)[0] - expected_linear_patch(centres[0], 60, 12)).max() <= 1.6
    extract_patches(
        a, patch_um=15.0, size=12, key_added="c2lst_um", progress=False
    )  # 15 um / 0.5 mpp = 30 px
    rec = a.tables["table"].uns["c2lst"]["patches"]["c2lst_um"]
    assert rec["extent"] == pytest.approx(30.0)
    assert rec["um_per_unit"] == pytest.approx(0.5)
    assert np.abs(_patches(a, name="c2lst_um")[0] - expected_linear_patch(centres[0], 30, 12)).max() <= 1.6
    b = make_sdata(img, centres, 27.5)  # no mpp: Visium convention, 55 px spot = 55 um
    extract_patches(b, patch_um=110.0, size=12, progress=False)
    rec = b.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["extent"] == pytest.approx(110.0)
    assert "55" in rec["um_source"]


def test_polygons_use_the_equal_area_circle():
    img = pattern(100, 100)
    square = Polygon([(40, 40), (56, 40), (56, 56), (40, 56)])  # area 256 -> diameter 18.05
    shapes = ShapesModel.parse(
        __import__("geopandas").GeoDataFrame(geometry=[square]), transformations={"global": Identity()}
    )
    sdata = SpatialData(images={"he": image(img)}, shapes={"spots": shapes}, tables={"table": table(1)})
    extract_patches(sdata, size=8, progress=False)
    rec = sdata.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["extent"] == pytest.approx(2 * np.sqrt(256 / np.pi))
    assert abs(float(_patches(sdata)[0, :, :, 0].mean()) - 48) < 1  # R encodes x; centred at x = 48


def test_batching_does_not_change_the_result():
    img = pattern(300, 300)
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 300, size=(40, 2))
    a = make_sdata(img, centres, 7.3)
    b = make_sdata(img, centres, 7.3)
    extract_patches(a, size=9, progress=False)
    extract_patches(b, size=9, batch_size=3, progress=False)
    np.testing.assert_array_equal(_patches(a), _patches(b))


def test_synthetic_elements_in_their_own_coordinate_system_are_found():
    # the real slide in "global", plus a synthetic image tiling patches and its circles in "c2lst_synthetic"
    real = make_sdata(pattern(100, 100), [[50, 50]], 8)
    tiles = pattern(32, 64)
    cs = "c2lst_synthetic"
    real.images["c2lst_synthetic_image"] = image(tiles, Scale([2.0, 2.0], axes=XY), cs=cs)
    real.shapes["c2lst_synthetic_spots"] = circles([[32, 32], [96, 32]], 32, cs=cs)
    real.tables["c2lst_synthetic"] = table(2, region="c2lst_synthetic_spots")
    extract_patches(real, table_key="c2lst_synthetic", size=32, progress=False)
    rec = real.tables["c2lst_synthetic"].uns["c2lst"]["patches"]["c2lst_patch"]
    assert (rec["image_key"], rec["coordinate_system"]) == ("c2lst_synthetic_image", cs)
    p = _patches(real, key="c2lst_synthetic")
    np.testing.assert_array_equal(p[0], tiles[:, :, :32].transpose(1, 2, 0))
    np.testing.assert_array_equal(p[1], tiles[:, :, 32:].transpose(1, 2, 0))
    assert "c2lst_patch" not in real.tables["table"].obsm


def test_equivalent_coordinate_systems_are_not_ambiguous():
    img = pattern(64, 64)
    extra = {"other": Scale([2.0, 2.0], axes=XY)}
    sdata = SpatialData(
        images={"he": image(img, extra_cs={"other": Scale([2.0, 2.0], axes=XY)})},
        shapes={"spots": circles([[32, 32]], 8, extra_cs=extra)},
        tables={"table": table(1)},
    )
    extract_patches(sdata, size=16, progress=False)
    assert sdata.tables["table"].uns["c2lst"]["patches"]["c2lst_patch"]["coordinate_system"] == "global"


def test_results_survive_a_zarr_round_trip(tmp_path):
    sdata = make_sdata(pattern(64, 64), [[20, 20], [40, 40]], 5)
    extract_patches(sdata, size=8, progress=False)
    sdata.write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    t = back.tables["table"]
    np.testing.assert_array_equal(t.obsm["c2lst_patch"], _patches(sdata))
    assert t.uns["c2lst"]["patches"]["c2lst_patch"]["image_key"] == "he"
    assert t.obs["c2lst_patch_clipped"].dtype == bool


def test_on_the_simulated_visium_sample():
    import c2lst

    sdata = c2lst.datasets.simulated_visium(n_spots=30, seed=1)
    table_ = sdata.tables["table"]
    extract_patches(sdata, size=16, progress=False)
    extract_patches(sdata, patch_um=110.0, size=16, key_added="c2lst_patch_wide", progress=False)
    p = table_.obsm["c2lst_patch"]
    assert p.shape == (30, 16, 16, 3)
    assert p.std() > 5  # tissue, not background
    rec = table_.uns["c2lst"]["patches"]["c2lst_patch_wide"]
    mpp = float(table_.uns["c2lst"]["simulation"]["mpp"])
    assert rec["extent"] == pytest.approx(110.0 / mpp)
    assert rec["extent"] == pytest.approx(2 * table_.uns["c2lst"]["patches"]["c2lst_patch"]["extent"])
