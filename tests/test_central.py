"""Central model: pretrain, save/load, sample, resume, latent mode, bad input (issue 3)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel

import c2lst
from c2lst.models import PRESETS, CentralModel, TrainingDivergedError
from c2lst.models.train import TrainSettings, latest_checkpoint, train


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _patches(n=32, size=32, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


def test_presets_sizes():
    tiny = CentralModel.from_preset("tiny")
    small = CentralModel.from_preset("small")
    assert tiny.n_parameters() <= 1_000_000
    assert 2_000_000 <= small.n_parameters() <= 4_000_000
    assert tiny.image_size == 32 and small.image_size == 64
    assert PRESETS["base"]["sample_size"] >= 128
    # the condition slot: identity class embedding + scale-shift ResNets
    assert tiny.unet.config.class_embed_type == "identity"
    assert tiny.unet.config.resnet_time_scale_shift == "scale_shift"
    json.dumps(tiny.config)  # plain, serialisable


def test_init_is_seeded():
    a = CentralModel.from_preset("tiny", seed=1).state_dict()
    b = CentralModel.from_preset("tiny", seed=1).state_dict()
    c = CentralModel.from_preset("tiny", seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loss_falls_on_simulated_patches(sim_sdata):
    model = c2lst.tl.pretrain(sim_sdata, preset="tiny", n_steps=60, batch_size=16, lr=2e-3, progress=False)
    s = model.training_summary
    # epsilon-MSE starts near 1 for untrained models; a real decrease is far beyond noise of 10-step means
    assert s["loss_last"] < 0.6 * s["loss_first"], s
    reg = sim_sdata.tables["table"].uns["c2lst"]["central"]["c2lst_central"]
    assert reg["path"] == "" and json.loads(reg["config"])["preset"] == "tiny"


def test_save_load_same_bytes(tiny_central, tmp_path):
    model, path = tiny_central
    loaded = CentralModel.from_pretrained(path)
    a = model.sample(3, steps=4, generator=_gen(5))
    b = loaded.sample(3, steps=4, generator=_gen(5))
    assert a.dtype == np.uint8 and a.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    meta = json.loads((path / "c2lst.json").read_text())
    assert len(meta["sha256"]) == 64 and meta["config"]["preset"] == "tiny"
    assert meta["training"]["steps"] == 8
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_resume_is_exact(tmp_path, monkeypatch):
    data = _patches()
    kw = {"preset": "tiny", "n_steps": 10, "batch_size": 4, "checkpoint_every": 5, "progress": False}
    full = c2lst.tl.pretrain(data, output_dir=tmp_path / "a", **kw)
    import c2lst.models.train as train_mod

    real = train_mod._save_checkpoint

    class Killed(Exception):
        pass

    def killed_after_step_5(accelerator, out, step, *args):
        real(accelerator, out, step, *args)
        if step == 5:
            raise Killed  # behaves like a kill right after the step-5 checkpoint

    monkeypatch.setattr(train_mod, "_save_checkpoint", killed_after_step_5)
    with pytest.raises(Killed):
        c2lst.tl.pretrain(data, output_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real)
    resumed = c2lst.tl.pretrain(data, output_dir=tmp_path / "b", **kw)
    assert resumed.training_summary["resumed_from"] == 5
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_different_config_refused(tmp_path):
    data = _patches()
    c2lst.tl.pretrain(data, preset="tiny", n_steps=2, batch_size=4, output_dir=tmp_path, progress=False)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"different run configuration.*batch_size"):
        c2lst.tl.pretrain(data, preset="tiny", n_steps=4, batch_size=8, output_dir=tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_from_pretrained_plain_diffusers_unet(tmp_path):
    unet = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )
    unet.save_pretrained(tmp_path / "unet_dir")
    model = CentralModel.from_pretrained(tmp_path / "unet_dir")
    assert model.cond_dim == 64 and model.image_size == 32
    # the opened slot with a zero null embedding leaves the diffusers model's prediction unchanged
    x, t = torch.randn(2, 3, 32, 32, generator=_gen()), torch.tensor([3, 500])
    with torch.no_grad():
        ref = UNet2DModel.from_pretrained(tmp_path / "unet_dir")(x, t).sample
        np.testing.assert_allclose(model(x, t).numpy(), ref.numpy(), atol=1e-5)
    assert model.sample(2, steps=3, generator=_gen()).shape == (2, 32, 32, 3)


def test_latent_mode_with_tiny_vae(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=32,
    )
    model = c2lst.tl.pretrain(
        _patches(16),
        preset="tiny",
        config={"block_out_channels": [16, 32, 64], "norm_num_groups": 8},
        vae=vae,
        n_steps=3,
        batch_size=4,
        output_dir=tmp_path,
        progress=False,
    )
    assert model.config["latent"] and model.config["sample_size"] == 16 and model.config["in_channels"] == 4
    out = model.sample(2, steps=3, generator=_gen())
    assert out.shape == (2, 32, 32, 3)
    loaded = CentralModel.from_pretrained(tmp_path / "model")
    np.testing.assert_array_equal(loaded.sample(2, steps=3, generator=_gen()), out)


def test_pretrain_on_real_ihc_patches():
    patches = c2lst.datasets.ihc_patches(16, size=32, seed=0)
    model = c2lst.tl.pretrain(patches, preset="tiny", n_steps=3, batch_size=4, progress=False)
    assert np.isfinite(model.training_summary["loss_last"])


def test_several_slides_and_registration(sim_sdata, tmp_path):
    other = c2lst.datasets.simulated_visium(n_spots=20, seed=3, stain="institution_a")
    c2lst.pp.extract_patches(other, size=32, progress=False)
    model = c2lst.tl.pretrain(
        [sim_sdata, other],
        preset="tiny",
        n_steps=2,
        batch_size=4,
        output_dir=tmp_path,
        progress=False,
        key_added="multi",
    )
    assert model.training_summary["n_patches"] == sim_sdata.tables["table"].n_obs + 20
    for sd in (sim_sdata, other):
        reg = sd.tables["table"].uns["c2lst"]["central"]["multi"]
        assert reg["sha256"] == model.sha256 and reg["path"].endswith("model")


def test_bf16_on_cpu_runs():
    model = c2lst.tl.pretrain(
        _patches(8), preset="tiny", n_steps=2, batch_size=4, mixed_precision="bf16", progress=False
    )
    assert np.isfinite(model.training_summary["loss_last"])


@pytest.mark.parametrize("scheduler", ["sde-dpmsolver++", "dpmsolver++", "unipc", "ddim", "ddpm"])
def test_schedulers_and_per_sample_generators(tiny_central, scheduler):
    model, _ = tiny_central
    gens = lambda: [_gen(i) for i in range(3)]  # noqa: E731
    a = model.sample(3, steps=3, scheduler=scheduler, generator=gens(), batch_size=2)
    b = model.sample(3, steps=3, scheduler=scheduler, generator=gens(), batch_size=2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 32, 32, 3)


def test_nan_guard_keeps_last_good_checkpoint(tmp_path):
    model = CentralModel.from_preset("tiny")

    def loss_fn(m, gen, dev):
        step_loss = m(torch.zeros(1, 3, 32, 32), torch.tensor([1])).pow(2).mean()
        return step_loss * float("nan") if gen.initial_seed() == bad_seed[0] else step_loss

    from c2lst.models.train import step_generator

    bad_seed = [step_generator(0, 3).initial_seed()]
    settings = TrainSettings(n_steps=6, batch_size=1, output_dir=tmp_path, checkpoint_every=2, progress=False)
    with pytest.raises(TrainingDivergedError, match="step 3"):
        train(model, loss_fn, settings)
    assert latest_checkpoint(tmp_path).name == "step_2"


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("data", "kwargs", "exc", "match"),
    [
        ([], {}, ValueError, "empty"),
        (np.zeros((0, 32, 32, 3), np.uint8), {}, ValueError, "no patches"),
        (np.zeros((4, 32, 32, 3), np.float32), {}, TypeError, "uint8"),
        (np.zeros((4, 32, 32), np.uint8), {}, ValueError, "shape"),
        (
            [np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 64, 64, 3), np.uint8)],
            {},
            ValueError,
            "mixes patch sizes",
        ),
        (np.zeros((4, 32, 32, 3), np.uint8), {"n_steps": 0}, ValueError, "n_steps"),
        (np.zeros((4, 32, 32, 3), np.uint8), {"batch_size": -1}, ValueError, "batch_size"),
        (
            np.zeros((4, 32, 32, 3), np.uint8),
            {"preset": "huge"},
            ValueError,
            r"preset.*\['base', 'small', 'tiny'\]",
        ),
        (np.zeros((4, 32, 32, 3), np.uint8), {"mixed_precision": "fp8"}, ValueError, "mixed_precision"),
        (ad.AnnData(np.zeros((3, 2), np.float32)), {}, KeyError, "extract_patches"),
        ("not data", {}, TypeError, "data"),
    ],
)
def test_pretrain_bad_input(data, kwargs, exc, match):
    kw = {"preset": "tiny", "n_steps": 1, "batch_size": 2, "progress": False, **kwargs}
    with pytest.raises(exc, match=match):
        c2lst.tl.pretrain(data, **kw)


def test_output_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="output_dir"):
        c2lst.tl.pretrain(
            _patches(4), preset="tiny", n_steps=1, batch_size=2, output_dir=blocker / "sub", progress=False
        )


def test_from_pretrained_refuses_bad_paths(tmp_path, tiny_central):
    with pytest.raises(ValueError, match="not a model directory"):
        CentralModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        CentralModel.from_pretrained(tmp_path / "missing")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(1)}, pickled / "diffusion_pytorch_model.bin")
    (pickled / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="pickle"):
        CentralModel.from_pretrained(pickled)
    with pytest.raises(ValueError, match="pickle"):
        CentralModel.from_pretrained(pickled / "diffusion_pytorch_model.bin")


def test_sha256_mismatch_detected(tiny_central, tmp_path):
    import shutil

    _, path = tiny_central
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    cond = copy / "c2lst_condition.safetensors"
    from c2lst.models.store import load_safetensors, save_safetensors

    t = load_safetensors(cond)
    t["null_embedding"] = t["null_embedding"] + 1
    save_safetensors(t, cond)
    with pytest.raises(ValueError, match="sha256"):
        CentralModel.from_pretrained(copy)
    assert CentralModel.from_pretrained(copy, verify=False) is not None


def test_sample_bad_input(tiny_central):
    model, _ = tiny_central
    with pytest.raises(ValueError, match=r"scheduler.*dpmsolver"):
        model.sample(1, scheduler="euler")
    with pytest.raises(ValueError, match="guidance_scale"):
        model.sample(1, guidance_scale=-1)
    with pytest.raises(ValueError, match="n"):
        model.sample(0)
    with pytest.raises(ValueError, match="condition"):
        model.sample(2, condition=torch.zeros(2, 3))


def test_from_pretrained_refuses_another_architecture(tmp_path):
    """A transformer folder (PixCell's architecture) must not load as a randomly initialised UNet."""
    from diffusers import PixArtTransformer2DModel

    tr = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=16, caption_channels=16, sample_size=8, patch_size=2, norm_type="ada_norm_single",
    )
    tr.save_pretrained(tmp_path / "pixart")
    with pytest.raises(ValueError, match=r"describes a 'PixArtTransformer2DModel', not a diffusers UNet2DModel"):
        CentralModel.from_pretrained(tmp_path / "pixart")
    # a pipeline folder with a transformer loads as a transformer central model (issue 16): without its VAE, the
    # error names the argument to pass (tests/test_foundation.py covers complete folders)
    (tmp_path / "pipe").mkdir()
    tr.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "PixArtSigmaPipeline"}')
    with pytest.raises(ValueError, match=r"no `vae/` folder.*pass `vae=`"):
        CentralModel.from_pretrained(tmp_path / "pipe")
    # a pipeline with neither unet/ nor transformer/ is named as such
    (tmp_path / "pipe" / "transformer").rename(tmp_path / "pipe" / "other")
    with pytest.raises(ValueError, match=r"pipeline without a `unet/` or `transformer/` folder"):
        CentralModel.from_pretrained(tmp_path / "pipe")


def test_from_pretrained_refuses_missing_or_unexpected_weights(tmp_path):
    from diffusers import UNet2DModel
    from safetensors.torch import load_file, save_file

    model = CentralModel.from_preset("tiny", sample_size=16)
    model.unet.save_pretrained(tmp_path / "plain")
    weights = tmp_path / "plain" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    renamed = {("old." + k if i % 3 == 0 else k): v for i, (k, v) in enumerate(state.items())}
    save_file(renamed, weights)
    with pytest.raises(ValueError, match=r"missing keys.*unexpected keys.*random weights"):
        CentralModel.from_pretrained(tmp_path / "plain")
    save_file(state, weights)  # the intact folder loads, with the same weights
    back = CentralModel.from_pretrained(tmp_path / "plain")
    assert isinstance(back.unet, UNet2DModel)
    assert all(torch.equal(back.unet.state_dict()[k], v) for k, v in state.items())
