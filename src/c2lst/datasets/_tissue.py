"""Tissue layout of the simulated Visium slide, in microns: spot grid, tissue outline, regions, cells.

Everything here is geometry and random sampling; :mod:`._render` turns it into pixels and
:mod:`._counts` into gene counts. All random draws come from one ``numpy`` generator, in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
COARSE_UM = 10.0  # step of the grid on which smooth fields live
MARGIN_UM = 1.5 * SPOT_PITCH_UM  # spot centre -> image border

#: Cell types, in the column order of ``obsm["c2lst_true_composition"]``.
CELL_TYPES = ("tumor", "lymphocyte", "fibroblast", "macrophage", "endothelial")
TUMOR, LYMPH, FIBRO, MACRO, ENDO = range(len(CELL_TYPES))
N_REGIONS = 4  # the first four types define tissue regions; endothelium lines vessels

# Per type: nuclear semi-major axis (mean, sd) in µm, minor/major ratio range, hematoxylin OD (mean, sd),
# cytoplasm eosin weight, vesicular chromatin (pale centre, dark rim, nucleolus).
NUCLEUS = {
    TUMOR: {"a": (5.6, 0.6), "ratio": (0.62, 0.9), "h": (0.50, 0.06), "cyto": 0.0, "vesicular": True},
    LYMPH: {"a": (2.9, 0.25), "ratio": (0.85, 1.0), "h": (1.05, 0.08), "cyto": 0.03, "vesicular": False},
    FIBRO: {"a": (6.5, 0.8), "ratio": (0.2, 0.3), "h": (0.58, 0.07), "cyto": 0.05, "vesicular": False},
    MACRO: {"a": (4.6, 0.4), "ratio": (0.7, 0.9), "h": (0.40, 0.05), "cyto": 0.2, "vesicular": False},
    ENDO: {"a": (5.5, 0.5), "ratio": (0.22, 0.3), "h": (0.80, 0.07), "cyto": 0.0, "vesicular": False},
}
# Free (non-gland, non-vessel) cells: fraction of lattice sites a region type occupies, and stroma eosin.
_OCCUPANCY = np.array([0.30, 0.85, 0.10, 0.22])
_REGION_EOSIN = np.array([0.22, 0.12, 0.40, 0.30], dtype=np.float32)
_LATTICE_UM = 6.5


@dataclass
class Cells:
    """Nuclei: centre (µm), type, semi-axes (µm), orientation (rad), hematoxylin OD, contour harmonics."""

    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    h: np.ndarray
    harm: np.ndarray  # (n, 4): amplitude/phase of 3rd and 2nd contour harmonic


@dataclass
class Glands:
    """Elliptical lumens (µm); ``ring`` is the width of the epithelial cytoplasm band around them."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    ring: np.ndarray
    harm: np.ndarray


@dataclass
class Layout:
    """Geometry of one simulated slide (µm unless noted)."""

    width_um: float
    height_um: float
    spots_xy: np.ndarray  # (n_spots, 2) µm
    array_row: np.ndarray
    array_col: np.ndarray
    tissue_dist: np.ndarray  # coarse signed distance to the tissue edge (< 0 inside), µm
    proportions: np.ndarray  # coarse (N_REGIONS, gy, gx) regional cell-type proportions
    stroma_eosin: np.ndarray  # coarse stroma eosin level
    fibre_phase: np.ndarray  # coarse stream function; collagen fibres run along its level sets
    smooth_fields: np.ndarray  # coarse (n_fields, gy, gx) standardised fields for spatial genes
    cells: Cells
    glands: Glands
    vessels: Glands


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Return a standardised Gaussian random field on the coarse grid (correlation ~ ``sigma`` cells)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def sample_coarse(field: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Bilinearly interpolate coarse ``field`` (last two axes y, x) at micron positions."""
    coords = np.stack([np.asarray(y_um) / COARSE_UM, np.asarray(x_um) / COARSE_UM])
    if field.ndim == 2:
        return ndi.map_coordinates(field, coords, order=1, mode="nearest")
    return np.stack([ndi.map_coordinates(f, coords, order=1, mode="nearest") for f in field])


def _hex_spots(n_spots: int, rng: np.random.Generator):
    """Pick ``n_spots`` Visium grid positions inside an irregular blob; return it with its outline."""
    dy = SPOT_PITCH_UM * np.sqrt(3) / 2
    r0 = np.sqrt(n_spots * SPOT_PITCH_UM * dy / np.pi) + SPOT_PITCH_UM / 2
    k = np.arange(2, 7)
    amp = rng.uniform(0, 0.25 / k)
    phase = rng.uniform(0, 2 * np.pi, k.size)

    def radius(theta):
        return r0 * (1 + (amp[:, None] * np.cos(k[:, None] * theta[None] + phase[:, None])).sum(0))

    n = int(np.ceil(2 * r0 / dy)) + 3
    rows, cols = np.mgrid[-n : n + 1, -n : n + 1]
    rows, cols = rows.ravel(), cols.ravel()
    x = (cols + 0.5 * (rows % 2)) * SPOT_PITCH_UM
    y = rows * dy
    rho = np.hypot(x, y) / radius(np.arctan2(y, x))
    order = np.lexsort((cols, rows, rho))[:n_spots]
    rho_max = rho[order].max()
    order = order[np.lexsort((cols[order], rows[order]))]  # row-major, like Visium barcodes
    rows, cols, x, y = rows[order], cols[order], x[order], y[order]
    array_row = rows - 2 * (rows.min() // 2)
    array_col = 2 * cols + (rows % 2)
    array_col = array_col - 2 * (array_col.min() // 2)
    return x, y, array_row, array_col, radius, rho_max


def build_layout(n_spots: int, rng: np.random.Generator) -> Layout:
    """Sample the spot grid, tissue outline, regions, glands, vessels and every nucleus."""
    sx, sy, array_row, array_col, radius, rho_max = _hex_spots(n_spots, rng)
    x0, y0 = sx.min() - MARGIN_UM, sy.min() - MARGIN_UM
    width = sx.max() + MARGIN_UM - x0
    height = sy.max() + MARGIN_UM - y0
    spots = np.stack([sx - x0, sy - y0], axis=1)

    gy, gx = int(np.ceil(height / COARSE_UM)) + 1, int(np.ceil(width / COARSE_UM)) + 1
    cy, cx = np.mgrid[0:gy, 0:gx] * COARSE_UM
    px, py = cx + x0, cy + y0  # blob-centred coordinates
    theta = np.arctan2(py, px)
    # signed distance (µm) to an outline ~75 µm outside the outermost spot centres, with a rough edge
    gap = SPOT_DIAMETER_UM / 2 + 60.0
    dist = np.hypot(px, py) - rho_max * radius(theta.ravel()).reshape(theta.shape) - gap
    dist = dist + 10.0 * np.clip(smooth_field(rng, (gy, gx), 2.0), -3, 3)
    border = np.minimum.reduce([cx, cy, width - cx, height - cy]) - 30.0
    dist = np.maximum(dist, -border)

    # regions: softmax of smooth fields with different correlation lengths (µm) and offsets
    logits = np.stack(
        [
            2.2 * smooth_field(rng, (gy, gx), 250 / COARSE_UM) + 0.3,
            2.8 * smooth_field(rng, (gy, gx), 110 / COARSE_UM) - 1.6,
            1.2 * smooth_field(rng, (gy, gx), 200 / COARSE_UM) + 0.4,
            1.0 * smooth_field(rng, (gy, gx), 150 / COARSE_UM) - 0.9,
        ]
    )
    props = np.exp(1.5 * (logits - logits.max(0)))
    props /= props.sum(0)
    stroma_eosin = np.tensordot(_REGION_EOSIN, props, axes=1).astype(np.float32)
    alpha = rng.uniform(0, np.pi)
    fibre_phase = cx * np.cos(alpha) + cy * np.sin(alpha) + 60.0 * smooth_field(rng, (gy, gx), 15.0)
    smooth_fields = np.stack(
        [
            (cx - width / 2) / (width / 2),
            (cy - height / 2) / (height / 2),
            smooth_field(rng, (gy, gx), 300 / COARSE_UM),
            smooth_field(rng, (gy, gx), 150 / COARSE_UM),
        ]
    )
    smooth_fields = (smooth_fields - smooth_fields.mean((1, 2), keepdims=True)) / (
        smooth_fields.std((1, 2), keepdims=True) + 1e-12
    )

    dist = dist.astype(np.float32)
    props = props.astype(np.float32)
    fibre_phase = fibre_phase.astype(np.float32)
    cells, glands, vessels = _place_structures(width, height, dist, props, fibre_phase, rng)
    return Layout(
        width_um=float(width),
        height_um=float(height),
        spots_xy=spots,
        array_row=array_row.astype(np.int64),
        array_col=array_col.astype(np.int64),
        tissue_dist=dist,
        proportions=props,
        stroma_eosin=stroma_eosin,
        fibre_phase=fibre_phase,
        smooth_fields=smooth_fields.astype(np.float32),
        cells=cells,
        glands=glands,
        vessels=vessels,
    )


def _jittered_lattice(width, height, step, jitter, rng):
    ny, nx = int(height // step) + 1, int(width // step) + 1
    yy, xx = np.mgrid[0:ny, 0:nx]
    x = (xx.ravel() + 0.5) * step + rng.uniform(-jitter, jitter, xx.size)
    y = (yy.ravel() + 0.5) * step + rng.uniform(-jitter, jitter, yy.size)
    return x, y


def _harmonics(rng, n, scale):
    return np.stack(
        [
            rng.uniform(0, scale, n),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0, scale * 0.7, n),
            rng.uniform(0, 2 * np.pi, n),
        ],
        axis=1,
    )


def _ring_positions(g: Glands, i: int, offset: float, spacing: float, rng, jitter: float):
    """Points ``offset`` µm outside lumen ``i``, ~``spacing`` µm apart; return x, y, outward angle."""
    a, b = g.a[i] + offset, g.b[i] + offset
    perim = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))
    n = max(round(float(perim) / spacing), 3)
    t = (np.arange(n) + rng.uniform(-jitter, jitter, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
    u, v = a * np.cos(t), b * np.sin(t)
    c, s = np.cos(g.theta[i]), np.sin(g.theta[i])
    normal = np.arctan2(a * np.sin(t), b * np.cos(t)) + g.theta[i]  # outward normal of the ellipse
    return g.x[i] + u * c - v * s, g.y[i] + u * s + v * c, normal


def _place_structures(w, h, dist, props, fibre_phase, rng) -> tuple[Cells, Glands, Glands]:
    """Place glands, vessels and every nucleus (epithelium, endothelium, free cells)."""
    # glands: lumens ringed by epithelium, where the tumour region dominates; stratified random
    # candidates, thinned greedily so that no two glands overlap
    gx, gy = _jittered_lattice(w, h, 70.0, 35.0, rng)
    ga = rng.uniform(8.0, 24.0, gx.size)
    gb = ga * rng.uniform(0.45, 1.0, gx.size)
    ring = rng.uniform(10.0, 14.0, gx.size)
    extent = ga + ring * np.sqrt(ga / gb)
    p_t = sample_coarse(props[TUMOR], gx, gy)
    keep = (rng.random(gx.size) < np.clip((p_t - 0.3) / 0.4, 0, 0.9)) & (
        sample_coarse(dist, gx, gy) < -(extent + 5)
    )
    keep_idx = np.flatnonzero(keep)
    alive = np.ones(keep_idx.size, dtype=bool)
    if keep_idx.size > 1:
        pts = np.stack([gx[keep_idx], gy[keep_idx]], 1)
        pairs = cKDTree(pts).query_pairs(2 * extent.max() + 6, output_type="ndarray")
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        ext = extent[keep_idx]
        close = np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T) < ext[pairs[:, 0]] + ext[pairs[:, 1]] + 6
        for i, j in pairs[close]:
            if alive[i] and alive[j]:
                alive[j] = False
    sel = keep_idx[alive]
    ng = sel.size
    glands = Glands(
        x=gx[sel],
        y=gy[sel],
        a=ga[sel],
        b=gb[sel],
        theta=rng.uniform(0, np.pi, ng),
        ring=ring[sel],
        harm=_harmonics(rng, ng, 0.08),
    )

    # vessels: small lumens with red cells, lined by flat endothelial nuclei, in stroma / macrophage areas
    vx, vy = _jittered_lattice(w, h, 60.0, 12.0, rng)
    va = rng.uniform(3.5, 9.0, vx.size)
    p_s = sample_coarse(props[FIBRO] + props[MACRO], vx, vy)
    keep = (rng.random(vx.size) < 0.4 * p_s) & (sample_coarse(dist, vx, vy) < -(va + 10))
    if ng:
        d_gland, _ = cKDTree(np.stack([glands.x, glands.y], 1)).query(np.stack([vx, vy], 1))
        keep &= d_gland > 55.0
    nv = int(keep.sum())
    vessels = Glands(
        x=vx[keep],
        y=vy[keep],
        a=va[keep],
        b=va[keep] * rng.uniform(0.5, 1.0, nv),
        theta=rng.uniform(0, np.pi, nv),
        ring=np.full(nv, 2.0),
        harm=_harmonics(rng, nv, 0.05),
    )

    parts_x, parts_y, parts_kind, parts_theta = [], [], [], []
    # epithelial nuclei around glands (columnar: long axis along the outward normal), some stratified
    for i in range(ng):
        for offset, keep_p in ((4.5, 1.0), (11.0, 0.35)):
            x, y, normal = _ring_positions(glands, i, offset, 7.5, rng, 0.15)
            m = rng.random(x.size) < keep_p
            parts_x.append(x[m])
            parts_y.append(y[m])
            parts_kind.append(np.full(m.sum(), TUMOR))
            parts_theta.append(normal[m] + rng.normal(0, 0.15, m.sum()))
    for i in range(nv):
        x, y, normal = _ring_positions(vessels, i, 1.6, 14.0, rng, 0.2)
        parts_x.append(x)
        parts_y.append(y)
        parts_kind.append(np.full(x.size, ENDO))
        parts_theta.append(normal + np.pi / 2)

    # free cells on a jittered lattice, outside glands and vessels
    lx, ly = _jittered_lattice(w, h, _LATTICE_UM, 0.35 * _LATTICE_UM, rng)
    inside = sample_coarse(dist, lx, ly) < -3.0
    for s in (glands, vessels):
        if s.x.size:
            d, j = cKDTree(np.stack([s.x, s.y], 1)).query(np.stack([lx, ly], 1))
            inside &= d > s.a[j] + s.ring[j] * np.sqrt(s.a[j] / s.b[j]) + 2.0
    lx, ly = lx[inside], ly[inside]
    p = sample_coarse(props, lx, ly) * _OCCUPANCY[:, None]
    occ = p.sum(0)
    u = rng.random(lx.size)
    m = u < occ
    cum = np.cumsum(p[:, m], axis=0) / occ[m]
    kind = (rng.random(int(m.sum())) > cum).sum(0)
    lx, ly = lx[m], ly[m]
    phase_grad_y, phase_grad_x = np.gradient(fibre_phase)
    fibre_dir = (
        np.arctan2(sample_coarse(phase_grad_y, lx, ly), sample_coarse(phase_grad_x, lx, ly)) + np.pi / 2
    )
    free_theta = np.where(
        kind == FIBRO, fibre_dir + rng.normal(0, 0.12, lx.size), rng.uniform(0, np.pi, lx.size)
    )
    parts_x.append(lx)
    parts_y.append(ly)
    parts_kind.append(kind)
    parts_theta.append(free_theta)

    x = np.concatenate(parts_x)
    y = np.concatenate(parts_y)
    kind = np.concatenate(parts_kind).astype(np.int64)
    theta = np.concatenate(parts_theta)
    inside = (x > 1) & (y > 1) & (x < w - 1) & (y < h - 1)
    x, y, kind, theta = x[inside], y[inside], kind[inside], theta[inside]
    n = x.size
    a = np.empty(n)
    ratio = np.empty(n)
    hval = np.empty(n)
    for t, spec in NUCLEUS.items():
        m = kind == t
        k = int(m.sum())
        a[m] = np.clip(rng.normal(*spec["a"], k), 0.6 * spec["a"][0], 1.5 * spec["a"][0])
        ratio[m] = rng.uniform(*spec["ratio"], k)
        hval[m] = np.clip(rng.normal(*spec["h"], k), 0.15, 2.0)
    cells = Cells(x=x, y=y, kind=kind, a=a, b=a * ratio, theta=theta, h=hval, harm=_harmonics(rng, n, 0.07))
    return cells, glands, vessels


def spot_cell_counts(layout: Layout) -> np.ndarray:
    """Return ``(n_spots, n_types)`` counts of nuclei whose centre lies under each spot."""
    cells = layout.cells
    counts = np.zeros((layout.spots_xy.shape[0], len(CELL_TYPES)), dtype=np.int64)
    if cells.x.size == 0:
        return counts
    tree = cKDTree(np.stack([cells.x, cells.y], 1))
    hits = tree.query_ball_point(layout.spots_xy, r=SPOT_DIAMETER_UM / 2)
    for i, idx in enumerate(hits):
        if idx:
            counts[i] = np.bincount(cells.kind[idx], minlength=len(CELL_TYPES))
    return counts
