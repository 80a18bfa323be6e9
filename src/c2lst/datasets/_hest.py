"""``read_hest``: one HEST-1k sample (slide, spots, expression, optional patches) as a SpatialData."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
from spatialdata import SpatialData

from .._logging import logger
from .._records import record_lineage, record_scale, store
from .._records import root as uns_root
from .._spatial import annotate_table, spots_element
from .._utils import check_positive_float, check_positive_int
from ._io import read_spots_table
from ._patches import resize_patches
from ._wsi import open_wsi

#: HEST-1k metadata keys holding the slide's µm per pixel, in order of preference
PIXEL_SIZE_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
#: µm per pixel of the patches HEST-1k ships in ``patches/{id}.h5``
HEST_PATCH_UM_PER_PX = 0.5
_BLOCK = 512  # patches read (and resized) at a time from a HEST patches file
_METADATA_KEPT = (
    "dataset_title", "organ", "disease_state", "oncotree_code", "species", "patient", "st_technology",
    "preservation_method", "magnification", "inter_spot_dist", "tissue", "subseries",
)  # fmt: skip


def _sample_file(root: Path, folder: str, sample_id: str, suffix: str) -> Path:
    path = root / folder / f"{sample_id}{suffix}"
    if not path.is_file():
        raise FileNotFoundError(
            f"HEST sample {sample_id!r}: {str(path)!r} does not exist; `root` must be a HEST-1k folder with "
            f"`{folder}/{sample_id}{suffix}` (download it with `huggingface_hub.snapshot_download`, see docs/hest)."
        )
    return path


def _finite_positive(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _scales(meta: dict, meta_path: Path, pixel_size_um: float | None, spot_diameter_um: float | None):
    """Return (µm/px, its source, spot diameter µm, its source) from the overrides or the metadata JSON."""
    if pixel_size_um is not None:
        mpp, mpp_source = check_positive_float(pixel_size_um, "pixel_size_um"), "pixel_size_um argument"
    else:
        found = [(k, _finite_positive(meta.get(k))) for k in PIXEL_SIZE_KEYS]
        found = [(k, v) for k, v in found if v is not None]
        if not found:
            raise ValueError(
                f"{str(meta_path)!r} has no positive pixel size (keys {list(PIXEL_SIZE_KEYS)}); pass "
                "`pixel_size_um=` (µm per pixel of the slide's full resolution)."
            )
        key, mpp = found[0]
        mpp_source = f"{meta_path.name}['{key}']"
    if spot_diameter_um is not None:
        return (
            mpp,
            mpp_source,
            check_positive_float(spot_diameter_um, "spot_diameter_um"),
            "spot_diameter_um argument",
        )
    diameter = _finite_positive(meta.get("spot_diameter"))
    if diameter is None:
        raise ValueError(
            f"{str(meta_path)!r} records no positive `spot_diameter` (µm; HEST leaves it empty for Xenium and other "
            "pseudo-spot samples); pass `spot_diameter_um=`."
        )
    return mpp, mpp_source, diameter, f"{meta_path.name}['spot_diameter']"


def _read_metadata(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({err}); re-download the sample's metadata."
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{str(path)!r} holds a {type(meta).__name__}, not a JSON object of sample metadata."
        )
    return meta


def _patch_barcodes(path: Path) -> np.ndarray:
    """Return the barcodes of a HEST patches ``.h5`` after checking its ``img`` and ``barcode`` datasets."""
    import h5py

    with h5py.File(path, "r") as f:
        missing = [k for k in ("img", "barcode") if k not in f]
        if missing:
            raise KeyError(
                f"{str(path)!r} lacks the dataset(s) {missing} (has {sorted(f)}); a HEST patches file holds `img` "
                "(n, s, s, 3) uint8 and `barcode` (n, 1)."
            )
        img, raw = f["img"], np.asarray(f["barcode"][()]).reshape(-1)
        if img.ndim != 4 or img.shape[-1] != 3 or img.shape[1] != img.shape[2] or img.dtype != np.uint8:
            raise ValueError(
                f"`img` of {str(path)!r} has shape {img.shape} and dtype {img.dtype}; (n, s, s, 3) uint8 is required."
            )
        if len(raw) != img.shape[0]:
            raise ValueError(f"{str(path)!r} holds {img.shape[0]} patches but {len(raw)} barcodes; re-download it.")
    return np.array([b.decode() if isinstance(b, bytes) else str(b) for b in raw], dtype=object)


def _read_patches(path: Path, size: int | None) -> tuple[np.ndarray, int]:
    """Return the patches of a HEST patches ``.h5`` (resized to ``size``) and their native size.

    Patches are read block by block and resized as they come, so the native patches are never all in memory.
    """
    import h5py

    with h5py.File(path, "r") as f:
        img = f["img"]
        native = int(img.shape[1])
        blocks = [img[i : i + _BLOCK] for i in range(0, img.shape[0], _BLOCK)]
        if size is not None:
            blocks = [resize_patches(blk, size) for blk in blocks]
    out = np.concatenate(blocks) if blocks else np.zeros((0, size or native, size or native, 3), np.uint8)
    return out, native


def _match_patches(adata: ad.AnnData, barcodes: np.ndarray, h5_path: Path, h5ad_path: Path) -> np.ndarray:
    """Return, for each kept table row, the row of its patch; raise when any patch barcode is not a spot."""
    if len(set(barcodes)) != len(barcodes):
        raise ValueError(f"{str(h5_path)!r} repeats barcodes; each patch must belong to one spot.")
    known = adata.obs_names.get_indexer(barcodes)
    if (known < 0).any():
        bad = barcodes[known < 0]
        raise ValueError(
            f"{len(bad)} of {len(barcodes)} patch barcodes of {str(h5_path)!r} are not spots of {str(h5ad_path)!r} "
            f"(e.g. {list(bad[:3])}); the two files belong to different samples or versions, re-download both."
        )
    return known


def read_hest(
    root: str | os.PathLike,
    sample_id: str,
    *,
    patches: bool = False,
    size: int | None = None,
    patch_key: str = "c2lst_patch",
    pixel_size_um: float | None = None,
    spot_diameter_um: float | None = None,
) -> SpatialData:
    """Read one HEST-1k sample as a SpatialData: the lazy slide, the spots and the expression table.

    The layout matches :func:`~c2lst.datasets.from_visium_crop`: ``images["he"]`` (the TIFF's own pyramid,
    opened lazily through ``tifffile`` + dask, never the whole slide in memory), circles ``shapes["spots"]``
    at ``obsm["spatial"]`` with the recorded spot diameter, and ``tables["table"]`` annotating them, all with an
    identity to the ``"global"`` coordinate system (full-resolution pixels).

    The physical scale is written as ``uns["c2lst"]["scale"] = {"um_per_unit", "source"}`` (µm per pixel, from
    the metadata), so :func:`c2lst.pp.extract_patches` with ``patch_um=`` cuts the right extent.

    Parameters
    ----------
    root
        A HEST-1k folder with ``wsis/{id}.tif``, ``st/{id}.h5ad``, ``metadata/{id}.json`` and, for
        ``patches=True``, ``patches/{id}.h5``.
    sample_id
        The sample's id (e.g. ``"TENX95"``, ``"MEND139"``).
    patches
        Also read HEST's own spot patches (``patches/{id}.h5``: ``img``, ``barcode``) into ``obsm[patch_key]``,
        matched to spots by barcode; spots without a patch are dropped (HEST keeps only patches on tissue). A
        patch barcode that is not a spot is an error.
    size
        With ``patches=True``, resize the patches to ``size`` px (default: HEST's size, 224 px at 0.5 µm/px).
    patch_key
        ``obsm`` key of the patches (with ``patches=True``).
    pixel_size_um
        µm per full-resolution pixel. Default: the metadata's ``pixel_size_um_estimated`` (else
        ``pixel_size_um_embedded``).
    spot_diameter_um
        Spot diameter in µm. Default: the metadata's ``spot_diameter`` (55 µm for Visium).

    Returns
    -------
    SpatialData with ``images["he"]``, ``shapes["spots"]`` and ``tables["table"]`` (the sample's counts in
    ``X``, spot barcodes as ``obs_names``, ``obs["sample_id"]``). ``table.uns["c2lst"]`` holds ``"scale"``,
    ``"source"`` (files, µm/px, spot diameter and their sources, level shapes, selected metadata) and, with
    ``patches=True``, ``"patches"[patch_key]`` plus a lineage record.

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.read_hest("hest_data", "TENX95")  # doctest: +SKIP
    >>> c2lst.pp.extract_patches(sdata, patch_um=112.0, size=64)  # doctest: +SKIP
    >>> fast = c2lst.datasets.read_hest("hest_data", "TENX95", patches=True, size=64)  # doctest: +SKIP
    """
    if not isinstance(root, str | os.PathLike):
        raise TypeError(f"`root` must be a path (str or Path), got {type(root).__name__}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root={str(root)!r}` is not a directory; pass a HEST-1k download folder.")
    if not isinstance(sample_id, str) or not sample_id or os.sep in sample_id or "/" in sample_id:
        raise TypeError(f"`sample_id` must be a sample id string such as 'TENX95', got {sample_id!r}.")
    if not isinstance(patches, bool):
        raise TypeError(f"`patches` must be True or False, got {patches!r}.")
    if size is not None:
        size = check_positive_int(size, "size")
    if not isinstance(patch_key, str) or not patch_key:
        raise TypeError(f"`patch_key` must be a non-empty string, got {patch_key!r}.")
    wsi_path = _sample_file(root, "wsis", sample_id, ".tif")
    h5ad_path = _sample_file(root, "st", sample_id, ".h5ad")
    meta_path = _sample_file(root, "metadata", sample_id, ".json")
    h5_path = _sample_file(root, "patches", sample_id, ".h5") if patches else None

    meta = _read_metadata(meta_path)
    mpp, mpp_source, diameter_um, diameter_source = _scales(meta, meta_path, pixel_size_um, spot_diameter_um)
    image, wsi_info = open_wsi(wsi_path)
    adata, xy = read_spots_table(h5ad_path, "full-resolution pixels (as HEST stores them)")
    if not adata.obs_names.is_unique:
        raise ValueError(f"{str(h5ad_path)!r} repeats spot barcodes; barcodes must identify spots.")
    height, width = wsi_info["level_shapes"][0]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    if not inside.any():
        raise ValueError(
            f"No spot of {str(h5ad_path)!r} lies inside the {width}x{height} slide {str(wsi_path)!r}; the files "
            "belong to different samples."
        )
    img = None
    if h5_path is not None:
        rows = _match_patches(adata, _patch_barcodes(h5_path), h5_path, h5ad_path)
        order = np.argsort(rows)
        keep = rows[order]
        if len(keep) < adata.n_obs:
            logger.info(
                f"read_hest: {adata.n_obs - len(keep)} spots of {sample_id} have no HEST patch; dropped."
            )
        adata = adata[keep].copy()
        img, native = _read_patches(h5_path, size)
        img = img[order]
        xy, inside = xy[keep], inside[keep]
    if not inside.all():
        logger.warning(f"{int((~inside).sum())} spots of {sample_id} lie outside the slide.")

    # ---- everything read and checked: build
    adata.obsm["spatial"] = xy
    adata.obs["sample_id"] = sample_id
    diameter_px = diameter_um / mpp
    record_scale(adata, mpp, mpp_source)
    source = {
        "reader": "read_hest",
        "sample_id": sample_id,
        "wsi_path": str(wsi_path),
        "h5ad_path": str(h5ad_path),
        "metadata_path": str(meta_path),
        "mpp": mpp,
        "mpp_source": mpp_source,
        "spot_diameter_um": diameter_um,
        "spot_diameter_um_source": diameter_source,
        "spot_diameter_px": diameter_px,
        "level_shapes": json.dumps(wsi_info["level_shapes"]),
        "pyramidal": bool(wsi_info["pyramidal"]),
        "metadata": json.dumps({k: meta[k] for k in _METADATA_KEPT if k in meta}, default=str),
    }
    uns_root(adata)["source"] = source
    if img is not None:
        _store_patches(adata, img, native, patch_key, h5_path, sample_id)
    table = annotate_table(adata, "spots")
    return SpatialData(
        images={"he": image},
        shapes={"spots": spots_element(xy, diameter_px / 2)},
        tables={"table": table},
    )


def _store_patches(
    adata: ad.AnnData, out: np.ndarray, native: int, key: str, path: Path, sample_id: str
):
    adata.obsm[key] = out
    params = {
        "source": "HEST patches file",
        "path": str(path),
        "size": int(out.shape[1]),
        "extent_rule": "patch_um",
        "patch_um": native * HEST_PATCH_UM_PER_PX,
        "native_size": native,
        "native_um_per_px": HEST_PATCH_UM_PER_PX,
        "sample_id": sample_id,
    }
    store(adata, "patches", key, params)
    record_lineage(adata, function="c2lst.datasets.read_hest", parameters=params, seed=None, input_table=None)
