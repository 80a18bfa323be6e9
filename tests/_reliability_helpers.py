"""Deep snapshots of AnnData / SpatialData objects and directory listings, to prove bad input changes nothing."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


def _copy_array(x: Any) -> Any:
    if x is None:
        return None
    if sparse.issparse(x):
        return x.copy()
    if isinstance(x, pd.DataFrame | pd.Series | pd.Index):
        return x.copy(deep=True)
    return np.array(x, copy=True)


def snapshot_adata(adata: AnnData) -> dict[str, Any]:
    """Return deep copies of everything an AnnData holds (X, layers, obs, var, obsm, varm, obsp, uns, names)."""
    return {
        "shape": adata.shape,
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
        "X": _copy_array(adata.X),
        "layers": {k: _copy_array(v) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obsm": {k: _copy_array(v) for k, v in adata.obsm.items()},
        "varm": {k: _copy_array(v) for k, v in adata.varm.items()},
        "obsp": {k: _copy_array(v) for k, v in adata.obsp.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def snapshot_sdata(sdata: Any) -> dict[str, Any]:
    """Return element names per kind, table snapshots, shapes copies, image pixels and transformations."""
    from spatialdata.transformations import get_transformation

    snap: dict[str, Any] = {
        kind: sorted(getattr(sdata, kind)) for kind in ("images", "labels", "points", "shapes", "tables")
    }
    snap["tables_content"] = {k: snapshot_adata(t) for k, t in sdata.tables.items()}
    snap["shapes_content"] = {k: s.copy(deep=True) for k, s in sdata.shapes.items()}
    snap["images_content"] = {k: _image_levels(img) for k, img in sdata.images.items()}
    snap["transformations"] = {
        name: {cs: repr(t) for cs, t in get_transformation(el, get_all=True).items()}
        for _, name, el in sdata.gen_spatial_elements()
    }
    return snap


def _image_levels(img: Any) -> list[np.ndarray]:
    if hasattr(img, "children") and len(img.children):
        return [
            np.asarray(next(iter(img[name].ds.data_vars.values())).values) for name in sorted(img.children)
        ]
    return [np.asarray(img.values)]


def snapshot(obj: Any) -> dict[str, Any]:
    """Snapshot an AnnData, a SpatialData, a numpy array, or anything ``copy.deepcopy`` handles."""
    if isinstance(obj, AnnData):
        return {"anndata": snapshot_adata(obj)}
    if hasattr(obj, "tables") and hasattr(obj, "images"):
        return {"spatialdata": snapshot_sdata(obj)}
    if isinstance(obj, np.ndarray):
        return {"array": obj.copy()}
    return {"object": copy.deepcopy(obj)}


class Snapshot:
    """A deep snapshot that compares with ``==`` (``assert state(x) == before``); its repr names the difference."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, obj: Any) -> None:
        self.data = snapshot(obj)
        self.diff = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        try:
            assert_same(self.data, other.data)
        except AssertionError as err:
            self.diff = other.diff = str(err) or "differs"
            return False
        return True

    def __repr__(self) -> str:
        return f"Snapshot({self.diff or 'equal'})"


def state(obj: Any) -> Snapshot:
    """Return a :class:`Snapshot` of ``obj`` (an AnnData, a SpatialData, an array or a plain object)."""
    return Snapshot(obj)


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Assert that two snapshots (nested dicts of arrays, frames, scalars) are equal, naming the first difference."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping), f"{path}: {type(b).__name__} instead of a mapping"
        assert sorted(map(str, a)) == sorted(map(str, b)), (
            f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        )
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif sparse.issparse(a) or sparse.issparse(b):
        assert sparse.issparse(a) and sparse.issparse(b), f"{path}: sparse vs dense"
        assert a.shape == b.shape and a.dtype == b.dtype, f"{path}: shape/dtype changed"
        assert (a != b).nnz == 0, f"{path}: values changed"
    elif isinstance(a, pd.DataFrame | pd.Series):
        pd.testing.assert_frame_equal(a, b) if isinstance(
            a, pd.DataFrame
        ) else pd.testing.assert_series_equal(a, b)
    elif isinstance(a, pd.Index):
        assert a.equals(b) and a.dtype == b.dtype, f"{path}: index changed"
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_, b_ = np.asarray(a), np.asarray(b)
        assert a_.shape == b_.shape and a_.dtype == b_.dtype, (
            f"{path}: {a_.shape}/{a_.dtype} != {b_.shape}/{b_.dtype}"
        )
        nan = a_.dtype.kind in "fc"
        assert np.array_equal(a_, b_, equal_nan=nan), f"{path}: values changed"
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif hasattr(a, "geometry") and hasattr(a, "equals"):
        assert a.equals(b), f"{path}: shapes changed"
    elif isinstance(a, float) and isinstance(b, float) and np.isnan(a):
        assert np.isnan(b), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def listing(*roots: str | Path) -> list[str]:
    """Return every file and folder under ``roots`` with its size (to prove that nothing was written)."""
    out = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            out.append(f"{root} (absent)")
            continue
        for p in sorted(root.rglob("*")):
            out.append(f"{p} {p.stat().st_size if p.is_file() else 'dir'}")
    return out
