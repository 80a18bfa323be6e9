"""Build the synthetic image / circles / table elements and add them to a SpatialData without tearing it."""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from anndata import AnnData
from shapely.geometry import Point

from .._utils import quiet_io_warnings

_KIND = {"images": "images", "shapes": "shapes", "tables": "tables"}


def tile_patches(patches: np.ndarray, background: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Tile ``(n, S, S, 3)`` patches into one ``(3, Y, X)`` image; return it and the tile centres ``(n, 2)`` (x, y)."""
    n, s = patches.shape[0], patches.shape[1]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * s, cols * s, 3), background, dtype=np.uint8)
    r, c = np.divmod(np.arange(n), cols)
    view = canvas.reshape(rows, s, cols, s, 3).transpose(0, 2, 1, 3, 4)
    view[r, c] = patches
    centres = np.stack([c * s + s / 2.0, r * s + s / 2.0], axis=1).astype(np.float64)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), centres


def build_elements(
    patches: np.ndarray, table: AnnData, *, name: str, coordinate_system: str
) -> dict[str, tuple[str, Any]]:
    """Return ``{element_name: (kind, element)}`` for the tiled image, its circles and the annotating table."""
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    image_name, shapes_name = f"{name}_image", f"{name}_spots"
    canvas, centres = tile_patches(patches)
    tf = {coordinate_system: Identity()}
    chunk = min(1024, max(canvas.shape[1:]))
    image = Image2DModel.parse(canvas, dims=("c", "y", "x"), c_coords=["r", "g", "b"], transformations=tf,
                               chunks=(3, chunk, chunk))
    ids = np.arange(len(patches))
    gdf = gpd.GeoDataFrame(
        {"radius": np.full(len(patches), patches.shape[1] / 2.0)},
        geometry=[Point(x, y) for x, y in centres],
        index=ids,
    )
    shapes = ShapesModel.parse(gdf, transformations=tf)
    table.obs["region"] = shapes_name
    table.obs["region"] = table.obs["region"].astype("category")
    table.obs["spot_id"] = ids
    table.obsm["spatial"] = centres
    table = TableModel.parse(table, region=shapes_name, region_key="region", instance_key="spot_id")
    return {image_name: ("images", image), shapes_name: ("shapes", shapes), name: ("tables", table)}


def existing_names(sdata: Any) -> set[str]:
    """Return the names of all elements of ``sdata`` (any kind), in memory and, when backed, on disk."""
    names = set()
    for kind in ("images", "labels", "points", "shapes", "tables"):
        names.update(getattr(sdata, kind).keys())
    if sdata.is_backed() and sdata.path is not None and Path(sdata.path).exists():
        names |= _on_disk(sdata)
    return names


def existing_names_in_memory(sdata: Any) -> set[str]:
    """Return the names of the elements ``sdata`` holds in memory."""
    return {n for kind in ("images", "labels", "points", "shapes", "tables") for n in getattr(sdata, kind)}


def add_elements(sdata: Any, elements: dict[str, tuple[str, Any]], *, overwrite: bool) -> None:
    """Add ``elements`` to ``sdata``; when it is backed by zarr, write each element atomically.

    Each element is first written to a temporary store next to the target and then moved into place with one
    :func:`os.replace` per element, so an interruption leaves every element either complete or absent and the
    existing elements untouched. The table (which annotates the shapes) moves last. With ``overwrite``, the
    elements already on disk are deleted (table first) only once their replacements are completely written, so a
    table never annotates shapes of another run.
    """
    if overwrite:
        for element_name in elements:
            if element_name in existing_names_in_memory(sdata):
                del sdata[element_name]  # it may be lazily backed by the folder that is replaced below
    backed = sdata.is_backed() and sdata.path is not None and Path(sdata.path).exists()
    if backed:
        _write_atomic(sdata, elements, replace=overwrite)
    for element_name, (kind, element) in elements.items():
        getattr(sdata, _KIND[kind])[element_name] = element


def _on_disk(sdata: Any) -> set[str]:
    # A local store is listed from the file system, not from its (consolidated) zarr metadata: an element an
    # interrupted write moved into place before the metadata was refreshed is invisible to zarr, and must still
    # count as existing (it needs `overwrite=True`, and `os.replace` cannot move a folder onto it).
    root = Path(sdata.path) if sdata.path is not None else None
    if root is not None and root.is_dir():
        kinds = [root / kind for kind in ("images", "labels", "points", "shapes", "tables")]
        return {p.name for d in kinds if d.is_dir() for p in d.iterdir() if p.is_dir()}
    try:
        return {p.split("/")[-1] for p in sdata.elements_paths_on_disk()}
    except Exception:
        return set()


def _write_atomic(sdata: Any, elements: dict[str, tuple[str, Any]], *, replace: bool = False) -> None:
    from spatialdata import SpatialData

    target = Path(sdata.path)
    tmp = target.parent / f".{target.name}.c2lst-{uuid.uuid4().hex[:8]}.tmp.zarr"
    groups: dict[str, dict] = {"images": {}, "shapes": {}, "tables": {}}
    for element_name, (kind, element) in elements.items():
        groups[kind][element_name] = element
    try:
        with quiet_io_warnings():
            SpatialData(images=groups["images"], shapes=groups["shapes"], tables=groups["tables"]).write(tmp)
        order = [n for n, (k, _) in elements.items() if k != "tables"] + [
            n for n, (k, _) in elements.items() if k == "tables"
        ]
        old = [target / elements[n][0] / n for n in reversed(order)] if replace else []
        old = [path for path in old if path.exists()]
        # the new elements are complete in `tmp`: delete their predecessors, the annotating table first
        if old:
            _drop_consolidated_metadata(target)  # readers now list folders, not the old elements' metadata
            for path in old:
                shutil.rmtree(path)
        for element_name in order:
            kind = elements[element_name][0]
            src, dst_parent = tmp / kind, target / kind
            if not dst_parent.exists():
                dst_parent.mkdir()
                for meta in (".zgroup", ".zattrs", "zarr.json"):
                    if (src / meta).is_file():
                        shutil.copy2(src / meta, dst_parent / meta)
            os.replace(src / element_name, dst_parent / element_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet_io_warnings():
            sdata.write_consolidated_metadata()
    except Exception as err:
        from .._logging import logger

        logger.warning("could not refresh consolidated metadata of %s: %s", target, err)


def _drop_consolidated_metadata(root: Path) -> None:
    """Remove the consolidated metadata of the store ``root`` (atomically), so readers list its folders.

    Consolidated metadata that still described an element being replaced would make the store unreadable if
    the process died between deleting the old folder and moving the new one in; it is rewritten at the end.
    """
    meta = root / "zarr.json"
    if meta.is_file():
        doc = json.loads(meta.read_text())
        if doc.pop("consolidated_metadata", None) is not None:
            tmp = root / f".zarr.json.c2lst-{uuid.uuid4().hex[:8]}"
            tmp.write_text(json.dumps(doc, indent=2))
            os.replace(tmp, meta)
    (root / ".zmetadata").unlink(missing_ok=True)  # zarr v2 stores
