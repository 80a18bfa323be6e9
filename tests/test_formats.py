"""Standard formats on the way out (issue 14): diffusers pipeline, peft adapter folder, HEST-style export.

Every test goes through the real library (diffusers' ``from_pretrained``, peft's ``PeftModel.from_pretrained``,
h5py and anndata), never a mock.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c2lst.models import C2LSTPipeline, CentralModel


@pytest.fixture(scope="module")
def central_dir(tmp_path_factory):
    """A tiny central model with a non-zero null embedding, saved; returns (model, directory)."""
    model = CentralModel.from_preset("tiny", seed=3)
    with torch.no_grad():
        model.null_embedding.copy_(torch.randn(model.cond_dim, generator=torch.Generator().manual_seed(0)))
    path = tmp_path_factory.mktemp("central") / "model"
    model.save_pretrained(path)
    return model.eval(), path


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------- diffusers pipeline
def test_saved_folder_names_the_c2lst_pipeline(central_dir):
    _, path = central_dir
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "C2LSTPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_pipeline_from_pretrained_samples_like_central_model(central_dir, scheduler):
    from diffusers import DDIMScheduler

    model, path = central_dir
    pipe = _quiet(C2LSTPipeline.from_pretrained(path))
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    got = pipe(3, generator=torch.Generator().manual_seed(5), num_inference_steps=4, output_type="uint8").images
    want = model.sample(3, steps=4, scheduler=scheduler, generator=torch.Generator().manual_seed(5))
    assert got.dtype == np.uint8 and got.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(got, want)
    # the null embedding matters: a zero one gives other patches (the comparison can fail)
    pipe.null_embedding = torch.zeros_like(pipe.null_embedding)
    other = pipe(3, generator=torch.Generator().manual_seed(5), num_inference_steps=4, output_type="uint8").images
    assert not np.array_equal(other, want)


def test_diffusion_pipeline_with_custom_pipeline_file(central_dir, tmp_path, monkeypatch):
    """``DiffusionPipeline.from_pretrained(folder, custom_pipeline=<c2lst's pipeline file>)``: the diffusers route."""
    import diffusers.utils.dynamic_modules_utils as dyn
    from diffusers import DiffusionPipeline

    import c2lst.models.pipeline as pipeline_module

    monkeypatch.setattr(dyn, "HF_MODULES_CACHE", str(tmp_path))  # diffusers copies the file there
    monkeypatch.syspath_prepend(str(tmp_path))
    model, path = central_dir
    pipe = DiffusionPipeline.from_pretrained(path, custom_pipeline=pipeline_module.__file__, trust_remote_code=True)
    assert type(pipe).__name__ == "C2LSTPipeline"
    _quiet(pipe)
    images = pipe(2, generator=torch.Generator().manual_seed(1), num_inference_steps=3).images  # PIL by default
    want = model.sample(2, steps=3, scheduler="ddpm", generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in images]), want)


def test_pipeline_condition_and_guidance(central_dir):
    model, path = central_dir
    pipe = _quiet(C2LSTPipeline.from_pretrained(path))
    cond = torch.randn(2, model.cond_dim, generator=torch.Generator().manual_seed(2))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    got = pipe(2, generator=gens, num_inference_steps=3, output_type="uint8", condition=cond, guidance_scale=2.0)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    want = model.sample(2, steps=3, scheduler="ddpm", condition=cond, guidance_scale=2.0, generator=gens)
    np.testing.assert_array_equal(got.images, want)
    floats = pipe(2, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    assert floats.dtype == np.float32 and floats.shape == (2, 32, 32, 3) and 0 <= floats.min() <= floats.max() <= 1
    with pytest.raises(ValueError, match="output_type"):
        pipe(1, output_type="jpeg")
    with pytest.raises(ValueError, match="condition_embedding"):
        pipe(2, condition=torch.zeros(2, 3), num_inference_steps=1)


def test_pipeline_of_a_latent_model_decodes_with_its_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=32,
    )  # fmt: skip
    model = CentralModel.from_preset("tiny", vae=vae, seed=1, block_out_channels=[16, 32, 64])
    model.save_pretrained(tmp_path / "latent")
    assert json.loads((tmp_path / "latent" / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]
    pipe = _quiet(C2LSTPipeline.from_pretrained(tmp_path / "latent"))
    assert pipe.vae is not None
    got = pipe(2, generator=torch.Generator().manual_seed(3), num_inference_steps=3, output_type="uint8").images
    want = model.sample(2, steps=3, scheduler="ddpm", generator=torch.Generator().manual_seed(3))
    assert got.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(got, want)


def test_plain_unet_and_c2lst_loading_still_work(central_dir):
    """model_index.json changes nothing for diffusers' UNet loader or c2lst's verified loader."""
    from diffusers import DDPMPipeline, UNet2DModel

    model, path = central_dir
    unet = UNet2DModel.from_pretrained(path / "unet")
    assert unet.config.class_embed_type == "identity"
    loaded = CentralModel.from_pretrained(path, verify=True)
    assert loaded.sha256 == json.loads((path / "c2lst.json").read_text())["sha256"]
    torch.testing.assert_close(loaded.null_embedding, model.null_embedding)
    # the reason for the c2lst pipeline: DDPMPipeline cannot fill the condition slot
    ddpm = _quiet(DDPMPipeline(unet=unet, scheduler=C2LSTPipeline.from_pretrained(path).scheduler))
    with pytest.raises(ValueError, match="class_labels"):
        ddpm(1, num_inference_steps=1)


def test_shipped_model_samples_through_the_pipeline():
    from c2lst.datasets import pretrained_central
    from c2lst.datasets._pretrained import pretrained_path

    pipe = _quiet(C2LSTPipeline.from_pretrained(pretrained_path("tiny-sim")))
    got = pipe(2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="uint8").images
    want = pretrained_central("tiny-sim").sample(2, steps=3, scheduler="ddpm", generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(got, want)


def test_pipeline_without_condition_file_says_how_to_fix(central_dir, tmp_path):
    model, _ = central_dir
    pipe = C2LSTPipeline.from_central(model)
    pipe.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "c2lst_condition.safetensors").is_file()
    (tmp_path / "p" / "c2lst_condition.safetensors").unlink()
    bare = _quiet(C2LSTPipeline.from_pretrained(tmp_path / "p"))
    with pytest.raises(ValueError, match="load_condition"):
        bare(1, num_inference_steps=1)


# ---------------------------------------------------------------------- peft adapter folder
@pytest.fixture(scope="module")
def adapted_table(central_dir):
    """An AnnData holding an adapter record (as `tl.adapt` writes it) with non-zero LoRA and encoder weights."""
    import anndata as ad

    from c2lst import _records as records
    from c2lst.models import LocalModel
    from c2lst.models.store import ADAPTER_FORMAT

    model, path = central_dir
    local = LocalModel(model, ["g1", "g2", "g3"], rank=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in local.named_parameters():
            if "lora_" in name or name.startswith("encoder."):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    table = ad.AnnData(np.zeros((4, 3), np.float32))
    entry = {
        "format": ADAPTER_FORMAT,
        "weights": local.adapter_state(),
        "genes": np.asarray(local.genes, dtype=object),
        "config": local.config_json(),
        "central_path": str(path),
        "central_sha256": local.central_sha256,
        "sha256": local.adapter_sha256(),
    }
    records.store(table, "local", "c2lst_local", entry)
    return table, local.eval()


def test_peft_folder_loads_with_peft_and_matches_local_model(central_dir, adapted_table, tmp_path):
    from diffusers import UNet2DModel
    from peft import PeftModel
    from safetensors.torch import load_file

    import c2lst
    from c2lst.models import GeneEncoder

    model, path = central_dir
    table, local = adapted_table
    folder = c2lst.tl.export_adapter(table, tmp_path / "adapter", format="peft")
    assert {p.name for p in folder.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "gene_encoder.safetensors", "genes.json",
        "c2lst_adapter.json",
    }  # fmt: skip
    peft_unet = PeftModel.from_pretrained(UNet2DModel.from_pretrained(path / "unet"), folder).eval()
    # the condition rebuilt from the folder alone: gene encoder + gene list + the central null embedding
    genes = json.loads((folder / "genes.json").read_text())
    enc = GeneEncoder(len(genes), model.cond_dim, hidden=json.loads(local.config_json())["hidden"])
    enc.load_state_dict(load_file(folder / "gene_encoder.safetensors"))
    null = load_file(path / "c2lst_condition.safetensors")["null_embedding"]
    gen = torch.Generator().manual_seed(4)
    expr = torch.randn(2, len(genes), generator=gen)
    x, t = torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([20, 700])
    with torch.no_grad():
        emb = null + enc(expr)
        torch.testing.assert_close(emb, local.condition(expr))
        got = peft_unet(x, t, class_labels=emb).sample
        want = local(x, t, emb)
        central_only = model(x, t, emb)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - central_only).abs().max() > 1e-2  # the LoRA layers are active: the comparison can fail


def test_peft_folder_loads_back_into_c2lst(adapted_table, tmp_path):
    import anndata as ad

    import c2lst

    table, _ = adapted_table
    folder = c2lst.tl.export_adapter(table, tmp_path / "adapter", format="peft")
    other = ad.AnnData(np.zeros((2, 3), np.float32))
    c2lst.tl.load_adapter(other, folder)
    got, want = other.uns["c2lst"]["local"]["c2lst_local"], table.uns["c2lst"]["local"]["c2lst_local"]
    assert got["sha256"] == want["sha256"] and set(got["weights"]) == set(want["weights"])
    for key, value in want["weights"].items():
        np.testing.assert_array_equal(got["weights"][key], value)
    # exporting again replaces the folder; the safetensors file export still works beside it
    c2lst.tl.export_adapter(table, folder, format="peft")
    f = c2lst.tl.export_adapter(table, tmp_path / "a.safetensors")
    c2lst.tl.load_adapter(other, f, key_added="file")
    assert other.uns["c2lst"]["local"]["file"]["sha256"] == want["sha256"]
    # a changed weight is caught by the sha256
    from safetensors.numpy import load_file, save_file

    arrays = load_file(folder / "adapter_model.safetensors")
    first = sorted(arrays)[0]
    arrays[first] = arrays[first] + 1
    save_file(arrays, folder / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="sha256"):
        c2lst.tl.load_adapter(other, folder, key_added="tampered")


def test_peft_export_bad_input_writes_nothing(adapted_table, tmp_path):
    import c2lst

    table, _ = adapted_table
    with pytest.raises(ValueError, match="format"):
        c2lst.tl.export_adapter(table, tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match="folder"):
        c2lst.tl.export_adapter(table, tmp_path / "x.safetensors", format="peft")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other content"):
        c2lst.tl.export_adapter(table, busy, format="peft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------------- HEST-style export
def _with_synthetic(sdata, n=6):
    """Add a synthetic table shaped like `tl.synthesize`'s output (parents are real spots)."""
    import anndata as ad
    import pandas as pd

    real = sdata.tables["table"]
    rng = np.random.default_rng(0)
    parents = real.obs_names[rng.choice(real.n_obs, n, replace=False)].astype(str)
    genes = list(real.var_names[:15])
    syn = ad.AnnData(
        X=rng.poisson(2.0, (n, len(genes))).astype(np.float32),
        obs=pd.DataFrame(
            {"c2lst_synthetic": True, "c2lst_parent": parents, "c2lst_seed": np.arange(n)},
            index=[f"syn_{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=genes),
    )
    syn.obsm["c2lst_patch"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    sdata.tables["c2lst_synthetic"] = syn
    return sdata


def test_export_hest_reads_back_with_h5py_and_anndata(sim_sdata, tmp_path):
    import anndata as ad
    import h5py
    from _reliability_helpers import assert_same, state

    import c2lst

    sdata = _with_synthetic(sim_sdata)
    before = state(sdata)
    root = c2lst.tl.export_hest(sdata, tmp_path / "hest", sample_id="slide1")
    assert_same(state(sdata), before)  # the input is not changed
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "metadata", "metadata/slide1.json", "patches", "patches/slide1.h5", "st", "st/slide1.h5ad",
    ]  # fmt: skip
    real, syn = sdata.tables["table"], sdata.tables["c2lst_synthetic"]
    st = ad.read_h5ad(root / "st" / "slide1.h5ad")
    with h5py.File(root / "patches" / "slide1.h5", "r") as fh:
        img, coords = fh["img"][:], fh["coords"][:]
        barcodes = fh["barcode"].asstr()[:]
        assert fh["img"].attrs["patch_size"] == 32
    assert img.dtype == np.uint8 and img.shape == (real.n_obs + syn.n_obs, 32, 32, 3)
    assert barcodes.shape == (st.n_obs, 1) and coords.shape == (st.n_obs, 2) and coords.dtype == np.int64
    assert barcodes[:, 0].tolist() == st.obs_names.tolist()
    want = np.concatenate([real.obsm["c2lst_patch"], syn.obsm["c2lst_patch"]])
    np.testing.assert_array_equal(img, want)
    # lineage columns: real rows are their own parents, synthetic rows point at theirs
    assert st.obs["c2lst_synthetic"].tolist() == [False] * real.n_obs + [True] * syn.n_obs
    assert st.obs["c2lst_parent"].tolist() == real.obs_names.tolist() + syn.obs["c2lst_parent"].tolist()
    assert "c2lst_patch" not in st.obsm
    # coords: top-left corners in full-resolution pixels; a synthetic row sits at its parent spot
    extent = real.uns["c2lst"]["patches"]["c2lst_patch"]["extent_px"]
    np.testing.assert_array_equal(coords[: real.n_obs], np.round(real.obsm["spatial"] - extent / 2).astype(int))
    first_parent = real.obs_names.get_loc(syn.obs["c2lst_parent"].iloc[0])
    np.testing.assert_array_equal(coords[real.n_obs], coords[first_parent])
    meta = json.loads((root / "metadata" / "slide1.json").read_text())
    assert (meta["n_real"], meta["n_synthetic"], meta["patch_size"]) == (real.n_obs, syn.n_obs, 32)
    assert meta["c2lst_version"] == c2lst.__version__
    # the simulator records 1 um/px and 55 um spots; the patches span one spot diameter
    assert (meta["pixel_size_um_estimated"], meta["spot_diameter"], meta["patch_size_src"]) == (1.0, 55.0, extent)


def test_export_hest_anndata_and_overwrite(sim_sdata, tmp_path):
    import anndata as ad
    import h5py

    import c2lst

    real = sim_sdata.tables["table"]
    root = c2lst.tl.export_hest(real[:10].copy(), tmp_path, sample_id="a")
    st = ad.read_h5ad(root / "st" / "a.h5ad")
    assert not st.obs["c2lst_synthetic"].any() and st.obs["c2lst_parent"].tolist() == st.obs_names.tolist()
    first = (root / "patches" / "a.h5").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        c2lst.tl.export_hest(real[:4].copy(), tmp_path, sample_id="a")
    assert (root / "patches" / "a.h5").read_bytes() == first
    c2lst.tl.export_hest(real[:4].copy(), tmp_path, sample_id="a", overwrite=True)
    with h5py.File(root / "patches" / "a.h5", "r") as fh:
        assert fh["img"].shape[0] == 4
    c2lst.tl.export_hest(real[4:7].copy(), tmp_path, sample_id="b")  # a second sample beside the first
    assert sorted(p.name for p in (root / "st").iterdir()) == ["a.h5ad", "b.h5ad"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folder left behind


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sample_id": "../x"}, ValueError, "sample_id"),
        ({"sample_id": ""}, ValueError, "sample_id"),
        ({"sample_id": "s", "patch_key": "nope"}, KeyError, "patch_key"),
        ({"sample_id": "s", "table_keys": ("table", "missing")}, KeyError, "missing"),
        ({"sample_id": "s", "table_keys": ("table", "x", "y")}, ValueError, "table_keys"),
        ({"sample_id": "s", "overwrite": "yes"}, TypeError, "overwrite"),
    ],
)
def test_export_hest_bad_input_writes_nothing(sim_sdata, tmp_path, kwargs, error, match):
    import c2lst

    with pytest.raises(error, match=match):
        c2lst.tl.export_hest(sim_sdata, tmp_path / "hest", **kwargs)
    assert not (tmp_path / "hest").exists()


def test_load_adapter_folder_refuses_foreign_or_pickled_folders(adapted_table, tmp_path):
    import anndata as ad
    from peft import LoraConfig

    import c2lst

    table, _ = adapted_table
    other = ad.AnnData(np.zeros((2, 3), np.float32))
    plain = tmp_path / "plain_peft"
    LoraConfig(r=2, target_modules=["to_q"]).save_pretrained(str(plain))  # a peft folder, not from c2lst
    with pytest.raises(ValueError, match=r"c2lst_adapter\.json"):
        c2lst.tl.load_adapter(other, plain)
    folder = c2lst.tl.export_adapter(table, tmp_path / "adapter", format="peft")
    (folder / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle"):
        c2lst.tl.load_adapter(other, folder)
    assert "c2lst" not in other.uns
