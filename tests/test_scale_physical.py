"""``extract_patches(patch_um=...)`` takes the physical scale from the data: Visium, Visium HD, Xenium + H&E.

The fixtures are built with spatialdata's own models laid out the way spatialdata-io 0.7 readers lay them out
(element names, coordinate systems, transformations, square bins, micrometre shapes, ``attrs`` provenance).
"""

from __future__ import annotations

import warnings

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from _pp_helpers import expected_linear_patch, linear_field_image, pattern
from _reliability_helpers import state
from shapely.geometry import Polygon
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale

import c2lst
from c2lst import _records as records
from c2lst.pp import extract_patches

XENIUM_PX_UM = 0.2125  # µm per morphology pixel ("pixel_size" in experiment.xenium)


def _rec(sdata, table_key="table", key="c2lst_patch"):
    return sdata.tables[table_key].uns["c2lst"]["patches"][key]


def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return fn()


# --------------------------------------------------------------------------- Visium HD (square bins)
def _visium_hd(mpp: float = 0.5, *, squares: bool = True, reader: str | None = "visium_hd") -> sd.SpatialData:
    """Space Ranger HD layout: one table per bin size named ``square_XXXum`` annotating ``{dataset}_square_XXXum``."""
    ds = "hd"
    img = pattern(600, 600)
    tables, shapes = {}, {}
    for bin_um in (16, 8):
        side = bin_um / mpp  # spot_diameter_fullres of this bin size
        xy = np.array([[300.0, 300.0], [200.0, 240.0], [400.0, 330.0]])
        name = f"square_{bin_um:03d}um"
        circles = ShapesModel.parse(
            xy, geometry=0, radius=side / 2, index=pd.Index(np.arange(3)), transformations={ds: Identity()}
        )
        if squares:  # spatialdata-io: circles.buffer(radius, cap_style=3)
            circles = ShapesModel.parse(
                gpd.GeoDataFrame(geometry=circles.buffer(side / 2, cap_style=3)), transformations={ds: Identity()}
            )
        shapes[f"{ds}_{name}"] = circles
        obs = pd.DataFrame(
            {"region": pd.Categorical([f"{ds}_{name}"] * 3), "location_id": np.arange(3)},
            index=[f"s_{bin_um:03d}um_{i:05d}-1" for i in range(3)],
        )
        table = ad.AnnData(np.ones((3, 2), np.float32), obs=obs)
        table.obsm["spatial"] = xy
        tables[name] = TableModel.parse(table, region=f"{ds}_{name}", region_key="region", instance_key="location_id")
    images = {
        f"{ds}_full_image": Image2DModel.parse(
            img, dims=("c", "y", "x"), scale_factors=[2], transformations={ds: Identity()}, rgb=None
        )
    }
    sdata = sd.SpatialData(images=images, shapes=shapes, tables=tables)
    if reader:
        sdata.attrs["spatialdata_io_reader"] = reader
    return sdata


@pytest.mark.parametrize("squares", [True, False], ids=["squares", "circles"])
def test_visium_hd_bins_take_the_scale_from_the_bin_size(squares):
    sdata = _visium_hd(0.5, squares=squares)
    _no_warnings(lambda: extract_patches(sdata, table_key="square_016um", patch_um=55.0, size=110, progress=False))
    rec = _rec(sdata, "square_016um")
    assert rec["um_per_unit"] == pytest.approx(0.5)  # 16 µm over a 32 px bin side, not 55 µm over 36 px
    assert rec["extent"] == pytest.approx(110.0)  # 55 µm = 110 full-res px (the bug cut 36 px of a 16 µm bin)
    assert "Visium HD bin size 16 um" in rec["um_source"]
    patch = sdata.tables["square_016um"].obsm["c2lst_patch"][0]
    np.testing.assert_array_equal(patch, pattern(600, 600)[:, 245:355, 245:355].transpose(1, 2, 0))
    # one bin-size table at a time: the 8 µm table has its own scale and its own patches
    extract_patches(sdata, table_key="square_008um", patch_um=55.0, size=16, progress=False)
    assert _rec(sdata, "square_008um")["um_per_unit"] == pytest.approx(0.5)
    assert _rec(sdata, "square_016um")["size"] == 110  # untouched by the second call


def test_visium_hd_default_extent_of_a_square_bin_is_its_equal_area_circle():
    sdata = _visium_hd(0.5)
    extract_patches(sdata, table_key="square_016um", size=8, progress=False)
    rec = _rec(sdata, "square_016um")
    assert rec["extent_rule"] == "spot_diameter"
    assert rec["extent"] == pytest.approx(2 * 32 / np.sqrt(np.pi))  # 1.13 bin sides
    assert "um_per_unit" not in rec


# --------------------------------------------------------------------------- Visium (circles)
def _visium(*, reader: str | None = "visium") -> sd.SpatialData:
    ds = "v1"
    diameter = 110.0  # spot_diameter_fullres: 55 µm spots at 0.5 µm/px
    xy = np.array([[150.0, 150.0], [300.0, 260.0]])
    hires = 0.25
    circles = ShapesModel.parse(
        xy, geometry=0, radius=diameter / 2, index=pd.Index(np.arange(2)),
        transformations={
            ds: Identity(),
            f"{ds}_downscaled_hires": Scale([hires, hires], axes=("y", "x")),
        },
    )
    img = pattern(400, 400)
    images = {
        f"{ds}_full_image": Image2DModel.parse(img, dims=("c", "y", "x"), transformations={ds: Identity()}),
        f"{ds}_hires_image": Image2DModel.parse(
            img[:, ::4, ::4].copy(), dims=("c", "y", "x"),
            transformations={
                f"{ds}_downscaled_hires": Identity(),
                ds: Scale([hires, hires], axes=("y", "x")).inverse(),
            },
        ),
    }
    obs = pd.DataFrame({"region": pd.Categorical([ds] * 2), "spot_id": np.arange(2)}, index=["AAAC-1", "AAAG-1"])
    table = TableModel.parse(
        ad.AnnData(np.ones((2, 2), np.float32), obs=obs), region=ds, region_key="region", instance_key="spot_id"
    )
    sdata = sd.SpatialData(images=images, shapes={ds: circles}, tables={"table": table})
    if reader:
        sdata.attrs["spatialdata_io_reader"] = reader
    return sdata


def test_visium_spots_are_55_um_without_a_warning():
    sdata = _visium()
    _no_warnings(lambda: extract_patches(sdata, image_key="v1_full_image", patch_um=100.0, size=8, progress=False))
    rec = _rec(sdata)
    assert rec["um_per_unit"] == pytest.approx(0.5)
    assert rec["extent"] == pytest.approx(200.0)
    assert "spatialdata-io visium" in rec["um_source"]


def test_unknown_origin_falls_back_to_55_um_with_a_warning_and_mpp_overrides():
    sdata = _visium(reader=None)
    with pytest.warns(UserWarning, match=r"55 um Visium spots.*pass `mpp=`"):
        extract_patches(sdata, image_key="v1_full_image", patch_um=100.0, size=8, progress=False)
    rec = _rec(sdata)
    assert rec["um_source"].startswith("assumed")
    assert rec["extent"] == pytest.approx(200.0)
    _no_warnings(
        lambda: extract_patches(
            sdata, image_key="v1_full_image", patch_um=100.0, mpp=0.25, size=8, key_added="m", progress=False
        )
    )
    rec = _rec(sdata, key="m")
    assert (rec["um_per_unit"], rec["um_source"], rec["extent"]) == (0.25, "mpp argument", pytest.approx(400.0))


def test_scale_record_beats_the_simulator_record_and_the_reader_layout(tmp_path):
    sdata = _visium()
    table = sdata.tables["table"]
    table.uns["c2lst"] = {"simulation": {"mpp": 2.0}}
    assert records.physical_scale(table) == (2.0, "table.uns['c2lst']['simulation']['mpp']")
    records.record_scale(table, 0.4, "HEST metadata pixel_size_um_estimated")
    sdata.write(tmp_path / "v.zarr")
    back = sd.read_zarr(tmp_path / "v.zarr")
    assert records.physical_scale(back.tables["table"]) == (0.4, "HEST metadata pixel_size_um_estimated")
    extract_patches(back, image_key="v1_full_image", patch_um=40.0, size=8, progress=False)
    rec = _rec(back)
    assert (rec["um_per_unit"], rec["extent"]) == (pytest.approx(0.4), pytest.approx(100.0))
    assert rec["um_source"] == "HEST metadata pixel_size_um_estimated"


def test_older_records_are_read_in_order():
    table = ad.AnnData(np.ones((1, 1)))
    assert records.physical_scale(table) is None
    table.uns["c2lst"] = {"source": {"mpp": 0.6}, "simulation": {"mpp": float("nan")}}  # from_visium_crop
    assert records.physical_scale(table) == (0.6, "table.uns['c2lst']['source']['mpp']")
    table.uns["c2lst"]["simulation"]["mpp"] = 1.5
    assert records.physical_scale(table)[0] == 1.5
    table.uns["c2lst"]["scale"] = {"um_per_unit": -1.0, "source": "broken"}  # not a scale: ignored
    assert records.physical_scale(table)[0] == 1.5


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_record_scale_refuses_bad_values(bad):
    table = ad.AnnData(np.ones((1, 1)))
    with pytest.raises(ValueError, match="um_per_unit"):
        records.record_scale(table, bad, "x")
    assert "c2lst" not in table.uns


@pytest.mark.parametrize(
    ("mpp", "err", "match"),
    [(0.0, ValueError, r"`mpp`.*positive"), (float("nan"), ValueError, r"`mpp`"), (-2, ValueError, r"`mpp`"),
     ("0.5", TypeError, r"`mpp` must be a number"), (True, TypeError, r"`mpp`")],
)
def test_bad_mpp_is_refused_before_anything_is_written(mpp, err, match):
    sdata = _visium()
    before = state(sdata)
    with pytest.raises(err, match=match):
        extract_patches(sdata, image_key="v1_full_image", patch_um=55.0, mpp=mpp, progress=False)
    assert state(sdata) == before


def test_simulator_records_its_scale():
    sdata = c2lst.datasets.simulated_visium(n_spots=12, mpp=2.0, seed=0)
    assert records.physical_scale(sdata.tables["table"]) == (2.0, "c2lst.datasets.simulated_visium(mpp=...)")


# --------------------------------------------------------------------------- Xenium + post-run H&E
def _hexagon(cx: float, cy: float, r: float) -> Polygon:
    a = np.arange(6) * np.pi / 3
    return Polygon(np.c_[cx + r * np.cos(a), cy + r * np.sin(a)])


def _xenium(morphology_channels=("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")):
    """xenium() layout: shapes in µm scaled to morphology pixels ("global"); H&E registered by an affine."""
    to_px = Scale([1 / XENIUM_PX_UM, 1 / XENIUM_PX_UM], axes=("x", "y"))
    centres_um = np.array([[25.0, 25.0], [35.0, 40.0], [40.0, 22.5]])
    ids = pd.Index(["aaaabbbb-1", "aaaacccc-1", "aaaadddd-1"], name="cell_id")
    circles = ShapesModel.parse(
        centres_um, geometry=0, radius=np.full(3, 4.0), index=ids.copy(), transformations={"global": to_px}
    )
    boundaries = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=[_hexagon(x, y, 4.5) for x, y in centres_um], index=ids.copy()),
        transformations={"global": to_px},
    )
    c = len(morphology_channels)
    morphology = Image2DModel.parse(
        np.zeros((c, 300, 300), np.uint16), dims=("c", "y", "x"), c_coords=list(morphology_channels),
        scale_factors=[2], transformations={"global": Identity()},
    )
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]]) * [[1.3], [1.3], [1]]
    he_arr, alignment = linear_field_image(rot)  # H&E pixels -> morphology pixels ("global"), like the csv
    he = Image2DModel.parse(
        he_arr, dims=("c", "y", "x"), c_coords=["r", "g", "b"], transformations={"global": alignment}
    )
    obs = pd.DataFrame({"cell_id": ids.to_numpy(), "region": pd.Categorical(["cell_circles"] * 3)},
                       index=ids.to_numpy())
    table = TableModel.parse(
        ad.AnnData(np.ones((3, 2), np.float32), obs=obs), region="cell_circles", region_key="region",
        instance_key="cell_id",
    )
    sdata = sd.SpatialData(
        images={"morphology_focus": morphology, "he_image": he},
        shapes={"cell_circles": circles, "cell_boundaries": boundaries},
        tables={"table": table},
    )
    sdata.attrs["spatialdata_io_reader"] = "xenium"
    return sdata, centres_um / XENIUM_PX_UM


def test_xenium_cells_on_the_post_run_he_image():
    sdata, centres_px = _xenium()
    _no_warnings(lambda: extract_patches(sdata, patch_um=12.0, size=12, progress=False))
    rec = _rec(sdata)
    assert rec["image_key"] == "he_image"  # the only RGB image is chosen next to the fluorescence one
    assert (rec["um_per_unit"], rec["extent"]) == (1.0, pytest.approx(12.0))
    assert "xenium" in rec["um_source"]
    patches = sdata.tables["table"].obsm["c2lst_patch"].astype(float)
    for i, c in enumerate(centres_px):  # 12 µm around the cell centre, read through the H&E alignment affine
        assert np.abs(patches[i] - expected_linear_patch(c, 12.0 / XENIUM_PX_UM, 12)).max() <= 1.6


def test_xenium_cell_polygons_are_centred_on_their_centroid():
    sdata, centres_px = _xenium()
    table = sdata.tables["table"]
    table.obs["region"] = pd.Categorical(["cell_boundaries"] * table.n_obs)
    sdata.tables["table"] = TableModel.parse(
        table, region="cell_boundaries", region_key="region", instance_key="cell_id", overwrite_metadata=True
    )
    extract_patches(sdata, image_key="he_image", patch_um=12.0, size=12, progress=False)
    rec = _rec(sdata)
    assert (rec["shapes_key"], rec["um_per_unit"]) == ("cell_boundaries", 1.0)
    patches = sdata.tables["table"].obsm["c2lst_patch"].astype(float)
    for i, c in enumerate(centres_px):
        assert np.abs(patches[i] - expected_linear_patch(c, 12.0 / XENIUM_PX_UM, 12)).max() <= 1.6


@pytest.mark.parametrize("channels", [("DAPI",), ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")],
                         ids=["v1-single-channel", "v2-four-channels"])
def test_xenium_morphology_image_asks_for_an_he_image(channels):
    sdata, _ = _xenium(channels)
    before = state(sdata)
    with pytest.raises(ValueError, match=r"image_key='morphology_focus'.*not an H&E/brightfield RGB image"):
        extract_patches(sdata, image_key="morphology_focus", patch_um=12.0, progress=False)
    assert state(sdata) == before
    del sdata.images["he_image"]
    with pytest.raises(ValueError, match=r"H&E/brightfield.*xenium_aligned_image"):
        extract_patches(sdata, patch_um=12.0, progress=False)
    assert "c2lst_patch" not in sdata.tables["table"].obsm


# --------------------------------------------------------------------------- the readers themselves
def _write_visium_hd_outs(root, mpp: float = 0.5) -> np.ndarray:
    """Write a minimal Space Ranger HD ``outs/`` folder (two bin sizes, a microscope image); return the image."""
    import json

    import h5py
    from scipy import sparse
    from skimage.io import imsave

    from c2lst.datasets._spaceranger import _write_h5

    img = pattern(640, 640)
    (root / "microscope_image").mkdir(parents=True)
    imsave(root / "microscope_image" / "tissue.png", img.transpose(1, 2, 0), check_contrast=False)
    layout = {"file_format": "1.0", "transform": np.eye(3).ravel().tolist()}
    with h5py.File(root / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps(layout), "transform_matrices": {}})
    factors = {"tissue_hires_scalef": 0.25, "tissue_lowres_scalef": 0.05, "fiducial_diameter_fullres": 100.0}
    (root / "spatial").mkdir()
    (root / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({**factors, "bin_size_um": 2.0, "spot_diameter_fullres": 2 / mpp, "microns_per_pixel": mpp})
    )
    xy = np.array([[320.0, 320.0], [200.0, 240.0], [440.0, 360.0]])
    for bin_um in (16, 8):
        spatial = root / "binned_outputs" / f"square_{bin_um:03d}um" / "spatial"
        spatial.mkdir(parents=True)
        spatial.joinpath("scalefactors_json.json").write_text(
            json.dumps({**factors, "bin_size_um": float(bin_um), "spot_diameter_fullres": bin_um / mpp,
                        "microns_per_pixel": mpp})
        )
        barcodes = [f"s_{bin_um:03d}um_{i:05d}-1" for i in range(3)]
        pd.DataFrame({
            "barcode": barcodes, "in_tissue": 1, "array_row": [0, 1, 2], "array_col": [0, 1, 2],
            "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0],
        }).to_parquet(spatial / "tissue_positions.parquet")
        table = ad.AnnData(
            np.ones((3, 2), np.float32), obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(index=["A", "B"])
        )
        _write_h5(spatial.parent / "filtered_feature_bc_matrix.h5", sparse.csr_matrix(table.X), table, "hd")
    return img


def test_visium_hd_as_spatialdata_io_reads_it(tmp_path):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    img = _write_visium_hd_outs(tmp_path / "outs", mpp=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reader's own notes (no hires/lowres image, format defaults)
        sdata = spatialdata_io.visium_hd(tmp_path / "outs", dataset_id="hd", load_segmentations_only=False)
    assert sorted(sdata.tables) == ["square_008um", "square_016um"]
    assert set(sdata.shapes["hd_square_016um"].geometry.geom_type) == {"Polygon"}  # square bins
    _no_warnings(lambda: extract_patches(
        sdata, table_key="square_016um", image_key="hd_full_image", patch_um=55.0, size=110, progress=False
    ))
    rec = _rec(sdata, "square_016um")
    assert (rec["um_per_unit"], rec["extent"]) == (pytest.approx(0.5), pytest.approx(110.0))
    assert "Visium HD bin size 16 um" in rec["um_source"]
    np.testing.assert_array_equal(
        sdata.tables["square_016um"].obsm["c2lst_patch"][0], img[:, 265:375, 265:375].transpose(1, 2, 0)
    )
    extract_patches(sdata, table_key="square_008um", image_key="hd_full_image", patch_um=8.0, size=4,
                    progress=False)
    assert _rec(sdata, "square_008um")["extent"] == pytest.approx(16.0)


def test_xenium_aligned_he_image_as_spatialdata_io_reads_it(tmp_path):
    """The H&E is read by ``spatialdata_io.xenium_aligned_image`` from an OME-TIFF and its alignment csv."""
    spatialdata_io = pytest.importorskip("spatialdata_io")
    tifffile = pytest.importorskip("tifffile")
    sdata, centres_px = _xenium()
    he = sdata.images["he_image"]
    arr = np.asarray(next(iter(he["scale0"].ds.data_vars.values())) if hasattr(he, "children") and len(he.children)
                     else he)
    alignment = sd.transformations.get_transformation(he, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    tifffile.imwrite(tmp_path / "out__he_image.ome.tif", arr.transpose(1, 2, 0), photometric="rgb")  # (y, x, 3)
    pd.DataFrame(alignment).to_csv(tmp_path / "out__he_imagealignment.csv", header=False, index=False)
    sdata.images["he_image"] = spatialdata_io.xenium_aligned_image(
        tmp_path / "out__he_image.ome.tif", tmp_path / "out__he_imagealignment.csv"
    )
    extract_patches(sdata, patch_um=12.0, size=12, progress=False)
    patches = sdata.tables["table"].obsm["c2lst_patch"].astype(float)
    assert _rec(sdata)["image_key"] == "he_image"
    for i, c in enumerate(centres_px):
        assert np.abs(patches[i] - expected_linear_patch(c, 12.0 / XENIUM_PX_UM, 12)).max() <= 1.6


def test_visium_outs_as_spatialdata_io_reads_them(tmp_path):
    """Space Ranger ``outs/`` read by ``spatialdata_io.visium``: 55 µm spots by the reader's own layout, no warning."""
    spatialdata_io = pytest.importorskip("spatialdata_io")
    sim = c2lst.datasets.simulated_visium(n_spots=12, mpp=2.0, seed=0)
    out = c2lst.datasets.write_spaceranger_outs(sim, tmp_path / "outs", hires_scale=0.5, library_id="lib")
    back = spatialdata_io.visium(out, dataset_id="lib")
    assert back.attrs.get("spatialdata_io_reader") == "visium"
    _no_warnings(lambda: extract_patches(back, image_key="lib_hires_image", patch_um=110.0, size=8, progress=False))
    rec = _rec(back)
    assert rec["um_per_unit"] == pytest.approx(2.0, rel=1e-3)  # the simulator's 2 µm per full-resolution pixel
    assert rec["extent"] == pytest.approx(55.0, rel=1e-3)  # 110 µm = 55 full-resolution px
    assert "spatialdata-io visium" in rec["um_source"]
