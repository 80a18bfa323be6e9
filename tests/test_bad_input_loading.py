"""Bad-input matrix, part 2: model and adapter loading, predictor and fidelity (issue 6).

Corrupt, truncated, tampered or foreign weight files get a clear error naming the path; nothing is written and
the AnnData passed in stays unchanged. The runner and fixtures are shared with ``test_bad_input.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import c2lst
from c2lst.models import CentralModel

sys.path.insert(0, str(Path(__file__).parent))
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

CASES = Cases()


# ============================================================================ model loading
@CASES("load-truncated-unet-safetensors", ValueError, r"`path=.*sha256.*verify=False")
def _(env):
    d = model_copy(env, "truncated")
    truncate(d / "unet" / "diffusion_pytorch_model.safetensors")
    return lambda: CentralModel.from_pretrained(d), []


@CASES("load-truncated-unet-safetensors-unverified", ValueError, r"`path=.*could not load the weights")
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
    from safetensors import safe_open

    t = table(env)
    f = c2lst.tl.export_adapter(t, env.tmp / "a.safetensors")
    with safe_open(str(f), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
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


@CASES("export-adapter-unknown-key", KeyError, r"`key='nope'`")
def _(env):
    t = table(env)
    return lambda: c2lst.tl.export_adapter(t, env.tmp / "a.safetensors", key="nope"), [t]


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
