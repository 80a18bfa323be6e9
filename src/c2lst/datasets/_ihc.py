"""``ihc_patches``: real histology patches from the IHC image that scikit-image ships."""

from __future__ import annotations

import numpy as np

from .._utils import check_positive_int, check_seed
from ._patches import resize_patches


def ihc_patches(n: int = 256, *, size: int = 32, patch_px: int = 64, seed: int = 0) -> np.ndarray:
    """Cut random patches from :func:`skimage.data.immunohistochemistry` (real tissue, no download).

    The 512x512 image (human colon, IHC with hematoxylin counterstain) ships inside scikit-image.
    Patches of ``patch_px`` pixels are cut at uniformly random positions and resized to ``size``
    pixels with anti-aliasing. They are unpaired: useful to test a central model on real morphology.

    Parameters
    ----------
    n
        Number of patches.
    size
        Side of the returned patches, in pixels.
    patch_px
        Side of the crops in the source image, in pixels (at most 512).
    seed
        Seed of the crop positions.

    Returns
    -------
    uint8 array ``(n, size, size, 3)``.

    Examples
    --------
    >>> import c2lst
    >>> c2lst.datasets.ihc_patches(8, size=16).shape
    (8, 16, 16, 3)
    """
    from skimage.data import immunohistochemistry

    n = check_positive_int(n, "n")
    size = check_positive_int(size, "size")
    patch_px = check_positive_int(patch_px, "patch_px")
    seed = check_seed(seed)
    image = immunohistochemistry()
    if patch_px > min(image.shape[:2]):
        raise ValueError(
            f"`patch_px={patch_px}` exceeds the {image.shape[1]}x{image.shape[0]} source image; pass <= {min(image.shape[:2])}."
        )
    rng = np.random.default_rng(seed)
    y0 = rng.integers(0, image.shape[0] - patch_px + 1, n)
    x0 = rng.integers(0, image.shape[1] - patch_px + 1, n)
    off = np.arange(patch_px)
    crops = image[(y0[:, None] + off)[:, :, None], (x0[:, None] + off)[:, None, :]]
    return resize_patches(crops, size)
