"""The central model shipped with c2lst (``c2lst.datasets.pretrained_central``): integrity, use, quality."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import c2lst
from c2lst.datasets import _pretrained
from c2lst.models import CentralModel
from c2lst.tl._central import resolve_central

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_pretrained_central.py"


@pytest.fixture(scope="module")
def shipped():
    return c2lst.datasets.pretrained_central("tiny-sim")


def test_shipped_model_loads_verified_in_float32(shipped):
    path = _pretrained.pretrained_path("tiny-sim")
    assert c2lst.datasets.pretrained_names() == ("tiny-sim",)
    assert shipped.source == "tiny-sim"
    assert shipped.image_size == 32 and shipped.n_parameters() < 1_000_000
    assert all(p.dtype == torch.float32 for p in shipped.parameters())
    assert shipped.config["scheduler"]["prediction_type"] == "v_prediction"
    # the sha256 recorded in the package equals the one in the model's own c2lst.json
    meta = json.loads((path / "c2lst.json").read_text())
    assert _pretrained.PRETRAINED["tiny-sim"]["sha256"] == meta["sha256"] == shipped.sha256
    # stored as float16, a few MB at most
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(weights, "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 - not a dict
    assert sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) < 5 * 2**20
    # trained by the recipe of the script, on stains other than the local one
    assert meta["training"]["recipe"]["name"] == "tiny-sim"
    assert meta["training"]["local_stain_min_distance"] > 0.05


def test_shipped_model_samples_histology_not_noise(shipped):
    """Unconditioned samples sit far closer to real (unseen-stain) patches than an untrained model's do."""
    sd = c2lst.datasets.simulated_visium(n_spots=48, seed=3)
    c2lst.pp.extract_patches(sd, size=32, progress=False)
    real = np.asarray(sd.tables["table"].obsm["c2lst_patch"])
    gen = torch.Generator().manual_seed(0)
    samples = shipped.sample(48, steps=10, generator=gen)
    untrained = CentralModel.from_preset("tiny", sample_size=32).eval().sample(48, steps=10, generator=gen.manual_seed(0))
    fid = c2lst.tl.evaluate_fidelity(real, samples, seed=0)["fid"]
    fid_untrained = c2lst.tl.evaluate_fidelity(real, untrained, seed=0)["fid"]
    assert fid < 0.05 * fid_untrained
    # H&E-like colour: the background is bright, the mean colour pink-purple (red and blue above green)
    mean = samples.reshape(-1, 3).mean(0)
    assert mean[0] > mean[1] and mean[2] > mean[1]
    assert abs(float(samples.mean()) - float(real.mean())) < 25


def test_shipped_name_works_as_central(sim_sdata):
    table = sim_sdata.tables["table"]
    c2lst.tl.adapt(table, central="tiny-sim", n_steps=2, batch_size=8, progress=False)
    record = table.uns["c2lst"]["local"]["c2lst_local"]
    assert record["central_path"] == "tiny-sim"
    # synthesize reloads the shipped model from the recorded name
    c2lst.tl.synthesize(sim_sdata, n_per_condition=1, n_steps=2, seed=0, progress=False)
    assert sim_sdata.tables["c2lst_synthetic"].n_obs == table.n_obs


def test_shipped_bad_names():
    with pytest.raises(KeyError, match="tiny-sim"):
        c2lst.datasets.pretrained_central("huge-real")
    with pytest.raises(TypeError, match="name"):
        c2lst.datasets.pretrained_central(3)
    with pytest.raises(KeyError, match="shipped model"):
        resolve_central("not-a-model")


def test_changed_installation_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "tiny-sim"
    shutil.copytree(_pretrained.pretrained_path("tiny-sim"), copy)
    monkeypatch.setattr(_pretrained, "_ROOT", tmp_path)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        c2lst.datasets.pretrained_central("tiny-sim")
    # a consistent re-save (new c2lst.json sha) is still refused: the package records its own sha256
    model = CentralModel.from_pretrained(copy, verify=False)
    shutil.rmtree(copy)
    model.save_pretrained(copy)
    with pytest.raises(ValueError, match="recorded"):
        c2lst.datasets.pretrained_central("tiny-sim")
    shutil.rmtree(copy)
    with pytest.raises(FileNotFoundError, match="reinstall"):
        c2lst.datasets.pretrained_central("tiny-sim")


def test_training_recipe_keeps_the_local_slide_unseen():
    spec = importlib.util.spec_from_file_location("train_pretrained_central", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    local = c2lst.datasets._stain.STAIN_PRESETS["local"]
    for stain in mod.corpus_stains():
        assert stain.get("base") != "local" and stain.get("name") != "local"
        full = {**c2lst.datasets._stain.STAIN_PRESETS[stain["base"]], **stain}
        assert not np.allclose(full["hematoxylin"], local["hematoxylin"])
    assert min(mod.RECIPE["slide_seeds"]) >= 100  # the demo and tests use tissue seeds below 100
    assert mod.local_stain_distance() > 0.05
