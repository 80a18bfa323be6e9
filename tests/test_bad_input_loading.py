"""Bad-input matrix, part 2: model and adapter loading, predictor and fidelity (issue 6).

Corrupt, truncated, tampered or foreign weight files get a clear error naming the path; nothing is written and
the AnnData passed in stays unchanged. The runner and fixtures are shared with ``test_bad_input.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _bad_input_common import (  # noqa: F401 - the *_fixture names are fixtures
    Cases,
    backed_store_fixture,
    env_fixture,
    model_copy,
    patches,
    run_case,
    table,
    truncate,
)
from safetensors.torch import load_file, save_file

import c2lst
from c2lst.models import CentralModel

CASES = Cases()


# ============================================================================ model loading

def _exported_adapter(env):
    """Export the fixture's adapter and return ``(table, file, metadata, tensors)`` to tamper with."""
    from safetensors import safe_open

    t = table(env)
    f = c2lst.tl.export_adapter(t, env.tmp / "a.safetensors")
    with safe_open(str(f), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    return t, f, meta, tensors

@CASES("load-truncated-unet-safetensors", ValueError, r"`path=.*sha256.*verify=False")
def _(env):
    d = model_copy(env, "truncated")
    truncate(d / "unet" / "diffusion_pytorch_model.safetensors")
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-truncated-unet-safetensors-unverified", ValueError, r"`path=.*could not load a UNet2DModel")
def _(env):
    d = model_copy(env, "truncated")
    truncate(d / "unet" / "diffusion_pytorch_model.safetensors")
    return lambda: CentralModel.from_pretrained(d, verify=False), []


@CASES(
    "load-garbage-condition-file-unverified",
    ValueError,
    r"c2lst_condition\.safetensors.*not a valid safetensors",
)
def _(env):
    d = model_copy(env, "garbage")
    (d / "c2lst_condition.safetensors").write_bytes(b"\x00" * 64)
    return lambda: CentralModel.from_pretrained(d, verify=False), []


@CASES("load-wrong-format-in-c2lst-json", ValueError, r"`path=.*format 'other'")
def _(env):
    d = model_copy(env, "format")
    (d / "c2lst.json").write_text('{"format": "other"}')
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-missing-weight-file", ValueError, r"`path=.*missing weight files")
def _(env):
    d = model_copy(env, "missing")
    (d / "c2lst_condition.safetensors").unlink()
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-plain-unet-dir-truncated", ValueError, r"`path=.*could not load a UNet2DModel")
def _(env):
    d = env.tmp / "plain"
    shutil.copytree(env.central_dir / "unet", d)
    truncate(d / "diffusion_pytorch_model.safetensors")
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-adapter-truncated", ValueError, r"not a valid safetensors file")
def _(env):
    t = table(env)
    f = c2lst.tl.export_adapter(t, env.tmp / "a.safetensors")
    truncate(f)
    return lambda: c2lst.tl.load_adapter(t, f, key_added="other"), [t]


@CASES("load-adapter-without-c2lst-metadata", ValueError, r"`path=.*not a c2lst adapter")
def _(env):
    t = table(env)
    f = env.tmp / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(f))
    return lambda: c2lst.tl.load_adapter(t, f, key_added="other"), [t]


@CASES("load-adapter-tampered-weights", ValueError, r"`path=.*recorded sha256")
def _(env):
    t, f, meta, tensors = _exported_adapter(env)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(f), metadata=meta)
    return lambda: c2lst.tl.load_adapter(t, f, key_added="other"), [t]


@CASES("load-adapter-missing-file", FileNotFoundError, r"does not exist")
def _(env):
    t = table(env)
    return lambda: c2lst.tl.load_adapter(t, env.tmp / "none.safetensors", key_added="other"), [t]


@CASES("export-adapter-not-safetensors-suffix", ValueError, r"`path=.*must end in '\.safetensors'")
def _(env):
    t = table(env)
    return lambda: c2lst.tl.export_adapter(t, env.tmp / "adapter.pt"), [t]


@CASES("export-adapter-unknown-key", KeyError, r"`adapter_key='nope'`")
def _(env):
    t = table(env)
    return lambda: c2lst.tl.export_adapter(t, env.tmp / "a.safetensors", adapter_key="nope"), [t]


# ============================================================================ integrity covers configuration (issue 13)
def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _record(env) -> dict:
    return table(env).uns["c2lst"]["local"]["c2lst_local"]


def _rehash(rec: dict) -> None:
    """Recompute the record's fingerprint, as someone editing it on purpose would."""
    from c2lst.models.store import fingerprint

    genes = [str(g) for g in np.asarray(rec["genes"]).tolist()]
    rec["sha256"] = fingerprint(dict(rec["weights"]), {"config": json.loads(rec["config"])}, genes)


def _synth(env, **kw):
    return lambda: c2lst.tl.synthesize(
        env.sdata, n_steps=1, progress=False, conditions=np.zeros((1, len(_record(env)["genes"])), np.float32), **kw
    )


@CASES("load-central-scheduler-prediction-type-edited", ValueError, r"`path=.*sha256 of the weights and config")
def _(env):
    d = model_copy(env, "sched")
    _edit_json(d / "c2lst.json", lambda m: m["config"]["scheduler"].update(prediction_type="epsilon"))
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-central-unet-config-act-fn-edited", ValueError, r"`path=.*unet/config\.json.*verify=False")
def _(env):
    d = model_copy(env, "act")
    _edit_json(d / "unet" / "config.json", lambda c: c.update(act_fn="relu"))
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-central-nan-weights-unverified", ValueError, r"`path=.*null_embedding.*NaN or Inf")
def _(env):
    d = model_copy(env, "nan")
    f = d / "c2lst_condition.safetensors"
    save_file({"null_embedding": torch.full_like(load_file(str(f))["null_embedding"], float("nan"))}, str(f))
    return lambda: CentralModel.from_pretrained(d, verify=False), []


@CASES("synth-uns-adapter-weight-changed", ValueError, r"adapter's weights, configuration.*recorded sha256")
def _(env):
    rec = _record(env)
    first = sorted(rec["weights"])[0]
    rec["weights"][first] = np.asarray(rec["weights"][first]) + 1
    return _synth(env), [env.sdata]


@CASES("synth-uns-adapter-config-alpha-changed", ValueError, r"recorded sha256.*changed or corrupted")
def _(env):
    rec = _record(env)
    cfg = json.loads(rec["config"])
    cfg["alpha"] = 10 * cfg["alpha"]
    rec["config"] = json.dumps(cfg)
    return _synth(env), [env.sdata]


@CASES("synth-uns-adapter-nan-weight-rehashed", ValueError, r"weights \[.*\] contain NaN or Inf")
def _(env):
    rec = _record(env)
    last = "encoder.net.3.weight"
    rec["weights"][last] = np.full_like(np.asarray(rec["weights"][last]), np.nan)
    _rehash(rec)
    return _synth(env), [env.sdata]


@CASES("synth-uns-target-modules-regex-rehashed", ValueError, r"`target_modules=.*is a pattern, not a list of module")
def _(env):
    return _synth_with_config(env, target_modules="([a-z_.0-9]+)+X")  # catastrophic backtracking if matched


@CASES("synth-uns-target-modules-unknown-module", ValueError, r"`target_modules` names modules the central UNet")
def _(env):
    return _synth_with_config(env, target_modules=["down_blocks.0.nope"])


def _synth_with_config(env, **changes):
    """Edit the stored adapter config, re-hash the record (a consistent forgery) and synthesize from it."""
    rec = _record(env)
    rec["config"] = json.dumps({**json.loads(rec["config"]), **changes})
    _rehash(rec)
    return _synth(env), [env.sdata]


@CASES("load-adapter-file-config-edited", ValueError, r"`path=.*configuration and gene list do not match")
def _(env):
    t, f, meta, tensors = _exported_adapter(env)
    cfg = json.loads(meta["config"])
    cfg["alpha"] = 2 * cfg["alpha"]
    meta["config"] = json.dumps(cfg)
    save_file(tensors, str(f), metadata=meta)
    return lambda: c2lst.tl.load_adapter(t, f, key_added="other"), [t]


@CASES("load-adapter-file-genes-edited", ValueError, r"`path=.*do not match their recorded sha256")
def _(env):
    t, f, meta, tensors = _exported_adapter(env)
    meta["genes"] = json.dumps(list(reversed(json.loads(meta["genes"]))))
    save_file(tensors, str(f), metadata=meta)
    return lambda: c2lst.tl.load_adapter(t, f, key_added="other"), [t]


# ============================================================================ predictor / fidelity (issue 5)
@CASES("predictor-float-patches", ValueError, r"obsm\['c2lst_patch'\].*uint8", requires="fit_predictor")
def _(env):
    t = table(env).copy()
    t.obsm["c2lst_patch"] = np.asarray(t.obsm["c2lst_patch"], dtype=np.float32)
    return lambda: c2lst.tl.fit_predictor(t, mode="ridge", progress=False), [t]


@CASES("fidelity-spatialdata-instead-of-table", TypeError, r"`real`", requires="evaluate_fidelity")
def _(env):
    return lambda: c2lst.tl.evaluate_fidelity(env.sdata, patches()), [env.sdata]


@pytest.mark.parametrize(("build", "exc", "match"), CASES)
def test_bad_input_loading(build, exc, match, env):
    run_case(build, exc, match, env)
