"""Write a SpatialData Visium sample as a 10x Space Ranger ``outs/`` folder (for reader round trips)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from spatialdata import SpatialData, get_pyramid_levels
from spatialdata.transformations import get_transformation
from xarray import DataArray, DataTree

from .._utils import get_table
from .._version import __version__

COUNTS_FILE = "filtered_feature_bc_matrix.h5"
FIDUCIAL_PER_SPOT = 1.6154  # Visium fiducial / spot diameter (e.g. 144.46 / 89.43 px)
POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def write_spaceranger_outs(
    sdata: SpatialData,
    path: str | Path,
    *,
    table_key: str = "table",
    image_key: str = "he",
    shapes_key: str = "spots",
    hires_scale: float = 0.5,
    lowres_scale: float = 0.1,
    library_id: str = "c2lst",
    overwrite: bool = False,
) -> Path:
    """Write a Visium sample as a 10x Space Ranger (>= 2.0) ``outs/`` folder.

    Writes ``filtered_feature_bc_matrix.h5`` (10x v3 HDF5: barcodes = obs names, integer counts from
    ``X``), ``spatial/tissue_positions.csv`` (with header; spot centres in full-resolution image
    pixels, ``pxl_row`` = y, ``pxl_col`` = x, kept as floats), ``spatial/scalefactors_json.json`` and
    ``spatial/tissue_hires_image.png`` / ``tissue_lowres_image.png`` (the image resized by
    ``hires_scale`` / ``lowres_scale`` with anti-aliasing). Spot centres and diameters are mapped
    into the image's full-resolution pixels through the spatialdata transformations of a coordinate
    system the image and the circles share. Everything is checked before the first byte is written.

    Read it back with ``spatialdata_io.visium(path, dataset_id=library_id)`` (the counts file carries no
    library prefix, so the reader needs ``dataset_id``) or ``scanpy.read_visium(path)``.

    Parameters
    ----------
    sdata
        SpatialData with an RGB image, circles and a table annotating the circles.
    path
        Output folder (created). Must be empty or absent unless ``overwrite``.
    table_key
        Table with raw integer counts in ``X`` (``obs["array_row"]``, ``obs["array_col"]`` and
        ``obs["in_tissue"]`` are written when present, else 0, 0, 1).
    image_key
        RGB image written as hires / lowres PNGs.
    shapes_key
        Circles (with a ``radius`` column) the table annotates.
    hires_scale
        ``tissue_hires_scalef``: hires image pixels per full-resolution pixel, in (0, 1].
    lowres_scale
        ``tissue_lowres_scalef``, in (0, 1].
    library_id
        Library id stored in the HDF5 attributes and the genome field.
    overwrite
        Write into an existing non-empty folder (files of the same name are replaced).

    Returns
    -------
    The folder path.

    Examples
    --------
    >>> import c2lst, spatialdata_io
    >>> sdata = c2lst.datasets.simulated_visium(n_spots=20)
    >>> out = c2lst.datasets.write_spaceranger_outs(sdata, "outs")  # doctest: +SKIP
    >>> back = spatialdata_io.visium(out, dataset_id="c2lst")  # doctest: +SKIP
    """
    if not isinstance(sdata, SpatialData):
        raise TypeError(f"`sdata` must be a SpatialData object, got {type(sdata).__name__}.")
    table = get_table(sdata, table_key)
    image = _get_element(sdata.images, image_key, "image_key", "images")
    shapes = _get_element(sdata.shapes, shapes_key, "shapes_key", "shapes")
    if "radius" not in shapes.columns:
        raise ValueError(
            f"`shapes_key={shapes_key!r}` is not a circles element (no `radius` column); pass circles."
        )
    scales = {}
    for name, value in (("hires_scale", hires_scale), ("lowres_scale", lowres_scale)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise TypeError(f"`{name}` must be a number in (0, 1], got {value!r}.")
        if not (0 < value <= 1):
            raise ValueError(
                f"`{name}={value}` must lie in (0, 1]; it is the downscaling factor of the image."
            )
        scales[name] = float(value)
    if not isinstance(library_id, str) or not library_id or "/" in library_id:
        raise ValueError(f"`library_id={library_id!r}` must be a non-empty string without '/'.")
    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not overwrite)):
        raise FileExistsError(
            f"`path={str(path)!r}` exists and is not an empty folder; pass `overwrite=True` or a new path."
        )

    attrs = table.uns.get("spatialdata_attrs", {})
    regions = np.atleast_1d(attrs.get("region", []))
    if shapes_key not in regions:
        raise ValueError(
            f"`table_key={table_key!r}` annotates {list(regions)}, not `shapes_key={shapes_key!r}`; "
            "pass the shapes element the table annotates."
        )
    region_key, instance_key = attrs["region_key"], attrs["instance_key"]
    if len(regions) > 1:
        table = table[table.obs[region_key] == shapes_key]
    counts = _integer_counts(table.X, table_key)
    ids = table.obs[instance_key].to_numpy()
    missing = ~pd.Index(ids).isin(shapes.index)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} rows of table {table_key!r} have no circle in {shapes_key!r}."
        )

    level0 = _level0(image)
    if level0.sizes.get("c") != 3 or set(level0.dims) != {"c", "y", "x"}:
        raise ValueError(
            f"`image_key={image_key!r}` must be an RGB (c=3, y, x) image, got dims {dict(level0.sizes)}."
        )
    matrix = _shapes_to_image_matrix(shapes, image, shapes_key, image_key)
    circles = shapes.loc[ids]
    xy = np.stack([circles.geometry.x.to_numpy(), circles.geometry.y.to_numpy(), np.ones(len(ids))])
    px = (matrix @ xy)[:2].T
    diameter = (
        2
        * float(np.median(circles["radius"].to_numpy()))
        * float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    )

    obs = table.obs
    positions = pd.DataFrame(
        {
            "in_tissue": _int_column(obs, "in_tissue", 1),
            "array_row": _int_column(obs, "array_row", 0),
            "array_col": _int_column(obs, "array_col", 0),
            "pxl_row_in_fullres": px[:, 1],
            "pxl_col_in_fullres": px[:, 0],
        },
        index=pd.Index(table.obs_names.astype(str), name="barcode"),
    )
    images = {name: _downscale(level0, scale) for name, scale in scales.items()}
    scalefactors = {
        "tissue_hires_scalef": scales["hires_scale"],
        "tissue_lowres_scalef": scales["lowres_scale"],
        "spot_diameter_fullres": diameter,
        "fiducial_diameter_fullres": diameter * FIDUCIAL_PER_SPOT,
    }

    # ---- write (all checks passed)
    from PIL import Image

    spatial = path / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    _write_h5(path / COUNTS_FILE, counts, table, library_id)
    positions.to_csv(spatial / "tissue_positions.csv")
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors, indent=4))
    Image.fromarray(images["hires_scale"]).save(spatial / "tissue_hires_image.png")
    Image.fromarray(images["lowres_scale"]).save(spatial / "tissue_lowres_image.png")
    return path


def _get_element(elements: Any, key: str, arg: str, kind: str):
    if key not in elements:
        raise KeyError(
            f"`{arg}={key!r}` is not in `sdata.{kind}` (available: {sorted(elements)}); pass one of them."
        )
    return elements[key]


def _int_column(obs: pd.DataFrame, column: str, default: int) -> np.ndarray:
    if column in obs:
        return obs[column].to_numpy().astype(np.int64)
    return np.full(obs.shape[0], default, dtype=np.int64)


def _integer_counts(x, table_key: str) -> sparse.csr_matrix:
    x = sparse.csr_matrix(x)
    data = x.data
    if data.size and (
        not np.all(np.isfinite(data)) or data.min() < 0 or not np.array_equal(data, np.rint(data))
    ):
        raise ValueError(
            f"`X` of table {table_key!r} must hold raw non-negative integer counts (10x matrices store counts); "
            "put counts in X before writing."
        )
    x = sparse.csr_matrix(x, dtype=np.int32)
    x.eliminate_zeros()
    x.sort_indices()
    return x


def _level0(image) -> DataArray:
    """Return the full-resolution level of an image element."""
    if isinstance(image, DataTree):
        return get_pyramid_levels(image, n=0)
    return image


def _affine(transformation) -> np.ndarray:
    return np.asarray(
        transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float
    )


def _shapes_to_image_matrix(shapes, image, shapes_key: str, image_key: str) -> np.ndarray:
    """Return the 3x3 affine matrix from circle coordinates to full-resolution image pixels (x, y)."""
    t_shapes = get_transformation(shapes, get_all=True)
    t_image = get_transformation(image, get_all=True)
    shared = sorted(set(t_shapes) & set(t_image), key=lambda cs: (cs != "global", cs))
    if not shared:
        raise ValueError(
            f"`shapes_key={shapes_key!r}` (coordinate systems {sorted(t_shapes)}) and `image_key={image_key!r}` "
            f"({sorted(t_image)}) share no coordinate system; add a transformation to a common one."
        )
    cs = shared[0]
    return np.linalg.inv(_affine(t_image[cs])) @ _affine(t_shapes[cs])


def _downscale(level0: DataArray, scale: float) -> np.ndarray:
    """Return the full-resolution image resized to ``round(scale * size)`` (anti-aliased), uint8 (y, x, 3)."""
    from skimage.transform import resize

    h0, w0 = level0.sizes["y"], level0.sizes["x"]
    out_shape = (max(1, round(h0 * scale)), max(1, round(w0 * scale)))
    arr = np.moveaxis(np.asarray(level0.transpose("c", "y", "x").values), 0, -1)
    if arr.dtype != np.uint8:
        raise ValueError(f"image pixels must be uint8 RGB to write PNGs, got {arr.dtype}.")
    if arr.shape[:2] == out_shape:
        return np.ascontiguousarray(arr)
    out = resize(arr, (*out_shape, 3), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _write_h5(file: Path, counts: sparse.csr_matrix, table, library_id: str) -> None:
    """Write cells x genes CSR counts as a 10x v3 feature-barcode matrix (genes x cells, CSC)."""
    import h5py

    names = np.asarray(table.var_names.astype(str))
    ids = np.asarray(table.var["gene_ids"].astype(str)) if "gene_ids" in table.var else names
    enc = np.bytes_
    with h5py.File(file, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["library_ids"] = np.array([library_id], dtype=enc)
        f.attrs["chemistry_description"] = "Spatial 3' v1"
        f.attrs["software_version"] = f"c2lst-{__version__}"
        f.attrs["format_version"] = 2
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.asarray(table.obs_names.astype(str), dtype=enc))
        g.create_dataset("data", data=counts.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=counts.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=counts.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([counts.shape[1], counts.shape[0]], dtype=np.int32))
        feat = g.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feat.create_dataset("feature_type", data=np.full(names.size, b"Gene Expression"))
        feat.create_dataset("genome", data=np.full(names.size, library_id.encode()))
        feat.create_dataset("id", data=ids.astype(enc))
        feat.create_dataset("name", data=names.astype(enc))
