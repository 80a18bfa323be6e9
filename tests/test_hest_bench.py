"""``tl.hest_bench``: held-out-sample image -> expression scores, HEST-Bench style, on tiny samples."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _reliability_helpers import assert_same, snapshot

import c2lst


class MeanColour(torch.nn.Module):
    """A frozen feature extractor: per-channel mean and spread of the patch (fast, deterministic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


FAST = {"feature_extractor": MeanColour()}


def _sample(seed: int, n: int = 40, patient: str | None = None) -> ad.AnnData:
    """Patches whose brightness drives LINKED's counts; NOISE is independent of the image."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0, 1, n)
    patches = np.empty((n, 16, 16, 3), np.uint8)
    patches[:] = (60 + 150 * level)[:, None, None, None].astype(np.uint8)
    patches = np.clip(patches + rng.integers(-10, 10, patches.shape), 0, 255).astype(np.uint8)
    counts = np.c_[rng.poisson(1 + 30 * level), rng.poisson(5, n), np.zeros(n)].astype(np.float32)
    table = ad.AnnData(counts)
    table.var_names = ["LINKED", "NOISE", "ZERO"]
    table.obs_names = [f"s{seed}_{i}" for i in range(n)]
    table.obsm["c2lst_patch"] = patches
    source = {"sample_id": f"S{seed}"}
    if patient is not None:
        source["metadata"] = json.dumps({"patient": patient})
    table.uns["c2lst"] = {"source": source}
    return table


def test_leave_one_sample_out_scores_each_gene_like_hest():
    samples = [_sample(i) for i in range(3)]
    before = [snapshot(s) for s in samples]
    df = c2lst.tl.hest_bench(samples, genes=["LINKED", "NOISE"], predictor_kwargs=FAST, progress=False)
    assert list(df.columns) == ["fold", "test", "gene", "pearson_r", "n_train", "n_test"]
    assert list(df["test"].unique()) == ["S0", "S1", "S2"] and (df["n_train"] == 80).all()
    linked = df.loc[df["gene"] == "LINKED", "pearson_r"]
    noise = df.loc[df["gene"] == "NOISE", "pearson_r"]
    assert (linked > 0.6).all() and noise.abs().mean() < 0.4  # the image predicts LINKED, not NOISE
    summary = df.attrs["hest_bench"]
    per_fold = df.groupby("fold")["pearson_r"].mean().to_numpy()
    np.testing.assert_allclose(summary["mean_per_fold"], per_fold)
    assert summary["pearson_mean"] == pytest.approx(per_fold.mean())
    assert summary["pearson_std"] == pytest.approx(per_fold.std())
    assert summary["pearson_per_gene"]["LINKED"] == pytest.approx(linked.mean())
    assert summary["folds"][0] == {"train": ["S1", "S2"], "test": ["S0"]}
    for s, b in zip(samples, before, strict=True):
        assert_same(snapshot(s), b)  # the samples are not modified


def test_scores_match_a_direct_fit_on_the_training_samples():
    samples = {"A": _sample(0), "B": _sample(1)}
    df = c2lst.tl.hest_bench(samples, genes=["LINKED", "NOISE"], predictor_kwargs=FAST, progress=False)
    train = samples["B"].copy()
    train = ad.AnnData(np.log1p(train[:, ["LINKED", "NOISE"]].X), obsm={"c2lst_patch": train.obsm["c2lst_patch"]})
    train.obsm["y"] = np.asarray(train.X)
    model = c2lst.tl.fit_predictor(train, expr_key="y", mode="ridge", progress=False, **FAST)
    test = samples["A"]
    pred = model.predict(test.obsm["c2lst_patch"])
    expected = c2lst.metrics.pearson(np.log1p(test[:, ["LINKED", "NOISE"]].X), pred.astype(float))
    np.testing.assert_allclose(df.loc[df["fold"] == 0, "pearson_r"], expected, rtol=1e-5)


def test_gene_list_json_and_nan_for_constant_genes(tmp_path):
    path = tmp_path / "var_50genes.json"
    path.write_text(json.dumps({"genes": ["ZERO", "LINKED"]}))
    df = c2lst.tl.hest_bench([_sample(0), _sample(1)], genes=path, predictor_kwargs=FAST, progress=False)
    assert df["gene"].tolist()[:2] == ["ZERO", "LINKED"]
    assert df.loc[df["gene"] == "ZERO", "pearson_r"].isna().all()
    summary = df.attrs["hest_bench"]
    assert summary["n_nan"] == 2 and np.isfinite(summary["pearson_mean"])  # NaN genes are skipped, as counted


def test_patient_split_and_hest_split_csvs(tmp_path):
    samples = [_sample(0, patient="P1"), _sample(1, patient="P1"), _sample(2, patient="P2")]
    df = c2lst.tl.hest_bench(samples, genes=["LINKED"], split="patient", predictor_kwargs=FAST, progress=False)
    assert df["test"].tolist() == ["S0,S1", "S2"] and df["n_test"].tolist() == [80, 40]
    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame({"sample_id": ["S1", "S2"], "patches_path": "x", "expr_path": "y"}).to_csv(splits / "train_0.csv")
    pd.DataFrame({"sample_id": ["S0"]}).to_csv(splits / "test_0.csv")
    df = c2lst.tl.hest_bench(samples, genes=["LINKED"], splits_dir=splits, predictor_kwargs=FAST, progress=False)
    assert df["test"].tolist() == ["S0"] and df["n_train"].tolist() == [80]
    assert df.attrs["hest_bench"]["split"] == "splits_dir"


def test_works_on_read_hest_samples(tmp_path):
    from test_hest import write_hest_sample

    for i, sid in enumerate(("TOY1", "TOY2")):
        write_hest_sample(tmp_path, sid, seed=i)
    samples = [c2lst.datasets.read_hest(tmp_path, s, patches=True) for s in ("TOY1", "TOY2")]
    df = c2lst.tl.hest_bench(samples, genes=["G0", "G1"], split="patient", predictor_kwargs=FAST, progress=False)
    assert df["test"].tolist() == ["TOY1", "TOY1", "TOY2", "TOY2"] and (df["n_test"] == 17).all()


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"genes": ["LINKED", "MISSING"]}, KeyError, "lacks 1 of the `genes`"),
        ({"genes": "LINKED"}, TypeError, "genes"),
        ({"genes": []}, ValueError, "genes"),
        ({"split": "spot"}, ValueError, "split='spot'"),
        ({"normalize": "zscore"}, ValueError, "normalize"),
        ({"predictor_kwargs": {"seed": 3}}, ValueError, "predictor_kwargs"),
        ({"patch_key": "nope"}, KeyError, "nope"),
        ({"split": "patient"}, ValueError, "records no patient"),
        ({"layer": "counts"}, KeyError, "layer='counts'"),
    ],
)
def test_bad_input_is_refused_before_fitting(kwargs, err, match, monkeypatch):
    import c2lst.tl._hest_bench as hb

    monkeypatch.setattr(hb, "fit_predictor", lambda *a, **k: pytest.fail("fitted despite bad input"))
    kwargs = {"genes": ["LINKED"], **kwargs}
    with pytest.raises(err, match=match):
        c2lst.tl.hest_bench([_sample(0), _sample(1)], progress=False, **kwargs)


def test_bad_samples():
    with pytest.raises(ValueError, match="at least 2"):
        c2lst.tl.hest_bench([_sample(0)], genes=["LINKED"])
    with pytest.raises(ValueError, match="repeat the sample names"):
        c2lst.tl.hest_bench([_sample(0), _sample(0)], genes=["LINKED"])
    with pytest.raises(TypeError, match="samples"):
        c2lst.tl.hest_bench(_sample(0), genes=["LINKED"])
    big = _sample(1)
    big.obsm["c2lst_patch"] = np.zeros((40, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="patch shapes"):
        c2lst.tl.hest_bench([_sample(0), big], genes=["LINKED"])


def test_synthetic_rows_are_left_out():
    real, other = _sample(0), _sample(1)
    fake = _sample(2, n=10)
    fake.obs_names = [f"syn{i}" for i in range(10)]
    mixed = ad.concat([real, fake])
    mixed.obsm["c2lst_patch"] = np.concatenate([real.obsm["c2lst_patch"], fake.obsm["c2lst_patch"]])
    mixed.obs["c2lst_synthetic"] = [False] * 40 + [True] * 10
    df = c2lst.tl.hest_bench({"A": mixed, "B": other}, genes=["LINKED"], predictor_kwargs=FAST, progress=False)
    plain = c2lst.tl.hest_bench({"A": real, "B": other}, genes=["LINKED"], predictor_kwargs=FAST, progress=False)
    assert df["n_test"].tolist() == [40, 40] and df["n_train"].tolist() == [40, 40]
    np.testing.assert_allclose(df["pearson_r"], plain["pearson_r"])
    only_fake = fake.copy()
    only_fake.obs["c2lst_synthetic"] = True
    with pytest.raises(ValueError, match="only synthetic"):
        c2lst.tl.hest_bench({"A": only_fake, "B": other}, genes=["LINKED"])
