"""Rasterise a :class:`~._tissue.Layout` into hematoxylin / eosin optical-density maps (vectorised)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._tissue import COARSE_UM, NUCLEUS, Cells, Glands, Layout

_STAMP_PIXELS = 2_000_000  # pixels stamped per vectorised batch (bounds memory)


def _batch(radius: int) -> int:
    """Return how many stamps of half-width ``radius`` fit in one vectorised batch."""
    return max(16, _STAMP_PIXELS // (2 * radius + 1) ** 2)


class _Upsampler:
    """Bilinear upsampling from coarse nodes (at multiples of ``COARSE_UM``) to pixel centres."""

    def __init__(self, shape: tuple[int, int], mpp: float) -> None:
        self.pos_y = (np.arange(shape[0]) + 0.5) * mpp / COARSE_UM
        self.pos_x = (np.arange(shape[1]) + 0.5) * mpp / COARSE_UM

    def __call__(self, field: np.ndarray) -> np.ndarray:
        return _lerp(_lerp(field.astype(np.float32), self.pos_y, axis=0), self.pos_x, axis=1)


def _ellipses(cy, cx, a, b, theta, harm, shape, radius):
    """Return per-pixel geometry of a batch of irregular ellipses (all sizes in pixels).

    Gives flat pixel indices ``(n, k, k)``, their validity, the normalised elliptical radius ``r``
    (the wavy contour is at 1) and the in-nucleus coordinates ``u``, ``v`` along the major / minor axis.
    """
    f32 = np.float32
    off = np.arange(-radius, radius + 1)
    iy = np.floor(cy).astype(np.int64)[:, None, None] + off[None, :, None]
    ix = np.floor(cx).astype(np.int64)[:, None, None] + off[None, None, :]
    dy = (iy + 0.5 - cy[:, None, None]).astype(f32)
    dx = (ix + 0.5 - cx[:, None, None]).astype(f32)
    c = np.cos(theta).astype(f32)[:, None, None]
    s = np.sin(theta).astype(f32)[:, None, None]
    u = dx * c + dy * s
    v = dy * c - dx * s
    un = u * (1 / a).astype(f32)[:, None, None]
    vn = v * (1 / b).astype(f32)[:, None, None]
    r = np.sqrt(un * un + vn * vn)
    r += f32(1e-6)
    inv = 1 / r
    cp = np.multiply(un, inv, out=un)
    sp = np.multiply(vn, inv, out=vn)
    cp2, sp2 = cp * cp, sp * sp
    # contour radius 1 + h3 cos(3 phi + p3) + h2 cos(2 phi + p2), expanded in cos/sin of phi
    h = harm.astype(f32)
    c3 = (h[:, 0] * np.cos(h[:, 1]))[:, None, None]
    s3 = (h[:, 0] * np.sin(h[:, 1]))[:, None, None]
    c2 = (h[:, 2] * np.cos(h[:, 3]))[:, None, None]
    s2 = (h[:, 2] * np.sin(h[:, 3]))[:, None, None]
    m = c3 * cp * (4 * cp2 - 3)
    m -= s3 * sp * (3 - 4 * sp2)
    m += c2 * (cp2 - sp2)
    m -= (2 * s2) * cp * sp
    m += 1
    r /= m
    valid = ((iy >= 0) & (iy < shape[0])) & ((ix >= 0) & (ix < shape[1]))
    flat = iy * shape[1] + ix
    return flat, valid, r, u, v


def _accumulate(acc: np.ndarray, flat: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> None:
    m = valid & (weight > 1e-3)
    acc += np.bincount(flat[m], weight[m], minlength=acc.size).astype(np.float32).reshape(acc.shape)


def render_nuclei(
    cells: Cells,
    shape: tuple[int, int],
    mpp: float,
    texture: np.ndarray,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Return the hematoxylin OD of all nuclei; optionally write cell ids + 1 into ``labels``."""
    acc = np.zeros(shape, dtype=np.float32)
    tex = texture.ravel()
    for kind, spec in NUCLEUS.items():
        idx = np.flatnonzero(cells.kind == kind)
        idx = idx[np.argsort(cells.a[idx], kind="stable")]  # similar sizes share a stamp box
        start = 0
        while start < idx.size:
            radius = int(np.ceil(cells.a[idx[start]] * 1.13 / mpp)) + 1
            sel = idx[start : start + _batch(radius)]
            radius = int(np.ceil(cells.a[sel].max() * 1.13 / mpp)) + 1
            start += sel.size
            a, b = cells.a[sel] / mpp, cells.b[sel] / mpp
            flat, valid, r, u, v = _ellipses(
                cells.y[sel] / mpp, cells.x[sel] / mpp, a, b, cells.theta[sel], cells.harm[sel], shape, radius
            )
            # ~1 px anti-aliased edge measured across the minor axis
            inside = np.clip((1 - r) * b.astype(np.float32)[:, None, None] + 0.5, 0, 1)
            val = inside * cells.h[sel].astype(np.float32)[:, None, None]
            val *= 1 + np.float32(0.3) * tex[np.clip(flat, 0, tex.size - 1)]
            if spec["vesicular"]:
                # open chromatin: pale centre, dark rim, one nucleolus
                val *= np.float32(0.55) + np.float32(0.6) * np.minimum(r, 1) ** 2
                nucleolus = np.exp(-(u * u + v * v) * np.float32(mpp * mpp / (2 * 0.8**2)))
                val += np.float32(0.7) * nucleolus * cells.h[sel].astype(np.float32)[:, None, None]
            _accumulate(acc, flat, val, valid)
            if labels is not None:
                m = valid & (inside > 0.5)
                labels.ravel()[flat[m]] = np.broadcast_to(sel[:, None, None] + 1, flat.shape)[m]
    return np.minimum(acc, 2.2, out=acc)


def render_lumens(structs: Glands, shape: tuple[int, int], mpp: float, ring: bool):
    """Return the soft lumen mask and (if ``ring``) the epithelial cytoplasm band around each lumen."""
    lumen = np.zeros(shape, dtype=np.float32)
    band = np.zeros(shape, dtype=np.float32)
    if structs.x.size == 0:
        return lumen, band
    extent = structs.a + (structs.ring * np.sqrt(structs.a / structs.b) if ring else 0.0)
    radius = int(np.ceil(extent.max() * 1.13 / mpp)) + 2
    step = _batch(radius)
    for start in range(0, structs.x.size, step):
        sl = slice(start, start + step)
        a, b = structs.a[sl] / mpp, structs.b[sl] / mpp
        flat, valid, r, _, _ = _ellipses(
            structs.y[sl] / mpp, structs.x[sl] / mpp, a, b, structs.theta[sl], structs.harm[sl], shape, radius
        )
        _accumulate(lumen, flat, np.clip((1 - r) * b.astype(np.float32)[:, None, None] + 0.5, 0, 1), valid)
        if ring:
            # ~pixels outside the lumen contour (geometric-mean radius), band of width `ring`
            dist_out = (r - 1) * np.sqrt(a * b).astype(np.float32)[:, None, None]
            width = (structs.ring[sl] / mpp).astype(np.float32)[:, None, None]
            w = np.clip(dist_out + 0.5, 0, 1) * np.clip(width - dist_out + 0.5, 0, 1)
            _accumulate(band, flat, w, valid)
    np.minimum(lumen, 1, out=lumen)
    np.minimum(band, 1, out=band)
    return lumen, band


def render_cytoplasm(cells: Cells, shape: tuple[int, int], mpp: float, sigma_um: float = 5.0) -> np.ndarray:
    """Return eosin from cytoplasm halos: per-type weights splatted at nuclei and Gaussian-blurred."""
    weight = np.array([NUCLEUS[k]["cyto"] for k in sorted(NUCLEUS)], dtype=np.float64)[cells.kind]
    iy = np.clip((cells.y / mpp).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip((cells.x / mpp).astype(np.int64), 0, shape[1] - 1)
    # blur on a grid ~2 px per sigma (cheap), then upsample back
    factor = max(1, int(sigma_um / mpp / 2.5))
    small = (-(-shape[0] // factor), -(-shape[1] // factor))
    sigma = sigma_um / mpp / factor
    splat = np.bincount((iy // factor) * small[1] + ix // factor, weight, minlength=small[0] * small[1])
    splat = ndi.gaussian_filter(
        splat.reshape(small).astype(np.float32) * np.float32(2 * np.pi * sigma**2), sigma
    )
    if factor == 1:
        return splat
    # block j covers pixels [j * factor, (j + 1) * factor)
    rows = _lerp(splat, (np.arange(shape[0]) + 0.5) / factor - 0.5, axis=0)
    return _lerp(rows, (np.arange(shape[1]) + 0.5) / factor - 0.5, axis=1)


def _lerp(arr: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linearly interpolate ``arr`` along ``axis`` at fractional indices ``pos``."""
    n = arr.shape[axis]
    pos = np.clip(pos, 0, n - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).astype(np.float32)
    shape = [1, 1]
    shape[axis] = -1
    frac = frac.reshape(shape)
    lo_v = arr.take(lo, axis=axis)
    return lo_v + (arr.take(hi, axis=axis) - lo_v) * frac


def _blob_noise(rng: np.random.Generator, shape: tuple[int, int], mpp: float, scale_um: float) -> np.ndarray:
    """Return smooth noise (sd ~1) with blobs of ~``scale_um``."""
    factor = scale_um / mpp
    if factor < 2:
        noise = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.6)
        return noise * np.float32(1 / (noise.std() + 1e-6))
    small = (int(np.ceil(shape[0] / factor)) + 2, int(np.ceil(shape[1] / factor)) + 2)
    noise = rng.standard_normal(small, dtype=np.float32)
    rows = _lerp(noise, (np.arange(shape[0]) + 0.5) / factor, axis=0)
    return _lerp(rows, (np.arange(shape[1]) + 0.5) / factor, axis=1) * np.float32(1.5)


def image_shape(layout: Layout, mpp: float) -> tuple[int, int]:
    """Return the ``(y, x)`` pixel shape of the slide: its extent rounded up to a multiple of 8 pixels.

    Multiples of 8 keep the 1/2 and 1/8 pyramid levels aligned with full resolution.
    """
    return (int(np.ceil(layout.height_um / mpp / 8)) * 8, int(np.ceil(layout.width_um / mpp / 8)) * 8)


def render_od(layout: Layout, mpp: float, rng: np.random.Generator, *, return_labels: bool = False):
    """Return hematoxylin and eosin OD maps ``(y, x)`` float32 (and nucleus labels if requested)."""
    shape = image_shape(layout, mpp)
    up = _Upsampler(shape, mpp)
    # fine chromatin / eosin grain (~1 µm) and collagen patchiness (~4 µm)
    texture = _blob_noise(rng, shape, mpp, 1.0)
    patches = _blob_noise(rng, shape, mpp, 4.0)

    tissue = np.clip(0.5 - up(layout.tissue_dist) / max(2.0, mpp), 0, 1)  # ~2 µm soft edge
    stripes = np.sin((up(layout.fibre_phase) + np.float32(1.5) * patches) * np.float32(2 * np.pi / 7.0))
    stripes *= stripes
    stripes *= np.clip(0.5 + 0.4 * patches, 0, 1)
    eosin = up(layout.stroma_eosin)
    eosin *= np.float32(0.35) + np.float32(1.1) * stripes + np.float32(0.08) * texture
    eosin += np.float32(0.04)
    eosin *= tissue
    hema = np.float32(0.04) * tissue

    g_lumen, g_band = render_lumens(layout.glands, shape, mpp, ring=True)
    v_lumen, _ = render_lumens(layout.vessels, shape, mpp, ring=False)
    clear = 1 - np.maximum(g_lumen, v_lumen)
    eosin *= clear
    hema *= clear
    eosin += g_band * (np.float32(0.26) + np.float32(0.04) * texture)
    hema += g_band * np.float32(0.07)
    eosin += v_lumen * (np.float32(0.75) + np.float32(0.15) * patches)
    eosin += render_cytoplasm(layout.cells, shape, mpp) * tissue * clear
    labels = np.zeros(shape, dtype=np.int32) if return_labels else None
    hema += render_nuclei(layout.cells, shape, mpp, texture, labels)
    np.clip(eosin, 0, 2.0, out=eosin)
    return hema, eosin, labels
