"""Read RGB images (PNG / JPEG / TIFF / Aperio SVS) and their microns-per-pixel when recorded."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs")
_TIFF_SUFFIXES = (".tif", ".tiff", ".svs")


def check_file(path, name: str, suffixes: tuple[str, ...]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, raising when it is missing or of the wrong type."""
    if not isinstance(path, str | Path):
        raise TypeError(f"`{name}` must be a path (str or Path), got {type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"`{name}={str(path)!r}` does not exist or is not a file; pass an existing file."
        )
    if path.suffix.lower() not in suffixes:
        raise ValueError(
            f"`{name}={str(path)!r}` has suffix {path.suffix!r}; supported suffixes are {list(suffixes)}."
        )
    return path


def _as_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(
            f"{str(path)!r} holds an image of shape {arr.shape}; an RGB(A) image (y, x, 3|4) is required."
        )
    if arr.dtype != np.uint8:
        raise ValueError(f"{str(path)!r} holds {arr.dtype} pixels; 8-bit RGB (uint8) is required.")
    return np.ascontiguousarray(arr[..., :3])


def _tiff_mpp(tif) -> float | None:
    page = tif.pages[0]
    match = re.search(r"\bMPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", page.description or "")
    if match:
        return float(match.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num > 0 and den > 0 and unit in (2, 3):  # inch, centimetre
            return (25400.0 if unit == 2 else 10000.0) * den / num
    return None


def read_rgb(path: Path) -> tuple[np.ndarray, float | None]:
    """Return the full-resolution RGB uint8 image ``(y, x, 3)`` of ``path`` and its µm/px (or ``None``).

    PNG / JPEG are read with Pillow (no µm/px). TIFF and Aperio SVS are read with ``tifffile`` (level 0 of
    the first series); µm/px comes from the Aperio ``MPP =`` description entry or the resolution tags.
    """
    if path.suffix.lower() in _TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            arr = tif.series[0].levels[0].asarray()
            mpp = _tiff_mpp(tif)
        return _as_rgb(np.asarray(arr), path), mpp
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode not in ("RGB", "RGBA"):
            raise ValueError(f"{str(path)!r} is a {im.mode!r} image; an RGB(A) image is required.")
        arr = np.asarray(im)
    return _as_rgb(arr, path), None


def read_spots_table(h5ad_path: Path, where: str):
    """Read an ``.h5ad`` of spots and its ``obsm["spatial"]`` centres; ``where`` says in which pixels they are.

    Returns ``(adata, xy)`` with ``xy`` float64 ``(n_spots, 2)``; a missing or non-finite ``obsm["spatial"]`` is an
    error naming the file.
    """
    import anndata as ad

    adata = ad.read_h5ad(h5ad_path)
    if "spatial" not in adata.obsm:
        raise KeyError(
            f"{str(h5ad_path)!r} has no `obsm['spatial']` (keys: {sorted(adata.obsm)}); spot centres (x, y) in "
            f"{where} are required there."
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.all(np.isfinite(xy)):
        raise ValueError(
            f"`obsm['spatial']` of {str(h5ad_path)!r} must be finite (n_spots, 2) x, y; got shape {xy.shape}."
        )
    return adata, xy
