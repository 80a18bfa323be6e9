"""Open a (pyramidal) TIFF whole-slide image lazily as a spatialdata multiscale image, from its own levels.

Nothing is decoded here: ``tifffile`` exposes the pyramid as a zarr store (one array per level, one chunk per
TIFF tile or strip), dask wraps each level, and :func:`c2lst.pp.extract_patches` later reads only the tiles
under the spots. The levels are the TIFF's own (SubIFDs, OME, Aperio SVS); no pyramid is recomputed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._logging import logger
from .._spatial import COORDINATE_SYSTEM

WSI_EXTRA_HINT = "reading whole-slide TIFFs needs `tifffile` and `imagecodecs`: `pip install 'c2lst[wsi]'`."
_CHUNK = 1024


def import_tifffile():
    """Return the ``tifffile`` module, or raise an ImportError that names the ``wsi`` extra."""
    try:
        import imagecodecs  # noqa: F401  (compressed tiles: JPEG, JPEG 2000, LZW, ...)
        import tifffile
    except ImportError as err:
        raise ImportError(f"{WSI_EXTRA_HINT} ({err})") from None
    return tifffile


def _level_axes(shape: tuple[int, ...], axes: str, path: Path) -> tuple[int, ...]:
    """Return the transpose that brings one TIFF level to (c, y, x), or raise for a non-RGB level."""
    axes = axes.upper().replace("S", "C")
    if set(axes) != {"Y", "X", "C"} or len(shape) != 3 or shape[axes.index("C")] not in (3, 4):
        raise ValueError(
            f"{str(path)!r} holds an image of shape {shape} (axes {axes!r}); an RGB(A) slide (y, x, 3|4) is "
            "required."
        )
    return tuple(axes.index(a) for a in "CYX")


def open_wsi(path: Path, *, coordinate_system: str = COORDINATE_SYSTEM):
    """Return ``(image, info)``: a lazy multiscale RGB ``Image2DModel`` of the TIFF and what was found.

    ``image`` is an xarray ``DataTree`` with ``scale0`` (full resolution) ... ``scaleK`` (the TIFF's own
    levels), identity to ``coordinate_system`` at ``scale0``. ``info`` holds the level shapes ``(y, x)`` and
    whether the TIFF was pyramidal. A TIFF without a pyramid opens lazily as one level (with a warning: patches
    are then read at full resolution). The file stays open as long as the image is referenced.
    """
    tifffile = import_tifffile()
    import dask.array as da
    import xarray as xr
    import zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, set_transformation

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError(
                    f"{str(path)!r} holds no image series; a TIFF whole-slide image is required."
                )
            series = tif.series[0]
            levels = [(tuple(lv.shape), lv.axes, np.dtype(lv.dtype)) for lv in series.levels]
    except (tifffile.TiffFileError, OSError) as err:
        raise ValueError(
            f"{str(path)!r} is not a readable TIFF ({err}); pass a (pyramidal) TIFF slide."
        ) from None
    for shape, axes, dtype in levels:
        _level_axes(shape, axes, path)
        if dtype != np.uint8:
            raise ValueError(f"{str(path)!r} holds {dtype} pixels; an 8-bit RGB slide (uint8) is required.")
    store = tifffile.imread(path, aszarr=True, series=0)
    node = zarr.open(store, mode="r")
    arrays = [node[str(i)] for i in range(len(levels))] if len(levels) > 1 else [node]
    tree = {}
    shapes = []
    for i, (arr, (shape, axes, _)) in enumerate(zip(arrays, levels, strict=True)):
        order = _level_axes(shape, axes, path)
        lazy = da.from_zarr(arr).transpose(order)[:3]
        lazy = lazy.rechunk((3, min(_CHUNK, lazy.shape[1]), min(_CHUNK, lazy.shape[2])))
        shapes.append(tuple(int(s) for s in lazy.shape[1:]))
        tree[f"scale{i}"] = xr.Dataset(
            {"image": xr.DataArray(lazy, dims=("c", "y", "x"), coords={"c": ["r", "g", "b"]})}
        )
    image = xr.DataTree.from_dict(tree)
    set_transformation(image, {coordinate_system: Identity()}, set_all=True)
    Image2DModel().validate(image)
    if len(levels) == 1:
        logger.warning(
            f"{path.name} is not pyramidal: it opens lazily as one full-resolution level, so patches are read at "
            "full resolution (slower for large `patch_um`)."
        )
    return image, {"level_shapes": shapes, "pyramidal": len(levels) > 1}
