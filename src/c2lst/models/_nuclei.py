"""Nuclei of H&E patches: hematoxylin threshold, segmentation on one mosaic, vectorised region statistics.

The engine of the nuclei columns of :func:`c2lst.models.features.morphometric_features` and of
:func:`~c2lst.models.features.segment_nuclei` (the public entry points live in :mod:`c2lst.models.features`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters, morphology, segmentation


def _otsu(hs: np.ndarray) -> float:
    if np.ptp(hs) == 0:
        return float(hs.flat[0])
    return float(filters.threshold_otsu(hs))


def _smooth(h: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(h, sigma=(0, sigma, sigma), mode="nearest") if sigma > 0 else h


def _mosaic(stack: np.ndarray) -> np.ndarray:
    """Stack ``(n, S, S)`` into ``(n * (S + 2), S + 2)``, each patch framed by zeros on all four sides.

    The frame makes every patch's border look the same to the distance transform and the watershed (background
    beyond each edge), so a patch is segmented the same way wherever it sits in the mosaic: alone, first or
    among others.
    """
    n, s, w = stack.shape
    return np.pad(stack, ((0, 0), (1, 1), (1, 1))).reshape(n * (s + 2), w + 2)


def _segment(h: np.ndarray, threshold: float | None, sigma: float, min_area: int) -> dict[str, np.ndarray]:
    labels, mosaic_h, thr = _label_nuclei(h, threshold, sigma, min_area)
    return _region_stats(labels, mosaic_h, h.shape[1], thr)


def _label_nuclei(
    h: np.ndarray, threshold: float | None, sigma: float, min_area: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Label nuclei of a hematoxylin stack ``(n, S, S)`` on its mosaic; return labels, mosaic and threshold."""
    hs = _smooth(h, sigma)
    thr = _otsu(hs) if threshold is None else float(threshold)
    mask = _mosaic(hs > thr)
    cc, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    small = np.bincount(cc.ravel()) < min_area
    small[0] = True
    mask &= ~small[cc]
    dist = ndimage.distance_transform_edt(mask)
    # one marker per regional maximum of the distance map deeper than 1 px (merges ridge plateaus)
    markers, n_markers = ndimage.label(morphology.h_maxima(dist, 1.0), structure=np.ones((3, 3), bool))
    # ties on distance plateaus are broken by the pixel's place inside its own framed patch (not by the flooding
    # order of the whole mosaic), so a patch splits its touching nuclei the same way alone or among others;
    # the step (< half the smallest gap between two distinct distances) never reorders distinct depths
    n_px = (h.shape[1] + 2) * (h.shape[2] + 2)
    local = np.arange(mask.size, dtype=np.float64).reshape(mask.shape) % n_px
    labels = segmentation.watershed(-dist + local * (0.2 / (max(h.shape[1:]) + 2) / n_px), markers, mask=mask)
    orphan = mask & (labels == 0)  # components without a marker keep their own label
    if orphan.any():
        extra, _ = ndimage.label(orphan, structure=np.ones((3, 3), bool))
        labels[orphan] = extra[orphan] + n_markers
    return labels, _mosaic(h), thr


def _region_stats(labels: np.ndarray, intensity: np.ndarray, s: int, thr: float) -> dict[str, np.ndarray]:
    """Area, eccentricity (regionprops definition) and mean intensity of every label, plus its patch."""
    lab = labels.ravel()
    keep = lab > 0
    lab = lab[keep]
    rows, cols = np.divmod(np.flatnonzero(keep), labels.shape[1])
    patch_of, rows = np.divmod(rows, s + 2)  # rows inside the framed patch: the same sums wherever it sits
    rows = rows.astype(np.float64)
    cols = cols.astype(np.float64)
    n_lab = int(labels.max()) + 1

    def total(w=None):
        return np.bincount(lab, weights=w, minlength=n_lab)[1:]

    area = total()
    present = area > 0
    safe_area = np.maximum(area, 1.0)
    # two passes (centroid, then central moments) avoid cancellation
    mr_all, mc_all = total(rows) / safe_area, total(cols) / safe_area
    dr = rows - mr_all[lab - 1]
    dc = cols - mc_all[lab - 1]
    vr = (total(dr**2) / safe_area)[present]
    vc = (total(dc**2) / safe_area)[present]
    cv = (total(dr * dc) / safe_area)[present]
    patch = np.zeros(n_lab, np.int64)
    patch[lab] = patch_of  # a label never leaves its framed patch
    area = area[present]

    def mean(w):
        return total(w)[present] / area

    half = np.sqrt(((vr - vc) / 2.0) ** 2 + cv**2)
    l1 = (vr + vc) / 2.0 + half
    l2 = np.maximum((vr + vc) / 2.0 - half, 0.0)
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1.0 - l2 / np.where(l1 > 0, l1, 1.0), 0.0, 1.0)), 0.0)
    return {
        "patch": patch[1:][present],
        "area": area,
        "eccentricity": ecc,
        "intensity_mean": mean(intensity.ravel()[keep].astype(np.float64)),
        "threshold": np.asarray(thr),
    }


def _nuclei_features(h: np.ndarray, threshold: float | None, sigma: float, min_area: int) -> np.ndarray:
    n, s = h.shape[:2]
    nuc = _segment(h, threshold, sigma, min_area)
    idx = nuc["patch"]
    count = np.bincount(idx, minlength=n).astype(np.float64)
    safe = np.maximum(count, 1.0)
    area_sum = np.bincount(idx, weights=nuc["area"], minlength=n)
    area_mean = area_sum / safe
    area_sq = np.bincount(idx, weights=nuc["area"] ** 2, minlength=n) / safe
    area_std = np.sqrt(np.maximum(area_sq - area_mean**2, 0.0))
    ecc = np.bincount(idx, weights=nuc["eccentricity"], minlength=n) / safe
    # hematoxylin mean over all nuclear pixels (area-weighted mean of the per-nucleus means)
    h_sum = np.bincount(idx, weights=nuc["intensity_mean"] * nuc["area"], minlength=n)
    h_mean = h_sum / np.maximum(area_sum, 1.0)
    frac = area_sum / (s * s)
    return np.stack([count, area_mean, area_std, ecc, h_mean, frac], axis=1)
