import json

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from scipy import sparse
from scipy.spatial import cKDTree
from skimage.color import rgb2hed
from spatialdata.models import get_table_keys
from spatialdata.transformations import Identity, Scale, get_transformation
from xarray import DataTree

from c2lst import datasets
from c2lst.datasets._simulate import _simulate

CELL_TYPES = ["tumor", "lymphocyte", "fibroblast", "macrophage", "endothelial"]


@pytest.fixture(scope="module")
def sim():
    """A small slide with its private truth (nucleus label image, cell table)."""
    return _simulate(n_spots=60, seed=3, stain="local", mpp=1.0, n_genes=60, return_labels=True)


@pytest.fixture(scope="module")
def sdata(sim):
    return sim[0]


def _rgb(sdata, key="he"):
    return np.asarray(sdata.images[key]["scale0"]["image"].values)


def _spots_xy(sdata):
    g = sdata.shapes["spots"].geometry
    return np.stack([g.x.to_numpy(), g.y.to_numpy()], 1)


# ------------------------------------------------------------------ structure / contract
def test_elements_and_image_contract(sdata):
    assert set(sdata.images) == {"he"}
    assert set(sdata.shapes) == {"spots"}
    assert set(sdata.tables) == {"table"}
    image = sdata.images["he"]
    assert isinstance(image, DataTree)
    levels = sd.get_pyramid_levels(image)
    assert len(levels) == 3
    assert [lv.shape[1] for lv in levels] == [
        levels[0].shape[1],
        levels[0].shape[1] // 2,
        levels[0].shape[1] // 8,
    ]
    full = levels[0]
    assert full.shape[1] % 8 == 0  # aligned pyramid
    assert full.shape[2] % 8 == 0
    assert full.dims == ("c", "y", "x")
    assert list(full.coords["c"].values) == ["r", "g", "b"]
    assert full.dtype == np.uint8
    assert max(full.data.chunksize) <= 1024
    for element in (image, sdata.shapes["spots"]):
        transforms = get_transformation(element, get_all=True)
        assert set(transforms) == {"global"}
        assert isinstance(transforms["global"], Identity)


def test_table_contract(sdata):
    table = sdata.tables["table"]
    region, region_key, instance_key = get_table_keys(table)
    assert (region, region_key, instance_key) == ("spots", "region", "spot_id")
    assert table.n_obs == 60
    assert table.obs_names.is_unique
    assert table.obs_names[0] == "spot_0000"
    np.testing.assert_array_equal(table.obs["spot_id"].to_numpy(), sdata.shapes["spots"].index.to_numpy())
    assert sparse.isspmatrix_csr(table.X)
    assert table.X.dtype == np.float32
    assert np.array_equal(table.X.data, np.rint(table.X.data))
    assert table.X.sum() > 0
    np.testing.assert_allclose(table.obsm["spatial"], _spots_xy(sdata))
    comp = table.obsm["c2lst_true_composition"]
    assert comp.shape == (60, 5)
    assert comp.min() >= 0
    np.testing.assert_allclose(comp.sum(1), 1.0)
    assert table.obs["c2lst_true_n_cells"].min() >= 0
    assert table.obs["c2lst_true_n_cells"].mean() > 5
    assert set(table.var["c2lst_gene_kind"]) == {"marker", "smooth", "noise", "housekeeping"}
    is_marker = table.var["c2lst_gene_kind"] == "marker"
    assert set(table.var.loc[is_marker, "c2lst_marker_of"]) == set(CELL_TYPES)
    assert set(table.var.loc[~is_marker, "c2lst_marker_of"]) == {""}
    sim_uns = table.uns["c2lst"]["simulation"]
    assert sim_uns["mpp"] == 1.0
    assert list(sim_uns["cell_types"]) == CELL_TYPES
    assert sim_uns["stain"]["name"] == "local"
    assert sim_uns["seed"] == 3
    assert sim_uns["spot_diameter_um"] == 55
    assert sim_uns["spot_pitch_um"] == 100


def test_n_genes_is_exact_and_small_panels_work():
    table = datasets.simulated_visium(n_spots=3, n_genes=8, seed=0).tables["table"]
    assert table.n_vars == 8
    assert table.var["c2lst_gene_kind"].value_counts()["marker"] == 5


def test_zarr_round_trip(sdata, tmp_path):
    sdata.write(tmp_path / "sim.zarr")
    back = sd.read_zarr(tmp_path / "sim.zarr")
    table = back.tables["table"]
    assert table.uns["c2lst"]["simulation"]["stain"]["name"] == "local"
    np.testing.assert_array_equal(table.X.toarray(), sdata.tables["table"].X.toarray())
    np.testing.assert_array_equal(_rgb(back), _rgb(sdata))


# ------------------------------------------------------------------ Visium geometry
def test_hexagonal_grid_pitch_and_diameter(sdata):
    xy = _spots_xy(sdata)
    dist, _ = cKDTree(xy).query(xy, k=7)
    np.testing.assert_allclose(dist[:, 1], 100.0)  # nearest neighbour: 100 µm pitch at 1 µm/px
    six = np.isclose(dist[:, 1:], 100.0).sum(1)
    assert six.max() == 6  # interior spots have six neighbours at the pitch
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 27.5)
    obs = sdata.tables["table"].obs
    assert ((obs["array_row"] + obs["array_col"]) % 2 == 0).all()
    dy = np.sqrt(3) / 2 * 100
    np.testing.assert_allclose(xy[:, 1] - xy[0, 1], (obs["array_row"] - obs["array_row"].iloc[0]) * dy)
    np.testing.assert_allclose(xy[:, 0] - xy[0, 0], (obs["array_col"] - obs["array_col"].iloc[0]) * 50)


def test_spots_inside_image_with_margin(sdata):
    _, h, w = _rgb(sdata).shape
    xy, r = _spots_xy(sdata), 27.5
    edge = np.minimum.reduce([xy[:, 0], xy[:, 1], w - xy[:, 0], h - xy[:, 1]]) - r
    assert edge.min() >= 2 * r


def test_mpp_scales_pixels():
    a = datasets.simulated_visium(n_spots=7, seed=1, mpp=1.0, n_genes=20)
    b = datasets.simulated_visium(n_spots=7, seed=1, mpp=2.0, n_genes=20)
    np.testing.assert_allclose(b.shapes["spots"]["radius"], 13.75)
    np.testing.assert_allclose(b.tables["table"].obsm["spatial"] * 2, a.tables["table"].obsm["spatial"])
    ha, hb = _rgb(a).shape[1], _rgb(b).shape[1]
    assert abs(hb - ha / 2) <= 8  # both rounded up to multiples of 8 px
    assert b.tables["table"].uns["c2lst"]["simulation"]["mpp"] == 2.0


# ------------------------------------------------------------------ determinism
def test_same_seed_same_bytes_other_seed_differs():
    a = datasets.simulated_visium(n_spots=10, seed=5, n_genes=20)
    b = datasets.simulated_visium(n_spots=10, seed=5, n_genes=20)
    c = datasets.simulated_visium(n_spots=10, seed=6, n_genes=20)
    assert _rgb(a).tobytes() == _rgb(b).tobytes()
    assert a.tables["table"].X.toarray().tobytes() == b.tables["table"].X.toarray().tobytes()
    np.testing.assert_array_equal(
        a.tables["table"].obsm["c2lst_true_composition"], b.tables["table"].obsm["c2lst_true_composition"]
    )
    assert _rgb(a).shape != _rgb(c).shape or _rgb(a).tobytes() != _rgb(c).tobytes()
    assert not np.array_equal(a.tables["table"].X.toarray(), c.tables["table"].X.toarray())


def test_panel_seed_shares_the_biology_not_the_tissue():
    own = datasets.simulated_visium(n_spots=10, seed=5, n_genes=20)
    same = datasets.simulated_visium(n_spots=10, seed=5, n_genes=20, panel_seed=5)
    other_section = datasets.simulated_visium(n_spots=10, seed=6, n_genes=20, panel_seed=5)
    other_slide = datasets.simulated_visium(n_spots=10, seed=6, n_genes=20)
    t_own, t_section, t_slide = own.tables["table"], other_section.tables["table"], other_slide.tables["table"]
    # panel_seed=seed is the default, byte for byte
    assert _rgb(own).tobytes() == _rgb(same).tobytes()
    assert t_own.X.toarray().tobytes() == same.tables["table"].X.toarray().tobytes()
    # the same panel: every gene has the same kind and marks the same cell type
    pd.testing.assert_frame_equal(t_own.var, t_section.var)
    assert not t_own.var.equals(t_slide.var)  # by default each slide draws its own panel
    # ... on other tissue: only the panel is shared, the image and counts follow `seed`
    assert _rgb(other_section).tobytes() == _rgb(other_slide).tobytes()
    assert not np.array_equal(t_own.X.toarray(), t_section.X.toarray())
    assert t_section.uns["c2lst"]["simulation"]["panel_seed"] == 5
    assert t_slide.uns["c2lst"]["simulation"]["panel_seed"] == 6


def test_panel_seed_markers_follow_their_cell_type_on_the_other_section():
    # the marker genes of the shared panel track the other section's own composition
    table = datasets.simulated_visium(n_spots=60, seed=8, n_genes=40, panel_seed=3).tables["table"]
    x, comp = table.X.toarray(), table.obsm["c2lst_true_composition"]
    for k, cell_type in enumerate(CELL_TYPES):
        markers = (table.var["c2lst_marker_of"] == cell_type).to_numpy()
        share = np.log1p(x[:, markers].sum(1) / x.sum(1) * 1e4)
        assert np.corrcoef(comp[:, k], share)[0, 1] > 0.5, cell_type


# ------------------------------------------------------------------ biology / ground truth
def test_composition_correlates_with_marker_counts(sdata):
    table = sdata.tables["table"]
    x = table.X.toarray()
    comp = table.obsm["c2lst_true_composition"]
    for k, cell_type in enumerate(CELL_TYPES):
        markers = (table.var["c2lst_marker_of"] == cell_type).to_numpy()
        share = np.log1p(x[:, markers].sum(1) / x.sum(1) * 1e4)
        assert np.corrcoef(comp[:, k], share)[0, 1] > 0.5, cell_type


def test_noise_genes_carry_no_composition_signal(sdata):
    table = sdata.tables["table"]
    x = table.X.toarray()
    n_cells = table.obs["c2lst_true_n_cells"].to_numpy()
    noise = (table.var["c2lst_gene_kind"] == "noise").to_numpy()
    house = (table.var["c2lst_gene_kind"] == "housekeeping").to_numpy()
    assert np.corrcoef(n_cells, x[:, house].sum(1))[0, 1] > 0.5
    assert abs(np.corrcoef(n_cells, x[:, noise].sum(1))[0, 1]) < 0.4


def _label_stats(labels, values):
    """Per label: area, eccentricity (from second moments) and mean of ``values``."""
    lab = labels.ravel()
    yy, xx = np.indices(labels.shape)
    n = np.bincount(lab)
    keep = np.flatnonzero(n > 3)
    keep = keep[keep > 0]

    def mean(v):
        return np.bincount(lab, v.ravel().astype(float))[keep] / n[keep]

    my, mx = mean(yy), mean(xx)
    cyy = mean(yy * yy) - my**2
    cxx = mean(xx * xx) - mx**2
    cxy = mean(yy * xx) - my * mx
    tr, det = cyy + cxx, cyy * cxx - cxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    lmax, lmin = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
    return keep, n[keep], np.sqrt(1 - lmin / lmax), mean(values)


def test_cell_types_differ_in_nuclear_morphology(sim):
    sdata, truth = sim
    cells = truth.layout.cells
    hema = rgb2hed(np.moveaxis(_rgb(sdata), 0, -1))[..., 0]
    label, area, ecc, h_mean = _label_stats(truth.labels, hema)
    kind = cells.kind[label - 1]
    tumor, lymph, fibro, macro, endo = range(5)

    def mean(values, t):
        return values[kind == t].mean()

    assert len(set(kind)) == 5
    assert mean(area, lymph) < mean(area, macro) < mean(area, tumor)  # size
    assert mean(ecc, fibro) > 0.9 > 0.6 > mean(ecc, lymph)  # elongated vs round
    assert mean(ecc, endo) > 0.9
    assert mean(h_mean, lymph) > mean(h_mean, fibro) > mean(h_mean, macro)  # hematoxylin intensity
    nn = {}
    for t in (lymph, fibro):  # density: lymphocytes pack tighter than fibroblasts
        pts = np.stack([cells.x[cells.kind == t], cells.y[cells.kind == t]], 1)
        nn[t] = np.median(cKDTree(pts).query(pts, k=2)[0][:, 1])
    assert nn[lymph] < nn[fibro]


def test_image_is_he_like(sim):
    sdata, truth = sim
    rgb = np.moveaxis(_rgb(sdata), 0, -1)
    corners = rgb[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.min() > 200  # bare glass outside the tissue
    hed = rgb2hed(rgb)
    nuclei = truth.labels > 0
    od = -np.log10((rgb.astype(float) + 1) / 256).mean(-1)
    stroma = ~nuclei & (od > 0.15)
    glass = od < 0.05
    assert hed[..., 0][nuclei].mean() > hed[..., 0][stroma].mean() + 0.02
    assert hed[..., 1][stroma].mean() > hed[..., 1][glass].mean() + 0.015
    assert 0.02 < nuclei.mean() < 0.5
    # gland lumens are white holes inside the tissue
    glands = truth.layout.glands
    assert glands.x.size > 0
    assert (od[glands.y.astype(int), glands.x.astype(int)] < 0.1).mean() > 0.8


def test_stain_presets_differ_in_colour_not_in_truth():
    rgbs, tables = {}, {}
    for name in datasets.stain_presets():
        s = datasets.simulated_visium(n_spots=7, seed=2, stain=name, n_genes=20)
        rgbs[name] = _rgb(s).reshape(3, -1).mean(1)
        tables[name] = s.tables["table"]
        assert tables[name].uns["c2lst"]["simulation"]["stain"]["name"] == name
    names = list(rgbs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(rgbs[a] - rgbs[b]).sum() > 6, (a, b)
            np.testing.assert_array_equal(tables[a].X.toarray(), tables[b].X.toarray())


def test_stain_mapping_override():
    base = datasets.simulated_visium(n_spots=3, seed=0, n_genes=10)
    dark = datasets.simulated_visium(
        n_spots=3, seed=0, n_genes=10, stain={"h_intensity": 2.0, "e_intensity": 2.0}
    )
    assert _rgb(dark).mean() < _rgb(base).mean() - 5
    stain = dark.tables["table"].uns["c2lst"]["simulation"]["stain"]
    assert stain["name"] == "custom"
    assert stain["h_intensity"] == 2.0
    json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in stain.items()})


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_spots": 0}, ValueError, "n_spots"),
        ({"n_spots": -3}, ValueError, "n_spots"),
        ({"n_spots": 2.5}, TypeError, "n_spots"),
        ({"n_spots": True}, TypeError, "n_spots"),
        ({"seed": -1}, TypeError, "seed"),
        ({"panel_seed": -2}, TypeError, "panel_seed"),
        ({"panel_seed": 1.5}, TypeError, "panel_seed"),
        ({"mpp": 0}, ValueError, "mpp"),
        ({"mpp": -1.0}, ValueError, "mpp"),
        ({"mpp": 50.0}, ValueError, "mpp"),
        ({"mpp": "1"}, TypeError, "mpp"),
        ({"n_genes": 0}, ValueError, "n_genes"),
        ({"n_genes": 7}, ValueError, "n_genes >= 8"),
        ({"stain": "hospital"}, ValueError, "institution_a"),
        ({"stain": 3}, TypeError, "stain"),
        ({"stain": {"colour": 1}}, ValueError, "unknown parameter"),
        ({"stain": {"base": "nope"}}, ValueError, "base"),
        ({"stain": {"hematoxylin": (1, 2)}}, ValueError, "hematoxylin"),
        ({"stain": {"blur_um": -1}}, ValueError, "blur_um"),
        ({"stain": {"background": (0, 0, 0)}}, ValueError, "background"),
    ],
)
def test_bad_inputs(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.simulated_visium(**kwargs)


# ------------------------------------------------------------------ IHC patches
def test_ihc_patches():
    p = datasets.ihc_patches(12, size=16, patch_px=48, seed=1)
    assert p.shape == (12, 16, 16, 3)
    assert p.dtype == np.uint8
    assert p.reshape(12, -1).std(1).min() > 5  # real texture, not flat
    np.testing.assert_array_equal(p, datasets.ihc_patches(12, size=16, patch_px=48, seed=1))
    assert not np.array_equal(p, datasets.ihc_patches(12, size=16, patch_px=48, seed=2))
    assert datasets.ihc_patches(2, size=32, patch_px=32).shape == (2, 32, 32, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "`n`"),
        ({"size": -1}, ValueError, "size"),
        ({"patch_px": 600}, ValueError, "patch_px"),
    ],
)
def test_ihc_patches_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.ihc_patches(**kwargs)


# ------------------------------------------------------------------ Space Ranger writer
def test_spaceranger_round_trip(sdata, tmp_path):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    out = datasets.write_spaceranger_outs(sdata, tmp_path / "outs", library_id="sim")
    spatial = out / "spatial"
    for name in (
        "tissue_positions.csv",
        "scalefactors_json.json",
        "tissue_hires_image.png",
        "tissue_lowres_image.png",
    ):
        assert (spatial / name).is_file()
    positions = pd.read_csv(spatial / "tissue_positions.csv")
    assert list(positions.columns) == [
        "barcode",
        "in_tissue",
        "array_row",
        "array_col",
        "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]
    back = spatialdata_io.visium(out, dataset_id="sim")
    table, orig = back.tables["table"], sdata.tables["table"]
    assert list(table.obs_names) == list(orig.obs_names)
    assert list(table.var_names) == list(orig.var_names)
    np.testing.assert_array_equal(table.X.toarray(), orig.X.toarray())
    np.testing.assert_allclose(table.obsm["spatial"], orig.obsm["spatial"])
    np.testing.assert_array_equal(table.obs["array_row"], orig.obs["array_row"])
    np.testing.assert_allclose(back.shapes["sim"]["radius"], 27.5)
    hires = back.images["sim_hires_image"]
    h, w = _rgb(sdata).shape[1:]
    assert hires.shape == (3, round(h * 0.5), round(w * 0.5))
    assert back.images["sim_lowres_image"].shape == (3, round(h * 0.1), round(w * 0.1))
    to_full = get_transformation(hires, "sim")
    np.testing.assert_allclose(to_full.to_affine_matrix(("x", "y"), ("x", "y"))[:2, :2], np.eye(2) * 2)
    # the hires image is the full image downscaled: compare with a 2x2 block mean
    full = _rgb(sdata).astype(float)
    blocks = full[:, : h // 2 * 2, : w // 2 * 2].reshape(3, h // 2, 2, w // 2, 2).mean((2, 4))
    hires_px = np.asarray(hires.values, dtype=float)[:, : h // 2, : w // 2]
    assert np.abs(hires_px - blocks).mean() < 4


def test_spaceranger_follows_transformations(sdata, tmp_path):
    spatialdata_io = pytest.importorskip("spatialdata_io")
    from spatialdata.transformations import set_transformation

    moved = sd.SpatialData(
        images={"he": sdata.images["he"]},
        shapes={"spots": sdata.shapes["spots"].copy()},
        tables={"table": sdata.tables["table"].copy()},
    )
    # circles stored in 2x coarser units: x2 scale maps them to the image's pixels
    shapes = moved.shapes["spots"]
    shapes.geometry = shapes.geometry.scale(0.5, 0.5, origin=(0, 0))
    shapes["radius"] = shapes["radius"] / 2
    set_transformation(shapes, Scale([2.0, 2.0], axes=("x", "y")), to_coordinate_system="global")
    out = datasets.write_spaceranger_outs(moved, tmp_path / "outs")
    back = spatialdata_io.visium(out, dataset_id="c2lst")
    np.testing.assert_allclose(back.tables["table"].obsm["spatial"], sdata.tables["table"].obsm["spatial"])
    np.testing.assert_allclose(back.shapes["c2lst"]["radius"], 27.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"table_key": "nope"}, KeyError, "table_key"),
        ({"image_key": "nope"}, KeyError, "image_key"),
        ({"shapes_key": "nope"}, KeyError, "shapes_key"),
        ({"hires_scale": 0}, ValueError, "hires_scale"),
        ({"lowres_scale": 1.5}, ValueError, "lowres_scale"),
        ({"library_id": ""}, ValueError, "library_id"),
    ],
)
def test_spaceranger_bad_input_writes_nothing(sdata, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.write_spaceranger_outs(sdata, tmp_path / "outs", **kwargs)
    assert not (tmp_path / "outs").exists()


def test_spaceranger_refuses_non_counts_and_non_empty_folder(sdata, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        datasets.write_spaceranger_outs(sdata, tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    lognorm = sd.SpatialData(
        images={"he": sdata.images["he"]},
        shapes={"spots": sdata.shapes["spots"]},
        tables={"table": sdata.tables["table"].copy()},
    )
    table = lognorm.tables["table"]
    table.X = sparse.csr_matrix(np.log1p(table.X.toarray()))
    before = table.X.copy()
    with pytest.raises(ValueError, match="integer counts"):
        datasets.write_spaceranger_outs(lognorm, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    np.testing.assert_array_equal(table.X.toarray(), before.toarray())
