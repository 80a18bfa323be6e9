"""Build the synthetic image / circles / table elements and add them to a SpatialData without tearing it."""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .._spatial import annotate_table, image_element, spots_element
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
    image_name, shapes_name = f"{name}_image", f"{name}_spots"
    canvas, centres = tile_patches(patches)
    image = image_element(canvas, coordinate_system=coordinate_system, pyramid=False)
    shapes = spots_element(centres, patches.shape[1] / 2.0, coordinate_system=coordinate_system)
    table.obsm["spatial"] = centres
    table = annotate_table(table, shapes_name)
    return {image_name: ("images", image), shapes_name: ("shapes", shapes), name: ("tables", table)}


def existing_names(sdata: Any) -> set[str]:
    """Return the names of all elements of ``sdata`` (any kind), in memory and, when backed, on disk."""
    names = set()
    for kind in ("images", "labels", "points", "shapes", "tables"):
        names.update(getattr(sdata, kind).keys())
    if sdata.is_backed() and sdata.path is not None and Path(sdata.path).exists():
        names |= _on_disk(sdata)
    return names


def foreign_elements(sdata: Any, name: str) -> list[str]:
    """Return the elements ``synthesize(key_added=name)`` would replace that c2lst did not write.

    c2lst writes a table ``name`` (every row marked ``obs["c2lst_synthetic"]``, with ``obs["c2lst_run_id"]``),
    an image ``{name}_image`` and circles ``{name}_spots``, both only in coordinate system ``name``. An element of
    one of those names that is of another kind or lacks those marks is the user's: it is never replaced.
    Elements that are only on disk (left by an interrupted run, invisible to zarr) are not judged here.
    """
    from spatialdata.transformations import get_transformation

    expected = {name: "tables", f"{name}_image": "images", f"{name}_spots": "shapes"}
    bad = []
    for kind in ("images", "labels", "points", "shapes", "tables"):
        for el_name, element in getattr(sdata, kind).items():
            if el_name not in expected:
                continue
            if kind != expected[el_name]:
                bad.append(el_name)
            elif kind == "tables":
                obs = element.obs
                if not ("c2lst_synthetic" in obs and "c2lst_run_id" in obs and bool(np.all(obs["c2lst_synthetic"]))):
                    bad.append(el_name)
            else:
                try:
                    systems = set(get_transformation(element, get_all=True))
                except Exception:
                    systems = set()
                if systems != {name}:
                    bad.append(el_name)
    return sorted(bad)


def check_store_writable(sdata: Any) -> None:
    """Raise before any compute when ``sdata`` says it is backed by a store that is gone or read-only."""
    path = getattr(sdata, "path", None)
    if path is None:
        return
    root = Path(path)
    if not root.exists():
        raise ValueError(
            f"`sdata` is backed by the zarr store {str(root)!r}, which no longer exists; restore it, or write the "
            "SpatialData elsewhere first (`sdata.write(new_path)`)."
        )
    dirs = [root, *(root / k for k in ("images", "shapes", "tables") if (root / k).is_dir())]
    locked = [str(d) for d in dirs if not os.access(d, os.W_OK | os.X_OK)]
    if locked or not os.access(root.parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"`sdata` is backed by the zarr store {str(root)!r}, which is not writable ({locked or [str(root.parent)]}); "
            "fix its permissions or write the SpatialData elsewhere first (`sdata.write(new_path)`)."
        )


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
    backed = sdata.is_backed() and sdata.path is not None
    if backed:
        check_store_writable(sdata)
        # write first: a failed write leaves the in-memory object (and the old elements on disk) as they were
        _write_atomic(sdata, elements, replace=overwrite)
    if overwrite:
        for element_name in elements:
            if element_name in existing_names_in_memory(sdata):
                del sdata[element_name]  # it may be lazily backed by the folder that was just replaced
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
        taken = [n for n in order if (target / elements[n][0] / n).exists()]
        if taken and not replace:  # another writer moved elements of these names in since the checks
            raise ValueError(
                f"elements {taken} already exist in the store {str(target)!r} (written by another process "
                "meanwhile); pass another `key_added=` or `overwrite=True`."
            )
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
            dst = dst_parent / element_name
            try:
                os.replace(src / element_name, dst)
            except OSError as err:  # lost the race between the check and the move
                raise ValueError(
                    f"element {element_name!r} already exists in the store {str(target)!r} ({err}); pass another "
                    "`key_added=` or `overwrite=True`."
                ) from None
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
