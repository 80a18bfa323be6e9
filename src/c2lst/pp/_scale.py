"""The physical scale of a table's spots: micrometres per unit of the shapes' intrinsic coordinates.

:func:`extract_patches` needs it to turn ``patch_um`` into shapes units. It comes, in order, from the ``mpp=``
argument, the table's ``uns["c2lst"]["scale"]`` record (or the simulator's ``uns["c2lst"]["simulation"]["mpp"]``),
what spatialdata-io's readers lay out, and only then from the assumption that spots are 55 µm Visium spots
(with a warning). Metadata only: nothing here reads pixels.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from .. import _records as records
from .._logging import logger

VISIUM_SPOT_UM = 55.0
#: Space Ranger names Visium HD bin tables and shapes ``square_002um``, ``square_008um``, ``square_016um``...
_HD_BIN = re.compile(r"square_(\d{3})um")


def check_mpp(mpp: Any) -> float | None:
    """Validate ``mpp=`` (micrometres per shapes unit): ``None`` or a positive finite number."""
    if mpp is None:
        return None
    if isinstance(mpp, bool) or not isinstance(mpp, int | float | np.integer | np.floating):
        raise TypeError(
            f"`mpp` must be a number (micrometres per unit of the shapes' coordinates) or None, got {mpp!r}."
        )
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"`mpp` must be positive and finite (micrometres per unit of the shapes' coordinates, e.g. 0.2125 for "
            f"Xenium morphology pixels, ~0.27 for Visium HD full-resolution pixels), got {mpp!r}."
        )
    return float(mpp)


def _spot_side(diameters: np.ndarray, geometry: str) -> float:
    """Median side of square bins: the circle's diameter, or the side of the square of the polygon's area."""
    d = float(np.median(diameters))
    return d if geometry == "circles" else d * float(np.sqrt(np.pi)) / 2.0


def _from_reader(res: Any) -> tuple[float, str] | None:
    """Return the scale that spatialdata-io's layout implies (``res.reader``: the reader it records), else None."""
    reader = res.reader
    for name in (res.shapes_key, res.table_key):
        found = _HD_BIN.search(str(name))
        if found:
            bin_um = float(found.group(1))
            side = _spot_side(res.diameters, res.geometry)
            return bin_um / side, (
                f"Visium HD bin size {bin_um:g} um (from the name {name!r}) over the bin side "
                f"{side:.4g} units (spatialdata-io visium_hd layout)"
            )
    if reader == "xenium":
        return 1.0, "spatialdata-io xenium reader: shapes in micrometres"
    if reader == "visium" and res.geometry == "circles":
        return VISIUM_SPOT_UM / float(np.median(res.diameters)), (
            "spatialdata-io visium reader: circle diameter = spot_diameter_fullres = one 55 um Visium spot"
        )
    return None


def physical_scale(res: Any, mpp: float | None) -> tuple[float, str]:
    """Return ``(um_per_unit, source)`` for the resolved spots; warn when falling back to 55 µm Visium spots.

    ``res`` is the :class:`~c2lst.pp._resolve.Resolved` call; ``mpp`` the validated argument.
    """
    if mpp is not None:
        return mpp, "mpp argument"
    recorded = records.physical_scale(res.table)
    if recorded is not None:
        return recorded
    layout = _from_reader(res)
    if layout is not None:
        return layout
    d = float(np.median(res.diameters))
    msg = (
        f"extract_patches: the table {res.table_key!r} records no physical scale, so `patch_um` assumes the spots "
        f"of {res.shapes_key!r} are 55 um Visium spots ({d:.4g} units wide -> {VISIUM_SPOT_UM / d:.4g} um per unit). "
        "For other platforms (Visium HD bins, Xenium cells, ...) this is wrong: pass `mpp=` (micrometres per unit "
        "of the shapes' coordinates) or record the scale in `table.uns['c2lst']['scale']`."
    )
    logger.debug(msg)
    warnings.warn(msg, UserWarning, stacklevel=4)
    return VISIUM_SPOT_UM / d, "assumed: Visium spot diameter = 55 um"
