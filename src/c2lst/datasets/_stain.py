"""H&E stain presets and Beer-Lambert mixing of hematoxylin / eosin optical densities into RGB."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

#: Named stain styles. ``local`` uses the hematoxylin vector of :func:`skimage.color.rgb2hed`
#: (Ruifrok & Johnston) and a pink eosin close to measured H&E slides; the two
#: ``institution_*`` presets emulate other scanners / staining protocols (different dye colours,
#: dye strength, focus blur and glass tint) so a central corpus can differ from the local slide.
_STAIN_FIELDS = ("hematoxylin", "eosin", "h_intensity", "e_intensity", "blur_um", "background", "noise")
STAIN_PRESETS: dict[str, dict[str, Any]] = {
    name: dict(zip(_STAIN_FIELDS, row, strict=True))
    for name, row in {
        #                  hematoxylin RGB OD      eosin RGB OD         h    e    blur  glass background     noise
        "local":         ((0.65, 0.70, 0.29), (0.17, 0.85, 0.49), 1.0, 1.0, 0.4, (242.0, 240.0, 244.0), 2.0),
        "institution_a": ((0.55, 0.73, 0.40), (0.10, 0.95, 0.30), 1.3, 0.8, 1.2, (233.0, 229.0, 238.0), 3.0),
        "institution_b": ((0.72, 0.64, 0.26), (0.05, 0.88, 0.47), 0.8, 1.3, 0.0, (250.0, 246.0, 238.0), 1.5),
    }.items()
}  # fmt: skip

_VECTOR_KEYS = ("hematoxylin", "eosin")
_SCALAR_KEYS = ("h_intensity", "e_intensity", "blur_um", "noise")
_ALLOWED_KEYS = ("base", "name", "background", *_VECTOR_KEYS, *_SCALAR_KEYS)


def resolve_stain(stain: str | Mapping[str, Any]) -> dict[str, Any]:
    """Return the full, validated stain parameter dict for a preset name or an override mapping.

    A mapping overrides the preset named by its optional ``"base"`` key (default ``"local"``); its
    ``"name"`` defaults to ``"custom"``. Vectors are normalised to unit length.
    """
    if isinstance(stain, str):
        if stain not in STAIN_PRESETS:
            raise ValueError(
                f"`stain={stain!r}` is not a known stain preset; use one of {sorted(STAIN_PRESETS)} "
                "or a mapping of parameters to override."
            )
        params: dict[str, Any] = {"name": stain, **STAIN_PRESETS[stain]}
    elif isinstance(stain, Mapping):
        unknown = sorted(set(map(str, stain)) - set(_ALLOWED_KEYS))
        if unknown:
            raise ValueError(
                f"`stain` has unknown parameter(s) {unknown}; allowed keys are {sorted(_ALLOWED_KEYS)}."
            )
        base = stain.get("base", "local")
        if base not in STAIN_PRESETS:
            raise ValueError(
                f"`stain['base']={base!r}` is not a known stain preset; use one of {sorted(STAIN_PRESETS)}."
            )
        params = {"name": "custom", **STAIN_PRESETS[base]}
        params.update({k: v for k, v in stain.items() if k != "base"})
        if not isinstance(params["name"], str):
            raise TypeError(f"`stain['name']` must be a string, got {params['name']!r}.")
    else:
        raise TypeError(
            f"`stain` must be a preset name ({sorted(STAIN_PRESETS)}) or a mapping, got {type(stain).__name__}."
        )

    out: dict[str, Any] = {"name": params["name"]}
    for key in _VECTOR_KEYS:
        vec = np.asarray(params[key], dtype=np.float64)
        if vec.shape != (3,) or not np.all(np.isfinite(vec)) or np.any(vec < 0) or vec.sum() <= 0:
            raise ValueError(
                f"`stain[{key!r}]` must be 3 non-negative optical densities (r, g, b), got {params[key]!r}."
            )
        out[key] = vec / np.linalg.norm(vec)
    bg = np.asarray(params["background"], dtype=np.float64)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)) or np.any(bg <= 0) or np.any(bg > 255):
        raise ValueError(
            f"`stain['background']` must be 3 grey levels in (0, 255], got {params['background']!r}."
        )
    out["background"] = bg
    for key in _SCALAR_KEYS:
        val = params[key]
        if isinstance(val, bool) or not isinstance(val, int | float | np.integer | np.floating):
            raise TypeError(f"`stain[{key!r}]` must be a number, got {val!r}.")
        if not np.isfinite(val) or val < 0:
            raise ValueError(f"`stain[{key!r}]` must be a finite number >= 0, got {val!r}.")
        out[key] = float(val)
    return out


def mix_stains(
    h_od: np.ndarray, e_od: np.ndarray, stain: Mapping[str, Any], *, mpp: float, rng: np.random.Generator
) -> np.ndarray:
    """Turn hematoxylin / eosin optical-density maps ``(y, x)`` into an RGB uint8 image ``(3, y, x)``.

    Beer-Lambert: ``I_c = I0_c * 10 ** -(h * H_c + e * E_c)``, with optional Gaussian focus blur of the
    dye maps and additive sensor noise.
    """
    sigma = stain["blur_um"] / mpp
    h = h_od * np.float32(stain["h_intensity"])
    e = e_od * np.float32(stain["e_intensity"])
    if sigma > 0.05:
        h = ndi.gaussian_filter(h, sigma, truncate=3.0)
        e = ndi.gaussian_filter(e, sigma, truncate=3.0)
    out = np.empty((3, *h.shape), dtype=np.uint8)
    ln10 = np.float32(np.log(10.0))
    for c in range(3):
        od = h * np.float32(stain["hematoxylin"][c] * ln10) + e * np.float32(stain["eosin"][c] * ln10)
        chan = np.exp(-od, out=od)
        chan *= np.float32(stain["background"][c])
        if stain["noise"] > 0:
            chan += rng.standard_normal(chan.shape, dtype=np.float32) * np.float32(stain["noise"])
        np.clip(chan, 0, 255, out=chan)
        out[c] = np.rint(chan).astype(np.uint8)
    return out


def stain_record(stain: Mapping[str, Any]) -> dict[str, Any]:
    """Return the stain parameters as zarr-serialisable values (str, float, float arrays)."""
    rec: dict[str, Any] = {"name": str(stain["name"])}
    for key in (*_VECTOR_KEYS, "background"):
        rec[key] = np.asarray(stain[key], dtype=np.float64)
    for key in _SCALAR_KEYS:
        rec[key] = float(stain[key])
    return rec
