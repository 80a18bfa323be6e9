"""Real data: a Visium crop (AnnData + H&E image) as SpatialData, and unpaired H&E tiles from slides."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import numpy as np
from scipy import sparse
from spatialdata import SpatialData

from .._logging import logger, progress
from .._spatial import annotate_table, image_element, spots_element
from .._utils import (
    check_nonneg_float,
    check_patch_extent,
    check_positive_float,
    check_positive_int,
    check_seed,
)
from ._io import IMAGE_SUFFIXES, check_file, read_rgb, read_spots_table
from ._patches import resize_patches

SPOT_DIAMETER_UM = 55.0
PSEUDO_COUNT_RULE = "counts = round(expm1(X) / min non-zero expm1(X) of the row)"


def from_visium_crop(
    h5ad_path: str | Path, image_path: str | Path, *, spot_diameter_px: float | None = None
) -> SpatialData:
    """Build a SpatialData from a Visium AnnData with pixel coordinates and its full-resolution H&E image.

    The layout matches :func:`~c2lst.datasets.simulated_visium`: ``images["he"]``, circles
    ``shapes["spots"]`` and ``tables["table"]`` (annotating ``"spots"`` with ``region_key="region"``,
    ``instance_key="spot_id"``), all with an identity to the ``"global"`` coordinate system (image pixels).

    ``.X`` must hold counts; when it is log-normalised (non-integer values, as after
    ``normalize_total`` + ``log1p``) pseudo-counts are recovered by the rule
    ``round(expm1(X) / m)``, with ``m`` the smallest non-zero ``expm1(X)`` of the row (the value a
    count of 1 takes after per-spot scaling). The original matrix is kept in ``layers["lognorm"]``.

    Parameters
    ----------
    h5ad_path
        AnnData file with ``obsm["spatial"]`` = spot centres (x, y) in pixels of ``image_path``.
    image_path
        RGB image (PNG / JPEG / TIFF) at the resolution of ``obsm["spatial"]``.
    spot_diameter_px
        Spot diameter in image pixels. Default: ``uns["spatial"][library]["scalefactors"]["spot_diameter_fullres"]``.

    Returns
    -------
    SpatialData with the image, the spots and the table (counts in ``X``). The table records the source
    files, the spot diameter, the implied µm/px (55 µm spots) and whether pseudo-counts were recovered in
    ``uns["c2lst"]["source"]``.

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.from_visium_crop("test_data.h5ad", "test_img.jpg")  # doctest: +SKIP
    >>> sdata.tables["table"].uns["c2lst"]["source"]["spot_diameter_px"]  # doctest: +SKIP
    89.44...
    """
    h5ad_path = check_file(h5ad_path, "h5ad_path", (".h5ad",))
    image_path = check_file(image_path, "image_path", IMAGE_SUFFIXES)
    if spot_diameter_px is not None:
        spot_diameter_px = check_positive_float(spot_diameter_px, "spot_diameter_px")

    adata, xy = read_spots_table(h5ad_path, "image pixels")
    if spot_diameter_px is None:
        spot_diameter_px = _diameter_from_uns(adata, h5ad_path)

    image, _ = read_rgb(image_path)
    height, width = image.shape[:2]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    if not inside.any():
        raise ValueError(
            f"No spot centre of {str(h5ad_path)!r} lies inside the {width}x{height} image {str(image_path)!r}; "
            "`obsm['spatial']` must be (x, y) pixels of that image."
        )
    if not inside.all():
        logger.warning(f"{int((~inside).sum())} spot centres lie outside the image {str(image_path)!r}.")
    if not adata.obs_names.is_unique:
        logger.warning("duplicate obs names: calling `obs_names_make_unique()`.")
        adata.obs_names_make_unique()

    counts, recovered, max_err = _counts_from_x(adata.X, h5ad_path)
    if recovered:
        adata.layers["lognorm"] = sparse.csr_matrix(adata.X, dtype=np.float32)
        logger.info(f"recovered pseudo-counts from log-normalised X (max rounding error {max_err:.3g})")
    adata.X = counts
    adata.obsm["spatial"] = xy
    source = {
        "reader": "from_visium_crop",
        "h5ad_path": str(h5ad_path),
        "image_path": str(image_path),
        "spot_diameter_px": float(spot_diameter_px),
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "mpp": SPOT_DIAMETER_UM / float(spot_diameter_px),
        "pseudo_counts": bool(recovered),
        "pseudo_count_rule": PSEUDO_COUNT_RULE if recovered else "",
        "max_rounding_error": float(max_err),
    }
    adata.uns.setdefault("c2lst", {})["source"] = source
    table = annotate_table(adata, "spots")
    return SpatialData(
        images={"he": image_element(np.moveaxis(image, -1, 0))},
        shapes={"spots": spots_element(xy, spot_diameter_px / 2)},
        tables={"table": table},
    )


def _diameter_from_uns(adata: ad.AnnData, path: Path) -> float:
    found = set()
    for lib in adata.uns.get("spatial", {}).values():
        value = lib.get("scalefactors", {}).get("spot_diameter_fullres") if hasattr(lib, "get") else None
        if value is not None:
            found.add(float(value))
    if len(found) != 1:
        what = "no" if not found else f"several ({sorted(found)})"
        raise ValueError(
            f"{str(path)!r} has {what} `uns['spatial'][library]['scalefactors']['spot_diameter_fullres']`; "
            "pass `spot_diameter_px=` (spot diameter in image pixels)."
        )
    return check_positive_float(found.pop(), "spot_diameter_fullres")


def _counts_from_x(x, path: Path) -> tuple[sparse.csr_matrix, bool, float]:
    """Return integer-valued CSR float32 counts, whether they were recovered, and the rounding error."""
    x = sparse.csr_matrix(x, dtype=np.float64)
    data = x.data
    if not np.all(np.isfinite(data)) or (data.size and data.min() < 0):
        raise ValueError(
            f"`X` of {str(path)!r} has negative or non-finite values (scaled / centred data); "
            "counts cannot be recovered, provide raw or log-normalised counts."
        )
    if np.allclose(data, np.rint(data), atol=1e-6):
        return sparse.csr_matrix(np.rint(x), dtype=np.float32), False, 0.0
    expd = x.copy()
    expd.data = np.expm1(expd.data)
    expd.eliminate_zeros()
    row_min = np.full(expd.shape[0], np.inf)
    nnz_rows = np.diff(expd.indptr) > 0
    row_min[nnz_rows] = np.minimum.reduceat(expd.data, expd.indptr[:-1][nnz_rows])
    scaled = expd.multiply(1.0 / np.where(np.isfinite(row_min), row_min, 1.0)[:, None]).tocsr()
    rounded = np.rint(scaled.data)
    max_err = float(np.abs(scaled.data - rounded).max()) if rounded.size else 0.0
    scaled.data = rounded
    return sparse.csr_matrix(scaled, dtype=np.float32), True, max_err


def he_patches(
    paths: str | Path | Iterable[str | Path],
    *,
    size: int = 64,
    patch_px: int | None = None,
    patch_um: float | None = None,
    mpp: float | None = None,
    n_per_image: int | None = None,
    tissue_threshold: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Cut unpaired tissue tiles from real H&E images and slides, for central pretraining.

    Each image is cut into a centred grid of non-overlapping square tiles. A pixel is *tissue* when
    its mean optical density ``-log10((I + 1) / 256)`` over r, g, b lies in ``[0.1, 2.0]`` (bare glass is
    brighter, pen marks and black borders darker); tiles with a tissue fraction below
    ``tissue_threshold`` are rejected. Kept tiles are resized to ``size`` with anti-aliasing.

    Parameters
    ----------
    paths
        One or several PNG / JPEG / TIFF / Aperio SVS files. SVS / TIFF are read at full resolution
        (level 0) with ``tifffile``.
    size
        Side of the returned tiles, in pixels.
    patch_px
        Side of the tiles in the source pixels. Give ``patch_px`` or ``patch_um``, not both; with
        neither, ``patch_px = size``.
    patch_um
        Side of the tiles in microns (needs ``mpp`` or an SVS / TIFF that records it).
    mpp
        Microns per pixel of every image; default: read from SVS / TIFF metadata. Only used with ``patch_um``.
    n_per_image
        Keep at most this many tiles per image, drawn at random; default: all tissue tiles.
    tissue_threshold
        Minimum tissue fraction of a kept tile, in ``[0, 1]``.
    seed
        Seed of the tile subsampling.

    Returns
    -------
    uint8 array ``(n_tiles, size, size, 3)``, images in the given order, tiles in row-major order.

    Examples
    --------
    >>> import c2lst
    >>> tiles = c2lst.datasets.he_patches(["slide.svs", "tile.png"], size=64, patch_um=64.0)  # doctest: +SKIP
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if not isinstance(paths, Iterable):
        raise TypeError(f"`paths` must be a path or an iterable of paths, got {type(paths).__name__}.")
    paths = [check_file(p, "paths", IMAGE_SUFFIXES) for p in paths]
    if not paths:
        raise ValueError("`paths` is empty; pass at least one image file.")
    size = check_positive_int(size, "size")
    patch_um, patch_px = check_patch_extent(patch_um, patch_px)
    if patch_px is not None:  # tiles are whole pixels
        patch_px = check_positive_int(int(patch_px) if patch_px.is_integer() else patch_px, "patch_px")
    if mpp is not None:
        mpp = check_positive_float(mpp, "mpp")
    if n_per_image is not None:
        n_per_image = check_positive_int(n_per_image, "n_per_image")
    tissue_threshold = check_nonneg_float(tissue_threshold, "tissue_threshold")
    if tissue_threshold > 1:
        raise ValueError(f"`tissue_threshold={tissue_threshold}` is a fraction; pass a value in [0, 1].")
    seed = check_seed(seed)
    if patch_um is not None and mpp is None:
        for p in paths:
            if p.suffix.lower() not in (".svs", ".tif", ".tiff"):
                raise ValueError(
                    f"`patch_um` needs the µm/px of {str(p)!r}, which a {p.suffix} file does not record; pass `mpp=`."
                )

    rng = np.random.default_rng(seed)
    out = []
    for path in progress(paths, desc="he_patches", unit="image", leave=False):
        image, file_mpp = read_rgb(path)
        tile = patch_px or size
        if patch_um is not None:
            img_mpp = mpp if mpp is not None else file_mpp
            if img_mpp is None:
                raise ValueError(f"{str(path)!r} records no µm/px; pass `mpp=` to use `patch_um`.")
            tile = max(1, round(patch_um / img_mpp))
        tiles = _tissue_tiles(image, tile, tissue_threshold)
        if n_per_image is not None and tiles.shape[0] > n_per_image:
            keep = np.sort(rng.choice(tiles.shape[0], n_per_image, replace=False))
            tiles = tiles[keep]
        logger.info(f"{path.name}: {tiles.shape[0]} tissue tiles of {tile} px")
        out.append(resize_patches(tiles, size))
    result = np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)
    if result.shape[0] == 0:
        raise ValueError(
            "No tile passed the tissue filter; lower `tissue_threshold` or use smaller tiles (`patch_px` / `patch_um`)."
        )
    return result


def _tissue_tiles(image: np.ndarray, tile: int, threshold: float) -> np.ndarray:
    """Return the ``(n, tile, tile, 3)`` grid tiles of ``image`` whose tissue fraction >= ``threshold``."""
    h, w = image.shape[:2]
    ny, nx = h // tile, w // tile
    if ny == 0 or nx == 0:
        return np.zeros((0, tile, tile, 3), np.uint8)
    y0, x0 = (h - ny * tile) // 2, (w - nx * tile) // 2
    crop = image[y0 : y0 + ny * tile, x0 : x0 + nx * tile]
    lut = (-np.log10((np.arange(256) + 1) / 256.0)).astype(np.float32)
    od = lut[crop].mean(-1)
    tissue = (od >= 0.1) & (od <= 2.0)
    frac = tissue.reshape(ny, tile, nx, tile).mean((1, 3))
    grid = crop.reshape(ny, tile, nx, tile, 3).swapaxes(1, 2)
    return grid[frac >= threshold]
