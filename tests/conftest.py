"""Shared fixtures: small simulated slides and tiny models (seconds to build, cached per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# the test helpers (_reliability_helpers, _eval_helpers, ...) are plain modules next to this file
sys.path.insert(0, str(Path(__file__).parent))

# pytest-xdist workers share the cores: each gets its share (at most 2 threads; the models are tiny)
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _workers)))


def shared_data_dir() -> Path | None:
    """Return ``../shared/data`` (or ``$C2LST_SHARED_DATA``) when present."""
    env = os.environ.get("C2LST_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def sim_sdata_base():
    """A 120-spot simulated slide with 32 px patches and prepared expression (do not mutate: copy it)."""
    import c2lst

    sdata = c2lst.datasets.simulated_visium(n_spots=120, seed=0)
    c2lst.pp.extract_patches(sdata, size=32, progress=False)
    c2lst.pp.prepare_expression(sdata.tables["table"], n_top_genes=20)
    return sdata


@pytest.fixture(scope="module")
def halves(sim_sdata_base):
    """(parents, reader): half the slide as the profiles / synthetic rows' parents, a ridge fitted on the other half.

    Module scope: a module that adapts on ``parents`` keeps that state to itself.
    """
    import c2lst

    table = sim_sdata_base.tables["table"]
    is_parent = np.arange(table.n_obs) % 2 == 0
    parents = table[is_parent].copy()
    reader = c2lst.tl.fit_predictor(table[~is_parent].copy(), mode="ridge", progress=False)
    return parents, reader


@pytest.fixture
def sim_sdata(sim_sdata_base):
    """A fresh in-memory copy of :func:`sim_sdata_base`."""
    from spatialdata import SpatialData

    return SpatialData(
        images=dict(sim_sdata_base.images),
        shapes={k: v.copy() for k, v in sim_sdata_base.shapes.items()},
        tables={k: v.copy() for k, v in sim_sdata_base.tables.items()},
    )


@pytest.fixture(scope="session")
def tiny_central(tmp_path_factory, sim_sdata_base):
    """A tiny central model pretrained for a few steps and saved; returns (model, directory)."""
    import c2lst

    out = tmp_path_factory.mktemp("central")
    patches = np.asarray(sim_sdata_base.tables["table"].obsm["c2lst_patch"])
    model = c2lst.tl.pretrain(patches, preset="tiny", n_steps=8, batch_size=8, output_dir=out, progress=False)
    return model, out / "model"


@pytest.fixture(scope="session")
def adapted_base(sim_sdata_base, tiny_central):
    """The simulated table adapted for a few steps (copy before mutating)."""
    import c2lst

    _, path = tiny_central
    table = sim_sdata_base.tables["table"].copy()
    c2lst.tl.adapt(table, central=str(path), n_steps=6, batch_size=8, progress=False)
    return table


@pytest.fixture
def adapted_sdata(sim_sdata, adapted_base):
    """A simulated SpatialData whose table holds an adapter."""
    sim_sdata.tables["table"] = adapted_base.copy()
    return sim_sdata
