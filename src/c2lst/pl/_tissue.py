"""Spots on the H&E image through spatialdata-plot: which image, shapes and coordinate system, and the drawing.

spatialdata-plot (and spatialdata) are imported inside the functions, so ``import c2lst.pl`` stays light.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._records import section, synthetic_mask
from .._tables import table_region

_PLOT_TABLE = "c2lst_plot"


@dataclass
class Tissue:
    """What one tissue plot draws: the image, the shapes the table annotates, the rows and a coordinate system."""

    sdata: Any
    image_key: str
    shapes_key: str
    region_key: str
    instance_key: str
    coordinate_system: str
    rows: np.ndarray  # positions of the table rows drawn (real rows annotating ``shapes_key``)


def _pixels(image: Any) -> int:
    if hasattr(image, "children") and len(image.children):
        image = next(iter(image["scale0"].ds.data_vars.values()))
    return int(image.sizes["y"]) * int(image.sizes["x"])


def _recorded(table: Any, shapes_key: str, field: str) -> str | None:
    """The ``field`` of the newest :func:`c2lst.pp.extract_patches` record over ``shapes_key``, if any."""
    found = [
        rec.get(field) for rec in section(table, "patches").values() if rec.get("shapes_key") == shapes_key
    ]
    return str(found[-1]) if found and found[-1] else None


def _choose_image(sdata: Any, table: Any, image_key: str | None, shapes_key: str, shapes_cs: set) -> str:
    from ..pp._resolve import _channels, _check_brightfield, _is_brightfield, _transformations

    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(
                f"`image_key={image_key!r}` is not an image of this SpatialData; available images: "
                f"{sorted(sdata.images)}."
            )
        _check_brightfield(sdata.images[image_key], image_key)
        return image_key
    recorded = _recorded(table, shapes_key, "image_key")
    if recorded in sdata.images:
        return recorded
    candidates = [
        name
        for name, img in sdata.images.items()
        if set(_transformations(img)) & shapes_cs and _is_brightfield(_channels(img))
    ]
    if not candidates:
        raise ValueError(
            f"No H&E/brightfield RGB image shares a coordinate system with shapes {shapes_key!r} (images: "
            f"{sorted(sdata.images)}); pass one as `image_key=`, or plot the table's AnnData (spots only)."
        )
    return min(candidates, key=lambda name: _pixels(sdata.images[name]))  # e.g. hires before full resolution


def tissue(
    sdata: Any, table: Any, table_key: str, image_key: str | None, coordinate_system: str | None
) -> Tissue:
    """Resolve what to draw for ``sdata.tables[table_key]``; raise, naming the argument, before any drawing."""
    from ..pp._resolve import _transformations

    shapes_key, region_key, instance_key = table_region(
        table, table_key, one_at_a_time="plot one region at a time"
    )
    if shapes_key not in sdata.shapes:
        raise ValueError(
            f"`table_key={table_key!r}` annotates {shapes_key!r}, which is not a shapes element (shapes: "
            f"{sorted(sdata.shapes)}); plot the table's AnnData (spots at `obsm['spatial']`) instead."
        )
    for col in (region_key, instance_key):
        if col not in table.obs:
            raise KeyError(f"`table_key={table_key!r}`: column {col!r} of the region annotation is missing.")
    shapes_cs = set(_transformations(sdata.shapes[shapes_key]))
    image_key = _choose_image(sdata, table, image_key, shapes_key, shapes_cs)
    shared = sorted(shapes_cs & set(_transformations(sdata.images[image_key])))
    if coordinate_system is None:
        recorded = _recorded(table, shapes_key, "coordinate_system")
        coordinate_system = recorded if recorded in shared else ("global" if "global" in shared else None)
        coordinate_system = coordinate_system or (shared[0] if shared else None)
    if coordinate_system not in shared:
        raise ValueError(
            f"`coordinate_system={coordinate_system!r}` is not shared by shapes {shapes_key!r} and image "
            f"{image_key!r} (shared: {shared}); pass one of them, or register both with `set_transformation`."
        )
    on_shapes = table.obs[region_key].astype(str).to_numpy() == shapes_key
    rows = np.flatnonzero(on_shapes & ~synthetic_mask(table))
    if not rows.size:
        raise ValueError(
            f"`table_key={table_key!r}` has no real row annotating {shapes_key!r}; nothing to draw."
        )
    return Tissue(sdata, image_key, shapes_key, region_key, instance_key, coordinate_system, rows)


def draw(
    t: Tissue,
    table: Any,
    values: dict[str, np.ndarray],
    axes: list,
    titles: list[str],
    norms: list,
    cmap: str,
    alpha: float,
) -> None:
    """Draw the image and the spots coloured by ``values[column]`` (table row order) into ``axes``, one each."""
    import anndata as ad
    import pandas as pd
    import spatialdata as sd
    import spatialdata_plot  # noqa: F401  (registers the `.pl` accessor)
    from spatialdata.models import TableModel

    obs = pd.DataFrame(
        {
            t.region_key: pd.Categorical([t.shapes_key] * len(t.rows)),
            t.instance_key: table.obs[t.instance_key].to_numpy()[t.rows],
            **{col: np.asarray(v, dtype=np.float64)[t.rows] for col, v in values.items()},
        },
        index=table.obs_names[t.rows].astype(str),
    )
    plot_table = TableModel.parse(
        ad.AnnData(obs=obs), region=t.shapes_key, region_key=t.region_key, instance_key=t.instance_key
    )
    view = sd.SpatialData(
        images={t.image_key: t.sdata.images[t.image_key]},
        shapes={t.shapes_key: t.sdata.shapes[t.shapes_key]},
        tables={_PLOT_TABLE: plot_table},
    )
    for ax, col, title, norm in zip(axes, values, titles, norms, strict=True):
        with warnings.catch_warnings():  # spatialdata-plot's own deprecation noise, not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            view.pl.render_images(t.image_key).pl.render_shapes(
                t.shapes_key,
                color=col,
                table_name=_PLOT_TABLE,
                cmap=cmap,
                norm=norm,
                fill_alpha=alpha,
                colorbar=False,
            ).pl.show(ax=ax, coordinate_systems=t.coordinate_system, title=title, colorbar=False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
