"""Build SpatialData elements (image, circles, table) one way for the datasets and for synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity

COORDINATE_SYSTEM = "global"
CHUNKS = 1024


def image_element(rgb_cyx: np.ndarray, *, coordinate_system: str = COORDINATE_SYSTEM, pyramid: bool = True):
    """Return an RGB ``Image2DModel`` (c, y, x; c = r, g, b); with ``pyramid``, 1/2 and 1/8 levels when large."""
    short = min(rgb_cyx.shape[1:])
    scale_factors = [2, 4] if short >= 256 else ([2] if short >= 64 else None)
    if not pyramid:
        scale_factors = None
    return Image2DModel.parse(
        rgb_cyx,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=scale_factors,
        chunks=CHUNKS,
        transformations={coordinate_system: Identity()},
    )


def spots_element(xy: np.ndarray, radius: float, *, coordinate_system: str = COORDINATE_SYSTEM):
    """Return circles (``ShapesModel``) at pixel ``xy`` with index ``0..n-1`` and a ``radius`` column."""
    n = xy.shape[0]
    return ShapesModel.parse(
        np.asarray(xy, dtype=np.float64),
        geometry=0,
        radius=np.full(n, float(radius)),
        index=pd.RangeIndex(n),
        transformations={coordinate_system: Identity()},
    )


def annotate_table(adata: AnnData, region: str) -> AnnData:
    """Link ``adata`` row ``i`` to circle ``i`` of shapes ``region`` (changing ``adata.obs``); return the parsed table."""
    adata.obs["spot_id"] = np.arange(adata.n_obs, dtype=np.int64)
    adata.obs["region"] = pd.Categorical([region] * adata.n_obs)
    return TableModel.parse(adata, region=region, region_key="region", instance_key="spot_id")
