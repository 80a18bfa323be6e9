"""Small helpers on stacks of RGB patches."""

from __future__ import annotations

import numpy as np
from skimage.transform import resize


def resize_patches(patches: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 patches ``(n, p, p, 3)`` to ``(n, size, size, 3)`` with anti-aliasing, in one call."""
    n, p = patches.shape[:2]
    if p == size:
        return np.ascontiguousarray(patches, dtype=np.uint8)
    if n == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    out = resize(patches, (n, size, size, 3), order=1, anti_aliasing=p > size, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
