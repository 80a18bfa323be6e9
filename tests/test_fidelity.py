"""Morphometric features, FID / KID, ``tl.evaluate_fidelity`` and ``tl.evaluate_composition``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _eval_helpers import BACKGROUND, NUCLEUS, disc_patches, make_table
from _reliability_helpers import state as snapshot
from skimage import color, draw, feature, measure

import c2lst
from c2lst import metrics as D
from c2lst.models import features as F


@pytest.fixture(scope="module")
def sets():
    real, _ = disc_patches(120, seed=0)
    same, _ = disc_patches(120, seed=1)
    shifted, _ = disc_patches(120, seed=2, shift=-40.0)  # darker, bluer stain
    return real, same, shifted


# --------------------------------------------------------------------------- features
def test_features_count_drawn_discs_exactly():
    patches, counts = disc_patches(150, size=48, seed=5, max_nuclei=8, radius=(2, 4))
    x = F.morphometric_features(patches)
    assert x.shape == (150, len(F.MORPHOMETRIC_FEATURE_NAMES)) == (150, 21)
    np.testing.assert_array_equal(x[:, 0], counts)
    empty = counts == 0
    assert empty.any()
    assert np.all(x[empty, 1:6] == 0)


def test_touching_nuclei_are_split_and_elongated_ones_kept_whole():
    img = np.tile(np.asarray(BACKGROUND, np.uint8), (1, 48, 48, 1))
    for centre in ((10, 12), (18, 12)):  # two discs touching along a narrow neck
        rr, cc = draw.disk(centre, 4, shape=(48, 48))
        img[0, rr, cc] = NUCLEUS
    rr, cc = draw.ellipse(32, 30, 4, 9, rotation=0.6, shape=(48, 48))
    img[0, rr, cc] = NUCLEUS
    nuc = F.segment_nuclei(img)
    assert len(nuc["area"]) == 3
    assert nuc["eccentricity"].max() > 0.85  # the ellipse


def test_region_statistics_equal_skimage_regionprops():
    patches, _ = disc_patches(6, size=40, seed=3, max_nuclei=6, radius=(2, 5))
    rr, cc = draw.ellipse(20, 20, 3, 8, rotation=0.3, shape=(40, 40))
    patches[0, rr, cc] = NUCLEUS
    h = color.rgb2hed(patches)[..., 0]
    labels, mosaic_h, thr = F._label_nuclei(h, None, 1.0, 4)
    ours = F._region_stats(labels, mosaic_h, 40, thr)
    ref = measure.regionprops_table(
        labels, intensity_image=mosaic_h, properties=("area", "eccentricity", "intensity_mean")
    )
    np.testing.assert_allclose(ours["area"], ref["area"])
    np.testing.assert_allclose(ours["eccentricity"], ref["eccentricity"], atol=1e-6)
    np.testing.assert_allclose(ours["intensity_mean"], ref["intensity_mean"], rtol=1e-9)


def test_texture_features_equal_skimage_glcm():
    patches, _ = disc_patches(3, size=24, seed=4)
    x = F.morphometric_features(patches)
    names = list(F.MORPHOMETRIC_FEATURE_NAMES)
    grey = color.rgb2gray(patches)
    for i in range(3):
        q = np.minimum((grey[i] * 16).astype(np.uint8), 15)
        glcm = feature.graycomatrix(q, [1], [0, np.pi / 2], levels=16, symmetric=True, normed=True)
        for prop in ("contrast", "homogeneity"):
            assert x[i, names.index(f"glcm_{prop}")] == pytest.approx(feature.graycoprops(glcm, prop).mean())


def test_colour_features_follow_the_stain():
    light = np.full((2, 16, 16, 3), 230, np.uint8)
    dark = np.full((2, 16, 16, 3), 120, np.uint8)
    x = F.morphometric_features(np.concatenate([light, dark]), threshold=1.0)
    names = list(F.MORPHOMETRIC_FEATURE_NAMES)
    assert x[0, names.index("rgb_r_mean")] == pytest.approx(230 / 255, abs=1e-6)
    assert x[2, names.index("hed_h_mean")] > x[0, names.index("hed_h_mean")]
    assert x[0, names.index("glcm_contrast")] == 0
    assert x[0, names.index("glcm_homogeneity")] == 1


def test_feature_input_checks():
    with pytest.raises(TypeError, match="uint8"):
        F.morphometric_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(n, S, S, 3\)"):
        F.morphometric_features(np.zeros((2, 8, 8), np.uint8))


# --------------------------------------------------------------------------- distances
def test_fid_kid_zero_for_identical_sets_and_grow_with_colour_shift(sets):
    real, _same, _shifted = sets
    fr, fs, fx = (F.morphometric_features(p, threshold=F.hematoxylin_threshold(real)) for p in sets)
    assert D.frechet_distance(fr, fr) == pytest.approx(0.0, abs=1e-6)
    fid_same, fid_shift = D.frechet_distance(fr, fs), D.frechet_distance(fr, fx)
    assert fid_shift > 10 * fid_same
    kid_id, _ = D.kernel_distance(fr, fr.copy(), subset_size=50, seed=0)
    kid_same, _ = D.kernel_distance(fr, fs, subset_size=50, seed=0)
    kid_shift, _ = D.kernel_distance(fr, fx, subset_size=50, seed=0)
    assert abs(kid_id) < 0.05 * kid_shift
    assert abs(kid_same) < 0.05 * kid_shift
    assert D.kernel_distance(fr, fx, subset_size=50, seed=0) == D.kernel_distance(
        fr, fx, subset_size=50, seed=0
    )


def test_fid_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 2))
    b = rng.normal(size=(4000, 2)) * 2.0 + 1.0
    # N(0, I) vs N(1, 4I): |mu|² + tr(I + 4I - 2·2I) = 2 + 2
    assert D.frechet_distance(a, b, standardise=False) == pytest.approx(4.0, rel=0.1)


# --------------------------------------------------------------------------- skin
def test_evaluate_fidelity_on_tables_and_arrays(sets):
    real, same, shifted = sets
    t_real = make_table(40, seed=0)
    res = c2lst.tl.evaluate_fidelity(real, real.copy())
    assert res["fid"] == pytest.approx(0.0, abs=1e-6)
    assert res["n_features"] == 21
    near = c2lst.tl.evaluate_fidelity(real, same, n_subsets=20)
    far = c2lst.tl.evaluate_fidelity(real, shifted, n_subsets=20)
    assert far["fid"] > 10 * near["fid"]
    assert far["kid"] > 10 * abs(near["kid"])
    assert set(res) >= {"fid", "kid", "kid_std", "n_real", "n_synthetic", "features", "hematoxylin_threshold"}
    tab = c2lst.tl.evaluate_fidelity(t_real, t_real.obsm["c2lst_patch"], n_subsets=5)
    assert tab["n_real"] == 40
    assert tab["fid"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_fidelity_splits_an_augmented_table():
    t = make_table(30, seed=0)
    t.obs["c2lst_synthetic"] = np.arange(30) >= 20
    res = c2lst.tl.evaluate_fidelity(t, t, n_subsets=5)
    assert (res["n_real"], res["n_synthetic"]) == (20, 10)


def test_evaluate_fidelity_with_custom_extractor(sets):
    real, _same, shifted = sets
    extractor = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    res = c2lst.tl.evaluate_fidelity(real, shifted, feature_extractor=extractor, n_subsets=10)
    assert res["features"] == "custom"
    assert res["n_features"] == 48
    assert res["fid"] > 1
    with pytest.raises(ValueError, match="feature_extractor"):
        c2lst.tl.evaluate_fidelity(real, shifted, features="custom")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        c2lst.tl.evaluate_fidelity(real, shifted, feature_extractor=lambda x: x)


def test_evaluate_fidelity_bad_inputs_leave_inputs_unchanged(sets):
    real, _, _ = sets
    one = make_table(1, seed=0)
    before, before_arr = snapshot(one), real.copy()
    with pytest.raises(ValueError, match="at least 2 patches per side"):
        c2lst.tl.evaluate_fidelity(real, one)
    with pytest.raises(ValueError, match="at least 2 patches per side"):
        c2lst.tl.evaluate_fidelity(real[:1], real)
    assert snapshot(one) == before
    assert np.array_equal(real, before_arr)
    with pytest.raises(ValueError, match="one size"):
        c2lst.tl.evaluate_fidelity(real, disc_patches(4, size=48)[0])
    with pytest.raises(ValueError, match="features"):
        c2lst.tl.evaluate_fidelity(real, real, features="inception")
    t = make_table(4)
    del t.obsm["c2lst_patch"]
    with pytest.raises(KeyError, match=r"c2lst\.pp\.extract_patches"):
        c2lst.tl.evaluate_fidelity(t, real)
    with pytest.raises(TypeError, match="uint8"):
        c2lst.tl.evaluate_fidelity(real.astype(float), real)


def _synthetic_children(real, n_children=3, seed=0, noise=6.0):
    """Children = parent patch + pixel noise (the nuclei of a child match its parent)."""
    rng = np.random.default_rng(seed)
    p = np.repeat(real.obsm["c2lst_patch"], n_children, axis=0).astype(float)
    p = np.clip(p + rng.normal(0, noise, p.shape), 0, 255).astype(np.uint8)
    syn = make_table(len(p), seed=99)
    syn.obsm["c2lst_patch"] = p
    syn.obs_names = [f"syn_{i}" for i in range(len(p))]
    syn.obs["c2lst_synthetic"] = True
    syn.obs["c2lst_parent"] = np.repeat(real.obs_names.to_numpy(), n_children)
    syn.obs["c2lst_seed"] = np.arange(len(p))
    return syn


def test_evaluate_composition_tracks_parents_and_truth():
    real = make_table(30, seed=0)
    counts = F.morphometric_features(real.obsm["c2lst_patch"])[:, 0]
    real.obs["c2lst_true_n_cells"] = counts + 1
    real.obsm["c2lst_true_composition"] = pd.DataFrame(
        {"tumour": np.linspace(0, 1, 30), "stroma": np.linspace(1, 0, 30)}, index=real.obs_names
    )
    syn = _synthetic_children(real)
    before = snapshot(syn), snapshot(real)
    df = c2lst.tl.evaluate_composition(real, syn)
    assert (snapshot(syn), snapshot(real)) == before
    assert list(df.index) == list(real.obs_names)
    assert (df["n_synthetic"] == 3).all()
    np.testing.assert_array_equal(df["real_n_nuclei"], counts)
    np.testing.assert_allclose(df["true_n_cells"], counts + 1)
    assert {"true_tumour", "true_stroma"} <= set(df.columns)
    rho = df.attrs["spearman"]
    assert rho["synthetic_vs_real_n_nuclei"] > 0.95
    assert rho["synthetic_n_nuclei_vs_true_n_cells"] > 0.95
    # children of shuffled parents do not follow them
    shuffled = syn.copy()
    shuffled.obs["c2lst_parent"] = np.random.default_rng(1).permutation(
        shuffled.obs["c2lst_parent"].to_numpy()
    )
    rho_s = c2lst.tl.evaluate_composition(real, shuffled).attrs["spearman"]
    assert rho_s["synthetic_vs_real_n_nuclei"] < 0.6


def test_evaluate_composition_bad_inputs():
    real = make_table(6)
    syn = _synthetic_children(real, n_children=1)
    with pytest.raises(KeyError, match="parent_key"):
        c2lst.tl.evaluate_composition(real, syn, parent_key="origin")
    syn.obs["c2lst_parent"] = [f"elsewhere_{i}" for i in range(6)]
    with pytest.raises(ValueError, match="real"):
        c2lst.tl.evaluate_composition(real, syn)
    with pytest.raises(TypeError, match="AnnData"):
        c2lst.tl.evaluate_composition(real.obsm["c2lst_patch"], syn)


# --------------------------------------------------------------------------- real H&E
def _shared_data() -> Path:
    env = os.environ.get("C2LST_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mouse_brain_patches():
    folder = _shared_data() / "visium_mouse_brain_crop"
    if not (folder / "test_img.jpg").is_file():
        pytest.skip(
            f"real Visium crop not found in {folder} (set C2LST_SHARED_DATA to the shared data folder)"
        )
    import anndata as ad
    from skimage import io, transform

    img = io.imread(folder / "test_img.jpg")
    xy = ad.read_h5ad(folder / "test_data.h5ad").obsm["spatial"].astype(int)
    r = 45  # 55 µm spot diameter = 89.4 px
    crops = [img[y - r : y + r, x - r : x + r] for x, y in xy]
    return np.stack(
        [(transform.resize(c, (64, 64), anti_aliasing=True) * 255).astype(np.uint8) for c in crops]
    )


def test_real_he_nuclei_are_dark_and_counted(mouse_brain_patches):
    p = mouse_brain_patches
    x = F.morphometric_features(p)
    assert 3 <= np.median(x[:, 0]) <= 40  # ~10 cells under a 55 µm mouse-brain spot
    h = color.rgb2hed(p)[..., 0]
    labels, _, _ = F._label_nuclei(h, None, 1.0, 4)
    inside = labels.reshape(len(p), 66, 66)[:, 1:-1, 1:-1] > 0
    assert np.all(p[inside].mean(0) < p[~inside].mean(0) - 20)  # nuclei are the dark hematoxylin blobs


def test_real_he_fidelity_detects_a_stain_shift(mouse_brain_patches):
    p = mouse_brain_patches
    a, b = p[::2], p[1::2]
    shifted = np.clip(b.astype(int) + np.array([30, -10, -30]), 0, 255).astype(np.uint8)
    same = c2lst.tl.evaluate_fidelity(a, b, n_subsets=20)
    moved = c2lst.tl.evaluate_fidelity(a, shifted, n_subsets=20)
    assert moved["fid"] > 3 * same["fid"]
    assert moved["kid"] > 3 * max(same["kid"], 0.0) + 0.1


def test_morphometric_features_of_a_patch_do_not_depend_on_its_batch_neighbours():
    """Regression: a 2-D Sobel on the (n, S, S) stack smoothed across patches, so texture leaked between rows."""
    from scipy import ndimage
    from skimage import color

    from c2lst.models.features import morphometric_features

    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    alone = morphometric_features(patches[2:3], threshold=0.05)
    in_batch = morphometric_features(patches, threshold=0.05)[2:3]
    np.testing.assert_array_equal(alone, in_batch)
    grey = color.rgb2gray(patches[2])
    energy = (ndimage.sobel(grey, 0, mode="nearest") ** 2 + ndimage.sobel(grey, 1, mode="nearest") ** 2).mean()
    assert in_batch[0, -1] == pytest.approx(energy)


def test_nuclei_of_a_patch_do_not_depend_on_its_place_in_the_batch():
    """Regression: the first patch of a mosaic met the image border (no background row above it) and watershed
    ties were broken by the flooding order of the whole mosaic, so a spot predicted alone, first or among others
    got other nuclei counts, area spread and eccentricity (up to 2 nuclei on simulated H&E)."""
    sdata = c2lst.datasets.simulated_visium(n_spots=40, seed=0)
    c2lst.pp.extract_patches(sdata, size=32, progress=False)
    patches = np.asarray(sdata.tables["table"].obsm["c2lst_patch"])
    thr = F.hematoxylin_threshold(patches)
    together = F.morphometric_features(patches, threshold=thr)
    alone = np.concatenate([F.morphometric_features(p[None], threshold=thr) for p in patches])
    reversed_ = F.morphometric_features(patches[::-1], threshold=thr)[::-1]
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_array_equal(reversed_, together)
    assert together[:, 0].max() >= 3  # there are nuclei (and touching ones) to split


def test_nuclei_in_chunks_count_the_same_and_show_progress(capsys):
    """Nuclei are segmented in mosaics of ``batch_size`` patches (a bar over them); counts and areas stay."""
    from c2lst.models._nuclei import _segment

    patches = c2lst.datasets.ihc_patches(n=300, size=32, seed=0)
    thr = F.hematoxylin_threshold(patches)
    h = color.rgb2hed(patches)[..., 0]
    whole = _segment(h, thr, 1.0, 4)  # one mosaic
    chunked = F.segment_nuclei(patches, threshold=thr, batch_size=100, progress=True)
    assert chunked["patch"].max() > 200  # nuclei of the last chunk, with their patch index shifted back
    for nuc in (whole, chunked):
        nuc["per_patch"] = np.bincount(nuc["patch"], minlength=300), np.bincount(
            nuc["patch"], weights=nuc["area"], minlength=300
        )
    np.testing.assert_array_equal(chunked["per_patch"][0], whole["per_patch"][0])
    np.testing.assert_array_equal(chunked["per_patch"][1], whole["per_patch"][1])
    err = capsys.readouterr().err
    assert "nuclei" in err and "300/300" in err
    auto = F.segment_nuclei(patches, batch_size=100)  # threshold of the whole set, not of a chunk
    assert float(auto["threshold"]) == pytest.approx(float(_segment(h, None, 1.0, 4)["threshold"]))
    F.morphometric_features(patches, threshold=thr, batch_size=100, progress=False)
    assert "morphometric" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size"):
        F.segment_nuclei(patches, batch_size=0)


def test_evaluation_shows_progress_bars_over_patches(capsys):
    patches = c2lst.datasets.ihc_patches(n=300, size=16, seed=1)
    c2lst.tl.evaluate_fidelity(patches[:150], patches[150:], n_subsets=5, progress=False)
    assert "morphometric features" not in capsys.readouterr().err
    many = c2lst.datasets.ihc_patches(n=1100, size=16, seed=2)  # more than one mosaic of 1024
    c2lst.tl.evaluate_fidelity(many[:60], many, n_subsets=5)
    err = capsys.readouterr().err
    assert "morphometric features" in err and "1100/1100" in err
