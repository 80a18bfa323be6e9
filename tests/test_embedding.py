"""Image features in obsm, the scanpy neighbours/UMAP chain and the real/synthetic mixing score (issue 11)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import c2lst


def _table(real: np.ndarray, syn: np.ndarray) -> AnnData:
    n_r, n_s = len(real), len(syn)
    obs = pd.DataFrame(
        {"c2lst_synthetic": [False] * n_r + [True] * n_s},
        index=[f"r{i}" for i in range(n_r)] + [f"s{i}" for i in range(n_s)],
    )
    ad = AnnData(obs=obs)
    ad.obsm["c2lst_patch"] = np.concatenate([real, syn])
    return ad


def test_image_features_are_standardised_on_real_rows_and_feed_scanpy(sim_sdata_base):
    import scanpy as sc

    patches = np.asarray(sim_sdata_base.tables["table"].obsm["c2lst_patch"])
    ad = _table(patches[:60], patches[60:90])
    c2lst.tl.image_features(ad)
    feats = ad.obsm["c2lst_morph"]
    assert feats.shape == (90, 21) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:60].mean(axis=0), 0, atol=1e-4)
    assert ad.uns["c2lst"]["features"]["c2lst_morph"]["n_reference"] == 60
    sc.pp.neighbors(ad, use_rep="c2lst_morph", n_neighbors=10)
    sc.tl.umap(ad, random_state=0)
    assert ad.obsm["X_umap"].shape == (90, 2)
    copy = c2lst.tl.image_features(ad, key_added="other", copy=True)
    assert "other" in copy.obsm and "other" not in ad.obsm


def test_mixing_score_tells_mixed_from_separated_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(100, 5))
    ad = AnnData(obs=pd.DataFrame({"c2lst_synthetic": [False] * 100 + [True] * 50}, index=[str(i) for i in range(150)]))
    ad.obsm["same"] = np.concatenate([real, rng.normal(size=(50, 5))]).astype(np.float32)
    ad.obsm["apart"] = np.concatenate([real, rng.normal(size=(50, 5)) + 20]).astype(np.float32)
    mixed = c2lst.tl.mixing_score(ad, use_rep="same", n_neighbors=10)
    apart = c2lst.tl.mixing_score(ad, use_rep="apart", n_neighbors=10)
    assert mixed["expected"] == pytest.approx(50 / 149)
    assert 0.7 < mixed["ratio"] < 1.3
    assert apart["observed"] == 0.0 and apart["ratio"] == 0.0
    assert list(ad.obs.columns) == ["c2lst_synthetic"]  # nothing written


def test_embedding_bad_input():
    ad = AnnData(obs=pd.DataFrame({"c2lst_synthetic": [False, False, True]}, index=["a", "b", "c"]))
    ad.obsm["e"] = np.zeros((3, 2), np.float32)
    with pytest.raises(KeyError, match="image_features"):
        c2lst.tl.mixing_score(ad, use_rep="nope")
    with pytest.raises(ValueError, match="n_neighbors"):
        c2lst.tl.mixing_score(ad, use_rep="e", n_neighbors=3)
    only_real = AnnData(obs=pd.DataFrame({"c2lst_synthetic": [False] * 3}, index=["a", "b", "c"]))
    only_real.obsm["e"] = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="real and"):
        c2lst.tl.mixing_score(only_real, use_rep="e", n_neighbors=1)
    ad.obsm["c2lst_patch"] = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="features"):
        c2lst.tl.image_features(ad, features="dino")


def test_image_features_central_are_the_frozen_denoisers_and_standardised_on_real_rows(sim_sdata_base):
    from c2lst.models import CentralModel, central_features

    patches = np.asarray(sim_sdata_base.tables["table"].obsm["c2lst_patch"])[:24]
    model = CentralModel.from_preset("tiny", seed=0)
    ad = _table(patches[:16], patches[16:24])
    before = ad.copy()
    c2lst.tl.image_features(ad, features="central", central=model, central_timestep=20)
    feats = ad.obsm["c2lst_central_features"]
    raw = central_features(model, np.concatenate([patches[:16], patches[16:24]]), t=20)
    assert feats.shape == raw.shape and feats.dtype == np.float32
    mean, std = raw[:16].mean(axis=0), raw[:16].std(axis=0)
    expected = (raw - mean) / np.where(std > 1e-12, std, 1.0)
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-4)
    rec = ad.uns["c2lst"]["features"]["c2lst_central_features"]
    assert rec["features"] == "central" and rec["central_timestep"] == 20 and rec["n_reference"] == 16
    # another timestep gives other features: the argument reaches the denoiser
    other = c2lst.tl.image_features(before, features="central", central=model, central_timestep=600, copy=True)
    assert not np.allclose(other.obsm["c2lst_central_features"], feats)
    assert "c2lst_central_features" not in before.obsm


def test_image_features_central_bad_input_writes_nothing():
    from c2lst.models import CentralModel

    ad = AnnData(obs=pd.DataFrame({"c2lst_synthetic": [False, False, True]}, index=["a", "b", "c"]))
    ad.obsm["c2lst_patch"] = np.zeros((3, 32, 32, 3), np.uint8)
    model = CentralModel.from_preset("tiny", seed=0)
    with pytest.raises(ValueError, match="needs the central model"):
        c2lst.tl.image_features(ad, features="central")
    with pytest.raises(ValueError, match="only used with"):
        c2lst.tl.image_features(ad, central=model)
    with pytest.raises(ValueError, match="central_timestep"):
        c2lst.tl.image_features(ad, features="central", central=model, central_timestep=5000)
    with pytest.raises(TypeError, match="central_timestep"):
        c2lst.tl.image_features(ad, features="central", central=model, central_timestep=1.5)
    ad.obsm["c2lst_patch"] = np.zeros((3, 30, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="multiples"):
        c2lst.tl.image_features(ad, features="central", central=model)
    assert "c2lst" not in ad.uns and list(ad.obsm) == ["c2lst_patch"]
