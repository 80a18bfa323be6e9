"""Offline patch features: morphometric (nuclei, colour, texture) or the output of any torch module.

The morphometric feature space needs no download. For each RGB patch (uint8, ``(S, S, 3)``) it records

* **nuclei** (6): hematoxylin is separated by colour deconvolution (:func:`skimage.color.rgb2hed`), smoothed
  (Gaussian, ``sigma`` px), thresholded (Otsu over the pooled pixels of the reference set unless a threshold is
  given), cleaned of objects smaller than ``min_area`` px, split by a distance-transform watershed and
  measured like :func:`skimage.measure.regionprops` (see :func:`segment_nuclei`): ``n_nuclei``, ``nuclei_area_mean``,
  ``nuclei_area_std``, ``nuclei_eccentricity_mean``, ``nuclei_hematoxylin_mean`` (mean hematoxylin optical
  density inside nuclei) and ``nuclei_area_fraction``. Statistics of a patch without nuclei are 0.
* **colour** (12): per-channel mean and standard deviation in RGB (scaled to [0, 1]) and in HED.
* **texture** (3): grey-level co-occurrence contrast and homogeneity (16 grey levels, distance 1, averaged
  over 0° and 90°; identical to :func:`skimage.feature.graycoprops` on the symmetric normalised matrix) and
  the mean squared Sobel gradient magnitude of the grey image.

All patches of a call are processed as one mosaic (patches stacked, each framed by background), so
labelling and watershed are single library calls and region statistics one vectorised pass
(:mod:`c2lst.models._nuclei`): 1000 patches of 64 px take about two seconds on one CPU core. A patch's
features do not depend on the other patches of the call (nor on its place among them).

Distances between feature sets (FID, KID) live in :mod:`c2lst.metrics`. This module is engine
code: numpy, scipy, scikit-image and torch only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage import color

from .._logging import progress as _progress
from .._utils import check_patches, check_positive_int
from ._nuclei import _label_nuclei, _nuclei_features, _otsu, _region_stats, _segment, _smooth  # noqa: F401 (tests)

NUCLEI_FEATURES: tuple[str, ...] = (
    "n_nuclei",
    "nuclei_area_mean",
    "nuclei_area_std",
    "nuclei_eccentricity_mean",
    "nuclei_hematoxylin_mean",
    "nuclei_area_fraction",
)
COLOUR_FEATURES: tuple[str, ...] = tuple(
    f"{space}_{ch}_{stat}"
    for space, chans in (("rgb", "rgb"), ("hed", "hed"))
    for ch in chans
    for stat in ("mean", "std")
)
TEXTURE_FEATURES: tuple[str, ...] = ("glcm_contrast", "glcm_homogeneity", "gradient_energy")
MORPHOMETRIC_FEATURE_NAMES: tuple[str, ...] = NUCLEI_FEATURES + COLOUR_FEATURES + TEXTURE_FEATURES
"""Names of the columns returned by :func:`morphometric_features`, in order."""

_GLCM_LEVELS = 16


def hematoxylin(patches: np.ndarray) -> np.ndarray:
    """Return the hematoxylin optical density of uint8 RGB patches, shape ``(n, S, S)``.

    Parameters
    ----------
    patches
        uint8 array ``(n, S, S, 3)``.

    Returns
    -------
    float array ``(n, S, S)`` from :func:`skimage.color.rgb2hed`.

    Examples
    --------
    >>> h = hematoxylin(np.full((1, 8, 8, 3), 255, np.uint8))
    >>> float(h.max()) < 1e-6
    True
    """
    patches = check_patches(patches)
    return color.rgb2hed(patches)[..., 0]


def hematoxylin_threshold(patches: np.ndarray, *, sigma: float = 1.0) -> float:
    """Return the Otsu threshold of the smoothed hematoxylin channel pooled over ``patches``.

    Compute it once on a reference set (the real patches) and pass it as ``threshold=`` to
    :func:`morphometric_features` for every set you compare, so that all sets share one nuclei definition.

    Parameters
    ----------
    patches
        uint8 array ``(n, S, S, 3)``.
    sigma
        Gaussian smoothing (pixels) applied before thresholding.

    Returns
    -------
    The threshold in hematoxylin optical-density units.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = hematoxylin_threshold(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    >>> isinstance(t, float)
    True
    """
    return _otsu(_smooth(hematoxylin(patches), sigma))


def segment_nuclei(
    patches: np.ndarray,
    *,
    threshold: float | None = None,
    sigma: float = 1.0,
    min_area: int = 4,
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Segment nuclei in every patch and measure them.

    The smoothed hematoxylin channel is thresholded, objects below ``min_area`` px are dropped, touching nuclei
    are split by a watershed on the distance transform (markers: :func:`skimage.morphology.h_maxima`, h = 1 px),
    and each nucleus is measured. The measurements equal those of :func:`skimage.measure.regionprops`
    (``area``, ``eccentricity``, ``intensity_mean`` on the hematoxylin image) but are computed for all nuclei
    at once from pixel moments, which is ~100x faster than per-region properties.

    Parameters
    ----------
    patches
        uint8 array ``(n, S, S, 3)``.
    threshold
        Hematoxylin threshold; ``None`` uses :func:`hematoxylin_threshold` of ``patches``.
    sigma
        Gaussian smoothing (pixels) of the hematoxylin channel before thresholding.
    min_area
        Objects smaller than this many pixels are discarded.
    batch_size
        Patches segmented per mosaic (bounds memory). The result does not depend on it: each patch is
        segmented the same way alone or among others.
    progress
        Show a progress bar over patches (when there is more than one chunk of them).

    Returns
    -------
    dict with one entry per nucleus in ``patch`` (index of its patch), ``area``, ``eccentricity``,
    ``intensity_mean``, and the scalar ``threshold`` used (0-d array).

    Examples
    --------
    >>> nuc = segment_nuclei(np.full((2, 16, 16, 3), 255, np.uint8), threshold=0.05)
    >>> nuc["patch"].size
    0
    """
    patches = check_patches(patches)
    if threshold is None:
        threshold = _otsu(_smooth(color.rgb2hed(patches)[..., 0], sigma))
    parts = []
    batch_size = check_positive_int(batch_size, "batch_size")
    for start, stop in _chunks(len(patches), batch_size, progress, "nuclei"):
        part = _segment(color.rgb2hed(patches[start:stop])[..., 0], threshold, sigma, min_area)
        part["patch"] = part["patch"] + start
        parts.append(part)
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("patch", "area", "eccentricity", "intensity_mean")}
    out["threshold"] = parts[0]["threshold"] if parts else np.asarray(float(threshold))
    return out


def _colour_features(patches: np.ndarray, hed: np.ndarray) -> np.ndarray:
    cols = []
    for img in (patches.astype(np.float32) / 255.0, hed.astype(np.float32)):
        mean = img.mean(axis=(1, 2), dtype=np.float64)
        std = img.std(axis=(1, 2), dtype=np.float64)
        cols.append(np.stack([mean, std], axis=2).reshape(len(patches), 6))
    return np.concatenate(cols, axis=1).astype(np.float64)


def _texture_features(patches: np.ndarray) -> np.ndarray:
    grey = color.rgb2gray(patches)  # float in [0, 1], shape (n, S, S)
    q = np.minimum((grey * _GLCM_LEVELS).astype(np.int16), _GLCM_LEVELS - 1)
    d2 = [
        ((q[:, :, 1:] - q[:, :, :-1]) ** 2).reshape(len(q), -1).astype(np.float64),  # 0°
        ((q[:, 1:, :] - q[:, :-1, :]) ** 2).reshape(len(q), -1).astype(np.float64),  # 90°
    ]
    contrast = np.mean([d.mean(axis=1) for d in d2], axis=0)
    homogeneity = np.mean([(1.0 / (1.0 + d)).mean(axis=1) for d in d2], axis=0)
    # Sobel within each patch: ndimage.sobel on the (n, S, S) stack would also smooth across the patch axis
    # and mix every patch with its neighbours in the batch
    d, s = [-1.0, 0.0, 1.0], [1.0, 2.0, 1.0]
    gx = ndimage.correlate1d(ndimage.correlate1d(grey, d, axis=1, mode="nearest"), s, axis=2, mode="nearest")
    gy = ndimage.correlate1d(ndimage.correlate1d(grey, d, axis=2, mode="nearest"), s, axis=1, mode="nearest")
    energy = (gx**2 + gy**2).mean(axis=(1, 2))
    return np.stack([contrast, homogeneity, energy], axis=1)


def morphometric_features(
    patches: np.ndarray,
    *,
    threshold: float | None = None,
    sigma: float = 1.0,
    min_area: int = 4,
    batch_size: int = 1024,
    progress: bool = False,
) -> np.ndarray:
    """Compute the offline morphometric features of RGB patches.

    Parameters
    ----------
    patches
        uint8 array ``(n, S, S, 3)``.
    threshold
        Hematoxylin threshold for nuclei; ``None`` uses :func:`hematoxylin_threshold` of ``patches``. Pass the
        threshold of a reference set to compare several sets in one feature space.
    sigma
        Gaussian smoothing (pixels) of the hematoxylin channel before thresholding.
    min_area
        Nuclei smaller than this many pixels are discarded.
    batch_size
        Patches segmented per mosaic (bounds memory).
    progress
        Show a progress bar over patches (when there is more than one mosaic of them).

    Returns
    -------
    float64 array ``(n, 21)``; columns are :data:`MORPHOMETRIC_FEATURE_NAMES`.

    Examples
    --------
    >>> x = morphometric_features(np.full((3, 32, 32, 3), 230, np.uint8), threshold=0.05)
    >>> x.shape, float(x[0, 0])
    ((3, 21), 0.0)
    """
    patches = check_patches(patches)
    hed_all = None
    if threshold is None:
        if len(patches) <= batch_size:
            hed_all = color.rgb2hed(patches)
            threshold = _otsu(_smooth(hed_all[..., 0], sigma))
        else:
            threshold = hematoxylin_threshold(patches, sigma=sigma)
    out = np.empty((len(patches), len(MORPHOMETRIC_FEATURE_NAMES)), dtype=np.float64)
    for start, stop in _chunks(len(patches), batch_size, progress, "morphometric features"):
        chunk = patches[start:stop]
        hed = hed_all[start:stop] if hed_all is not None else color.rgb2hed(chunk)
        out[start:stop] = np.concatenate(
            [
                _nuclei_features(hed[..., 0], threshold, sigma, min_area),
                _colour_features(chunk, hed),
                _texture_features(chunk),
            ],
            axis=1,
        )
    return out


def _chunks(n: int, batch_size: int, progress: bool, desc: str):
    """Yield ``(start, stop)`` chunks of ``batch_size`` rows over ``n`` rows, with a bar over rows."""
    step = max(1, int(batch_size))
    with _progress(total=n, enabled=progress and n > step, desc=desc, unit="patch") as bar:
        for start in range(0, n, step):
            stop = min(n, start + step)
            yield start, stop
            bar.update(stop - start)


def check_feature_extractor(module: Any, arg: str = "feature_extractor") -> Any:
    """Return ``module`` when it is a :class:`torch.nn.Module`, else raise a :class:`TypeError` naming ``arg``."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"`{arg}` must be a torch.nn.Module, got {type(module).__name__}.")
    return module


def torch_features(
    patches: np.ndarray, module: Any, *, batch_size: int = 64, device: str | None = None, progress: bool = False
) -> np.ndarray:
    """Embed patches with a user torch module mapping ``(B, 3, H, W)`` float in [0, 1] to ``(B, D)``.

    The module is run in eval mode without gradients; wrap any normalisation it expects (e.g. ImageNet mean
    and std) into the module itself.

    Parameters
    ----------
    patches
        uint8 array ``(n, S, S, 3)``.
    module
        A :class:`torch.nn.Module`.
    batch_size
        Patches per forward pass.
    device
        Torch device; ``None`` uses the module's device.
    progress
        Show a progress bar over batches (when there is more than one).

    Returns
    -------
    float64 array ``(n, D)``.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    >>> torch_features(np.zeros((2, 8, 8, 3), np.uint8), m).shape
    (2, 4)
    """
    import torch

    patches = check_patches(patches)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"the feature extractor must be a torch.nn.Module, got {type(module).__name__}.")
    if device is None:
        param = next(iter(module.parameters()), None) if not _has_lazy(module) else None
        device = param.device if param is not None else "cpu"
    was_training = module.training
    module.eval()
    out = []
    try:
        with torch.no_grad():
            starts = range(0, len(patches), batch_size)
            for start in _progress(starts, enabled=progress and len(starts) > 1, desc="features", unit="batch"):
                x = torch.from_numpy(patches[start : start + batch_size]).to(device)
                x = x.permute(0, 3, 1, 2).float().div_(255.0)
                y = module(x)
                if y.ndim != 2 or y.shape[0] != x.shape[0]:
                    raise ValueError(
                        f"the feature extractor must return (B, D) features, got shape {tuple(y.shape)} for a "
                        f"batch of {x.shape[0]}; add pooling/flatten to the module."
                    )
                out.append(y.detach().double().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(out, axis=0)


def _has_lazy(module: Any) -> bool:
    from torch.nn.parameter import UninitializedParameter

    return any(isinstance(p, UninitializedParameter) for p in module.parameters())
