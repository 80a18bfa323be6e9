"""Small hand-made SpatialData objects for the ``pp`` tests (known patterns, known transforms)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Identity


def pattern(h: int, w: int) -> np.ndarray:
    """Return a (3, h, w) uint8 image whose pixels encode their position (R = x, G = y, B = a hash)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (7 * xx + 13 * yy) % 256]).astype(np.uint8)


def image(arr, transform=None, *, cs="global", scale_factors=None, chunks=64, extra_cs=None):
    """Parse a (c, y, x) array into an image element registered in ``cs`` (and ``extra_cs``)."""
    ts = {cs: transform if transform is not None else Identity()}
    ts.update(extra_cs or {})
    return Image2DModel.parse(
        arr, dims=("c", "y", "x"), transformations=ts, scale_factors=scale_factors, chunks=chunks
    )


def circles(centres, radius, transform=None, *, cs="global", index=None, extra_cs=None):
    centres = np.asarray(centres, dtype=float)
    n = len(centres)
    ts = {cs: transform if transform is not None else Identity()}
    ts.update(extra_cs or {})
    return ShapesModel.parse(
        centres,
        geometry=0,
        radius=np.broadcast_to(np.asarray(radius, dtype=float), (n,)).copy(),
        index=pd.Index(np.arange(n) if index is None else index),
        transformations=ts,
    )


def table(n, region="spots", *, instance_ids=None, obs_names=None, uns=None):
    ids = np.arange(n) if instance_ids is None else np.asarray(instance_ids)
    obs = pd.DataFrame(
        {"region": pd.Categorical([region] * n), "spot_id": ids},
        index=[f"s{i}" for i in range(n)] if obs_names is None else obs_names,
    )
    adata = ad.AnnData(np.ones((n, 2), dtype=np.float32), obs=obs)
    adata.uns.update(uns or {})
    return TableModel.parse(adata, region=region, region_key="region", instance_key="spot_id")


def make_sdata(img, centres, radius, *, img_t=None, shapes_t=None, cs="global", scale_factors=None, **tkw):
    """One image ``he``, circles ``spots`` and a table ``table`` annotating them, all in ``cs``."""
    return SpatialData(
        images={"he": image(img, img_t, cs=cs, scale_factors=scale_factors)},
        shapes={"spots": circles(centres, radius, shapes_t, cs=cs)},
        tables={"table": table(len(centres), **tkw)},
    )


def linear_field_image(a_img: np.ndarray, roi: float = 300.0):
    """Return (image, transform) whose pixel values are a linear function of the coordinate-system position.

    ``a_img`` is a 3x3 (x, y) affine from image pixels to the coordinate system; a translation is added so
    that the image covers the coordinate-system square ``[0, roi]^2``. Value at cs point (x, y):
    ``field(x, y)``. Bilinear resampling of a linear field is exact, so any correct resampler reproduces it.
    """
    corners = np.array([[0, 0, 1], [roi, 0, 1], [0, roi, 1], [roi, roi, 1]], dtype=float).T
    inv = np.linalg.inv(a_img) @ corners
    mn, mx = inv[:2].min(axis=1) - 2, inv[:2].max(axis=1) + 2
    shift = np.array([[1, 0, mn[0]], [0, 1, mn[1]], [0, 0, 1]])
    full = a_img @ shift
    w, h = int(np.ceil(mx[0] - mn[0])), int(np.ceil(mx[1] - mn[1]))
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx = full[0, 0] * xx + full[0, 1] * yy + full[0, 2]
    cy = full[1, 0] * xx + full[1, 1] * yy + full[1, 2]
    img = np.clip(np.rint(np.stack(field(cx, cy))), 0, 255).astype(np.uint8)
    return img, Affine(full, input_axes=("x", "y"), output_axes=("x", "y"))


def field(x, y):
    """Linear RGB field on the coordinate system (values stay in 0..255 on [0, 300]^2)."""
    return 0.5 * x + 20, 0.4 * y + 30, 0.2 * x + 0.2 * y + 60


def expected_linear_patch(centre, extent, size):
    """Return the exact patch of :func:`field` around ``centre`` (cs units), oriented like the cs axes."""
    g = (np.arange(size) + 0.5) / size - 0.5
    xx, yy = np.meshgrid(centre[0] + g * extent, centre[1] + g * extent)
    return np.stack(field(xx, yy), axis=-1)


