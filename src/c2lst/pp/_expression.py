"""``pp.prepare_expression``: gene selection and normalisation (via scanpy) into a model-ready matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from .._logging import logger
from .._records import expression_record, gene_names, record_lineage, store
from .._utils import as_table, check_positive_int, keep_torch_threads

TARGET_SUM = 1e4
#: scanpy's ``seurat_v3`` fits a loess curve (skmisc) of variance on mean over the genes that vary; with few such
#: genes the fit is singular and skmisc raises or crashes the interpreter. Below this many varying genes the
#: genes are ranked with ``flavor="seurat"`` on the log-normalised values instead (logged).
MIN_LOESS_GENES = 30
NORMALIZE_LOG1P = "normalize_total+log1p"
AS_IS = "none (input taken as log-normalised)"


def _get_matrix(adata: AnnData, layer: str | None, arg: str = "layer"):
    if layer is None or layer == "X":
        if adata.X is None:
            raise ValueError(f"`{arg}=None` selects `adata.X`, which is empty; pass a layer holding counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"`{arg}={layer!r}` is not in `adata.layers` (layers: {sorted(adata.layers)}); pass one of them or None for `.X`."
        )
    return adata.layers[layer]


def _values(mat: Any) -> np.ndarray:
    if sparse.issparse(mat):
        return np.asarray(mat.tocsr().data)
    return np.asarray(mat)


def _check_values(mat: Any, where: str) -> bool:
    """Raise on NaN/inf or negative values; return whether all values are integers (raw counts)."""
    vals = _values(mat)
    if vals.dtype == bool or not np.issubdtype(vals.dtype, np.number):
        raise TypeError(f"{where} has dtype {vals.dtype}; expected numeric counts or log-normalised values.")
    if np.issubdtype(vals.dtype, np.integer):
        if vals.size and vals.min() < 0:
            raise ValueError(f"{where} holds negative values (min {vals.min()}); pass raw counts (>= 0).")
        return True
    if not np.isfinite(vals).all():
        raise ValueError(
            f"{where} holds {int((~np.isfinite(vals)).sum())} NaN/inf values; remove or impute them first."
        )
    if vals.size and vals.min() < 0:
        raise ValueError(
            f"{where} holds negative values (min {float(vals.min())}); pass raw counts or log-normalised values "
            "(>= 0), not scaled/centred data."
        )
    return bool(np.all(vals == np.round(vals)))


#: Largest value accepted as log-normalised expression: ``log1p`` of a whole spot's counts at a target sum of
#: 1e6 (CPM) is 13.8; larger non-integer values are counts or scaled data, not log-normalised values.
MAX_LOG_VALUE = 20.0


def _check_log_values(mat: Any, where: str) -> None:
    """Refuse non-integer values that are not plausibly log-normalised (say what is assumed)."""
    vals = _values(mat)
    if not vals.size:
        return
    top = float(vals.max())
    off = float(np.abs(vals - np.round(vals)).max())
    fix = (
        "Pass raw counts as integers (e.g. `np.rint(x).astype(int)`) or log-normalised values "
        "(`scanpy.pp.normalize_total` + `scanpy.pp.log1p`)."
    )
    if off <= 1e-3 and top >= 1:
        raise ValueError(
            f"{where} is not integer-valued, so it would be taken as log-normalised, but every value is within "
            f"{off:.2g} of an integer (max {top:.6g}): these look like counts with floating-point noise. {fix}"
        )
    if top > MAX_LOG_VALUE:
        raise ValueError(
            f"{where} is not integer-valued, so it would be taken as log-normalised, but its values reach {top:.6g} "
            f"(> {MAX_LOG_VALUE}, more than log1p of a whole spot's counts per million). {fix}"
        )


def _check_selectable(mat: Any, where: str, n_top_genes: int | None, n_vars: int) -> int:
    """Check that the matrix can be normalised and ranked; return the number of genes that vary across spots."""
    totals = np.asarray(mat.sum(axis=1), dtype=np.float64).ravel()
    if not (totals > 0).any():
        raise ValueError(
            f"{where} holds no non-zero value (all {len(totals)} spots are empty); pass the layer with counts "
            "(`layer=`) or a table with expressed genes."
        )
    if n_top_genes is None or n_top_genes == n_vars:
        return n_vars
    if len(totals) < 2:
        raise ValueError(
            f"`n_top_genes={n_top_genes}`: highly variable genes need at least 2 spots, `adata` has "
            f"{len(totals)}; list the genes with `genes=` instead."
        )
    if sparse.issparse(mat):
        m = mat.tocsc().astype(np.float64)
        var = np.asarray(m.multiply(m).mean(axis=0)).ravel() - np.asarray(m.mean(axis=0)).ravel() ** 2
    else:
        var = np.asarray(mat, dtype=np.float64).var(axis=0)
    n_varying = int((var > 0).sum())
    if n_varying == 0:
        raise ValueError(
            f"`n_top_genes={n_top_genes}`: no gene of {where} varies across spots, so no gene is more variable "
            "than another; list the genes with `genes=` instead."
        )
    return n_varying


def _rank_log_genes(sc: Any, tmp: AnnData, n_top_genes: int) -> tuple[list[str], str]:
    """Rank log-normalised genes with scanpy's ``flavor="seurat"``; fall back to plain variance where it fails.

    ``flavor="seurat"`` bins genes by mean expression; with very few or degenerate genes the binning fails
    inside scanpy, and the genes are ranked by the variance of their log-normalised values (logged).
    """
    try:
        with np.errstate(all="ignore"):
            df = sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes, inplace=False)
        return tmp.var_names[_top(df["dispersions_norm"], n_top_genes, ascending=False)].tolist(), "seurat"
    except (ValueError, IndexError) as err:
        logger.info(
            "prepare_expression: flavor='seurat' failed on these genes (%s); ranking the genes by the variance of "
            "their log-normalised values instead.",
            err,
        )
    x = tmp.X.toarray() if sparse.issparse(tmp.X) else np.asarray(tmp.X)
    scores = pd.Series(np.asarray(x, dtype=np.float64).var(axis=0), index=tmp.var_names)
    return tmp.var_names[_top(scores, n_top_genes, ascending=False)].tolist(), "variance"


def _check_genes(genes: Any, var_names: pd.Index, arg: str = "genes") -> list[str]:
    if isinstance(genes, str) or not isinstance(genes, Sequence | np.ndarray | pd.Index):
        raise TypeError(f"`{arg}` must be a list of gene names, got {type(genes).__name__}.")
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError(f"`{arg}` is empty; pass at least one gene name.")
    if len(set(genes)) != len(genes):
        dup = sorted({g for g in genes if genes.count(g) > 1})[:10]
        raise ValueError(f"`{arg}` lists genes more than once: {dup}; pass each gene once.")
    missing = [g for g in genes if g not in var_names]
    if missing:
        raise KeyError(
            f"`{arg}` has {len(missing)} genes not in `var_names`: {missing[:20]}; pass names present in the table."
        )
    return genes


def _top(scores: pd.Series, n: int, ascending: bool) -> np.ndarray:
    """Return the boolean mask of the ``n`` best scores (stable ties, NaN last), in var order."""
    vals = scores.to_numpy(dtype=np.float64)
    fill = np.inf if ascending else -np.inf
    vals = np.where(np.isnan(vals), fill, vals)
    order = np.argsort(vals if ascending else -vals, kind="stable")[:n]
    mask = np.zeros(len(vals), dtype=bool)
    mask[order] = True
    return mask


@keep_torch_threads
def prepare_expression(
    adata: Any,
    *,
    table_key: str = "table",
    genes: Sequence[str] | None = None,
    n_top_genes: int = 50,
    layer: str | None = None,
    key_added: str = "c2lst_expr",
    copy: bool = False,
) -> AnnData | None:
    """Select genes and normalise expression into a model-ready float32 matrix.

    Works on a copy of the counts with scanpy: when the values are raw counts (non-negative integers),
    highly variable genes are chosen with ``flavor="seurat_v3"`` on the counts, then the counts are normalised
    with :func:`scanpy.pp.normalize_total` (``target_sum=1e4``, totals over all genes) and
    :func:`scanpy.pp.log1p`. Non-integer values are taken as already log-normalised (logged at info level):
    they are used as they are and genes are chosen with ``flavor="seurat"``. ``.X`` is never modified.

    Degenerate counts are checked before scanpy runs: an all-zero matrix, fewer than two spots or no gene that
    varies raise a :class:`ValueError` naming the fix; with fewer than ``MIN_LOESS_GENES`` (30) varying genes
    the loess fit of ``seurat_v3`` is singular, so genes are ranked with ``flavor="seurat"`` on the
    log-normalised counts (and by plain variance where that binning fails); the flavour used is logged and
    recorded. Non-integer values that are all within 1e-3 of integers (counts with floating-point noise) or
    exceed 20 are refused rather than taken as log-normalised. With ``n_top_genes`` equal to the number of
    genes all genes are kept (``flavor="all"``).

    Parameters
    ----------
    adata
        Table with spots as rows and genes as columns.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    genes
        Use exactly these genes, in this order, instead of highly variable genes.
    n_top_genes
        Number of highly variable genes to keep when ``genes`` is None (kept in ``var`` order).
    layer
        Layer holding the counts; ``None`` uses ``.X``.
    key_added
        The matrix goes to ``obsm[key_added]``, its genes and normalisation to
        ``uns["c2lst"]["expr"][key_added]``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    The modified copy when ``copy=True``, else None. Writes ``obsm[key_added]`` (float32, spots x genes) and
    ``uns["c2lst"]["expr"][key_added]`` = ``{"genes", "normalization", "target_sum", "layer", "n_top_genes",
    "flavor"}`` (``target_sum`` is 0.0 when no normalisation was applied).

    Examples
    --------
    >>> import c2lst
    >>> sdata = c2lst.datasets.simulated_visium(n_spots=100)
    >>> c2lst.pp.prepare_expression(sdata.tables["table"], n_top_genes=20)
    >>> sdata.tables["table"].obsm["c2lst_expr"].shape
    (100, 20)
    """
    adata = as_table(adata, table_key, arg="adata")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"`adata` is empty ({adata.n_obs} x {adata.n_vars}); pass a table with spots and genes."
        )
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"`layer` must be a layer name or None, got {layer!r}.")
    if not adata.var_names.is_unique:
        raise ValueError("`adata.var_names` are not unique; call `adata.var_names_make_unique()` first.")
    mat = _get_matrix(adata, layer)
    where = f"`layer={layer!r}`" if layer is not None else "`adata.X` (layer=None)"
    is_counts = _check_values(mat, where)
    if not is_counts:
        _check_log_values(mat, where)
    if genes is not None:
        genes = _check_genes(genes, adata.var_names)
    else:
        n_top_genes = check_positive_int(n_top_genes, "n_top_genes")
        if n_top_genes > adata.n_vars:
            raise ValueError(
                f"`n_top_genes={n_top_genes}` exceeds the number of genes ({adata.n_vars}); pass "
                f"`n_top_genes<={adata.n_vars}` or list the genes with `genes=`."
            )
    n_varying = _check_selectable(mat, where, n_top_genes if genes is None else None, adata.n_vars)

    import scanpy as sc

    x = mat.astype(np.float32, copy=True) if sparse.issparse(mat) else np.array(mat, dtype=np.float32)
    tmp = AnnData(
        X=x, obs=pd.DataFrame(index=adata.obs_names.copy()), var=pd.DataFrame(index=adata.var_names.copy())
    )
    flavor = "given"
    if genes is None and n_top_genes == adata.n_vars:
        genes, flavor = adata.var_names.tolist(), "all"  # every gene is kept: nothing to rank
    if is_counts:
        if genes is None and n_varying >= MIN_LOESS_GENES:
            try:
                df = sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top_genes, inplace=False)
                genes = tmp.var_names[_top(df["highly_variable_rank"], n_top_genes, ascending=True)].tolist()
                flavor = "seurat_v3"
            except ValueError as err:  # skmisc's loess: "Chernobyl! trL>n", "near singularities", ...
                logger.info(
                    "prepare_expression: the loess fit of flavor='seurat_v3' failed (%s); ranking genes with "
                    "flavor='seurat' on the log-normalised counts instead.",
                    err,
                )
        elif genes is None:
            logger.info(
                "prepare_expression: only %d genes vary across spots (< %d), too few for the loess fit of "
                "flavor='seurat_v3'; ranking genes with flavor='seurat' on the log-normalised counts instead.",
                n_varying,
                MIN_LOESS_GENES,
            )
        sc.pp.normalize_total(tmp, target_sum=TARGET_SUM)
        sc.pp.log1p(tmp)
        normalization, target_sum = NORMALIZE_LOG1P, TARGET_SUM
    else:
        logger.info(
            f"prepare_expression: {where} is not integer-valued; taken as log-normalised (values in "
            f"[0, {float(_values(mat).max()) if _values(mat).size else 0.0:.3g}]), used as is."
        )
        normalization, target_sum = AS_IS, 0.0
    if genes is None:
        genes, flavor = _rank_log_genes(sc, tmp, n_top_genes)
    out = tmp[:, genes].X
    out = np.asarray(out.toarray() if sparse.issparse(out) else out, dtype=np.float32)

    params = {
        "genes": np.asarray(genes, dtype=str),
        "normalization": normalization,
        "target_sum": float(target_sum),
        "layer": "X" if layer is None else layer,
        "n_top_genes": len(genes),
        "flavor": flavor,
    }
    target = adata.copy() if copy else adata
    target.obsm[key_added] = out
    store(target, "expr", key_added, params)
    record_lineage(
        target,
        function="c2lst.pp.prepare_expression",
        parameters={k: v for k, v in params.items() if k != "genes"} | {"key_added": key_added},
        seed=None,
        input_table=None,
    )
    return target if copy else None


def expression_genes(adata: AnnData, key: str = "c2lst_expr") -> list[str]:
    """Return the genes, in model order, recorded by :func:`prepare_expression` under ``key``."""
    return list(gene_names(expression_params(adata, key)["genes"]))


def expression_params(adata: AnnData, key: str = "c2lst_expr") -> dict:
    """Return the record ``uns["c2lst"]["expr"][key]`` written by :func:`prepare_expression`."""
    return expression_record(adata, key, arg="key")


def apply_expression(
    adata_or_matrix: AnnData | np.ndarray | sparse.spmatrix,
    *,
    genes: Sequence[str],
    params: Mapping[str, Any],
    totals: np.ndarray | None = None,
) -> np.ndarray:
    """Apply a recorded normalisation to another table and return the float32 matrix over ``genes``.

    With an AnnData, genes are matched by name and the totals for ``normalize_total`` are the row sums over all
    its genes (as in :func:`prepare_expression`). With a matrix, its columns must be ``genes`` in that order and
    the totals are ``totals`` when given, else the matrix's row sums.
    """
    normalization = str(params["normalization"])
    target_sum = float(params["target_sum"])
    genes = [str(g) for g in genes]
    if isinstance(adata_or_matrix, AnnData):
        layer = str(params.get("layer", "X"))
        mat = _get_matrix(adata_or_matrix, layer, arg="params['layer']")
        genes = _check_genes(genes, adata_or_matrix.var_names)
        _check_values(mat, f"layer {layer!r} of the table")
        full_totals = np.asarray(mat.sum(axis=1), dtype=np.float64).ravel()
        sub = mat[:, adata_or_matrix.var_names.get_indexer(genes)]
    else:
        sub = adata_or_matrix
        if sub.ndim != 2 or sub.shape[1] != len(genes):
            raise ValueError(
                f"`adata_or_matrix` has shape {sub.shape}; a matrix needs one column per gene ({len(genes)})."
            )
        _check_values(sub, "`adata_or_matrix`")
        full_totals = np.asarray(sub.sum(axis=1), dtype=np.float64).ravel()
        if totals is not None:
            full_totals = np.asarray(totals, dtype=np.float64).ravel()
            if full_totals.shape != (sub.shape[0],):
                raise ValueError(
                    f"`totals` must have one value per row ({sub.shape[0]}), got {full_totals.shape}."
                )
    sub = np.asarray(sub.toarray() if sparse.issparse(sub) else sub, dtype=np.float64)
    if normalization == NORMALIZE_LOG1P:
        scale = np.divide(target_sum, full_totals, out=np.zeros_like(full_totals), where=full_totals > 0)
        return np.log1p(sub * scale[:, None]).astype(np.float32)
    if normalization == AS_IS:
        return sub.astype(np.float32)
    raise ValueError(f"`params['normalization']={normalization!r}` is not a normalisation c2lst knows.")
