"""Pixel engine of :func:`extract_patches`: plan batches, read windows, resample patches.

Conventions: a pixel ``i`` of a level covers the continuous interval ``[i, i + 1)`` (its centre is ``i + 0.5``,
as in :func:`spatialdata.transformations` and ``compute_coordinates``). Output pixel ``(r, q)`` of a patch of
``size`` pixels is the average of ``ss x ss`` bilinear samples taken inside its footprint (``ss`` = ceil of the
source pixels per output pixel), which is bilinear interpolation when upsampling and an area average when
downsampling. Samples that fall outside the image take the background value (white).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


def unit_grid(size: int, ss: int) -> np.ndarray:
    """Return the sample offsets, in units of the patch extent, of ``size * ss`` samples across a patch."""
    return (np.arange(size * ss, dtype=np.float64) + 0.5) / (size * ss) - 0.5


class ChunkReader:
    """Read windows of one pyramid level, decompressing every chunk at most once while it stays cached.

    Windows are assembled from whole dask chunks kept in a small LRU cache (``cache_bytes``), so batches
    visited in raster order never read a chunk twice and chunks no spot touches are never read.
    """

    def __init__(self, data: Any, channels: int, cache_bytes: int = 256 * 2**20) -> None:
        self.data = data[:channels]
        self.cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.cache_bytes = cache_bytes
        self.n_read = 0
        chunks = getattr(self.data, "chunks", None)
        self.lazy = chunks is not None and hasattr(self.data, "blocks")
        if self.lazy:
            self.yb = np.cumsum((0, *chunks[1]))
            self.xb = np.cumsum((0, *chunks[2]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return ``data[:channels, y0:y1, x0:x1]`` as a numpy array."""
        if not self.lazy:
            return np.asarray(self.data[:, y0:y1, x0:x1])
        iys = range(np.searchsorted(self.yb, y0, "right") - 1, np.searchsorted(self.yb, y1 - 1, "right"))
        ixs = range(np.searchsorted(self.xb, x0, "right") - 1, np.searchsorted(self.xb, x1 - 1, "right"))
        keys = [(iy, ix) for iy in iys for ix in ixs]
        missing = [k for k in keys if k not in self.cache]
        if missing:
            import dask

            blocks = dask.compute(*[self.data.blocks[:, iy, ix] for iy, ix in missing])
            self.n_read += len(missing)
            self.cache.update(zip(missing, (np.asarray(b) for b in blocks), strict=True))
        out = np.empty((self.data.shape[0], y1 - y0, x1 - x0), dtype=self.data.dtype)
        for iy, ix in keys:
            self.cache.move_to_end((iy, ix))
            block = self.cache[(iy, ix)]
            by0, bx0 = int(self.yb[iy]), int(self.xb[ix])
            ya, yb_ = max(y0, by0), min(y1, by0 + block.shape[1])
            xa, xb_ = max(x0, bx0), min(x1, bx0 + block.shape[2])
            out[:, ya - y0 : yb_ - y0, xa - x0 : xb_ - x0] = block[
                :, ya - by0 : yb_ - by0, xa - bx0 : xb_ - bx0
            ]
        used = sum(b.nbytes for b in self.cache.values())
        while used > self.cache_bytes and len(self.cache) > len(keys):
            _, dropped = self.cache.popitem(last=False)
            used -= dropped.nbytes
        return out


def check_float_window(window: np.ndarray, image_key: str) -> None:
    """Raise if a float window holds values outside ``[0, 1]`` (the documented float rule) or non-finite ones."""
    if not np.issubdtype(window.dtype, np.floating) or window.size == 0:
        return
    lo, hi = float(np.min(window)), float(np.max(window))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"`image_key={image_key!r}` is a float image with values in [{lo}, {hi}]; float images must hold "
            "intensities in [0, 1] (scikit-image convention). Rescale it (e.g. divide a 0-255 image by 255) or "
            "store it as uint8."
        )


def _axis_weights(pos: np.ndarray, n: int, size: int, ss: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Return 1-D resampling weights for one axis of a batch.

    ``pos`` (B, size * ss) are continuous sample positions on a level axis of length ``n``. Returns the weights
    ``A`` (B, size, L) on each spot's source crop ``start[b] : start[b] + L`` (clipped to the image), the first
    source index ``start`` (B,) and ``L``. Samples outside the image get no weight, so a row of ``A`` sums to
    the fraction of its samples inside the image; the rest is background.
    """
    b = pos.shape[0]
    inside = (pos >= 0) & (pos < n)
    idx = pos - 0.5
    i0 = np.floor(idx)
    f = idx - i0
    g0 = np.clip(i0, 0, n - 1).astype(np.int64)
    g1 = np.clip(i0 + 1, 0, n - 1).astype(np.int64)
    big = np.iinfo(np.int64).max
    start = np.where(inside, g0, big).min(axis=1)
    start = np.where(start == big, np.clip(g0.min(axis=1), 0, n - 1), start)
    stop = np.where(inside, g1, -1).max(axis=1)
    length = int(max(1, (stop - start + 1).max()))
    rows = (np.arange(b)[:, None] * size + np.arange(size * ss)[None, :] // ss) * length
    w = np.bincount(
        np.concatenate([(rows + g0 - start[:, None])[inside], (rows + g1 - start[:, None])[inside]]),
        weights=np.concatenate([((1 - f) / ss)[inside], (f / ss)[inside]]),
        minlength=b * size * length,
    )
    return w.reshape(b, size, length).astype(np.float32), start, length


@dataclass(frozen=True)
class Grid:
    """What both resamplers need besides the positions: level shape ``(h, w)``, output side, supersampling."""

    shape: tuple[int, int]
    size: int
    ss: int
    image_key: str
    background: float


def sample_separable(reader: ChunkReader, px: np.ndarray, py: np.ndarray, grid: Grid) -> np.ndarray:
    """Resample a batch of axis-aligned patches; ``px``/``py`` (B, size*ss) are sample positions on the level.

    Reads one window (the union of the spots' crops) and returns float32 ``(B, size, size, 3)`` in source
    units: per spot, ``Ay @ crop @ Ax.T`` (two small matrix products) plus background where samples fell
    outside the image.
    """
    (h, w), size, ss, image_key, background = grid.shape, grid.size, grid.ss, grid.image_key, grid.background
    ay, sy, ly = _axis_weights(py, h, size, ss)
    ax, sx, lx = _axis_weights(px, w, size, ss)
    y0, x0 = int(sy.min()), int(sx.min())
    y1, x1 = int(min(h, (sy + ly).max())), int(min(w, (sx + lx).max()))
    window = reader.read(y0, y1, x0, x1)[:3]
    check_float_window(window, image_key)
    bg = background * (1.0 - ay.sum(axis=2)[:, :, None] * ax.sum(axis=2)[:, None, :])  # (B, size, size)
    out = np.empty((len(px), size, size, 3), dtype=np.float32)
    crop = np.zeros((ly, lx, 3), dtype=np.float32)
    for i, (r0, c0) in enumerate(zip(sy - y0, sx - x0, strict=True)):
        part = window[:, r0 : r0 + ly, c0 : c0 + lx]
        if part.shape[1:] != (ly, lx):  # the crop runs past the image: its extra rows/columns weigh 0
            crop[:] = 0
        crop[: part.shape[1], : part.shape[2]] = part.transpose(1, 2, 0)
        t = (ay[i] @ crop.reshape(ly, lx * 3)).reshape(size, lx, 3).transpose(1, 0, 2).reshape(lx, size * 3)
        out[i] = (ax[i] @ t).reshape(size, size, 3).transpose(1, 0, 2)
    out += bg[..., None]
    return out


def sample_general(reader: ChunkReader, px: np.ndarray, py: np.ndarray, grid: Grid) -> np.ndarray:
    """Resample a batch of rotated/sheared patches; ``px``/``py`` (B, size*ss, size*ss) are sample positions."""
    from scipy.ndimage import map_coordinates

    (h, w), size, ss, image_key, background = grid.shape, grid.size, grid.ss, grid.image_key, grid.background
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    b = len(px)
    out = np.full((b, size, size, 3), background, dtype=np.float32)
    if not inside.any():
        return out
    y0 = int(np.clip(np.floor(py[inside].min() - 1), 0, h - 1))
    y1 = int(np.clip(np.ceil(py[inside].max() + 1), y0 + 1, h))
    x0 = int(np.clip(np.floor(px[inside].min() - 1), 0, w - 1))
    x1 = int(np.clip(np.ceil(px[inside].max() + 1), x0 + 1, w))
    window = reader.read(y0, y1, x0, x1)[:3]
    check_float_window(window, image_key)
    coords = np.stack([py - 0.5 - y0, px - 0.5 - x0])
    for c in range(3):
        vals = map_coordinates(
            window[c].astype(np.float32), coords, order=1, mode="nearest", output=np.float32
        )
        vals[~inside] = background
        out[..., c] = vals.reshape(b, size, ss, size, ss).mean(axis=(2, 4))
    return out


def background_value(dtype: np.dtype) -> float:
    """Return white in the units of ``dtype`` (255, 65535 or 1.0)."""
    if dtype == np.uint16:
        return 65535.0
    if np.issubdtype(dtype, np.floating):
        return 1.0
    return 255.0


def to_uint8(patches: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert resampled patches (source units) to uint8 with the documented rescale rule."""
    if dtype == np.uint16:
        patches = patches / 257.0
    elif np.issubdtype(dtype, np.floating):
        patches = patches * 255.0
    return np.clip(np.rint(patches), 0, 255).astype(np.uint8)


RESCALE_RULES = {
    "uint8": "none",
    "uint16": "divide by 257 (65535 -> 255)",
    "float": "multiply [0, 1] by 255",
}
