"""Table checks and patch readers shared by ``tl`` and ``pl`` (no torch; records are read via ``_records``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._logging import logger
from ._records import PATCH_HINT, gene_names, synthetic_mask
from ._records import expression_genes as _expression_genes
from ._utils import check_patches, require_obsm

__all__ = ["check_patches", "child_patches", "expression_genes", "side_patches"]


def _check_adata(adata: Any, name: str = "adata") -> AnnData:
    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData table, got {type(adata).__name__}.")
    return adata


def expression_genes(adata: AnnData, expr_key: str) -> np.ndarray:
    """Return the gene names of ``obsm[expr_key]`` (a synthetic table without a record: its ``var_names``)."""
    return gene_names(_expression_genes(adata, expr_key, var_names_fallback=True))


def _gene_diff(a: Sequence[str], b: Sequence[str]) -> str:
    only_a = [g for g in a if g not in set(b)]
    only_b = [g for g in b if g not in set(a)]
    return f"only in the first: {only_a[:20]}; only in the second: {only_b[:20]}"


def _patches(adata: AnnData, patch_key: str) -> np.ndarray:
    arr = np.asarray(require_obsm(adata, patch_key, "patch_key", PATCH_HINT))
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"`obsm[{patch_key!r}]` must hold uint8 RGB patches (n, S, S, 3), got {arr.dtype} {arr.shape}; "
            f"{PATCH_HINT}"
        )
    return arr


def side_patches(
    data: Any, name: str, patch_key: str, *, synthetic: bool
) -> tuple[np.ndarray, AnnData | None]:
    """Return the uint8 patches of one side (AnnData rows of that side, or an array) and the table used."""
    if isinstance(data, AnnData):
        if patch_key not in data.obsm:
            raise KeyError(
                f"`patch_key={patch_key!r}` is not in `{name}.obsm` (keys: {sorted(data.obsm)}); {PATCH_HINT}"
            )
        arr = np.asarray(data.obsm[patch_key])
        mask = synthetic_mask(data)
        if "c2lst_synthetic" in data.obs:
            keep = mask if synthetic else ~mask
            if keep.any():  # a table of the other kind only is used as is
                arr = arr[keep]
                data = data[keep]
        return check_patches(arr, f"{name}.obsm[{patch_key!r}]"), data
    if isinstance(data, np.ndarray):
        return check_patches(data, name), None
    raise TypeError(f"`{name}` must be an AnnData or a uint8 array (n, S, S, 3), got {type(data).__name__}.")


def child_patches(synthetic: AnnData, patch_key: str, parent_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the synthetic rows' uint8 patches and each row's parent spot id (``obs[parent_key]``, as str)."""
    patches, _, parents = child_rows(synthetic, patch_key, parent_key)
    return patches, parents


def child_rows(synthetic: AnnData, patch_key: str, parent_key: str) -> tuple[np.ndarray, AnnData, np.ndarray]:
    """Return the synthetic rows' uint8 patches, the table of those rows and each row's parent id (as str)."""
    if parent_key not in synthetic.obs:
        raise KeyError(
            f"`parent_key={parent_key!r}` is not a column of `synthetic.obs` (columns: {list(synthetic.obs)}); "
            "pass the table written by `c2lst.tl.synthesize`."
        )
    patches, table = side_patches(synthetic, "synthetic", patch_key, synthetic=True)
    return patches, table, table.obs[parent_key].astype(str).to_numpy()


def parent_positions(real: AnnData, parents: np.ndarray, parent_key: str) -> np.ndarray:
    """Return each synthetic row's parent as a row of ``real`` (-1: not there, logged); raise when none is."""
    index = pd.Index(real.obs_names.astype(str))
    pos = index.get_indexer(parents)
    if (pos < 0).all():
        raise ValueError(
            f"no `synthetic.obs[{parent_key!r}]` value is a spot of `real` (e.g. {list(parents[:3])} vs "
            f"{list(index[:3])}); pass the real table the synthetic spots were generated from."
        )
    if (pos < 0).any():
        logger.warning(f"{int((pos < 0).sum())} synthetic rows have parents not in `real`; they are ignored.")
    return pos


def table_region(table: Any, table_key: str, *, one_at_a_time: str) -> tuple[str, str, str]:
    """Return ``(region, region_key, instance_key)`` of a SpatialData table that annotates one region.

    ``one_at_a_time`` finishes the error for a table over several regions (e.g. ``"extract_patches works on
    one region at a time"``).
    """
    from spatialdata.models import get_table_keys

    try:
        region, region_key, instance_key = get_table_keys(table)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"`table_key={table_key!r}` names a table without a region annotation "
            "(`uns['spatialdata_attrs']`); annotate it with "
            "`spatialdata.models.TableModel.parse(table, region=..., region_key=..., instance_key=...)`."
        ) from err
    if region is None or region_key is None or instance_key is None:
        raise ValueError(
            f"`table_key={table_key!r}`: the table's region annotation is incomplete "
            f"(region={region!r}, region_key={region_key!r}, instance_key={instance_key!r}); "
            "re-annotate it with `spatialdata.models.TableModel.parse(...)`."
        )
    regions = [region] if isinstance(region, str) else [str(r) for r in np.atleast_1d(region)]
    if len(regions) != 1:
        raise ValueError(
            f"`table_key={table_key!r}` annotates several regions {regions}; {one_at_a_time}: subset the table "
            "to one region (and re-annotate it) and pass it as `table_key=`."
        )
    return regions[0], str(region_key), str(instance_key)
