"""``pl.spatial_expression`` on the H&E image through spatialdata-plot, ``ax=``, scanpy-style ``save=``, and
``pl.patches(gene=...)``. Real spatialdata / spatialdata-plot, no mocks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
from _eval_helpers import make_table
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity, Scale

import c2lst

GENES = ["g_a", "g_b"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _predicted_sdata(n_spots: int = 24):
    """A simulated Visium slide whose table has observed and predicted expression of two genes."""
    sdata = c2lst.datasets.simulated_visium(n_spots=n_spots, seed=0)
    table = sdata.tables["table"]
    rng = np.random.default_rng(0)
    obs = rng.gamma(2.0, 1.0, (table.n_obs, 2)).astype(np.float32)
    table.obsm["c2lst_expr"] = obs
    table.obsm["c2lst_pred"] = (obs + rng.normal(0, 0.3, obs.shape)).astype(np.float32)
    table.uns["c2lst"]["expr"] = {"c2lst_expr": {"genes": np.asarray(GENES, dtype=object)}}
    table.uns["c2lst"]["pred"] = {"c2lst_pred": {"genes": np.asarray(GENES, dtype=object)}}
    return sdata


def _spots(ax) -> PatchCollection:
    colls = [c for c in ax.collections if isinstance(c, PatchCollection)]
    assert len(colls) == 1, ax.collections
    return colls[0]


def test_spots_are_drawn_on_the_he_image_coloured_by_observed_and_predicted():
    sdata = _predicted_sdata()
    table = sdata.tables["table"]
    fig = c2lst.pl.spatial_expression(sdata, GENES)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    for r, gene in enumerate(GENES):
        obs, pred = table.obsm["c2lst_expr"][:, r], table.obsm["c2lst_pred"][:, r]
        norm = Normalize(min(obs.min(), pred.min()), max(obs.max(), pred.max()))
        for c, vals in enumerate((obs, pred)):
            ax = panels[2 * r + c]
            assert len(ax.images) == 1 and ax.images[0].get_array().shape[-1] in (3, 4)  # the H&E under the spots
            face = _spots(ax).get_facecolors()
            assert len(face) == table.n_obs
            np.testing.assert_allclose(face[:, :3], plt.get_cmap("viridis")(norm(vals))[:, :3], atol=1e-6)
            assert face[0, 3] == pytest.approx(0.8)  # translucent spots over tissue
        assert panels[2 * r].get_title() == f"{gene}: observed"
        assert panels[2 * r + 1].get_title().startswith(f"{gene}: predicted (r = ")
    # the spots sit on the image: a spot's circle is centred at its shapes coordinates (identity transforms)
    box = _spots(panels[0]).get_paths()[0].get_extents()
    xy, radius = sdata.shapes["spots"].geometry, float(sdata.shapes["spots"]["radius"].iloc[0])
    assert box.width == pytest.approx(2 * radius, rel=0.02)
    assert np.min(np.hypot(xy.x - (box.x0 + box.x1) / 2, xy.y - (box.y0 + box.y1) / 2)) < 0.5


def test_square_bins_are_drawn_as_squares():
    """Visium HD-style square polygons (spatialdata-io's ``bins_as_squares=True``) are drawn at their size."""
    import geopandas as gpd
    from spatialdata.models import ShapesModel

    sdata = _predicted_sdata(12)
    circles = sdata.shapes["spots"]
    side = 2 * float(circles["radius"].iloc[0])
    sdata.shapes["spots"] = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=circles.buffer(side / 2, cap_style=3), index=circles.index),
        transformations={"global": Identity()},
    )
    fig = c2lst.pl.spatial_expression(sdata, "g_a")
    squares = [c for c in fig.axes[0].collections if len(c.get_paths()) == 12]
    assert squares, fig.axes[0].collections
    box = squares[0].get_paths()[0].get_extents()
    assert (box.width, box.height) == (pytest.approx(side, rel=1e-6), pytest.approx(side, rel=1e-6))


def test_ax_is_honoured_and_checked_before_drawing():
    sdata = _predicted_sdata()
    fig, axes = plt.subplots(1, 2)
    out = c2lst.pl.spatial_expression(sdata, "g_a", ax=axes)
    assert out is fig
    assert all(len(ax.images) == 1 for ax in axes)
    _, one = plt.subplots()
    with pytest.raises(TypeError, match=r"`ax` must hold 2 matplotlib Axes"):
        c2lst.pl.spatial_expression(sdata, "g_a", ax=one)
    assert not one.collections and not one.images
    table = sdata.tables["table"]
    fig3, axes3 = plt.subplots(1, 2)
    out = c2lst.pl.spatial_expression(table, "g_b", ax=axes3)  # AnnData: dots at obsm["spatial"]
    assert out is fig3 and len(axes3[0].collections[0].get_offsets()) == table.n_obs


def test_image_choice_prefers_the_patches_image_then_the_smallest_rgb():
    sdata = _predicted_sdata()
    he = sdata.images["he"]
    full = next(iter(he["scale0"].ds.data_vars.values()))
    small = Image2DModel.parse(
        full.data[:, ::4, ::4], dims=("c", "y", "x"), c_coords=["r", "g", "b"],
        transformations={"global": Scale([4.0, 4.0], axes=("x", "y"))},
    )
    sdata.images["he_small"] = small
    sdata.images["dapi"] = Image2DModel.parse(
        np.zeros((1, 32, 32), np.uint16), dims=("c", "y", "x"), c_coords=["DAPI"],
        transformations={"global": Identity()},
    )
    fig = c2lst.pl.spatial_expression(sdata, "g_a")
    assert fig.axes[0].images[0].get_array().shape[:2] == tuple(small.shape[1:])  # hires-like copy, not full res
    c2lst.pp.extract_patches(sdata, image_key="he", size=8, progress=False)
    fig = c2lst.pl.spatial_expression(sdata, "g_a")
    assert fig.axes[0].images[0].get_array().shape[:2] != tuple(small.shape[1:])  # the image of the patches
    with pytest.raises(ValueError, match=r"image_key='dapi'.*H&E/brightfield"):
        c2lst.pl.spatial_expression(sdata, "g_a", image_key="dapi")
    with pytest.raises(KeyError, match=r"image_key='nope'"):
        c2lst.pl.spatial_expression(sdata, "g_a", image_key="nope")
    with pytest.raises(ValueError, match=r"coordinate_system='other'"):
        c2lst.pl.spatial_expression(sdata, "g_a", coordinate_system="other")


@pytest.fixture
def figdir(tmp_path):
    """Point scanpy's figure settings at ``tmp_path / "figures"`` (png) for one test."""
    old = sc.settings.figdir, sc.settings.file_format_figs
    sc.settings.figdir, sc.settings.file_format_figs = tmp_path / "figures", "png"
    yield
    sc.settings.figdir, sc.settings.file_format_figs = old


def test_save_follows_scanpy(tmp_path, monkeypatch, figdir):
    table = _predicted_sdata(12).tables["table"]
    c2lst.pl.spatial_expression(table, "g_a", save="_pred.png")
    c2lst.pl.spatial_expression(table, "g_a", save="_pred")
    c2lst.pl.spatial_expression(table, "g_a", save=True)
    c2lst.pl.spatial_expression(table, "g_a", save=tmp_path / "exact.pdf")
    monkeypatch.chdir(tmp_path)
    c2lst.pl.spatial_expression(table, "g_a", save="out/rel.svg")
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    assert made == [
        "exact.pdf",
        "figures/spatial_expression.png",
        "figures/spatial_expression_pred.png",
        "out/rel.svg",
    ]
    with pytest.raises(ValueError, match="`save` is an empty string"):
        c2lst.pl.spatial_expression(table, "g_a", save="")


def _real_and_synthetic():
    real = make_table(10, seed=0)
    syn = make_table(20, seed=1)
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = [f"spot_{i % 8}" for i in range(20)]  # spots 8 and 9 have no children
    return real, syn


def test_patches_by_gene_show_the_lowest_and_highest_spots():
    real, syn = _real_and_synthetic()
    values = real.obsm["c2lst_expr"][:, 0]
    fig = c2lst.pl.patches(real, syn, gene="g_nuclei", n=4, n_synthetic=2)
    rows = [ax for ax in fig.axes if ax.get_ylabel()]
    names = [ax.get_ylabel().split("\n")[0] for ax in rows]
    with_children = np.argsort(values[:8])  # only spots with synthetic children are candidates
    assert names == [f"spot_{i}" for i in (*with_children[:2], *with_children[-2:])]
    assert [ax.get_ylabel().endswith("(low)") for ax in rows] == [True, True, False, False]
    shown = [float(ax.get_ylabel().split()[-2]) for ax in rows]
    assert shown == sorted(shown)
    real_only = c2lst.pl.patches(real, gene="g_colour", n=3)
    titles = [ax.get_title().split("\n")[0] for ax in real_only.axes if ax.get_title()]
    order = np.argsort(real.obsm["c2lst_expr"][:, 1])
    assert titles == [f"spot_{i}" for i in (order[0], order[-2], order[-1])]
    real.X = real.obsm["c2lst_expr"].copy()  # without the prepared expression, the X column is used
    del real.obsm["c2lst_expr"]
    fig = c2lst.pl.patches(real, syn, gene="g_nuclei", n=4)
    assert [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.get_ylabel()] == names


def test_patches_by_gene_refuses_bad_input():
    real, syn = _real_and_synthetic()
    with pytest.raises(ValueError, match=r"either `gene`.*or `spots`"):
        c2lst.pl.patches(real, syn, gene="g_nuclei", spots=["spot_1"])
    with pytest.raises(KeyError, match="`gene='Actb'`"):
        c2lst.pl.patches(real, syn, gene="Actb")
    with pytest.raises(TypeError, match="`gene`"):
        c2lst.pl.patches(real, syn, gene=3)
