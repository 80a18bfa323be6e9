"""Security: no load path unpickles, weights are checked against their sha256, ``.uns`` strings are data (issue 6).

The malicious pickles used here create a sentinel file when unpickled (``open(sentinel, "w")``); a sanity test
shows that they do, so every "sentinel absent" assertion below can fail.
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from _reliability_helpers import assert_same, snapshot
from safetensors.torch import load_file, save_file

import c2lst
from c2lst._records import lineage, record_lineage
from c2lst.models import CentralModel
from c2lst.tl._central import resolve_central

SRC = Path(__file__).resolve().parents[1] / "src" / "c2lst"


class _Payload:
    """Unpickling this object opens (creates) ``path`` for writing: a stand-in for arbitrary code execution."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(path: Path, sentinel: Path) -> Path:
    path.write_bytes(pickle.dumps(_Payload(sentinel)))
    return path


def malicious_string(sentinel: Path) -> str:
    return f"__import__('os').system('touch {sentinel}')"


def test_payload_executes_when_unpickled(tmp_path):
    """Sanity check of the payload: unpickled with plain pickle, it does create the sentinel."""
    sentinel = tmp_path / "pwned"
    with open(malicious_pickle(tmp_path / "x.pkl", sentinel), "rb") as fh:
        pickle.load(fh).close()  # deliberately, to prove the payload works
    assert sentinel.exists()


# ============================================================================ static: nothing in src deserialises code
_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
_UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Return the unsafe (de)serialisation or evaluation calls in ``source`` as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                f"{filename}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in _UNSAFE_MODULES
            ]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kwargs = {k.arg: k.value for k in node.keywords}
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        where = f"{filename}:{node.lineno}"
        if isinstance(func, ast.Name) and name in _UNSAFE_BUILTINS | {"literal_eval"}:
            found.append(f"{where}: {name}()")
        elif owner in _UNSAFE_MODULES or name in {"read_pickle", "literal_eval", "unsafe_load"}:
            found.append(f"{where}: {owner}.{name}()")
        elif owner == "yaml" and name == "load":
            found.append(f"{where}: yaml.load()")
        elif owner == "torch" and name == "load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where}: torch.load() without weights_only=True")
        elif owner in {"np", "numpy"} and name == "load":
            flag = kwargs.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"{where}: np.load(allow_pickle=True)")
    return found


def test_unsafe_call_detector_finds_what_it_should():
    bad = "\n".join(
        [
            "import pickle",
            "pickle.loads(b'')",
            "torch.load(f)",
            "torch.load(f, weights_only=False)",
            "np.load(f, allow_pickle=True)",
            "eval('1')",
            "exec('x=1')",
            "yaml.load(s)",
            "pd.read_pickle(f)",
            "ast.literal_eval(s)",
        ]
    )
    assert len(unsafe_calls(bad)) == 10
    good = "torch.load(f, weights_only=True)\nnp.load(f)\nmodel.eval()\njson.loads(s)\nre.compile('x')"
    assert unsafe_calls(good) == []


def test_src_never_unpickles_or_evaluates():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_calls(f.read_text(), str(f.relative_to(SRC.parent)))]
    assert found == []


# ============================================================================ behaviour: load paths never unpickle
@pytest.fixture
def no_unpickling(monkeypatch):
    """Make every pickle entry point raise while the test runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("a load path tried to unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_load_paths_do_not_unpickle(no_unpickling, tiny_central, adapted_base, tmp_path):
    _, path = tiny_central
    model = CentralModel.from_pretrained(path)
    assert model.sha256
    f = c2lst.tl.export_adapter(adapted_base, tmp_path / "a.safetensors")
    other = ad.AnnData(obs=adapted_base.obs[[]].copy())
    c2lst.tl.load_adapter(other, f)
    adapted_base.write_zarr(tmp_path / "t.zarr")
    back = ad.read_zarr(tmp_path / "t.zarr")
    sd = __import__("spatialdata").SpatialData(tables={"table": back})
    c2lst.tl.synthesize(sd, n_steps=1, progress=False, conditions=np.zeros((1, 20), np.float32))  # central=None
    assert sd.tables["c2lst_synthetic"].n_obs == 1


# ============================================================================ pickle-bearing files are refused
@pytest.mark.parametrize(
    "relpath", ["unet/diffusion_pytorch_model.bin", "model.pt", "c2lst_condition.ckpt", "vae/weights.pth"]
)
def test_from_pretrained_refuses_pickle_files(tiny_central, tmp_path, relpath):
    sentinel = tmp_path / "pwned"
    root = tmp_path / "m"
    shutil.copytree(tiny_central[1], root)
    (root / relpath).parent.mkdir(parents=True, exist_ok=True)
    bad = malicious_pickle(root / relpath, sentinel)
    with pytest.raises(
        ValueError, match=r"refusing to load pickle-based weight files.*" + Path(relpath).name
    ):
        CentralModel.from_pretrained(root)
    with pytest.raises(ValueError, match="refusing to load pickle-based weight files"):
        CentralModel.from_pretrained(bad)  # the pickle file itself
    assert not sentinel.exists()


def test_pickle_only_unet_dir_inside_a_checkpoints_folder_is_refused(tiny_central, tmp_path):
    """A ``checkpoints`` folder *above* the model directory does not switch the pickle check off."""
    sentinel = tmp_path / "pwned"
    root = tmp_path / "checkpoints" / "plain_unet"
    root.mkdir(parents=True)
    shutil.copy(tiny_central[1] / "unet" / "config.json", root / "config.json")
    malicious_pickle(root / "diffusion_pytorch_model.bin", sentinel)
    with pytest.raises(ValueError, match="refusing to load pickle-based weight files"):
        CentralModel.from_pretrained(root)
    assert not sentinel.exists()


def test_training_checkpoints_inside_an_output_dir_are_not_loaded_as_weights(tiny_central):
    """``from_pretrained(output_dir/model)`` works although ``output_dir/checkpoints`` holds accelerate's .bin."""
    _, path = tiny_central
    assert list((path.parent / "checkpoints").rglob("*.bin"))
    assert CentralModel.from_pretrained(path).sha256


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pkl"])
def test_load_adapter_refuses_pickle_files(adapted_base, tmp_path, suffix):
    sentinel = tmp_path / "pwned"
    f = malicious_pickle(tmp_path / f"adapter{suffix}", sentinel)
    t = adapted_base.copy()
    before = snapshot(t)
    with pytest.raises(ValueError, match=r"refusing to load pickle-based weight files.*adapter" + suffix):
        c2lst.tl.load_adapter(t, f, key_added="other")
    assert_same(before, snapshot(t))
    assert not sentinel.exists()


def test_tampered_accelerate_random_states_are_not_executed_on_resume(tmp_path):
    """accelerate reads ``random_states_0.pkl`` with ``weights_only=True``: a malicious pickle is never run."""
    sentinel = tmp_path / "pwned"
    data = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    kw = {
        "preset": "tiny",
        "batch_size": 4,
        "output_dir": tmp_path / "run",
        "checkpoint_every": 1,
        "progress": False,
    }
    c2lst.tl.pretrain(data, n_steps=2, **kw)
    malicious_pickle(tmp_path / "run" / "checkpoints" / "step_2" / "random_states_0.pkl", sentinel)
    model = c2lst.tl.pretrain(data, n_steps=3, **kw)
    assert model.training_summary["resumed_from"] == 2  # c2lst draws its randomness per step, not from them
    assert not sentinel.exists()


def test_tampered_optimizer_state_is_refused_on_resume(tmp_path):
    sentinel = tmp_path / "pwned"
    data = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    kw = {
        "preset": "tiny",
        "batch_size": 4,
        "output_dir": tmp_path / "run",
        "checkpoint_every": 1,
        "progress": False,
    }
    c2lst.tl.pretrain(data, n_steps=2, **kw)
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    malicious_pickle(ckpt / "optimizer.bin", sentinel)
    with pytest.raises(ValueError, match=r"step_2.*could not be loaded safely.*resume=False"):
        c2lst.tl.pretrain(data, n_steps=3, **kw)
    assert not sentinel.exists()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["step_1", "step_2"]  # nothing new written


def test_accelerate_load_uses_weights_only(tmp_path):
    """The installed accelerate's ``load`` (used by ``load_state``) refuses a code-bearing pickle."""
    from accelerate.utils import load

    sentinel = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError):
        load(malicious_pickle(tmp_path / "optimizer.bin", sentinel))
    assert not sentinel.exists()


# ============================================================================ sha256 verification
def _tampered_copy(path: Path, dst: Path) -> Path:
    shutil.copytree(path, dst)
    f = dst / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(f))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, str(f), metadata={"format": "pt"})  # a valid file with other weights
    return dst


def test_weights_are_verified_and_verify_false_is_logged(tiny_central, tmp_path, caplog):
    model, path = tiny_central
    copy = _tampered_copy(path, tmp_path / "tampered")
    with pytest.raises(ValueError, match=r"`path=.*sha256.*does not match the recorded.*verify=False"):
        CentralModel.from_pretrained(copy)
    with caplog.at_level(logging.WARNING, logger="c2lst"):
        loaded = CentralModel.from_pretrained(copy, verify=False)
    assert "without sha256 verification" in caplog.text
    a, b = model.state_dict(), loaded.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it did load the tampered weights


def test_registry_sha256_is_checked(tiny_central, tmp_path):
    _, path = tiny_central
    adata = ad.AnnData(obs={"x": [1, 2]})
    adata.uns["c2lst"] = {"central": {"k": {"path": str(path), "sha256": "0" * 64}}}
    with pytest.raises(ValueError, match=r"`central='k'`.*registry recorded.*verify=False"):
        resolve_central("k", adata)
    assert resolve_central("k", adata, verify=False).sha256 != "0" * 64


# ============================================================================ .uns strings are data, never code
@pytest.mark.parametrize(
    ("field", "value", "exc"),
    [
        ("config", "{bad}", ValueError),  # not JSON: refused
        ("config", "{json_with_code}", ValueError),  # JSON whose values are code strings: refused as data
        ("expr", "{bad}", ValueError),
        ("central_path", "{bad}", KeyError),  # not a directory: refused, never imported or fetched
        ("genes", "{genes_with_code}", (KeyError, ValueError)),
    ],
)
def test_adapter_record_strings_are_never_evaluated(adapted_sdata, tmp_path, field, value, exc):
    sentinel = tmp_path / "pwned"
    bad = malicious_string(sentinel)
    record = adapted_sdata.tables["table"].uns["c2lst"]["local"]["c2lst_local"]
    if value == "{json_with_code}":
        cfg = json.loads(record["config"])
        cfg.update(dict.fromkeys(("rank", "target_modules", "hidden"), bad))
        record[field] = json.dumps(cfg)
    elif value == "{genes_with_code}":
        record[field] = np.asarray([bad, *list(record[field])[1:]], dtype=object)
    else:
        record[field] = bad
    with pytest.raises(exc):
        c2lst.tl.synthesize(adapted_sdata, central=None, n_steps=1, progress=False)
    assert not sentinel.exists()


def test_registry_path_with_code_is_refused_without_hub_lookup(tmp_path, monkeypatch):
    from diffusers import UNet2DModel

    sentinel = tmp_path / "pwned"
    monkeypatch.setattr(
        UNet2DModel, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("hub lookup"))
    )
    adata = ad.AnnData(obs={"x": [1, 2]})
    adata.uns["c2lst"] = {"central": {"k": {"path": malicious_string(sentinel), "sha256": ""}}}
    with pytest.raises(FileNotFoundError, match=r"`central='k'` is registered at .*not a directory"):
        resolve_central("k", adata)
    assert not sentinel.exists()


def test_lineage_strings_survive_as_data(tmp_path):
    sentinel = tmp_path / "pwned"
    bad = malicious_string(sentinel)
    adata = ad.AnnData(np.ones((2, 2), np.float32))
    record_lineage(
        adata, function=bad, parameters={"cmd": bad, "nested": {"x": [bad]}}, seed=0, input_table=bad
    )
    adata.write_zarr(tmp_path / "l.zarr")
    rec = lineage(ad.read_zarr(tmp_path / "l.zarr"))[0]
    assert rec["function"] == bad and rec["input_table"] == bad
    assert rec["parameters"] == {"cmd": bad, "nested": {"x": [bad]}}
    assert not sentinel.exists()
