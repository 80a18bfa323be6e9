"""``pp.extract_patches``: cut one RGB patch per spot out of a (lazy, multiscale) image."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._logging import logger
from .._logging import progress as _progress
from .._records import record_lineage, store
from .._utils import check_memory, check_patch_extent, check_positive_int
from ._resolve import Resolved, resolve
from ._sampling import (
    RESCALE_RULES,
    ChunkReader,
    Grid,
    background_value,
    sample_general,
    sample_separable,
    to_uint8,
    unit_grid,
)
from ._scale import check_mpp, physical_scale

_MAX_GENERAL_SAMPLES = 2**22
_MAX_WEIGHTS = 2**23
_TILE_PX = 1024


def _one_blas_thread():
    """Limit BLAS to one thread: the per-batch matrices are small, and threaded BLAS thrashes on busy CPUs."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (a scanpy dependency)
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_str(value: Any, name: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        kind = "a non-empty string or None" if optional else "a non-empty string"
        raise TypeError(f"`{name}` must be {kind}, got {value!r}.")


def _extents(
    res: Resolved, patch_um: float | None, patch_px: float | None, mpp: float | None
) -> tuple[np.ndarray, dict]:
    """Return the patch extent of every spot (shapes' intrinsic units) and what to record about it."""
    n = len(res.diameters)
    info: dict = {}
    if patch_um is not None or mpp is not None:
        um_per_unit, source = physical_scale(res, mpp)
        info = {"um_per_unit": um_per_unit, "um_source": source}
    if patch_px is not None:
        return np.full(n, patch_px), {"extent_rule": "patch_px", "patch_px": float(patch_px), **info}
    if patch_um is None:
        return res.diameters.copy(), {"extent_rule": "spot_diameter", **info}
    info = {"extent_rule": "patch_um", "patch_um": float(patch_um), **info}
    return np.full(n, patch_um / info["um_per_unit"]), info


def _choose_level(res: Resolved, extent: float, size: int) -> tuple[int, np.ndarray]:
    """Return the coarsest level whose pixels are not coarser than the output pixels (else level 0)."""
    h0, w0 = res.level_shapes[0]
    ratios = []
    for hk, wk in res.level_shapes:
        d = np.diag([wk / w0, hk / h0])
        step = extent / size * np.linalg.norm(d @ res.offset_map, axis=0)  # level px per output px (x, y)
        ratios.append(float(np.sqrt(step[0] * step[1])))
    ok = [k for k, r in enumerate(ratios) if r >= 1 - 1e-3]
    level = min(ok, key=lambda k: ratios[k]) if ok else 0
    return level, np.diag([res.level_shapes[level][1] / w0, res.level_shapes[level][0] / h0])


def _footprints(res: Resolved, extents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return spot centres in scale0 pixels, clipped flags and entirely-outside flags."""
    h0, w0 = res.level_shapes[0]
    m = res.shapes_to_image
    centres = res.centres @ m[:2, :2].T + m[:2, 2]
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]) @ res.offset_map.T
    pts = centres[:, None, :] + extents[:, None, None] * corners[None]
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    tol = 1e-6 * max(h0, w0)
    clipped = (lo[:, 0] < -tol) | (lo[:, 1] < -tol) | (hi[:, 0] > w0 + tol) | (hi[:, 1] > h0 + tol)
    outside = (hi[:, 0] <= 0) | (hi[:, 1] <= 0) | (lo[:, 0] >= w0) | (lo[:, 1] >= h0)
    return centres, clipped, outside


def _batches(centres_lv: np.ndarray, todo: np.ndarray, side: float, batch_size: int, chunks) -> list:
    """Group spots by image tile (so each batch reads one compact window), then split by ``batch_size``."""
    tile = max(_TILE_PX, 2.0 * side)
    if chunks is not None:
        tile = math.ceil(tile / max(chunks)) * max(chunks)
    idx = np.flatnonzero(todo)
    ty, tx = np.floor(centres_lv[idx, 1] / tile), np.floor(centres_lv[idx, 0] / tile)
    order = np.lexsort((centres_lv[idx, 0], centres_lv[idx, 1], tx, ty))
    idx, tyx = idx[order], np.stack([ty, tx], axis=1)[order]
    cuts = np.flatnonzero((np.diff(tyx, axis=0) != 0).any(axis=1)) + 1
    out = []
    for group in np.split(idx, cuts):
        out.extend(group[s : s + batch_size] for s in range(0, len(group), batch_size))
    return out


@dataclass
class _Plan:
    """Where and how to sample: one pyramid level, the spots' centres on it and the sampling grid."""

    data: Any  # (c, y, x) dask array of the chosen level
    reader: ChunkReader
    shape: tuple[int, int]
    level: int
    centres: np.ndarray  # (n, 2) spot centres in level pixels (x, y)
    extents: np.ndarray  # (n,) patch extents in shapes units
    lin: np.ndarray  # (2, 2) level pixels per unit offset; columns = output x / y directions
    grid: np.ndarray  # (size * ss,) unit sample offsets
    separable: bool
    size: int
    ss: int


def _plan(res: Resolved, extents: np.ndarray, centres0: np.ndarray, size: int) -> _Plan:
    level, d = _choose_level(res, float(np.median(extents)), size)
    lin = d @ res.offset_map
    steps = extents.max() / size * np.linalg.norm(lin, axis=0)  # level px per output px, worst spot
    ss = max(1, math.ceil(float(steps.max()) - 1e-6))
    tol = 1e-9 * np.abs(lin).max()
    return _Plan(
        data=res.levels[level],
        reader=ChunkReader(res.levels[level], min(res.channels, 3)),
        shape=res.level_shapes[level],
        level=level,
        centres=centres0 @ d.T,
        extents=extents,
        lin=lin,
        grid=unit_grid(size, ss),
        separable=bool(abs(lin[0, 1]) <= tol and abs(lin[1, 0]) <= tol),
        size=size,
        ss=ss,
    )


def _resample(plan: _Plan, idx: np.ndarray, res: Resolved) -> np.ndarray:
    """Return float32 patches (len(idx), size, size, 3) in source units for the spots ``idx``."""
    grid = Grid(plan.shape, plan.size, plan.ss, res.image_key, background_value(res.dtype))
    lin, g = plan.lin, plan.grid
    e = plan.extents[idx][:, None]
    cx, cy = plan.centres[idx, 0][:, None], plan.centres[idx, 1][:, None]
    out = np.empty((len(idx), plan.size, plan.size, 3), dtype=np.float32)
    if plan.separable:  # sub-batches keep the (spots, size, crop length) weight matrices small
        crop = float(e.max()) * float(np.abs(lin).max()) + 2
        step = max(1, int(_MAX_WEIGHTS // (plan.size * crop)))
        for s in range(0, len(idx), step):
            sl = slice(s, s + step)
            px, py = cx[sl] + e[sl] * lin[0, 0] * g[None, :], cy[sl] + e[sl] * lin[1, 1] * g[None, :]
            out[sl] = sample_separable(plan.reader, px, py, grid)
        return out
    step = max(1, _MAX_GENERAL_SAMPLES // (plan.size * plan.ss) ** 2)
    gx, gy = g[None, None, :], g[None, :, None]
    for s in range(0, len(idx), step):
        sl = slice(s, s + step)
        es, cxs, cys = e[sl][:, :, None], cx[sl][:, :, None], cy[sl][:, :, None]
        px = cxs + es * (lin[0, 0] * gx + lin[0, 1] * gy)
        py = cys + es * (lin[1, 0] * gx + lin[1, 1] * gy)
        out[sl] = sample_general(plan.reader, px, py, grid)
    return out


def _check_fill(patches: np.ndarray, outside: np.ndarray, image_key: str) -> None:
    """Refuse patches that are pure fill value (0 in every pixel and channel) although their spot is on the image.

    Tissue is never exactly black in every pixel of a patch; that is what a zarr store returns for chunks that are
    missing (deleted, not copied, a half-written store), so silently returning them would train on black patches.
    """
    inside = np.flatnonzero(~outside)
    if not inside.size:
        return
    black = inside[(patches[inside].reshape(len(inside), -1) == 0).all(axis=1)]
    if black.size:
        raise ValueError(
            f"image {image_key!r}: {black.size} of {inside.size} patches inside the image are pure fill value (0 in "
            f"every pixel, e.g. rows {black[:5].tolist()}); the store's chunks under them are missing or empty. "
            "Check the image element's zarr store (re-copy or re-write it) before extracting patches."
        )


def _check_bounds(res: Any, extents: np.ndarray, patch_um: Any, patch_px: Any, size: int) -> None:
    """Refuse footprints larger than the image and outputs that cannot fit into memory, before any read."""
    h0, w0 = res.level_shapes[0]
    px = np.asarray(extents, dtype=np.float64) * float(np.sqrt(abs(np.linalg.det(res.shapes_to_image[:2, :2]))))
    top = float(px.max()) if px.size else 0.0
    if not np.isfinite(top) or top > 2 * max(h0, w0):
        arg = (
            "`patch_px`" if patch_px is not None
            else "`patch_um`" if patch_um is not None
            else f"the circle radius of shapes {res.shapes_key!r}"
        )
        raise ValueError(
            f"{arg} gives patches of {top:.4g} px of image {res.image_key!r}, larger than the image itself "
            f"({h0} x {w0} px at level 0); pass a smaller value (or fix the radius / transformation)."
        )
    check_memory(float(len(px)) * size * size * 3, "size", f"{len(px)} patches of {size} x {size} px")


def extract_patches(
    sdata: Any,
    *,
    table_key: str = "table",
    image_key: str | None = None,
    coordinate_system: str | None = None,
    patch_um: float | None = None,
    patch_px: float | None = None,
    mpp: float | None = None,
    size: int = 64,
    key_added: str = "c2lst_patch",
    batch_size: int = 256,
    progress: bool = True,
) -> None:
    """Cut one RGB image patch per spot and store them in the table.

    Resolves the shapes element the table annotates (its ``region``), the image and a coordinate system shared
    by both; maps spot centres and diameters into the image's pixel space through the spatialdata
    transformations (Identity, Scale, Affine, Sequence…); picks the pyramid level whose pixels are the coarsest
    that are still not coarser than the output pixels; reads, batch by batch, only the chunks under the spots;
    and resamples every patch to ``size x size`` with anti-aliasing (each output pixel averages
    ``ss x ss`` bilinear samples of its footprint, ``ss`` = source pixels per output pixel, rounded up).
    Patches are oriented like the coordinate system's axes, so rotated or sheared images are resampled.

    Pixel values: uint8 images are used as they are, RGBA images lose their alpha channel, uint16 images are
    divided by 257 and float images must hold intensities in ``[0, 1]`` (multiplied by 255; values outside
    raise). Parts of a patch outside the image are white (255) and the spot is flagged.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` with an image, a shapes element (circles, or polygons taken as the
        circle of equal area) and a table annotating it.
    table_key
        Table whose rows get a patch each (``sdata.tables[table_key]``); it must annotate one shapes element.
    image_key
        Image to cut from; by default the only image sharing a coordinate system with the shapes.
    coordinate_system
        Coordinate system linking shapes and image; by default the shared one (any of several shared ones
        that map shapes to image identically). Patches are oriented like its axes.
    patch_um
        Patch extent in micrometres, converted to shapes units with the first scale found: ``mpp=``; the
        table's ``uns["c2lst"]["scale"]["um_per_unit"]`` (or the simulator's
        ``uns["c2lst"]["simulation"]["mpp"]``); what spatialdata-io lays out (Visium HD: the bin size in the
        ``square_016um`` table / shapes name over the bin's side; Xenium: shapes in micrometres; Visium: the
        circle diameter ``spot_diameter_fullres`` is one 55 µm spot); else the assumption that spots are 55 µm
        Visium spots, with a :class:`UserWarning`. The scale used and its source are recorded.
        Exclusive with ``patch_px``.
    patch_px
        Patch extent in the shapes' own units (full-resolution pixels for Visium). By default (neither
        ``patch_um`` nor ``patch_px``) the extent is each spot's diameter (polygons: of the circle of equal
        area, so a square bin's patch is 1.13 bin sides wide).
    mpp
        Micrometres per unit of the shapes' intrinsic coordinates (for Space Ranger output: µm per
        full-resolution pixel, ``microns_per_pixel`` in its scalefactors; for Xenium: 1). Overrides every
        recorded scale; only used with ``patch_um`` (and recorded).
    size
        Output patches are ``size x size`` pixels.
    key_added
        Patches go to ``table.obsm[key_added]``, the clipped flags to ``table.obs[key_added + "_clipped"]``
        and the parameters to ``table.uns["c2lst"]["patches"][key_added]``.
    batch_size
        Maximum number of spots resampled per window read.
    progress
        Show a progress bar over batches.

    Returns
    -------
    None. Writes, in place on ``sdata.tables[table_key]``: ``obsm[key_added]`` uint8
    ``(n_spots, size, size, 3)`` in table row order, ``obs[key_added + "_clipped"]`` (bool; the default key is
    ``"c2lst_patch_clipped"``), the parameters (image, shapes, coordinate system, extent rule, extent,
    ``um_per_unit`` and ``um_source`` when ``patch_um`` or ``mpp`` is given, level, level pixel size, number
    clipped, rescale rule) in ``uns["c2lst"]["patches"][key_added]`` and a lineage record.

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.simulated_visium(n_spots=50)
    >>> c2lst.pp.extract_patches(sdata, size=32, progress=False)
    >>> sdata.tables["table"].obsm["c2lst_patch"].shape
    (50, 32, 32, 3)
    """
    _check_str(table_key, "table_key")
    _check_str(image_key, "image_key", optional=True)
    _check_str(coordinate_system, "coordinate_system", optional=True)
    _check_str(key_added, "key_added")
    size = check_positive_int(size, "size")
    batch_size = check_positive_int(batch_size, "batch_size")
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False, got {progress!r}.")
    patch_um, patch_px = check_patch_extent(patch_um, patch_px)
    mpp = check_mpp(mpp)

    res = resolve(sdata, table_key=table_key, image_key=image_key, coordinate_system=coordinate_system)
    extents, extent_info = _extents(res, patch_um, patch_px, mpp)
    _check_bounds(res, extents, patch_um, patch_px, size)
    centres0, clipped, outside = _footprints(res, extents)
    if outside.all():
        raise ValueError(
            f"No spot of shapes {res.shapes_key!r} lies inside image {res.image_key!r} in coordinate system "
            f"{res.coordinate_system!r}; check the transformations, or pass another `image_key=` / "
            "`coordinate_system=`."
        )
    plan = _plan(res, extents, centres0, size)
    chunks = getattr(plan.data, "chunksize", None)
    side = float(np.median(extents) * np.abs(plan.lin).sum(axis=1).max())
    batches = _batches(plan.centres, ~outside, side, batch_size, chunks[1:] if chunks else None)
    patches = np.full((len(extents), size, size, 3), 255, dtype=np.uint8)
    with _one_blas_thread():
        for idx in _progress(batches, enabled=progress, desc="extract_patches", unit="batch"):
            try:
                patches[idx] = to_uint8(_resample(plan, idx, res), res.dtype)
            except (OSError, RuntimeError, ValueError, TypeError) as err:  # zarr codecs, missing files, ...
                raise ValueError(
                    f"image {res.image_key!r}: reading its pixels failed ({type(err).__name__}: {str(err)[:200]}); "
                    "its zarr store may be corrupt or incomplete. Re-copy or re-write the image element."
                ) from err

    _check_fill(patches, outside, res.image_key)

    # ---- everything validated and computed: write
    table = res.table
    kind = "uint8" if res.dtype == np.uint8 else "uint16" if res.dtype == np.uint16 else "float"
    (h0, w0), (hk, wk) = res.level_shapes[0], plan.shape
    level_down = float(np.sqrt(h0 / hk * w0 / wk))
    extent_med = float(np.median(extents))
    units_per_px0 = 1.0 / float(np.sqrt(abs(np.linalg.det(res.shapes_to_image[:2, :2]))))
    params = {
        "image_key": res.image_key,
        "shapes_key": res.shapes_key,
        "table_key": table_key,
        "coordinate_system": res.coordinate_system,
        "size": size,
        **extent_info,
        "extent": extent_med,
        "extent_px": extent_med / units_per_px0,
        "level": int(plan.level),
        "level_downsample": level_down,
        "level_pixel_size": level_down * units_per_px0,
        "supersampling": int(plan.ss),
        "resampling": "separable bilinear area average"
        if plan.separable
        else "bilinear area average (affine)",
        "n_clipped": int(clipped.sum()),
        "n_outside": int(outside.sum()),
        "rescale": f"{kind}: {RESCALE_RULES[kind]}" + ("; alpha dropped" if res.channels == 4 else ""),
        "background": 255,
    }
    if key_added in table.obsm:
        logger.info(f"extract_patches: overwriting `obsm[{key_added!r}]`.")
    table.obsm[key_added] = patches
    table.obs[f"{key_added}_clipped"] = clipped
    store(table, "patches", key_added, params)
    record_lineage(
        table,
        function="c2lst.pp.extract_patches",
        parameters={**params, "batch_size": batch_size},
        seed=None,
        input_table=table_key,
    )
    logger.info(
        f"extract_patches: {len(patches)} patches of {size}x{size} px from image {res.image_key!r} level {plan.level} "
        f"({params['n_clipped']} clipped) -> obsm[{key_added!r}]"
    )
