"""A transformer central model (PixCell-style PixArt latent transformer + VAE) adapted with genes (issue 16).

Everything runs on the CPU with a tiny random-config ``PixArtTransformer2DModel`` and a tiny ``AutoencoderKL``
built here, saved in the layout of the public checkpoints (``transformer/``, ``vae/``, ``scheduler/``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from safetensors.torch import load_file, save_file

import c2lst
from c2lst._records import lineage
from c2lst.models import CentralModel, LocalModel, fit_denoiser
from c2lst.models.transformer import transformer_config

GENES = ["a", "b", "c"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_transformer(seed: int = 0, **overrides) -> PixArtTransformer2DModel:
    """A PixArt transformer on 8x8x4 latents with one 24-wide caption token (~90 K parameters)."""
    torch.manual_seed(seed)
    kw = {
        "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4, "out_channels": 8, "num_layers": 2,
        "cross_attention_dim": 32, "sample_size": 8, "patch_size": 2, "caption_channels": 24,
    }  # fmt: skip
    return PixArtTransformer2DModel(**{**kw, **overrides})


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A 4-channel VAE with downsampling 4 (32 px patches <-> 8x8 latents), SD3-style shift factor."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=32, scaling_factor=1.5, shift_factor=0.05,
    )  # fmt: skip


def write_public_folder(root, *, vae=True, uncond=True):
    """Lay a tiny model out like PixCell-256 on the hub: PixCell class name, its null token among the weights."""
    tr = tiny_transformer()
    tr.save_pretrained(root / "transformer")
    cfg_file = root / "transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(_class_name="PixCellTransformer2DModel", caption_num_tokens=1)
    cfg_file.write_text(json.dumps(cfg))
    null = torch.randn(1, 24, generator=_gen(5)) / 24**0.5
    if uncond:
        weights = root / "transformer" / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        state["caption_projection.uncond_embedding"] = null
        save_file(state, weights)
    if vae:
        tiny_vae().save_pretrained(root / "vae")
    DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text(json.dumps({"_class_name": "PixCellPipeline"}))
    return null


@pytest.fixture(scope="module")
def public_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixcell")
    null = write_public_folder(root)
    return root, null


@pytest.fixture(scope="module")
def central(public_dir):
    return CentralModel.from_pretrained(public_dir[0])


def test_public_folder_loads_as_transformer_central(public_dir, central):
    root, null = public_dir
    assert central.backbone_kind == "transformer"
    assert isinstance(central.denoiser, PixArtTransformer2DModel)
    assert central.image_size == 32 and central.cond_dim == 24
    # the null condition is the backbone's own unconditional embedding
    torch.testing.assert_close(central.null_embedding.detach(), null.reshape(-1), rtol=0, atol=0)
    assert central.scheduler_config["beta_schedule"] == "linear" and not central.scheduler_config["clip_sample"]
    assert central.source == str(root.resolve())
    assert 10_000 < central.n_parameters() < 1_000_000
    out = central.sample(2, steps=2, generator=[_gen(1), _gen(2)])
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    # a loaded model is the diffusers model: the same forward as the raw transformer under the null token
    x, t = torch.randn(2, 4, 8, 8, generator=_gen(0)), torch.tensor([10, 900])
    with torch.no_grad():
        raw = central.transformer(
            x, encoder_hidden_states=null.expand(2, 1, 24), timestep=t,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample[:, :4]  # fmt: skip
        torch.testing.assert_close(central(x, t), raw)


def test_latents_honour_the_vae_shift_factor(central):
    img = torch.rand(1, 3, 32, 32, generator=_gen(0)) * 2 - 1
    vae = central.vae
    with torch.no_grad():
        plain = vae.encode(img).latent_dist.mode()
    torch.testing.assert_close(central.encode(img), (plain - 0.05) * 1.5)
    with torch.no_grad():
        torch.testing.assert_close(central.decode(central.encode(img)), vae.decode(plain).sample)


def test_missing_vae_is_named_and_can_be_passed(tmp_path):
    write_public_folder(tmp_path, vae=False, uncond=False)
    with pytest.raises(ValueError, match=r"no `vae/` folder.*pass `vae=`"):
        CentralModel.from_pretrained(tmp_path)
    tiny_vae().save_pretrained(tmp_path.parent / "vae_only")
    for vae in (tmp_path.parent / "vae_only", tiny_vae()):
        model = CentralModel.from_pretrained(tmp_path, vae=vae)
        assert model.backbone_kind == "transformer"
        assert not model.null_embedding.any()  # no stored unconditional token: a zero token
        assert model.source == ""  # the folder alone cannot rebuild it
    with pytest.raises(ValueError, match="`vae=` applies to transformer folders"):
        CentralModel.from_pretrained(tmp_path / "transformer", vae=tiny_vae())


def test_refuses_pickles_other_classes_and_remote_code_layouts(tmp_path, public_dir):
    bad = tmp_path / "bin"
    shutil.copytree(public_dir[0], bad)
    (bad / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="refusing to load pickle"):
        CentralModel.from_pretrained(bad)
    for edit, match in (
        ({"_class_name": "DiTTransformer2DModel"}, "DiTTransformer2DModel have no token slot"),
        ({"caption_num_tokens": 16}, "remote code"),
    ):
        d = tmp_path / f"edit{len(match)}"
        shutil.copytree(public_dir[0], d)
        cfg_file = d / "transformer" / "config.json"
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **edit}))
        with pytest.raises(ValueError, match=match):
            CentralModel.from_pretrained(d)
    # a VAE whose latents do not fit the transformer
    wrong = AutoencoderKL(latent_channels=8, block_out_channels=(8, 16, 16), norm_num_groups=8,
                          down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    d = tmp_path / "novae"
    shutil.copytree(public_dir[0], d, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(ValueError, match="latent channels"):
        CentralModel.from_pretrained(d, vae=wrong)


def test_save_load_round_trip_and_fingerprint(tmp_path, central):
    sha = central.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert CentralModel.weight_files(tmp_path / "c")[0].parent.name == "transformer"
    back = CentralModel.from_pretrained(tmp_path / "c")
    assert back.sha256 == sha and back.backbone_kind == "transformer"
    for (k, v), (k2, v2) in zip(central.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    a = central.sample(2, steps=2, generator=[_gen(1), _gen(2)])
    np.testing.assert_array_equal(a, back.sample(2, steps=2, generator=[_gen(1), _gen(2)]))
    # a changed transformer config is caught by the fingerprint
    cfg_file = tmp_path / "c" / "transformer" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "norm_eps": 1e-3}))
    with pytest.raises(ValueError, match="does not match the recorded"):
        CentralModel.from_pretrained(tmp_path / "c")
    assert CentralModel.from_pretrained(tmp_path / "c", verify=False).backbone_kind == "transformer"


def test_untrained_adapter_is_the_central_model(central):
    local = LocalModel(central, GENES, seed=0)
    assert local.adapter_config["backbone"] == "transformer"
    expr = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    ref = central.sample(2, steps=3, generator=[_gen(4), _gen(5)])
    for g in (0.0, 1.0, 2.0):
        np.testing.assert_array_equal(local.generate(expr, steps=3, seed=4, guidance_scale=g), ref)
    report = local.parameter_report()
    assert set(report) == {"lora", "encoder", "trainable", "transformer", "ratio"}
    assert report["trainable"] == local.trainable_parameters() and 0 < report["ratio"] < 0.5
    assert all("attn" in n for n in local.adapter_config["target_modules"])  # LoRA on attention projections
    frozen = [n for n, p in local.central.named_parameters() if p.requires_grad and "lora_" not in n]
    assert frozen == []


def _perturbed(central, seed=0):
    local = LocalModel(central, GENES, seed=seed)
    with torch.no_grad():
        for name, p in local.named_parameters():
            if p.requires_grad and ("lora_B" in name or name.startswith("encoder.net.3")):
                p.copy_(torch.randn(p.shape, generator=_gen(seed + 1)) * 0.2)
    return local.eval()


def test_guidance_and_genes_change_the_output(central):
    local = _perturbed(central)
    expr = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32) * 2
    out = {g: local.generate(expr, steps=3, seed=1, guidance_scale=g) for g in (0.0, 1.0, 3.0)}
    assert not np.array_equal(out[1.0], out[3.0])
    assert not np.array_equal(out[0.0], out[1.0])
    other = local.generate(-expr, steps=3, seed=1, guidance_scale=1.0)
    assert not np.array_equal(other, out[1.0])


def test_fused_lora_equals_unfused(central):
    local = _perturbed(central)
    x, t = torch.randn(3, 4, 8, 8, generator=_gen(0)), torch.tensor([5, 400, 990])
    expr = torch.randn(3, 3, generator=_gen(2))
    with torch.no_grad():
        emb = local.condition(expr)
        before = local(x, t, emb)
        assert not torch.allclose(before, central(x, t, emb))  # the adapters matter
        local.fuse_adapters()
        after = local(x, t, emb)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not any("lora_" in n for n, _ in local.named_parameters())


def test_fit_trains_only_adapters(central):
    local = LocalModel(central, GENES, seed=0)
    frozen = {k: v.clone() for k, v in local.central.state_dict().items() if "lora_" not in k}
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    res = fit_denoiser(local, patches, conditions=rng.normal(size=(8, 3)).astype(np.float32), n_steps=3,
                       batch_size=4, lr=1e-2, ema=False, progress=False)  # fmt: skip
    assert res.steps == 3 and np.isfinite(res.losses).all()
    after = local.central.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(np.abs(v).sum() > 0 for k, v in local.adapter_state().items() if "lora_B" in k)


def test_adapt_synthesize_zarr_with_lineage(sim_sdata, public_dir, tmp_path):
    folder = tmp_path / "central"
    CentralModel.from_pretrained(public_dir[0]).save_pretrained(folder)
    sdata = sim_sdata
    table = sdata.tables["table"]
    sdata.tables["table"] = table[:12].copy()
    c2lst.tl.adapt(sdata, central=str(folder), n_steps=3, batch_size=4, progress=False)
    rec = sdata.tables["table"].uns["c2lst"]["local"]["c2lst_local"]
    assert rec["backbone"] == "transformer" and json.loads(rec["config"])["backbone"] == "transformer"
    assert c2lst.get.adapters(sdata).loc["c2lst_local", "backbone"] == "transformer"
    model = CentralModel.from_pretrained(folder)
    from c2lst.models import central_fingerprint

    assert rec["central_sha256"] == central_fingerprint(model) and rec["central_file_sha256"] == model.sha256
    assert rec["central_path"] == str(folder.resolve())
    assert "transformer" in json.loads(rec["summary"])
    # synthesis reloads the central model from the recorded path (central=None) and checks its fingerprint
    c2lst.tl.synthesize(sdata, n_per_condition=1, n_steps=2, seed=3, progress=False)
    syn = sdata.tables["c2lst_synthetic"]
    assert syn.n_obs == 12 and syn.obsm["c2lst_patch"].shape == (12, 32, 32, 3)
    assert [r["function"] for r in lineage(syn)][-1] == "c2lst.tl.synthesize"
    sdata.write(tmp_path / "out.zarr")
    import spatialdata

    back = spatialdata.read_zarr(tmp_path / "out.zarr")
    np.testing.assert_array_equal(back.tables["c2lst_synthetic"].obsm["c2lst_patch"], syn.obsm["c2lst_patch"])
    # a UNet central model is refused for this adapter (the backbone kind is checked before the fingerprint)
    from c2lst.tl._adapters import load_local_model

    with pytest.raises(ValueError, match="transformer central model"):
        load_local_model(rec, CentralModel.from_preset("tiny"))


def test_transformer_central_needs_vae_and_a_backbone():
    tr = tiny_transformer()
    with pytest.raises(ValueError, match="pass `vae=`"):
        CentralModel(transformer_config(tr, tiny_vae()), transformer=tr)
    with pytest.raises(ValueError, match="pass `transformer=`"):
        CentralModel(transformer_config(tr, tiny_vae()), vae=tiny_vae())
    with pytest.raises(ValueError, match="caption_channels"):
        transformer_config(tiny_transformer(caption_channels=None), tiny_vae())


def test_cli_and_budget_curve_take_a_transformer_folder(tmp_path, public_dir):
    import spatialdata

    from c2lst._cli import main

    folder = tmp_path / "central"
    CentralModel.from_pretrained(public_dir[0]).save_pretrained(folder)
    store = str(tmp_path / "slide.zarr")
    c2lst.datasets.simulated_visium(n_spots=40, seed=3).write(store)
    assert main(["extract", store, "--size", "32"]) == 0
    assert main(["prepare", store, "--n-top-genes", "8"]) == 0
    assert main(["adapt", store, "--central", str(folder), "--n-steps", "2", "--batch-size", "8"]) == 0
    assert main(["synthesize", store, "--n-steps", "1", "--n-per-condition", "1"]) == 0
    sd = spatialdata.read_zarr(store)
    assert sd.tables["table"].uns["c2lst"]["local"]["c2lst_local"]["backbone"] == "transformer"
    assert sd.tables["c2lst_synthetic"].n_obs == 40
    curve = c2lst.tl.budget_curve(
        sd, central=str(folder), fractions=(1.0,), n_repeats=1, adapt_kwargs={"n_steps": 1},
        synthesize_kwargs={"n_steps": 1}, predictor_kwargs={"mode": "ridge"}, progress=False,
    )  # fmt: skip
    assert set(curve["condition"]) == {"real", "real+synthetic"} and curve["pearson_r"].notna().all()
