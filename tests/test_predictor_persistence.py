"""``ExpressionPredictor.save_pretrained`` / ``from_pretrained``: atomic, fingerprinted, verified; deprecated aliases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import c2lst.models._predictor_io as io
from c2lst.models import ExpressionPredictor

sys.path.insert(0, str(Path(__file__).parent))
from _eval_helpers import make_table

GENES = ["g_nuclei", "g_colour", "g_noise"]


@pytest.fixture(scope="module")
def fitted():
    t = make_table(40, seed=0)
    x, y = t.obsm["c2lst_patch"], t.obsm["c2lst_expr"]
    cnn = ExpressionPredictor(GENES, widths=(4, 8)).fit(x, y, n_steps=3, batch_size=16, progress=False)
    ridge = ExpressionPredictor(GENES, mode="ridge").fit(x, y)
    return cnn, ridge, x


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("which", [0, 1])
def test_round_trip_records_and_verifies_the_fingerprint(fitted, tmp_path, which):
    model, x = fitted[which], fitted[2]
    path = model.save_pretrained(tmp_path / "nested" / "pred")
    assert path == tmp_path / "nested" / "pred"
    assert _listing(tmp_path / "nested") == ["pred", "pred/predictor.safetensors", "pred/predictor_config.json"]
    cfg = json.loads((path / "predictor_config.json").read_text())
    assert cfg["sha256"] == model.sha256 and len(model.sha256) == 64 and cfg["format_version"] == 2
    loaded = ExpressionPredictor.from_pretrained(path)
    assert loaded.sha256 == model.sha256
    assert loaded.predict(x).tobytes() == model.predict(x).tobytes()


def test_same_seed_gives_the_same_weight_bytes(fitted):
    t = make_table(40, seed=0)
    x, y = t.obsm["c2lst_patch"], t.obsm["c2lst_expr"]
    again = ExpressionPredictor(GENES, widths=(4, 8)).fit(x, y, n_steps=3, batch_size=16, progress=False)
    a, b = fitted[0].state_tensors(), again.state_tensors()
    assert a.keys() == b.keys() and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)


def test_tampered_weights_or_config_are_refused(fitted, tmp_path):
    path = fitted[0].save_pretrained(tmp_path / "pred")
    weights = load_file(str(path / io.WEIGHTS_NAME))
    weights["target_mean"] = weights["target_mean"] + 1.0
    save_file(weights, str(path / io.WEIGHTS_NAME))
    with pytest.raises(ValueError, match="do not match the sha256"):
        ExpressionPredictor.from_pretrained(path)
    assert ExpressionPredictor.from_pretrained(path, verify=False).is_fitted  # the user's explicit choice

    path = fitted[1].save_pretrained(tmp_path / "ridge")
    cfg = json.loads((path / io.CONFIG_NAME).read_text())
    cfg["genes"] = ["a", "b", "c"]  # relabelled outputs are as wrong as changed weights
    (path / io.CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sha256"):
        ExpressionPredictor.from_pretrained(path)


def test_a_failure_mid_write_leaves_no_half_directory(fitted, tmp_path, monkeypatch):
    def torn(tensors, path, metadata=None):
        Path(path).write_bytes(b"torn")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_safetensors", torn)
    with pytest.raises(OSError, match="disk full"):
        fitted[0].save_pretrained(tmp_path / "pred")
    assert _listing(tmp_path) == []
    # replacing a saved predictor: a failure keeps the old one whole
    monkeypatch.undo()
    path = fitted[1].save_pretrained(tmp_path / "pred")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(io, "save_safetensors", torn)
    with pytest.raises(OSError, match="disk full"):
        fitted[0].save_pretrained(path, overwrite=True)
    assert _listing(tmp_path) == ["pred", "pred/predictor.safetensors", "pred/predictor_config.json"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    monkeypatch.undo()
    fitted[0].save_pretrained(path, overwrite=True)
    assert ExpressionPredictor.from_pretrained(path).mode == "cnn"
    assert _listing(tmp_path) == ["pred", "pred/predictor.safetensors", "pred/predictor_config.json"]


def test_targets_that_are_not_an_empty_or_predictor_directory_are_refused(fitted, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other files"):
        fitted[1].save_pretrained(tmp_path / "busy", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        fitted[1].save_pretrained(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    fitted[1].save_pretrained(tmp_path / "empty")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_not_a_predictor_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved ExpressionPredictor"):
        ExpressionPredictor.from_pretrained(tmp_path)
    (tmp_path / io.CONFIG_NAME).write_text("{not json")
    save_file({"w": torch.zeros(1)}, str(tmp_path / io.WEIGHTS_NAME))
    with pytest.raises(ValueError, match="not valid JSON"):
        ExpressionPredictor.from_pretrained(tmp_path)
    (tmp_path / io.CONFIG_NAME).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an ExpressionPredictor config"):
        ExpressionPredictor.from_pretrained(tmp_path)


def test_directories_of_the_old_save_load_unverified(fitted, tmp_path, caplog):
    model, x = fitted[1], fitted[2]
    path = model.save_pretrained(tmp_path / "old")
    cfg = json.loads((path / io.CONFIG_NAME).read_text())
    for key in ("sha256", "fingerprint"):
        del cfg[key]
    cfg["format_version"] = 1
    (path / io.CONFIG_NAME).write_text(json.dumps(cfg))
    with caplog.at_level("WARNING", logger="c2lst"):
        loaded = ExpressionPredictor.from_pretrained(path)
    assert "unverified" in caplog.text
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_save_and_load_are_deprecated_aliases(fitted, tmp_path):
    model, x = fitted[0], fitted[2]
    with pytest.warns(FutureWarning, match="save_pretrained"):
        path = model.save(tmp_path / "pred")
    with pytest.warns(FutureWarning, match="from_pretrained"):
        loaded = ExpressionPredictor.load(path)
    assert loaded.predict(x).tobytes() == model.predict(x).tobytes()
    with pytest.warns(FutureWarning), pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(path)
