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


def collect_patches(data: Any, patch_key: str) -> tuple[np.ndarray, list[AnnData], list[str]]:
    """Stack the patches of ``data`` (one object or a list) and return them with the source tables.

    Returns
    -------
    patches, tables (AnnData sources, for registration), source names.
    """
    items = list(data) if isinstance(data, Sequence) and not isinstance(data, str | np.ndarray) else [data]
    if not items:
        raise ValueError(
            "`data` is empty; pass patches, an AnnData/SpatialData with patches, or a list of them."
        )
    arrays, tables, names = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            arrays.append(check_patches(item, f"data[{i}]" if len(items) > 1 else "data"))
            names.append(f"array[{i}]")
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
            names.append(name)
    sizes = sorted({a.shape[1] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(
            f"`data` mixes patch sizes {sizes}; extract all slides with the same `size=` in `c2lst.pp.extract_patches`."
        )
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0], tables, names


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
