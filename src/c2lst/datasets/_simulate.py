"""``simulated_visium``: the embedded Visium-like H&E sample with known ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from .. import _records as records
from .._logging import logger
from .._spatial import annotate_table, image_element, spots_element
from .._utils import check_positive_float, check_positive_int, check_seed
from ._counts import MIN_GENES_EXTRA, draw_counts, make_panel
from ._render import image_shape, render_od
from ._stain import STAIN_PRESETS, mix_stains, resolve_stain, stain_record
from ._tissue import (
    CELL_TYPES,
    N_REGIONS,
    SPOT_DIAMETER_UM,
    SPOT_PITCH_UM,
    Layout,
    build_layout,
    sample_coarse,
    spot_cell_counts,
)

MAX_PIXELS = 400_000_000
MAX_MPP = 10.0


@dataclass
class _Truth:
    """Private extras of a simulation (for tests and diagnostics)."""

    layout: Layout
    labels: np.ndarray | None  # nucleus label image: cell index + 1, 0 = none


def simulated_visium(
    *,
    n_spots: int = 400,
    seed: int = 0,
    stain: str | Mapping[str, Any] = "local",
    mpp: float = 1.0,
    n_genes: int = 200,
    panel_seed: int | None = None,
) -> SpatialData:
    """Simulate a Visium H&E sample with known cell-type composition under every spot.

    The slide is an irregular tissue section with five cell types whose nuclei differ in size, shape,
    density and hematoxylin intensity: gland-forming ``tumor`` epithelium (large, oval, vesicular
    nuclei ringing white lumens), dense small dark ``lymphocyte`` aggregates, spindle-shaped pale
    ``fibroblast`` nuclei in wavy eosin-pink collagen, ``macrophage`` nuclei with pink cytoplasm, and
    flat ``endothelial`` nuclei lining small vessels filled with red cells. Regions come from smooth
    random fields, so composition varies smoothly across the slide. The image is rendered by
    Beer-Lambert mixing of hematoxylin and eosin optical densities (so :func:`skimage.color.rgb2hed`
    separates it) and styled by ``stain``.

    Spots follow the Visium geometry (hexagonal grid, 100 µm centre to centre, 55 µm diameter). All
    ``n_spots`` spots lie on tissue, like a Space Ranger *filtered* matrix; the tissue edge is at least
    ~30 µm beyond every spot and the image border at least 1.5 pitches from every spot centre.
    Counts (``~n_genes`` genes) are negative binomial draws from the nuclei under each spot: cell-type
    marker programs, housekeeping genes, genes that follow smooth spatial fields unrelated to the
    cell types, and pure-noise genes.

    Parameters
    ----------
    n_spots
        Number of spots (all on tissue).
    seed
        Seed of every random draw; the same seed gives the same bytes.
    stain
        Stain style: ``"local"``, ``"institution_a"`` or ``"institution_b"``, or a mapping overriding
        parameters of a preset (``base``, default ``"local"``): ``hematoxylin`` / ``eosin`` (optical-density
        RGB vectors), ``h_intensity`` / ``e_intensity`` (dye strength), ``blur_um`` (focus blur sigma),
        ``background`` (RGB of bare glass), ``noise`` (sensor noise sd, grey levels), ``name``.
    mpp
        Microns per pixel of the full-resolution image (at most 10).
    n_genes
        Number of genes (at least 8). About 40 % are markers, 25 % smooth, 15 % housekeeping and the
        rest pure noise.
    panel_seed
        Seed of the gene panel alone: which genes are markers of which cell type, housekeeping, smooth or
        noise, and their rates. Slides simulated with the same ``panel_seed`` (and ``n_genes``) share their
        biology, like sections of one tissue type, while the tissue, image and counts follow ``seed``. Use it for
        expression from "another slide of the same tissue" (e.g. unpaired conditioning profiles). By default
        (``None``) the panel is drawn from ``seed``, so every slide has its own panel and genes of the same name
        mean different things on slides with different seeds; ``panel_seed=seed`` gives the same bytes.

    Returns
    -------
    SpatialData with

    - ``images["he"]``: RGB uint8 ``(c, y, x)`` multiscale image (pyramid 1, 1/2, 1/8), identity to ``"global"``
      (full-resolution pixels);
    - ``shapes["spots"]``: circles with ``radius`` = 27.5 µm / ``mpp`` pixels, identity to ``"global"``;
    - ``tables["table"]``: raw counts in ``X`` (CSR float32), annotating ``"spots"``
      (``region_key="region"``, ``instance_key="spot_id"``), with ``obsm["spatial"]`` (x, y pixels),
      ``obs["array_row"]``, ``obs["array_col"]``, ``obs["in_tissue"]``, the ground truth
      ``obsm["c2lst_true_composition"]`` (fraction of nuclei of each type under the spot; the regional
      proportions where no nucleus lies under it — rows sum to 1), ``obs["c2lst_true_n_cells"]``,
      ``var["c2lst_gene_kind"]``, ``var["c2lst_marker_of"]``, the parameters in
      ``uns["c2lst"]["simulation"]`` and the physical scale ``uns["c2lst"]["scale"]``
      (``{"um_per_unit": mpp, "source": ...}``, read by :func:`c2lst.pp.extract_patches`).

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.simulated_visium(n_spots=50, seed=1)
    >>> table = sdata.tables["table"]
    >>> table.obsm["c2lst_true_composition"].shape
    (50, 5)
    >>> table.uns["c2lst"]["simulation"]["mpp"]
    1.0

    Two sections of one tissue type: different tissue, the same genes marking the same cell types.

    >>> other = c2lst.datasets.simulated_visium(n_spots=50, seed=2, panel_seed=1).tables["table"]
    >>> bool((other.var["c2lst_marker_of"] == table.var["c2lst_marker_of"]).all())
    True
    """
    sdata, _ = _simulate(n_spots=n_spots, seed=seed, stain=stain, mpp=mpp, n_genes=n_genes, panel_seed=panel_seed)
    return sdata


def _simulate(
    *,
    n_spots: int,
    seed: int,
    stain: str | Mapping[str, Any],
    mpp: float,
    n_genes: int,
    panel_seed: int | None = None,
    return_labels: bool = False,
) -> tuple[SpatialData, _Truth]:
    n_spots = check_positive_int(n_spots, "n_spots")
    seed = check_seed(seed)
    panel_seed = seed if panel_seed is None else check_seed(panel_seed, "panel_seed")
    mpp = check_positive_float(mpp, "mpp")
    if mpp > MAX_MPP:
        raise ValueError(f"`mpp={mpp}` is too coarse to draw nuclei; pass a value <= {MAX_MPP} µm per pixel.")
    n_genes = check_positive_int(n_genes, "n_genes")
    min_genes = len(CELL_TYPES) + MIN_GENES_EXTRA
    if n_genes < min_genes:
        raise ValueError(
            f"`n_genes={n_genes}` is too small for one marker per cell type plus smooth, noise and "
            f"housekeeping genes; pass `n_genes >= {min_genes}`."
        )
    stain_params = resolve_stain(stain)

    # independent streams: the same seed gives the same tissue and counts whatever the stain
    rng_layout, rng_render, rng_stain, rng_counts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    layout = build_layout(n_spots, rng_layout)
    shape = image_shape(layout, mpp)
    if shape[0] * shape[1] > MAX_PIXELS:
        raise ValueError(
            f"`n_spots={n_spots}` at `mpp={mpp}` needs a {shape[1]}x{shape[0]} px image (> {MAX_PIXELS:,} px); "
            "pass fewer spots or a larger `mpp`."
        )
    logger.info(f"simulating {n_spots} spots, {layout.cells.x.size} nuclei, {shape[1]}x{shape[0]} px image")

    hema, eosin, labels = render_od(layout, mpp, rng_render, return_labels=return_labels)
    rgb = mix_stains(hema, eosin, stain_params, mpp=mpp, rng=rng_stain)
    del hema, eosin

    cell_counts = spot_cell_counts(layout)
    sx, sy = layout.spots_xy[:, 0], layout.spots_xy[:, 1]
    panel = make_panel(n_genes, CELL_TYPES, layout.smooth_fields.shape[0], rng_counts)
    if panel_seed != seed:  # draw the default panel anyway, so the counts keep their random stream
        rng_panel = np.random.default_rng(np.random.SeedSequence(panel_seed).spawn(4)[3])
        panel = make_panel(n_genes, CELL_TYPES, layout.smooth_fields.shape[0], rng_panel)
    counts = draw_counts(panel, cell_counts, sample_coarse(layout.smooth_fields, sx, sy), rng_counts)

    n_cells = cell_counts.sum(1)
    composition = np.zeros((n_spots, len(CELL_TYPES)))
    regional = sample_coarse(layout.proportions, sx, sy).T  # (n_spots, N_REGIONS)
    composition[:, :N_REGIONS] = regional / regional.sum(1, keepdims=True)
    has = n_cells > 0
    composition[has] = cell_counts[has] / n_cells[has, None]

    xy_px = layout.spots_xy / mpp
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": layout.array_row,
            "array_col": layout.array_col,
            "c2lst_true_n_cells": n_cells.astype(np.int64),
        },
        index=pd.Index([f"spot_{i:04d}" for i in range(n_spots)]),
    )
    adata = AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs, var=panel.var)
    adata.obsm["spatial"] = xy_px
    adata.obsm["c2lst_true_composition"] = composition
    adata.uns["c2lst"] = {
        "simulation": {
            "mpp": float(mpp),
            "seed": int(seed),
            "panel_seed": int(panel_seed),
            "n_spots": int(n_spots),
            "n_genes": int(n_genes),
            "cell_types": np.array(CELL_TYPES, dtype=str),
            "stain": stain_record(stain_params),
            "spot_diameter_um": float(SPOT_DIAMETER_UM),
            "spot_pitch_um": float(SPOT_PITCH_UM),
            "image_shape_yx": np.array(shape, dtype=np.int64),
            "n_nuclei": int(layout.cells.x.size),
            "composition_rule": "fraction of nuclei centred under the spot; regional proportions if none",
        }
    }
    records.record_scale(adata, mpp, "c2lst.datasets.simulated_visium(mpp=...)")
    table = annotate_table(adata, "spots")
    sdata = SpatialData(
        images={"he": image_element(rgb)},
        shapes={"spots": spots_element(xy_px, SPOT_DIAMETER_UM / 2 / mpp)},
        tables={"table": table},
    )
    return sdata, _Truth(layout=layout, labels=labels)


def stain_presets() -> tuple[str, ...]:
    """Return the names of the built-in stain presets of :func:`simulated_visium`.

    Returns
    -------
    The preset names, sorted.

    Examples
    --------
    >>> import c2lst
    >>> c2lst.datasets.stain_presets()
    ('institution_a', 'institution_b', 'local')
    """
    return tuple(sorted(STAIN_PRESETS))
