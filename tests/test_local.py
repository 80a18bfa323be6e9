"""Local adaptation and synthesis written back to SpatialData (issue 4)."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import spatialdata
import torch
from _reliability_helpers import state as snapshot

import c2lst
from c2lst._records import lineage
from c2lst.models import CentralModel, LocalModel


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("preset", "bound"), [("tiny", 0.10), ("small", 0.05), ("base", 0.05)])
def test_trainable_ratio(preset, bound):
    central = CentralModel.from_preset(preset)
    local = LocalModel(central, [f"g{i}" for i in range(50)], rank=8, copy_central=False)
    report = local.parameter_report()
    assert 0 < report["ratio"] < bound, report
    assert report["trainable"] == local.trainable_parameters()
    frozen = [n for n, p in local.central.named_parameters() if p.requires_grad and "lora_" not in n]
    assert frozen == []


def test_untrained_adapter_null_branch_equals_central(tiny_central):
    central, _ = tiny_central
    local = LocalModel(central, ["a", "b", "c"])
    expr = torch.randn(2, 3)
    ref = central.sample(2, steps=3, generator=[_gen(1), _gen(2)])
    null = local.central.sample(
        2, steps=3, condition=local.condition(expr).detach(), guidance_scale=0.0, generator=[_gen(1), _gen(2)]
    )
    np.testing.assert_array_equal(ref, null)
    # zero-initialised encoder output and LoRA: even the conditional branch equals the central model
    cond = local.central.sample(
        2, steps=3, condition=local.condition(expr).detach(), guidance_scale=1.0, generator=[_gen(1), _gen(2)]
    )
    np.testing.assert_array_equal(ref, cond)


def test_fuse_adapters_matches_unfused_forward(tiny_central):
    from peft.tuners.lora import LoraLayer

    central, _ = tiny_central
    before = {k: v.clone() for k, v in central.state_dict().items()}
    local = LocalModel(central, ["a", "b", "c"], seed=0)
    with torch.no_grad():  # make the adapters non-trivial (LoRA B starts at zero)
        for name, p in local.named_parameters():
            if "lora_B" in name or "encoder.net.3" in name:
                p.copy_(torch.randn(p.shape, generator=_gen(len(name))) * 0.05)
    local.eval()
    x = torch.randn(3, 3, 32, 32, generator=_gen(3))
    t = torch.tensor([10, 500, 900])
    with torch.inference_mode():
        emb = local.condition(torch.randn(3, 3, generator=_gen(4)))
        ref = local(x, t, emb)
    fused = local.fuse_adapters()
    assert fused is local and local.fused
    assert not any(isinstance(m, LoraLayer) for m in local.central.unet.modules())
    with torch.inference_mode():
        out = local(x, t, emb)
    assert not torch.equal(ref, central(x, t, emb.detach()))  # the adapters do change the output
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="fused"):
        local.adapter_state()
    # the caller's central model is untouched (the local model owns a copy)
    after = central.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapt_stores_adapter(adapted_base):
    rec = adapted_base.uns["c2lst"]["local"]["c2lst_local"]
    assert list(rec["genes"]) == list(adapted_base.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])
    assert all(v.dtype == np.float32 for v in rec["weights"].values())
    assert any(k.startswith("lora.") for k in rec["weights"]) and any(
        k.startswith("encoder.") for k in rec["weights"]
    )
    summary = json.loads(rec["summary"])
    assert summary["steps"] == 6 and summary["ratio"] < 0.10
    assert len(rec["sha256"]) == 64 and len(rec["central_sha256"]) == 64 and rec["central_path"]
    recs = [r for r in lineage(adapted_base) if r["function"] == "c2lst.tl.adapt"]
    assert recs and recs[-1]["model_sha256"]["adapter"] == rec["sha256"]


def test_guidance_changes_output_and_zero_is_null(adapted_sdata, tiny_central):
    central, _ = tiny_central
    outs = {}
    for g in (0.0, 1.0, 3.0):
        syn = c2lst.tl.synthesize(
            adapted_sdata.tables["table"],
            guidance_scale=g,
            n_steps=3,
            conditions=adapted_sdata.tables["table"][:4].copy(),
            progress=False,
        )
        outs[g] = syn.obsm["c2lst_patch"]
    assert not np.array_equal(outs[1.0], outs[3.0])
    # guidance 0 = the adapted model's null branch: the central model + LoRA with the null embedding
    from c2lst.tl._adapters import load_local_model

    local = load_local_model(adapted_sdata.tables["table"].uns["c2lst"]["local"]["c2lst_local"], central)
    null = local.central.sample(4, steps=3, generator=[_gen(i) for i in range(4)])
    # synthesis fuses LoRA into the weights: float rounding may flip a rare pixel by one grey level
    diff = np.abs(outs[0.0].astype(int) - null.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_synthesize_writes_elements_and_lineage(adapted_sdata, tmp_path):
    adapted_sdata.tables["table"] = adapted_sdata.tables["table"][:10].copy()  # default conditions: own spots
    assert c2lst.tl.synthesize(adapted_sdata, n_per_condition=2, n_steps=3, seed=7, progress=False) is None
    sd = adapted_sdata
    src = sd.tables["table"]
    syn = sd.tables["c2lst_synthetic"]
    assert syn.n_obs == 2 * src.n_obs
    assert syn.obs["c2lst_synthetic"].all()
    assert set(syn.obs["c2lst_parent"]) == set(src.obs_names)
    assert syn.obs["c2lst_seed"].tolist() == list(range(7, 7 + syn.n_obs))
    assert syn.obs["c2lst_run_id"].nunique() == 1
    assert list(syn.var_names) == list(src.uns["c2lst"]["local"]["c2lst_local"]["genes"])
    # X holds the parent's raw counts over the adapter genes
    parent = syn.obs["c2lst_parent"].iloc[0]
    np.testing.assert_allclose(syn.X[0].toarray().ravel(), src[parent, syn.var_names].X.toarray().ravel())
    rec = lineage(syn)[-1]
    for key in (
        "run_id",
        "function",
        "c2lst_version",
        "parameters",
        "seed",
        "input_table",
        "model_sha256",
        "created",
    ):
        assert key in rec
    assert rec["function"] == "c2lst.tl.synthesize" and rec["seed"] == 7 and rec["input_table"] == "table"
    assert rec["parameters"]["n_per_condition"] == 2 and set(rec["model_sha256"]) == {"central", "adapter"}
    assert {"c2lst_synthetic_image", "c2lst_synthetic_spots"} <= set(sd.images) | set(sd.shapes)
    # written and re-read
    sd.write(tmp_path / "s.zarr")
    back = spatialdata.read_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(back.tables["c2lst_synthetic"].obsm["c2lst_patch"], syn.obsm["c2lst_patch"])
    assert "c2lst_synthetic" in back.coordinate_systems
    # extract_patches reads synthetic spots exactly like real ones
    c2lst.pp.extract_patches(back, table_key="c2lst_synthetic", size=32, key_added="again", progress=False)
    t = back.tables["c2lst_synthetic"]
    np.testing.assert_array_equal(t.obsm["again"], t.obsm["c2lst_patch"])


def test_adapter_round_trip_through_zarr_same_bytes(adapted_sdata, tmp_path, tiny_central):
    _ = tiny_central
    adapted_sdata.write(tmp_path / "a.zarr")
    back = spatialdata.read_zarr(tmp_path / "a.zarr")
    kw = {"n_steps": 3, "seed": 3, "progress": False, "conditions": adapted_sdata.tables["table"][:3].copy()}
    c2lst.tl.synthesize(adapted_sdata, key_added="first", **kw)
    c2lst.tl.synthesize(back, key_added="second", **kw)
    a, b = (sd.tables[k].obsm["c2lst_patch"] for sd, k in ((adapted_sdata, "first"), (back, "second")))
    np.testing.assert_array_equal(a, b)
    # and through a safetensors export
    t = adapted_sdata.tables["table"]
    f = c2lst.tl.export_adapter(t, tmp_path / "adapter.safetensors")
    other = ad.AnnData(t.X.copy(), obs=t.obs.copy(), var=t.var.copy())
    other.obsm["c2lst_patch"] = t.obsm["c2lst_patch"]
    c2lst.tl.load_adapter(other, f)
    np.testing.assert_array_equal(
        other.uns["c2lst"]["local"]["c2lst_local"]["weights"]["encoder.mean"],
        t.uns["c2lst"]["local"]["c2lst_local"]["weights"]["encoder.mean"],
    )
    with pytest.raises(ValueError, match="overwrite"):
        c2lst.tl.load_adapter(other, f)


def test_synthesize_backed_writes_to_store(adapted_sdata, tmp_path):
    adapted_sdata.write(tmp_path / "b.zarr")
    back = spatialdata.read_zarr(tmp_path / "b.zarr")
    c2lst.tl.synthesize(back, n_steps=2, progress=False, conditions=np.zeros((2, 20), np.float32))
    again = spatialdata.read_zarr(tmp_path / "b.zarr")
    assert "c2lst_synthetic" in again.tables and "c2lst_synthetic_image" in again.images
    assert list(again.tables["c2lst_synthetic"].obs["c2lst_parent"]) == ["condition_0", "condition_1"]
    assert not any(p.name.endswith(".tmp.zarr") for p in tmp_path.iterdir())


def test_conditions_dataframe_and_scanpy_chain(adapted_sdata):
    t = adapted_sdata.tables["table"]
    genes = list(t.uns["c2lst"]["local"]["c2lst_local"]["genes"])
    profiles = pd.DataFrame(np.asarray(t.obsm["c2lst_expr"][:3]), columns=genes, index=["a", "b", "c"])
    c2lst.tl.synthesize(adapted_sdata, conditions=profiles, n_steps=2, progress=False, n_per_condition=2)
    syn = adapted_sdata.tables["c2lst_synthetic"]
    assert list(syn.obs["c2lst_parent"]) == ["a", "a", "b", "b", "c", "c"]
    both = c2lst.tl.concat_augmented(adapted_sdata)
    assert both.n_obs == t.n_obs + 6 and both.obs["c2lst_synthetic"].sum() == 6
    sc.pp.normalize_total(both)
    sc.pp.log1p(both)
    sc.pp.pca(both, n_comps=5)
    sc.pp.neighbors(both, n_neighbors=5)
    sc.tl.umap(both)
    sc.tl.leiden(both, flavor="igraph", n_iterations=2, directed=False)
    assert "leiden" in both.obs and both.obsm["X_umap"].shape == (both.n_obs, 2)


def test_adapt_small_table_shrinks_batch(sim_sdata, tiny_central, caplog):
    _, path = tiny_central
    t = sim_sdata.tables["table"][:3].copy()
    with caplog.at_level(logging.WARNING, logger="c2lst"):
        c2lst.tl.adapt(t, central=str(path), n_steps=1, batch_size=8, progress=False)
    assert "batch_size" in caplog.text
    assert json.loads(t.uns["c2lst"]["local"]["c2lst_local"]["summary"])["n_spots"] == 3


def test_adapt_unlabelled_images_encoder_lr_and_timestep_bias(sim_sdata, tiny_central):
    """Unlabelled patches train the null branch only; the encoder can learn at its own rate; timesteps can be
    biased to high noise (recorded), and bias 0 is the uniform run."""
    _, path = tiny_central
    table = sim_sdata.tables["table"]
    paired, images = table[:20].copy(), np.asarray(table.obsm["c2lst_patch"][20:60])
    kw = {"central": str(path), "n_steps": 3, "batch_size": 8, "seed": 0, "progress": False}
    plain = c2lst.tl.adapt(paired, copy=True, **kw)
    again = c2lst.tl.adapt(paired, copy=True, unlabelled=images, unlabelled_fraction=0.0, **kw)
    w0, w1 = (t.uns["c2lst"]["local"]["c2lst_local"]["weights"] for t in (plain, again))
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)  # fraction 0: the same batches as without images
    with_images = c2lst.tl.adapt(paired, copy=True, unlabelled=images, unlabelled_fraction=0.5, **kw)
    w2 = with_images.uns["c2lst"]["local"]["c2lst_local"]["weights"]
    assert any(not np.array_equal(w0[k], w2[k]) for k in w0)
    rec = [r for r in with_images.uns["c2lst"]["lineage"].values() if r["function"] == "c2lst.tl.adapt"][-1]
    assert json.loads(rec["parameters"])["n_unlabelled"] == 40
    fast = c2lst.tl.adapt(paired, copy=True, encoder_lr=1e-2, **kw)
    w3 = fast.uns["c2lst"]["local"]["c2lst_local"]["weights"]
    last = "encoder.net.3.weight"  # zero-initialised: its norm is what the optimiser moved it
    assert np.linalg.norm(w3[last]) > 3 * np.linalg.norm(w0[last])  # 10x the rate of the default (lr=1e-3)
    biased = c2lst.tl.adapt(paired, copy=True, timestep_bias=1.0, **kw)
    w4 = biased.uns["c2lst"]["local"]["c2lst_local"]["weights"]
    assert any(not np.array_equal(w0[k], w4[k]) for k in w0)
    rec = [r for r in biased.uns["c2lst"]["lineage"].values() if r["function"] == "c2lst.tl.adapt"][-1]
    assert json.loads(rec["parameters"])["timestep_bias"] == 1.0
    zero = c2lst.tl.adapt(paired, copy=True, timestep_bias=0, **kw)  # 0: the uniform draws of before
    w5 = zero.uns["c2lst"]["local"]["c2lst_local"]["weights"]
    assert all(np.array_equal(w0[k], w5[k]) for k in w0)


def test_adapt_condition_noise_jitters_the_profiles_reproducibly(sim_sdata, tiny_central):
    """Noise on the training profiles changes the adapter, is recorded, is the same for the same seed, and 0 is
    the run without the option (no extra draw from the step's generator)."""
    _, path = tiny_central
    paired = sim_sdata.tables["table"][:20].copy()
    kw = {"central": str(path), "n_steps": 3, "batch_size": 8, "seed": 0, "progress": False}

    def weights(t):
        return t.uns["c2lst"]["local"]["c2lst_local"]["weights"]

    plain, zero = (c2lst.tl.adapt(paired, copy=True, **kw, **extra) for extra in ({}, {"condition_noise": 0}))
    assert all(np.array_equal(weights(plain)[k], weights(zero)[k]) for k in weights(plain))
    noisy, again = (c2lst.tl.adapt(paired, copy=True, condition_noise=0.5, **kw) for _ in range(2))
    assert all(np.array_equal(weights(noisy)[k], weights(again)[k]) for k in weights(noisy))
    last = "encoder.net.3.weight"  # the encoder's output layer: it saw other inputs
    assert not np.array_equal(weights(noisy)[last], weights(plain)[last])
    rec = [r for r in noisy.uns["c2lst"]["lineage"].values() if r["function"] == "c2lst.tl.adapt"][-1]
    assert json.loads(rec["parameters"])["condition_noise"] == 0.5


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_per_condition": 0}, ValueError, "n_per_condition"),
        ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"scheduler": "euler"}, ValueError, r"scheduler.*\['sde-dpmsolver\+\+', 'dpmsolver\+\+', 'unipc'"),
        ({"adapter_key": "nope"}, KeyError, "adapter_key"),
        ({"table_key": "nope"}, KeyError, "table_key"),
        ({"conditions": np.full((2, 20), np.nan, np.float32)}, ValueError, "NaN"),
        ({"conditions": np.zeros((2, 5), np.float32)}, ValueError, "conditions"),
        ({"conditions": pd.DataFrame({"x": [1.0]})}, KeyError, "adapter's genes"),
        ({"conditions": ad.AnnData(np.ones((2, 3), np.float32))}, KeyError, "missing"),
        ({"conditions": "spots"}, TypeError, "conditions"),
        ({"key_added": "table"}, ValueError, "key_added"),
    ],
)
def test_synthesize_bad_input(adapted_sdata, kwargs, exc, match):
    before = snapshot(adapted_sdata)
    with pytest.raises(exc, match=match):
        c2lst.tl.synthesize(adapted_sdata, n_steps=1, progress=False, **kwargs)
    assert snapshot(adapted_sdata) == before


def test_synthesize_existing_table_needs_overwrite(adapted_sdata):
    kw = {"n_steps": 1, "progress": False, "conditions": np.zeros((1, 20), np.float32)}
    c2lst.tl.synthesize(adapted_sdata, **kw)
    with pytest.raises(ValueError, match="overwrite=True"):
        c2lst.tl.synthesize(adapted_sdata, **kw)
    c2lst.tl.synthesize(adapted_sdata, overwrite=True, n_per_condition=2, **kw)
    assert adapted_sdata.tables["c2lst_synthetic"].n_obs == 2


def test_central_sha_mismatch(adapted_sdata):
    other = CentralModel.from_preset("tiny", seed=123)
    with pytest.raises(ValueError, match=r"sha256.*verify=False"):
        c2lst.tl.synthesize(adapted_sdata, central=other, n_steps=1, progress=False)
    c2lst.tl.synthesize(
        adapted_sdata,
        central=other,
        verify=False,
        n_steps=1,
        progress=False,
        conditions=np.zeros((1, 20), np.float32),
    )


@pytest.mark.parametrize(
    ("mutate", "kwargs", "exc", "match"),
    [
        (lambda t: t[:0].copy(), {}, ValueError, "zero spots"),
        (lambda t: _drop(t, "c2lst_expr"), {}, KeyError, "prepare_expression"),
        (lambda t: _drop(t, "c2lst_patch"), {}, KeyError, "extract_patches"),
        (lambda t: _nan(t), {}, ValueError, "NaN"),
        (lambda t: t, {"n_steps": 0}, ValueError, "n_steps"),
        (lambda t: t, {"rank": 0}, ValueError, "rank"),
        (lambda t: t, {"cond_dropout": 1.5}, ValueError, "cond_dropout"),
        (lambda t: t, {"central": "unknown_key"}, KeyError, "central"),
        (lambda t: t, {"central": 3}, TypeError, "central"),
        (lambda t: t, {"encoder_lr": 0.0}, ValueError, "encoder_lr"),
        (lambda t: t, {"timestep_bias": -0.5}, ValueError, "timestep_bias.*>= 0"),
        (lambda t: t, {"timestep_bias": "high"}, TypeError, "timestep_bias"),
        (lambda t: t, {"condition_noise": -0.5}, ValueError, "condition_noise.*>= 0"),
        (lambda t: t, {"condition_noise": float("nan")}, ValueError, "condition_noise"),
        (lambda t: t, {"condition_noise": "some"}, TypeError, "condition_noise"),
        (lambda t: t, {"unlabelled_fraction": 1.0}, ValueError, "unlabelled_fraction"),
        (lambda t: t, {"unlabelled": np.zeros((4, 16, 16, 3), np.uint8)}, ValueError, "same `size=`"),
        (lambda t: t, {"unlabelled": ad.AnnData(np.zeros((2, 1), np.float32))}, KeyError, "unlabelled"),
    ],
)
def test_adapt_bad_input(sim_sdata, tiny_central, mutate, kwargs, exc, match):
    _, path = tiny_central
    t = mutate(sim_sdata.tables["table"].copy())
    keys = (set(t.obsm), sorted(t.uns.get("c2lst", {})))
    kw = {"central": str(path), "n_steps": 1, "batch_size": 2, "progress": False, **kwargs}
    with pytest.raises(exc, match=match):
        c2lst.tl.adapt(t, **kw)
    assert (set(t.obsm), sorted(t.uns.get("c2lst", {}))) == keys


def _drop(t, key):
    del t.obsm[key]
    return t


def _nan(t):
    t.obsm["c2lst_expr"] = t.obsm["c2lst_expr"].copy()
    t.obsm["c2lst_expr"][0, 0] = np.nan
    return t


def test_cli_synthesize_writes_into_the_store(adapted_sdata, tiny_central, tmp_path):
    from c2lst._cli import main

    adapted_sdata.tables["table"] = adapted_sdata.tables["table"][:3].copy()
    adapted_sdata.write(tmp_path / "s.zarr")
    argv = ["synthesize", str(tmp_path / "s.zarr"), "--central", str(tiny_central[1]), "--n-steps", "1"]
    assert main([*argv, "--key-added", "syn"]) == 0
    assert main([*argv, "--table-added", "old_flag"]) == 0  # the old flag still works
    back = spatialdata.read_zarr(tmp_path / "s.zarr")
    assert back.tables["syn"].n_obs == 3 and back.tables["old_flag"].n_obs == 3
    assert {"syn_image", "syn_spots"} <= set(back.images) | set(back.shapes)


def test_synthesize_in_bf16_is_reproducible_and_close(adapted_base, tiny_central):
    kw = {"central": tiny_central[0], "n_steps": 2, "seed": 1, "progress": False}
    table = adapted_base[:3].copy()
    ref = c2lst.tl.synthesize(table, **kw).obsm["c2lst_patch"]
    a = c2lst.tl.synthesize(table, mixed_precision="bf16", **kw)
    b = c2lst.tl.synthesize(table, mixed_precision="bf16", **kw)
    np.testing.assert_array_equal(a.obsm["c2lst_patch"], b.obsm["c2lst_patch"])
    assert np.abs(a.obsm["c2lst_patch"].astype(int) - ref).mean() < 3  # rounding, not another image
    assert lineage(a)[-1]["parameters"]["mixed_precision"] == "bf16"
    before = snapshot(table)
    with pytest.raises(ValueError, match=r"mixed_precision='fp16'.*GPU"):
        c2lst.tl.synthesize(table, mixed_precision="fp16", device="cpu", **kw)
    with pytest.raises(ValueError, match=r"mixed_precision='fp8'"):
        c2lst.tl.synthesize(table, mixed_precision="fp8", **kw)
    assert snapshot(table) == before


def test_default_device_prefers_cuda_then_mps(monkeypatch):
    from c2lst.models._nets import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device().type == "cpu"
    assert str(default_device("cuda:1")) == "cuda:1"  # an explicit index is kept
