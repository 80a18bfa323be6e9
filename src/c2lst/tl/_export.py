"""``tl.export_hest``: real and synthetic spots in HEST-1k's on-disk layout, for predictors trained elsewhere.

HEST-1k stores one sample as ``patches/{id}.h5`` (datasets ``img`` ``(N, S, S, 3)`` uint8, ``coords`` ``(N, 2)``
integer top-left corners in full-resolution pixels, ``barcode`` ``(N, 1)`` UTF-8 strings), ``st/{id}.h5ad`` (the
expression, one row per barcode) and ``metadata/{id}.json``. The files are written into a hidden folder under
``root`` first and renamed into place only when all three are complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .. import _records as records
from .._utils import check_patches
from ._augment import concat_augmented

__all__ = ["export_hest"]

_SAMPLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _rows(data: Any, table_keys: str | Sequence[str] | None) -> tuple[AnnData, AnnData]:
    """Return the table to export (an AnnData, or the SpatialData's real then synthetic tables) and the real one.

    The real table holds the patch record (extent, pixel size) that the metadata and ``coords`` are read from.
    """
    if isinstance(data, AnnData):
        return data, data
    if getattr(data, "tables", None) is None:
        raise TypeError(f"`sdata` must be a SpatialData or an AnnData, got {type(data).__name__}.")
    if table_keys is None:  # the real table, and the synthetic one when there is one
        keys = ["table", *(["c2lst_synthetic"] if "c2lst_synthetic" in data.tables else [])]
    else:
        keys = [table_keys] if isinstance(table_keys, str) else list(table_keys)
    if not 1 <= len(keys) <= 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f"`table_keys={table_keys!r}` must name the real table and, optionally, a synthetic table written by "
            "`c2lst.tl.synthesize`, e.g. ('table', 'c2lst_synthetic')."
        )
    missing = [k for k in keys if k not in data.tables]
    if missing:
        raise KeyError(f"`table_keys` names {missing}, not tables of this SpatialData (tables: {sorted(data.tables)}).")
    if len(keys) == 1:
        return data.tables[keys[0]], data.tables[keys[0]]
    return concat_augmented(data, real_key=keys[0], synthetic_key=keys[1]), data.tables[keys[0]]


def _coords(table: AnnData, extent_px: float | None) -> np.ndarray:
    """Top-left patch corners ``(x, y)`` in full-resolution pixels (``-1`` where the position is unknown)."""
    out = np.full((table.n_obs, 2), -1, dtype=np.int64)
    if "spatial" not in table.obsm or extent_px is None:
        return out
    xy = np.asarray(table.obsm["spatial"], dtype=float)[:, :2] - float(extent_px) / 2
    ok = np.isfinite(xy).all(axis=1)
    out[ok] = np.round(xy[ok]).astype(np.int64)
    return out


def _metadata(
    table: AnnData, real: AnnData, patch_key: str, sample_id: str, n_synthetic: int, size: int
) -> dict[str, Any]:
    from .._version import __version__

    rec = records.section(real, "patches").get(patch_key, {})
    meta: dict[str, Any] = {
        "sample_id": sample_id,
        "c2lst_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_spots": int(table.n_obs),
        "n_real": int(table.n_obs - n_synthetic),
        "n_synthetic": int(n_synthetic),
        "patch_size": int(size),
        "patch_key": patch_key,
    }
    extent, extent_px = rec.get("extent"), rec.get("extent_px")
    if extent_px:
        meta["patch_size_src"] = float(extent_px)  # patch side in full-resolution pixels
    um_per_unit = rec.get("um_per_unit")  # the scale extraction used, else the table's recorded scale
    try:
        um_per_unit = float(np.asarray(um_per_unit)) if um_per_unit is not None else None
    except (TypeError, ValueError):
        um_per_unit = None
    if um_per_unit is None and (scale := records.physical_scale(real)) is not None:
        um_per_unit = scale[0]
    if um_per_unit and np.isfinite(um_per_unit) and extent and extent_px:
        # as in HEST: the slide's µm per full-resolution pixel (the unit of `coords`); the patches' own pixel
        # size goes to `patch_pixel_size_um` and the h5 `img` attribute `pixel_size`
        meta["pixel_size_um_estimated"] = float(um_per_unit) * float(extent) / float(extent_px)
        meta["patch_pixel_size_um"] = float(um_per_unit) * float(extent) / float(size)
        if rec.get("extent_rule") == "spot_diameter":
            meta["spot_diameter"] = float(um_per_unit) * float(extent)  # um, as HEST records it
    return meta


def _st_table(table: AnnData, patch_key: str, synthetic: np.ndarray) -> AnnData:
    """The expression table of the export: X, var, obs with lineage columns, obsm without the patches."""
    obs = table.obs.copy()
    obs["c2lst_synthetic"] = synthetic
    parent = obs["c2lst_parent"].astype(str).to_numpy() if "c2lst_parent" in obs else np.asarray(table.obs_names)
    obs["c2lst_parent"] = np.where(synthetic, parent, np.asarray(table.obs_names, dtype=str))
    obsm = {k: np.asarray(v) for k, v in table.obsm.items() if k != patch_key}
    return AnnData(X=table.X.copy(), obs=obs, var=table.var.copy(), obsm=obsm, layers=dict(table.layers))


def export_hest(
    sdata: Any,
    root: str | os.PathLike,
    *,
    sample_id: str,
    table_keys: str | Sequence[str] | None = None,
    patch_key: str = "c2lst_patch",
    overwrite: bool = False,
) -> Path:
    """Write real and synthetic spots (patches + expression) in HEST-1k's layout, for other predictors.

    Parameters
    ----------
    sdata
        A SpatialData holding the tables ``table_keys``, or one AnnData (e.g. from :func:`c2lst.tl.concat_augmented`,
        or a plain real table).
    root
        The dataset folder; the sample adds ``patches/{sample_id}.h5``, ``st/{sample_id}.h5ad`` and
        ``metadata/{sample_id}.json`` beside other samples.
    sample_id
        File stem of the sample: letters, digits, ``_``, ``-`` and ``.``.
    table_keys
        With a SpatialData: the real table, then (optionally) a synthetic table written by :func:`c2lst.tl.synthesize`;
        both are joined by :func:`c2lst.tl.concat_augmented`. ``None``: ``"table"``, plus ``"c2lst_synthetic"`` when
        that table exists. Ignored for an AnnData.
    patch_key
        ``obsm`` key of the uint8 RGB patches ``(N, S, S, 3)`` (every row needs one).
    overwrite
        Replace the sample's files if they exist (other samples are never touched).

    Returns
    -------
    ``root``. ``patches/{id}.h5``: ``img`` ``(N, S, S, 3)`` uint8 (attributes ``patch_size``, ``factor`` and, when
    known, ``pixel_size`` in µm/px), ``coords`` ``(N, 2)`` int64 top-left corners ``(x, y)`` in full-resolution
    pixels from ``obsm["spatial"]`` (spot centres in full-resolution pixels, as in Space Ranger and HEST tables) and
    the patch extent (a synthetic row sits at its parent spot; ``-1`` where unknown), ``barcode``
    ``(N, 1)`` UTF-8 = ``obs_names``. ``st/{id}.h5ad``: ``X``, ``var``, ``layers``, ``obsm`` (without the patches)
    and ``obs`` with ``c2lst_synthetic`` and ``c2lst_parent`` (a real row is its own parent). ``metadata/{id}.json``:
    c2lst version, row counts, patch size and, when recorded, ``pixel_size_um_estimated`` (µm per
    full-resolution pixel, the unit of ``coords``, as in HEST), ``patch_pixel_size_um`` and ``spot_diameter``.

    Examples
    --------
    >>> c2lst.tl.synthesize(sdata, n_per_condition=2)
    >>> c2lst.tl.export_hest(sdata, "hest_export", sample_id="slide1")
    >>> import h5py; h5py.File("hest_export/patches/slide1.h5")["img"].shape
    """
    import h5py

    if not isinstance(sample_id, str) or not _SAMPLE_ID.fullmatch(sample_id):
        raise ValueError(
            f"`sample_id={sample_id!r}` must be a file stem of letters, digits, '_', '-' and '.' (not starting with "
            "'.' and at most 128 characters), e.g. 'slide1'."
        )
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be True or False, got {overwrite!r}.")
    if not isinstance(root, str | os.PathLike):
        raise TypeError(f"`root` must be a folder path, got {type(root).__name__}.")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"`root={str(root)!r}` is a file; pass a folder (new or holding other HEST samples).")
    targets = {
        "patches": root / "patches" / f"{sample_id}.h5",
        "st": root / "st" / f"{sample_id}.h5ad",
        "metadata": root / "metadata" / f"{sample_id}.json",
    }
    present = [str(p) for p in targets.values() if p.exists()]
    if present and not overwrite:
        raise FileExistsError(f"`sample_id={sample_id!r}` is already exported ({present}); pass `overwrite=True`.")
    table, real = _rows(sdata, table_keys)
    if patch_key not in table.obsm:
        raise KeyError(f"`patch_key={patch_key!r}` is not in `obsm` (keys: {sorted(table.obsm)}); {records.PATCH_HINT}")
    patches = check_patches(np.asarray(table.obsm[patch_key]), f"obsm[{patch_key!r}]")
    if not table.obs_names.is_unique:
        dup = table.obs_names[table.obs_names.duplicated()].unique().tolist()[:5]
        raise ValueError(f"the rows' names (barcodes) must be unique, got duplicates {dup}; call `obs_names_make_unique`.")
    synthetic = records.synthetic_mask(table)
    size = int(patches.shape[1])
    meta = _metadata(table, real, patch_key, sample_id, int(synthetic.sum()), size)
    coords = _coords(table, meta.get("patch_size_src"))
    st = _st_table(table, patch_key, synthetic)

    # ---- everything validated: write into a hidden folder, then rename the three files into place
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".c2lst-hest-{sample_id}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        with h5py.File(tmp / "patches.h5", "w") as fh:
            img = fh.create_dataset("img", data=patches, chunks=(1, *patches.shape[1:]), maxshape=(None, *patches.shape[1:]))
            img.attrs["patch_size"] = size
            if "patch_size_src" in meta:
                img.attrs["factor"] = meta["patch_size_src"] / size
            if "patch_pixel_size_um" in meta:
                img.attrs["pixel_size"] = meta["patch_pixel_size_um"]
            fh.create_dataset("coords", data=coords, chunks=(1, 2), maxshape=(None, 2))
            barcodes = np.asarray(table.obs_names, dtype=object).reshape(-1, 1)
            fh.create_dataset("barcode", data=barcodes, dtype=h5py.string_dtype("utf-8"), chunks=(1, 1), maxshape=(None, 1))
        st.write_h5ad(tmp / "st.h5ad")
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        _move_into_place(tmp, targets)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, targets: dict[str, Path]) -> None:
    """Rename the written files to their targets; on failure, restore what was there before."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            backup = None
            if target.exists():
                backup = tmp / f"{name}.old"
                os.replace(target, backup)
            done.append((target, backup))
            os.replace(tmp / {"patches": "patches.h5", "st": "st.h5ad", "metadata": "metadata.json"}[name], target)
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None and backup.exists():
                os.replace(backup, target)
            elif backup is None and target.exists():
                target.unlink()
        raise
