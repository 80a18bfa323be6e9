"""Resolve which table, shapes, image and coordinate system :func:`extract_patches` works on.

Everything here is validation and geometry bookkeeping: it reads metadata and shapes, never pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .._tables import table_region
from .._utils import get_table

_XY = ("x", "y")
_RGB_NAMES = {"r", "g", "b", "a", "red", "green", "blue", "alpha"}


@dataclass
class Resolved:
    """The elements one :func:`extract_patches` call works on, with their geometry in image pixels."""

    table: Any
    table_key: str
    shapes_key: str
    image_key: str
    coordinate_system: str
    centres: np.ndarray  # (n, 2) spot centres (x, y) in the shapes' intrinsic units, table row order
    diameters: np.ndarray  # (n,) spot diameters in the shapes' intrinsic units, table row order
    shapes_to_image: np.ndarray  # (3, 3) affine: shapes intrinsic (x, y) -> image scale0 continuous pixels
    offset_map: np.ndarray  # (2, 2) linear: patch offsets (intrinsic units, cs orientation) -> scale0 pixels
    levels: list  # list of dask arrays (c, y, x), finest first
    level_shapes: list  # (height, width) of every level
    channels: int
    dtype: np.dtype
    geometry: str = "circles"  # "circles" or "polygons"
    reader: str | None = (
        None  # sdata.attrs["spatialdata_io_reader"]: the spatialdata-io reader that built sdata
    )


# --------------------------------------------------------------------------- transformations
def affine_xy(transformation: Any) -> np.ndarray:
    """Return the 3x3 (x, y) affine matrix of a spatialdata transformation (Identity, Scale, Affine, Sequence…)."""
    return np.asarray(transformation.to_affine_matrix(input_axes=_XY, output_axes=_XY), dtype=np.float64)


def _transformations(element: Any) -> dict:
    from spatialdata.transformations import get_transformation

    return dict(get_transformation(element, get_all=True))


def _equivalent(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    scale = max(1.0, float(np.abs(a[0]).max()))
    return bool(np.allclose(a[0], b[0], rtol=1e-6, atol=1e-6 * scale) and np.allclose(a[1], b[1], atol=1e-6))


def _mapping(shapes_t: Any, image_t: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (shapes intrinsic -> image pixels affine, patch-offset -> image pixels linear map) through one cs."""
    a_s, a_i = affine_xy(shapes_t), affine_xy(image_t)
    if abs(np.linalg.det(a_i[:2, :2])) < 1e-12 or abs(np.linalg.det(a_s[:2, :2])) < 1e-12:
        raise ValueError("singular transformation")
    m = np.linalg.solve(a_i, a_s)
    lin_s = a_s[:2, :2]
    rot_s = lin_s / np.sqrt(abs(np.linalg.det(lin_s)))
    # offsets are given in intrinsic units but oriented like the coordinate system's axes
    offset = m[:2, :2] @ np.linalg.inv(rot_s)
    return m, offset


# --------------------------------------------------------------------------- resolution
def _shapes_element(sdata: Any, region: str, table_key: str) -> Any:
    if region in sdata.shapes:
        return sdata.shapes[region]
    for kind, word in (("images", "an image"), ("labels", "a labels"), ("points", "a points")):
        if region in getattr(sdata, kind):
            raise ValueError(
                f"`table_key={table_key!r}` annotates {region!r}, which is {word} element, not a shapes "
                "element; extract_patches needs spots as circles or polygons: pass a table that annotates a "
                f"shapes element (shapes: {sorted(sdata.shapes)})."
            )
    raise KeyError(
        f"`table_key={table_key!r}` annotates region {region!r}, which is not an element of this SpatialData "
        f"(shapes: {sorted(sdata.shapes)}); add the shapes or pass another `table_key=`."
    )


def _spot_geometry(shapes: Any, shapes_key: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Return centres (n, 2), diameters (n,) of circles or polygons (equal-area circle), in shapes order; the kind."""
    geom = shapes.geometry
    kinds = set(geom.geom_type.unique())
    if kinds <= {"Point"}:
        if "radius" not in shapes.columns:
            raise ValueError(
                f"Shapes {shapes_key!r} are points without a `radius` column; extract_patches needs circles "
                "(ShapesModel with `radius`) or polygons."
            )
        centres = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()]).astype(np.float64)
        diameters = 2.0 * shapes["radius"].to_numpy(dtype=np.float64)
        kind = "circles"
    elif kinds <= {"Polygon", "MultiPolygon"}:
        cent = geom.centroid
        centres = np.column_stack([cent.x.to_numpy(), cent.y.to_numpy()]).astype(np.float64)
        diameters = 2.0 * np.sqrt(geom.area.to_numpy(dtype=np.float64) / np.pi)
        kind = "polygons"
    else:
        raise ValueError(
            f"Shapes {shapes_key!r} have geometry types {sorted(kinds)}; extract_patches needs circles "
            "(points with `radius`) or polygons."
        )
    if not (np.isfinite(centres).all() and np.isfinite(diameters).all()) or (diameters <= 0).any():
        raise ValueError(
            f"Shapes {shapes_key!r} have non-finite centres or non-positive diameters; fix the shapes element."
        )
    return centres, diameters, kind


def _table_rows(table: Any, table_key: str, shapes: Any, region: str, region_key: str, instance_key: str):
    """Return, for every table row, the position of its spot in ``shapes``."""
    if table.n_obs == 0:
        raise ValueError(f"`table_key={table_key!r}` names an empty table (0 rows); nothing to extract.")
    if not table.obs_names.is_unique:
        dup = table.obs_names[table.obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"`table_key={table_key!r}`: the table's obs names are not unique (e.g. {dup}); call "
            "`table.obs_names_make_unique()` first."
        )
    for col in (region_key, instance_key):
        if col not in table.obs:
            raise KeyError(
                f"`table_key={table_key!r}`: column {col!r} named by the region annotation is missing from "
                "`table.obs`; re-annotate the table with `TableModel.parse(...)`."
            )
    other = pd.Index(table.obs[region_key].astype(str).unique()).difference([region])
    if len(other):
        raise ValueError(
            f"`table_key={table_key!r}`: rows annotate regions {other[:5].tolist()} besides {region!r}; "
            f"subset the table to `obs[{region_key!r}] == {region!r}`."
        )
    inst = pd.Index(table.obs[instance_key].to_numpy())
    if not inst.is_unique:
        raise ValueError(
            f"`table_key={table_key!r}`: instance ids in `obs[{instance_key!r}]` are not unique; each row must "
            "annotate one spot."
        )
    if not shapes.index.is_unique:
        raise ValueError(f"Shapes {region!r} have a non-unique index; make the shapes index unique.")
    pos = shapes.index.get_indexer(inst)
    if (pos < 0).any():
        missing = inst[pos < 0][:5].tolist()
        raise KeyError(
            f"`table_key={table_key!r}`: {int((pos < 0).sum())} rows name spots absent from shapes {region!r} "
            f"(e.g. {missing}); the table's `obs[{instance_key!r}]` must match the shapes index."
        )
    return pos


def _reader(sdata: Any) -> str | None:
    """Return the spatialdata-io reader recorded in ``sdata.attrs["spatialdata_io_reader"]``, else None."""
    attrs = getattr(sdata, "attrs", None)
    reader = attrs.get("spatialdata_io_reader") if isinstance(attrs, dict) else None
    return str(reader) if reader else None


def _channels(image: Any) -> list[str]:
    """Return the channel names of an image element (metadata only)."""
    from spatialdata.models import get_channel_names

    try:
        return [str(c) for c in get_channel_names(image)]
    except (ValueError, KeyError, TypeError, AttributeError):  # pragma: no cover - malformed element
        return []


def _is_brightfield(names: list[str]) -> bool:
    """RGB(A) by its channel names: r/g/b(/a) or spatialdata's default 0..n-1 for 3 or 4 channels."""
    low = [n.lower() for n in names]
    return len(low) in (3, 4) and (set(low) <= _RGB_NAMES or low == [str(i) for i in range(len(low))])


def _check_brightfield(image: Any, image_key: str) -> None:
    names = _channels(image)
    if _is_brightfield(names):
        return
    raise ValueError(
        f"`image_key={image_key!r}` is not an H&E/brightfield RGB image: it has {len(names)} channel(s) "
        f"{names[:6]} (a fluorescence image such as Xenium's `morphology_focus`?). extract_patches needs an RGB "
        "(3) or RGBA (4) H&E/brightfield image registered to the shapes: for Xenium, read the post-run H&E with "
        "`spatialdata_io.xenium_aligned_image(he_path, alignment_csv)`, add it to `sdata.images` and pass it as "
        "`image_key=` (or build an RGB rendering of the fluorescence as a new image element)."
    )


def _choose_image(sdata: Any, image_key: str | None, shapes_cs: set, shapes_key: str) -> str:
    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(
                f"`image_key={image_key!r}` is not an image of this SpatialData; available images: "
                f"{sorted(sdata.images)}. Pass one of them as `image_key=`."
            )
        return image_key
    if len(sdata.images) == 0:
        raise ValueError(
            "This SpatialData has no image element; add an image (Image2DModel) to cut patches from."
        )
    candidates = {
        name: sorted(set(_transformations(img)) & shapes_cs)
        for name, img in sdata.images.items()
        if set(_transformations(img)) & shapes_cs
    }
    if len(candidates) == 1:
        return next(iter(candidates))
    rgb = [name for name in candidates if _is_brightfield(_channels(sdata.images[name]))]
    if len(rgb) == 1:  # e.g. Xenium: the post-run H&E next to the fluorescence morphology images
        return rgb[0]
    if not candidates:
        all_cs = {name: sorted(_transformations(img)) for name, img in sdata.images.items()}
        raise ValueError(
            f"No image shares a coordinate system with shapes {shapes_key!r} (its coordinate systems: "
            f"{sorted(shapes_cs)}; images: {all_cs}). Register the image with "
            "`spatialdata.transformations.set_transformation` or pass `image_key=` and `coordinate_system=`."
        )
    raise ValueError(
        f"Several images share a coordinate system with shapes {shapes_key!r}: {candidates}; "
        "pass the one to cut patches from as `image_key=`."
    )


def _choose_cs(
    shapes: Any, image: Any, coordinate_system: str | None, shapes_key: str, image_key: str
) -> tuple[str, np.ndarray, np.ndarray]:
    ts, ti = _transformations(shapes), _transformations(image)
    shared = sorted(set(ts) & set(ti))
    if coordinate_system is not None:
        if coordinate_system not in shared:
            raise ValueError(
                f"`coordinate_system={coordinate_system!r}` is not shared by shapes {shapes_key!r} "
                f"(coordinate systems: {sorted(ts)}) and image {image_key!r} (coordinate systems: {sorted(ti)}); "
                f"shared: {shared}. Pass one of the shared ones, or None to choose automatically."
            )
        shared = [coordinate_system]
    if not shared:
        raise ValueError(
            f"Image {image_key!r} (coordinate systems: {sorted(ti)}) and shapes {shapes_key!r} (coordinate "
            f"systems: {sorted(ts)}) share no coordinate system; register both in one with "
            "`spatialdata.transformations.set_transformation`, or pass another `image_key=`."
        )
    maps = {}
    for cs in shared:
        try:
            maps[cs] = _mapping(ts[cs], ti[cs])
        except ValueError as err:
            raise ValueError(
                f"The transformation of shapes {shapes_key!r} or image {image_key!r} to coordinate system "
                f"{cs!r} is singular or not 2-D (x, y); fix it with `set_transformation`."
            ) from err
    first = next(iter(maps.values()))
    if all(_equivalent(first, mp) for mp in maps.values()):
        cs = "global" if "global" in maps else shared[0]
        return cs, *maps[cs]
    raise ValueError(
        f"Image {image_key!r} and shapes {shapes_key!r} share several coordinate systems that map them "
        f"differently: {shared}; pass one as `coordinate_system=`."
    )


def _levels(image: Any, image_key: str) -> tuple[list, list]:
    from spatialdata.models import get_axes_names

    axes = tuple(get_axes_names(image))
    if "z" in axes:
        raise ValueError(
            f"`image_key={image_key!r}` is a 3-D image (axes {axes}); extract_patches needs a 2-D RGB image "
            "(c, y, x): project or select one z-plane into a new Image2DModel element first."
        )
    if axes != ("c", "y", "x"):
        raise ValueError(f"`image_key={image_key!r}` has axes {axes}; expected ('c', 'y', 'x').")
    if hasattr(image, "children") and len(image.children):  # DataTree pyramid
        names = sorted(image.children, key=lambda s: int("".join(ch for ch in s if ch.isdigit()) or 0))
        arrays = [next(iter(image[name].ds.data_vars.values())) for name in names]
    else:
        arrays = [image]
    levels = [a.data for a in arrays]
    shapes = [(int(a.sizes["y"]), int(a.sizes["x"])) for a in arrays]
    return levels, shapes


def resolve(sdata: Any, *, table_key: str, image_key: str | None, coordinate_system: str | None) -> Resolved:
    """Resolve table, shapes, image and coordinate system; raise with the candidates when ambiguous."""
    table = get_table(sdata, table_key)
    region, region_key, instance_key = table_region(
        table, table_key, one_at_a_time="extract_patches works on one region at a time"
    )
    shapes = _shapes_element(sdata, region, table_key)
    rows = _table_rows(table, table_key, shapes, region, region_key, instance_key)
    centres, diameters, geometry = _spot_geometry(shapes, region)
    shapes_cs = set(_transformations(shapes))
    image_key = _choose_image(sdata, image_key, shapes_cs, region)
    image = sdata.images[image_key]
    cs, m, offset = _choose_cs(shapes, image, coordinate_system, region, image_key)
    levels, level_shapes = _levels(image, image_key)
    channels = int(levels[0].shape[0])
    _check_brightfield(image, image_key)
    dtype = np.dtype(levels[0].dtype)
    if not (dtype == np.uint8 or dtype == np.uint16 or np.issubdtype(dtype, np.floating)):
        raise TypeError(
            f"`image_key={image_key!r}` has dtype {dtype}; extract_patches accepts uint8, uint16 or float "
            "([0, 1]) images: convert the image, e.g. with `skimage.util.img_as_ubyte`."
        )
    return Resolved(
        table=table,
        table_key=table_key,
        shapes_key=region,
        image_key=image_key,
        coordinate_system=cs,
        centres=centres[rows],
        diameters=diameters[rows],
        shapes_to_image=m,
        offset_map=offset,
        levels=levels,
        level_shapes=level_shapes,
        channels=channels,
        dtype=dtype,
        geometry=geometry,
        reader=_reader(sdata),
    )
