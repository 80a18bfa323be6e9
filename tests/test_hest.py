"""HEST-1k reading on tiny HEST-like folders built here (pyramidal TIFF, h5ad, metadata JSON, patches .h5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
from scipy import sparse

import c2lst

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("imagecodecs")

MPP = 2.0  # µm per slide pixel: 55 µm spots are 27.5 px, 100 µm pitch is 50 px
GRID = (4, 5)  # rows, columns of spots
PITCH = 50
N_GENES = 6


def _layout(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, cols = GRID
    xy = np.array([[40 + PITCH * c, 40 + PITCH * r] for r in range(rows) for c in range(cols)], dtype=float)
    colours = rng.integers(20, 230, (len(xy), 3), dtype=np.uint8)
    height, width = 40 + PITCH * rows, 40 + PITCH * cols + 20
    image = np.full((height, width, 3), 255, np.uint8)
    for (x, y), c in zip(xy.astype(int), colours, strict=True):
        image[y - 14 : y + 14, x - 14 : x + 14] = c
    return xy, colours, image


def write_hest_sample(
    root: Path,
    sample_id: str = "TOY1",
    *,
    pyramidal: bool = True,
    meta: dict | None = None,
    patch_barcodes: list[str] | None = None,
    seed: int = 0,
) -> dict:
    """Write ``root/{wsis,st,metadata,patches}/{sample_id}.*`` like HEST-1k; return what was written."""
    xy, colours, image = _layout(seed)
    for folder in ("wsis", "st", "metadata", "patches"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(root / "wsis" / f"{sample_id}.tif") as tw:
        opts = {"tile": (64, 64), "compression": "zlib", "photometric": "rgb"}
        tw.write(image, subifds=2 if pyramidal else 0, **opts)
        if pyramidal:
            for k in (2, 4):
                tw.write(image[::k, ::k], subfiletype=1, **opts)
    barcodes = [f"AAAC{i:04d}-1" for i in range(len(xy))]
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, (len(xy), N_GENES)).astype(np.float32)
    adata = ad.AnnData(sparse.csr_matrix(counts))
    adata.obs_names = barcodes
    adata.var_names = [f"G{j}" for j in range(N_GENES)]
    adata.obsm["spatial"] = xy.copy()
    adata.write_h5ad(root / "st" / f"{sample_id}.h5ad")
    metadata = {"pixel_size_um_estimated": MPP, "pixel_size_um_embedded": 0.25, "spot_diameter": 55.0,
                "inter_spot_dist": 100.0, "organ": "Toy", "patient": sample_id, "st_technology": "Visium"}  # fmt: skip
    if meta is not None:
        metadata = {**metadata, **meta}
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(metadata))
    chosen = (
        barcodes[::-1][:-3] if patch_barcodes is None else patch_barcodes
    )  # shuffled order, 3 spots dropped
    index = {b: i for i, b in enumerate(barcodes)}
    crops = []
    for b in chosen:
        x, y = xy[index[b]].astype(int) if b in index else (60, 60)
        crops.append(image[y - 8 : y + 8, x - 8 : x + 8])
    with h5py.File(root / "patches" / f"{sample_id}.h5", "w") as f:
        f["img"] = np.stack(crops).astype(np.uint8)
        f["barcode"] = np.array([b.encode() for b in chosen])[:, None]
        f["coords"] = np.zeros((len(chosen), 2), np.int64)
    return {
        "xy": xy,
        "colours": colours,
        "image": image,
        "barcodes": barcodes,
        "counts": counts,
        "chosen": chosen,
    }


@pytest.fixture
def hest_root(tmp_path):
    info = write_hest_sample(tmp_path)
    return tmp_path, info


def test_read_hest_builds_lazy_pyramid_spots_and_table(hest_root):
    root, info = hest_root
    sdata = c2lst.datasets.read_hest(root, "TOY1")
    image = sdata.images["he"]
    levels = [image[f"scale{i}"]["image"] for i in range(3)]
    assert [lv.shape[1:] for lv in levels] == [(240, 310), (120, 155), (60, 78)]
    assert all(type(lv.data).__name__ == "Array" for lv in levels)  # dask, nothing decoded yet
    np.testing.assert_array_equal(
        levels[0].data[:, 30:50, 60:80].compute(), info["image"][30:50, 60:80].transpose(2, 0, 1)
    )
    circles = sdata.shapes["spots"]
    np.testing.assert_allclose(circles["radius"].to_numpy(), 55.0 / MPP / 2)
    np.testing.assert_allclose(np.c_[circles.geometry.x, circles.geometry.y], info["xy"])
    table = sdata.tables["table"]
    assert list(table.obs_names) == info["barcodes"]
    np.testing.assert_array_equal(table.X.toarray(), info["counts"])
    assert (table.obs["sample_id"] == "TOY1").all()
    assert table.uns["c2lst"]["scale"] == {
        "um_per_unit": MPP,
        "source": "TOY1.json['pixel_size_um_estimated']",
    }
    src = table.uns["c2lst"]["source"]
    assert src["spot_diameter_px"] == pytest.approx(27.5) and src["pyramidal"]
    assert json.loads(src["metadata"])["organ"] == "Toy"


def test_extract_patches_from_the_lazy_slide_finds_each_spot(hest_root):
    root, info = hest_root
    sdata = c2lst.datasets.read_hest(root, "TOY1")
    c2lst.pp.extract_patches(sdata, patch_um=40.0, size=8, progress=False)  # 20 px: inside each 28 px square
    table = sdata.tables["table"]
    rec = table.uns["c2lst"]["patches"]["c2lst_patch"]
    assert rec["um_per_unit"] == pytest.approx(MPP)
    means = table.obsm["c2lst_patch"].reshape(len(table), -1, 3).mean(1)
    np.testing.assert_allclose(means, info["colours"], atol=2)


def test_fast_path_reads_hest_patches_by_barcode(hest_root):
    root, info = hest_root
    sdata = c2lst.datasets.read_hest(root, "TOY1", patches=True)
    table = sdata.tables["table"]
    kept = [b for b in info["barcodes"] if b in set(info["chosen"])]
    assert list(table.obs_names) == kept and len(kept) == len(info["barcodes"]) - 3
    assert len(sdata.shapes["spots"]) == len(kept)
    rows = [info["barcodes"].index(b) for b in kept]
    means = table.obsm["c2lst_patch"].reshape(len(kept), -1, 3).mean(1)
    np.testing.assert_allclose(means, info["colours"][rows], atol=1e-6)
    np.testing.assert_array_equal(table.X.toarray(), info["counts"][rows])
    assert table.uns["c2lst"]["patches"]["c2lst_patch"]["native_size"] == 16
    small = c2lst.datasets.read_hest(root, "TOY1", patches=True, size=8, patch_key="p8")
    assert small.tables["table"].obsm["p8"].shape == (len(kept), 8, 8, 3)
    assert c2lst.get.lineage(small, function="c2lst.datasets.read_hest")["parameters"].iloc[-1]["size"] == 8


def test_fast_path_patches_pretrain_directly(hest_root):
    root, _ = hest_root
    sdata = c2lst.datasets.read_hest(root, "TOY1", patches=True, size=32)
    model = c2lst.tl.pretrain(sdata, preset="tiny", n_steps=2, batch_size=4, progress=False, device="cpu")
    assert model.training_summary["slides"][0]["name"] == "TOY1"


@pytest.mark.parametrize(
    ("folder", "suffix"), [("wsis", ".tif"), ("st", ".h5ad"), ("metadata", ".json"), ("patches", ".h5")]
)
def test_missing_file_is_named(hest_root, folder, suffix):
    root, _ = hest_root
    (root / folder / f"TOY1{suffix}").unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder}/TOY1"):
        c2lst.datasets.read_hest(root, "TOY1", patches=True)


def test_missing_patches_file_only_matters_for_the_fast_path(hest_root):
    root, _ = hest_root
    (root / "patches" / "TOY1.h5").unlink()
    assert len(c2lst.datasets.read_hest(root, "TOY1").tables["table"]) == GRID[0] * GRID[1]


def test_unknown_patch_barcodes_are_an_error(tmp_path):
    write_hest_sample(tmp_path, patch_barcodes=["AAAC0001-1", "NOTASPOT-1", "ALSONOT-1"])
    with pytest.raises(ValueError, match=r"2 of 3 patch barcodes .* are not spots"):
        c2lst.datasets.read_hest(tmp_path, "TOY1", patches=True)


def test_repeated_patch_barcodes_are_an_error(tmp_path):
    write_hest_sample(tmp_path, patch_barcodes=["AAAC0001-1", "AAAC0001-1"])
    with pytest.raises(ValueError, match="repeats barcodes"):
        c2lst.datasets.read_hest(tmp_path, "TOY1", patches=True)


def test_metadata_without_pixel_size(tmp_path):
    write_hest_sample(
        tmp_path, meta={"pixel_size_um_estimated": None, "pixel_size_um_embedded": float("nan")}
    )
    with pytest.raises(ValueError, match=r"no positive pixel size.*pixel_size_um="):
        c2lst.datasets.read_hest(tmp_path, "TOY1")
    sdata = c2lst.datasets.read_hest(tmp_path, "TOY1", pixel_size_um=1.0)
    assert sdata.tables["table"].uns["c2lst"]["scale"] == {
        "um_per_unit": 1.0,
        "source": "pixel_size_um argument",
    }
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 27.5)


def test_embedded_pixel_size_is_the_fallback(tmp_path):
    write_hest_sample(tmp_path, meta={"pixel_size_um_estimated": None})
    scale = c2lst.datasets.read_hest(tmp_path, "TOY1").tables["table"].uns["c2lst"]["scale"]
    assert scale["um_per_unit"] == 0.25 and "embedded" in scale["source"]


def test_metadata_without_spot_diameter(tmp_path):
    write_hest_sample(tmp_path, meta={"spot_diameter": None})
    with pytest.raises(ValueError, match="spot_diameter_um="):
        c2lst.datasets.read_hest(tmp_path, "TOY1")
    sdata = c2lst.datasets.read_hest(tmp_path, "TOY1", spot_diameter_um=10.0)
    np.testing.assert_allclose(sdata.shapes["spots"]["radius"], 2.5)


def test_broken_metadata_json(hest_root):
    root, _ = hest_root
    (root / "metadata" / "TOY1.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        c2lst.datasets.read_hest(root, "TOY1")


def test_non_pyramidal_tiff_reads_lazily_as_one_level(tmp_path, caplog):
    info = write_hest_sample(tmp_path, pyramidal=False)
    sdata = c2lst.datasets.read_hest(tmp_path, "TOY1")
    image = sdata.images["he"]
    assert list(image.children) == ["scale0"]
    assert type(image["scale0"]["image"].data).__name__ == "Array"
    assert not sdata.tables["table"].uns["c2lst"]["source"]["pyramidal"]
    c2lst.pp.extract_patches(sdata, patch_px=20, size=8, progress=False)
    means = sdata.tables["table"].obsm["c2lst_patch"].reshape(len(info["xy"]), -1, 3).mean(1)
    np.testing.assert_allclose(means, info["colours"], atol=2)


def test_grey_tiff_is_refused(hest_root):
    root, _ = hest_root
    tifffile.imwrite(root / "wsis" / "TOY1.tif", np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        c2lst.datasets.read_hest(root, "TOY1")


def test_not_a_tiff_is_refused(hest_root):
    root, _ = hest_root
    (root / "wsis" / "TOY1.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="not a readable TIFF"):
        c2lst.datasets.read_hest(root, "TOY1")


def test_patch_file_without_barcodes(hest_root):
    root, _ = hest_root
    with h5py.File(root / "patches" / "TOY1.h5", "a") as f:
        del f["barcode"]
    with pytest.raises(KeyError, match="barcode"):
        c2lst.datasets.read_hest(root, "TOY1", patches=True)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"sample_id": 3}, TypeError, "sample_id"),
        ({"sample_id": "../x"}, TypeError, "sample_id"),
        ({"patches": "yes"}, TypeError, "patches"),
        ({"size": 0}, ValueError, "size"),
        ({"pixel_size_um": -1.0}, ValueError, "pixel_size_um"),
    ],
)
def test_bad_arguments(hest_root, kwargs, err, match):
    root, _ = hest_root
    kwargs = {"sample_id": "TOY1", **kwargs}
    with pytest.raises(err, match=match):
        c2lst.datasets.read_hest(root, **kwargs)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        c2lst.datasets.read_hest(tmp_path / "nope", "TOY1")


def test_missing_wsi_extra_names_it(hest_root, monkeypatch):
    root, _ = hest_root
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(ImportError, match=r"c2lst\[wsi\]"):
        c2lst.datasets.read_hest(root, "TOY1")


# --------------------------------------------------------------------------- central pretraining on several slides
def _slide(seed: int, n: int, value: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    if value is not None:
        out[:] = value
    return out


def test_balanced_picker_weighs_slides_equally_and_is_seeded():
    import torch

    from c2lst.models.fit import _balanced_picker

    pick = _balanced_picker([900, 100], 1000)
    idx = pick(20000, torch.Generator().manual_seed(0)).numpy()
    assert idx.min() >= 0 and idx.max() < 1000
    assert abs((idx >= 900).mean() - 0.5) < 0.02  # the small slide gets half the rows, not a tenth
    assert len(np.unique(idx[idx >= 900])) == 100  # and all of its patches
    again = pick(20000, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(idx, again)
    uniform = _balanced_picker(None, 1000)(20000, torch.Generator().manual_seed(0)).numpy()
    assert abs((uniform >= 900).mean() - 0.1) < 0.02
    with pytest.raises(ValueError, match="slide_sizes"):
        _balanced_picker([5, 4], 10)


def test_pretrain_on_several_slides_records_them_and_balances(tmp_path, hest_root):
    root, _ = hest_root
    write_hest_sample(root, "TOY2", seed=1)
    hest = [c2lst.datasets.read_hest(root, sid, patches=True, size=32) for sid in ("TOY1", "TOY2")]
    big = _slide(0, 40)
    kw = {"preset": "tiny", "n_steps": 2, "batch_size": 4, "progress": False, "device": "cpu"}
    model = c2lst.tl.pretrain([*hest, big], output_dir=tmp_path / "m", **kw)
    slides = model.training_summary["slides"]
    assert [s["name"] for s in slides] == ["TOY1", "TOY2", "array[2]"]
    assert [s["n_patches"] for s in slides] == [17, 17, 40]
    assert len({s["sha256"] for s in slides}) == 3 and model.training_summary["balance"] == "slides"
    saved = json.loads((tmp_path / "m" / "model" / "c2lst.json").read_text())
    assert saved["training"]["slides"] == slides
    lineage = c2lst.get.lineage(hest[0], function="c2lst.tl.pretrain")
    assert lineage["parameters"].iloc[-1]["slides"] == slides
    # the local slide is kept out: a third HEST sample was not seen, the pretraining ones were
    write_hest_sample(root, "TOY3", seed=2)
    local = c2lst.datasets.read_hest(root, "TOY3", patches=True, size=32)
    assert c2lst.tl.pretrained_on(local, central=model) == []
    assert c2lst.tl.pretrained_on([local, hest[1], big], central=model) == ["TOY2", "array[2]"]
    assert c2lst.tl.pretrained_on(hest[0], central=saved["training"]) == ["TOY1"]


def test_balance_changes_the_batches_and_one_slide_is_unchanged():
    kw = {"preset": "tiny", "n_steps": 2, "batch_size": 8, "progress": False, "device": "cpu", "ema": False}
    data = [_slide(0, 60, value=250), _slide(1, 4, value=5)]
    slides = c2lst.tl.pretrain(data, balance="slides", **kw).training_summary
    pooled = c2lst.tl.pretrain(data, balance="patches", **kw).training_summary
    assert slides["loss_curve"] != pooled["loss_curve"]
    one = _slide(2, 16)
    a = c2lst.tl.pretrain(one, balance="slides", **kw).training_summary["loss_curve"]
    b = c2lst.tl.pretrain(one, balance="patches", **kw).training_summary["loss_curve"]
    assert a == b


def test_balanced_resume_is_exact(tmp_path, monkeypatch):
    import torch

    import c2lst.models.train as train_mod

    data = [_slide(0, 30), _slide(1, 6)]
    kw = {"preset": "tiny", "n_steps": 6, "batch_size": 4, "checkpoint_every": 3, "progress": False, "device": "cpu"}
    full = c2lst.tl.pretrain(data, output_dir=tmp_path / "a", **kw)
    real = train_mod._save_checkpoint

    class Killed(Exception):
        pass

    def killed_after_step_3(accelerator, out, step, *args):
        real(accelerator, out, step, *args)
        if step == 3:
            raise Killed

    monkeypatch.setattr(train_mod, "_save_checkpoint", killed_after_step_3)
    with pytest.raises(Killed):
        c2lst.tl.pretrain(data, output_dir=tmp_path / "b", **kw)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real)
    resumed = c2lst.tl.pretrain(data, output_dir=tmp_path / "b", **kw)
    assert resumed.training_summary["resumed_from"] == 3
    sa, sb = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="different run configuration"):  # other slides: no silent resume
        c2lst.tl.pretrain([_slide(0, 30), _slide(3, 6)], output_dir=tmp_path / "b", **{**kw, "n_steps": 9})


def test_pretrain_bad_balance_and_pretrained_on_inputs():
    with pytest.raises(ValueError, match="balance='weird'"):
        c2lst.tl.pretrain(_slide(0, 8), preset="tiny", n_steps=1, balance="weird")
    with pytest.raises(TypeError, match="central"):
        c2lst.tl.pretrained_on(_slide(0, 8), central="model")
    with pytest.raises(KeyError, match="older c2lst"):
        c2lst.tl.pretrained_on(_slide(0, 8), central={"losses": []})


def test_export_hest_reads_back_through_read_hest(hest_root, tmp_path):
    """tl.export_hest writes HEST's layout: read_hest reads it back (patches by barcode, counts, scale)."""
    import shutil

    root, _ = hest_root
    sdata = c2lst.datasets.read_hest(root, "TOY1")
    c2lst.pp.extract_patches(sdata, size=8, progress=False)  # default extent: the 55 µm spot
    table = sdata.tables["table"]
    out = tmp_path / "export"
    c2lst.tl.export_hest(sdata, out, sample_id="TOY1")
    (out / "wsis").mkdir()
    shutil.copy(root / "wsis" / "TOY1.tif", out / "wsis" / "TOY1.tif")  # the export carries no slide
    meta = json.loads((out / "metadata" / "TOY1.json").read_text())
    assert meta["pixel_size_um_estimated"] == pytest.approx(MPP) and meta["spot_diameter"] == pytest.approx(55.0)
    back = c2lst.datasets.read_hest(out, "TOY1", patches=True).tables["table"]
    assert list(back.obs_names) == list(table.obs_names)
    np.testing.assert_array_equal(back.obsm["c2lst_patch"], table.obsm["c2lst_patch"])
    np.testing.assert_array_equal(back.X.toarray(), table.X.toarray())
    assert c2lst.get.lineage(back) is not None
    assert back.uns["c2lst"]["scale"]["um_per_unit"] == pytest.approx(MPP)
    with h5py.File(out / "patches" / "TOY1.h5") as f:
        assert f["img"].attrs["pixel_size"] == pytest.approx(55.0 / 8)  # the patches' own µm per pixel
