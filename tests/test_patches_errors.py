"""Bad input to ``c2lst.pp.extract_patches``: clear error naming the argument, nothing written."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from _pp_helpers import circles, image, make_sdata, pattern, table
from _reliability_helpers import state as snapshot
from spatialdata import SpatialData
from spatialdata.models import Image3DModel, Labels2DModel
from spatialdata.transformations import Identity, Scale

from c2lst.pp import extract_patches

XY = ("x", "y")


def _base():
    return make_sdata(pattern(64, 64), [[20, 20], [40, 40]], 6)


def _check(sdata, exc, match, **kwargs):
    before = snapshot(sdata)
    kwargs.setdefault("progress", False)
    with pytest.raises(exc, match=match):
        extract_patches(sdata, **kwargs)
    assert snapshot(sdata) == before


def test_missing_table_key():
    _check(_base(), KeyError, r"table_key='nope'.*\['table'\]", table_key="nope")


def test_table_without_region_annotation():
    sdata = _base()
    sdata.tables["plain"] = ad.AnnData(np.ones((2, 2), np.float32))
    _check(sdata, ValueError, r"table_key='plain'.*region annotation.*TableModel\.parse", table_key="plain")


def test_region_that_is_not_a_shapes_element():
    sdata = _base()
    sdata.labels["cells"] = Labels2DModel.parse(np.zeros((64, 64), np.int32), dims=("y", "x"))
    sdata.tables["cells_table"] = table(2, region="cells")
    _check(
        sdata,
        ValueError,
        r"table_key='cells_table'.*'cells'.*labels element, not a shapes",
        table_key="cells_table",
    )


def test_region_that_does_not_exist():
    sdata = _base()
    del sdata.shapes["spots"]
    _check(sdata, KeyError, r"table_key='table'.*'spots'.*not an element")


def test_missing_image_key():
    _check(_base(), KeyError, r"image_key='nope'.*\['he'\]", image_key="nope")


def test_several_candidate_images_ask_for_image_key():
    sdata = _base()
    sdata.images["he2"] = image(pattern(32, 32))
    _check(sdata, ValueError, r"Several images.*'he'.*'he2'.*image_key=")


def test_image_and_shapes_in_no_shared_coordinate_system():
    sdata = SpatialData(
        images={"he": image(pattern(64, 64), cs="aligned")},
        shapes={"spots": circles([[20, 20]], 6)},
        tables={"table": table(1)},
    )
    _check(sdata, ValueError, r"No image shares a coordinate system.*'global'.*image_key=")
    _check(sdata, ValueError, r"share no coordinate system.*set_transformation", image_key="he")


def test_coordinate_system_not_shared():
    _check(_base(), ValueError, r"coordinate_system='other'.*shared: \['global'\]", coordinate_system="other")


def test_conflicting_coordinate_systems_ask_for_one():
    sdata = SpatialData(
        images={"he": image(pattern(64, 64), extra_cs={"other": Scale([2.0, 2.0], axes=XY)})},
        shapes={"spots": circles([[20, 20]], 6, extra_cs={"other": Identity()})},
        tables={"table": table(1)},
    )
    _check(sdata, ValueError, r"several coordinate systems.*\['global', 'other'\].*coordinate_system=")
    extract_patches(sdata, coordinate_system="other", size=4, progress=False)  # resolved when given


def test_no_spot_inside_the_image():
    sdata = make_sdata(pattern(64, 64), [[200, 200], [-50, 10]], 6)
    _check(sdata, ValueError, r"No spot.*inside image 'he'.*image_key=")


def test_3d_image():
    sdata = _base()
    del sdata.images["he"]
    sdata.images["he"] = Image3DModel.parse(np.zeros((3, 2, 64, 64), np.uint8), dims=("c", "z", "y", "x"))
    _check(sdata, ValueError, r"image_key='he'.*3-D image", image_key="he")


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_wrong_number_of_channels(channels):
    sdata = make_sdata(np.zeros((channels, 64, 64), np.uint8), [[20, 20]], 6)
    _check(sdata, ValueError, rf"image_key='he'.*{channels} channel")


def test_unsupported_dtype():
    sdata = make_sdata(np.zeros((3, 64, 64), np.int32), [[20, 20]], 6)
    _check(sdata, TypeError, r"image_key='he'.*int32.*uint8")


def test_float_image_outside_unit_range():
    sdata = make_sdata(pattern(64, 64).astype(np.float32), [[20, 20]], 6)  # 0..255 floats
    _check(sdata, ValueError, r"image_key='he'.*float.*\[0, 1\]")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"size": 0}, ValueError, r"`size`.*>= 1"),
        ({"size": -3}, ValueError, r"`size`"),
        ({"size": 8.5}, TypeError, r"`size`"),
        ({"patch_px": 0}, ValueError, r"`patch_px`.*> 0"),
        ({"patch_px": -4.0}, ValueError, r"`patch_px`"),
        ({"patch_um": 0.0}, ValueError, r"`patch_um`"),
        ({"patch_um": 55.0, "patch_px": 10.0}, ValueError, r"either `patch_um` or `patch_px`, not both"),
        ({"batch_size": 0}, ValueError, r"`batch_size`"),
        ({"key_added": ""}, TypeError, r"`key_added`"),
        ({"table_key": 3}, TypeError, r"`table_key`"),
        ({"progress": "yes"}, TypeError, r"`progress`"),
    ],
)
def test_bad_scalar_arguments(kwargs, exc, match):
    _check(_base(), exc, match, **kwargs)


def test_duplicate_obs_names():
    sdata = make_sdata(pattern(64, 64), [[20, 20], [40, 40]], 6, obs_names=["a", "a"])
    _check(sdata, ValueError, r"table_key='table'.*obs names are not unique.*obs_names_make_unique")


def test_duplicate_instance_ids_and_unknown_spots():
    dup = make_sdata(pattern(64, 64), [[20, 20], [40, 40]], 6)
    dup.tables["table"].obs["spot_id"] = [1, 1]  # TableModel.parse would refuse it; tables get edited later
    _check(dup, ValueError, r"instance ids.*not unique")
    unknown = make_sdata(pattern(64, 64), [[20, 20], [40, 40]], 6, instance_ids=[0, 9])
    _check(unknown, KeyError, r"absent from shapes 'spots'.*\[9\]")


def test_table_annotating_several_regions():
    sdata = _base()
    sdata.shapes["spots2"] = circles([[10, 10]], 3)
    t = table(2, region="spots")
    t.obs["region"] = t.obs["region"].cat.add_categories(["spots2"])
    t.obs.loc["s1", "region"] = "spots2"
    t.uns["spatialdata_attrs"]["region"] = ["spots", "spots2"]
    del sdata.tables["table"]
    sdata.tables["table"] = t
    _check(sdata, ValueError, r"table_key='table'.*several regions")


def test_points_without_radius():
    sdata = _base()
    sdata.shapes["spots"].drop(columns="radius", inplace=True)
    _check(sdata, ValueError, r"'spots'.*without a `radius`")
