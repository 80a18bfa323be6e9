"""Collect and validate what users pass to ``tl`` training functions: patch arrays and output directories."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .._utils import check_patches


def _tables_of(obj: Any, patch_key: str) -> list[tuple[str, AnnData]]:
    """Return ``(name, table)`` pairs of an AnnData or the tables of a SpatialData that hold ``patch_key``."""
    if isinstance(obj, AnnData):
        return [("adata", obj)]
    tables = getattr(obj, "tables", None)
    if tables is not None:
        found = [(k, t) for k, t in tables.items() if patch_key in t.obsm]
        if not found:
            raise KeyError(
                f"no table of this SpatialData has `obsm[{patch_key!r}]` (`patch_key`); run "
                "`c2lst.pp.extract_patches(sdata)` first."
            )
        return found
    raise TypeError(
        f"`data` items must be SpatialData, AnnData or uint8 arrays (N, H, W, 3), got {type(obj).__name__}."
    )


def _sample_id(table: AnnData) -> str:
    """Return the sample id a reader recorded in ``uns["c2lst"]["source"]``, else ``""``."""
    source = table.uns.get("c2lst", {}).get("source", {})
    sample = source.get("sample_id") if hasattr(source, "get") else None
    return str(sample) if isinstance(sample, str) else ""


def collect_patches(data: Any, patch_key: str, *, per_source: bool = False) -> tuple:
    """Stack the patches of ``data`` (one object or a list) and return them with the source tables.

    Returns
    -------
    patches, tables (AnnData sources, for registration), source names and, with ``per_source``, one dict per
    source in order: ``{"name", "sample_id", "n_patches"}`` (``name`` is the sample id a reader recorded, else
    the position and table key; ``sample_id`` is ``""`` when none was recorded).
    """
    items = list(data) if isinstance(data, Sequence) and not isinstance(data, str | np.ndarray) else [data]
    if not items:
        raise ValueError(
            "`data` is empty; pass patches, an AnnData/SpatialData with patches, or a list of them."
        )
    arrays, tables, names, ids = [], [], [], []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            arrays.append(check_patches(item, f"data[{i}]" if len(items) > 1 else "data"))
            names.append(f"array[{i}]")
            ids.append("")
            continue
        for name, table in _tables_of(item, patch_key):
            if patch_key not in table.obsm:
                raise KeyError(
                    f"`patch_key={patch_key!r}` is not in `obsm` of table {name!r} (keys: {sorted(table.obsm)}); "
                    "run `c2lst.pp.extract_patches` first."
                )
            arrays.append(
                check_patches(np.asarray(table.obsm[patch_key]), f"obsm[{patch_key!r}] of {name!r}")
            )
            tables.append(table)
            ids.append(_sample_id(table))
            names.append(ids[-1] or (name if len(items) == 1 else f"data[{i}]:{name}"))
    sizes = sorted({a.shape[1] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(
            f"`data` mixes patch sizes {sizes}; extract all slides with the same `size=` in `c2lst.pp.extract_patches`."
        )
    stacked = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    if per_source:
        info = [
            {"name": n, "sample_id": sid, "n_patches": len(a)}
            for n, sid, a in zip(names, ids, arrays, strict=True)
        ]
        return stacked, tables, names, info
    return stacked, tables, names


def check_output_dir(output_dir: str | os.PathLike | None) -> Path | None:
    """Create ``output_dir`` if needed and check that it is writable."""
    if output_dir is None:
        return None
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".c2lst_write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"`output_dir={str(output_dir)!r}` is not writable ({err.strerror}); pass a directory you can write to."
        ) from None
    return path
