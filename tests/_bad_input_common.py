"""Shared machinery of the bad-input matrix (``test_bad_input*.py``): a case registry, builders, fixtures, runner."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anndata as ad
import numpy as np
import pytest
import spatialdata
from _reliability_helpers import assert_same, listing, snapshot

import c2lst

Build = Callable[[SimpleNamespace], tuple[Callable[[], Any], list[Any]]]


class Cases(list):
    """A list of ``pytest.param(build, exc, match)``; call it as a decorator to register a builder.

    The decorated builder gets the ``env`` fixture and returns ``(call, objects that must stay unchanged)``.
    """

    def __call__(self, case_id: str, exc: type[BaseException], match: str, *, requires: str | None = None):
        def deco(build: Build) -> Build:
            marks = []
            if requires is not None and not hasattr(c2lst.tl, requires):
                marks.append(pytest.mark.skip(reason=f"c2lst.tl.{requires} does not exist yet"))
            self.append(pytest.param(build, exc, match, id=case_id, marks=marks))
            return build

        return deco


def patches(n=4, size=32, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


def table(env) -> ad.AnnData:
    return env.sdata.tables["table"]


def adapter(env) -> dict:
    return table(env).uns["c2lst"]["local"]["c2lst_local"]


def genes(env) -> list[str]:
    return [str(g) for g in adapter(env)["genes"]]


def model_copy(env, name: str) -> Path:
    dst = env.tmp / name
    shutil.copytree(env.central_dir, dst)
    return dst


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module", name="backed_store")
def backed_store_fixture(tmp_path_factory, adapted_base):
    """A small zarr store holding the adapted table (no image; the adapter is all synthesize needs)."""
    root = tmp_path_factory.mktemp("backed") / "base.zarr"
    spatialdata.SpatialData(tables={"table": adapted_base.copy()}).write(root)
    return root


@pytest.fixture(name="env")
def env_fixture(adapted_sdata, tiny_central, tmp_path, backed_store):
    """What a case builder may use: an adapted SpatialData, the central model directory, a tmp dir, a store."""
    store = tmp_path / "store.zarr"
    shutil.copytree(backed_store, store)
    return SimpleNamespace(sdata=adapted_sdata, central_dir=tiny_central[1], tmp=tmp_path, store=store)


def run_case(build: Build, exc: type[BaseException], match: str, env: SimpleNamespace) -> None:
    """Build a case, call it, and check exception, message, unchanged inputs and unchanged files."""
    call, objects = build(env)
    before = [snapshot(o) for o in objects]
    watched = (env.tmp, env.central_dir.parent)
    files = listing(*watched)
    with pytest.raises(exc, match=match):
        call()
    for b, o in zip(before, objects, strict=True):
        assert_same(b, snapshot(o))
    assert listing(*watched) == files, "a file was written or changed"
