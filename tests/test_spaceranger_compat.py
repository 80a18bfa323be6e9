"""Real reader compatibility (issue 2.6): Space Ranger ``outs/`` -> ``spatialdata_io.visium`` -> patches."""

from __future__ import annotations

import numpy as np
import pytest

import c2lst
from c2lst.pp import extract_patches

spatialdata_io = pytest.importorskip("spatialdata_io")


@pytest.fixture(scope="module")
def simulated_and_read_back(tmp_path_factory):
    sdata = c2lst.datasets.simulated_visium(n_spots=60, seed=0)
    out = c2lst.datasets.write_spaceranger_outs(
        sdata, tmp_path_factory.mktemp("sr") / "outs", hires_scale=0.5, library_id="lib"
    )
    back = spatialdata_io.visium(out, dataset_id="lib")
    return sdata, back


def test_patches_from_spaceranger_hires_match_the_simulator(simulated_and_read_back):
    sdata, back = simulated_and_read_back
    # hires = full resolution x 0.5: the 55 px spots are 27.5 hires px, so 24 px patches need no upsampling
    extract_patches(sdata, size=24, progress=False)
    extract_patches(back, image_key="lib_hires_image", size=24, progress=False)
    ref_t, got_t = sdata.tables["table"], back.tables["table"]
    rows = ref_t.obs_names.get_indexer(got_t.obs_names)
    assert (rows >= 0).all()
    ref = ref_t.obsm["c2lst_patch"][rows].astype(float)
    got = got_t.obsm["c2lst_patch"].astype(float)
    assert np.abs(ref - got).mean() <= 4.0
    rec = got_t.uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["shapes_key"] == "lib"
    assert rec["extent_px"] == pytest.approx(27.5, rel=1e-3)  # the hires image sits behind a Scale
    # a wrong spot mapping would not match: shuffled rows differ far more
    assert np.abs(ref[::-1] - got).mean() > 4 * max(np.abs(ref - got).mean(), 1.0)


def test_spaceranger_object_with_hires_and_lowres_asks_for_image_key(simulated_and_read_back):
    _, back = simulated_and_read_back
    with pytest.raises(ValueError, match=r"Several images.*lib_hires_image.*lib_lowres_image.*image_key="):
        extract_patches(back, size=8, key_added="c2lst_other", progress=False)
    assert "c2lst_other" not in back.tables["table"].obsm
