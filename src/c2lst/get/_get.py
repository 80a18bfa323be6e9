"""Public readers of the records c2lst writes into ``uns["c2lst"]`` (see :mod:`c2lst._records`)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import _records as records
from .._utils import as_table

_EVAL_COLUMNS = ("pearson_r", "mse", "moran_observed", "moran_predicted", "moran_difference")


_DOC = {
    "head": "Parameters\n    ----------\n    adata\n        An AnnData, or a SpatialData whose table ``table_key`` is read.",
    "tail": "table_key\n        Table of a SpatialData (default ``\"table\"``).\n\n    Returns\n    -------",
}


def _doc(func):
    """Fill the ``{head}`` / ``{tail}`` parameter entries (``adata``, ``table_key``) shared by every reader."""
    func.__doc__ = func.__doc__.format(**_DOC)
    return func


def _table(data: Any, table_key: str) -> AnnData:
    return as_table(data, table_key)


def _json(value: Any) -> Any:
    """Parse a JSON string stored in ``.uns`` (other values are returned as they are)."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value


@_doc
def lineage(adata: Any, *, function: str | None = None, table_key: str = "table") -> pd.DataFrame:
    """Return the lineage records of a table, oldest first: one row per c2lst call that wrote into it.

    {head}
    function
        Keep only the records of this function, e.g. ``"c2lst.tl.adapt"``.
    {tail}
    A DataFrame indexed by ``run_id`` with columns ``function``, ``c2lst_version``, ``created``, ``seed``
    (``-1``: none), ``input_table``, ``parameters`` (dict) and ``model_sha256`` (dict).

    Examples
    --------
    >>> c2lst.get.lineage(adata, function="c2lst.tl.adapt")["parameters"].iloc[-1]["n_steps"]  # doctest: +SKIP
    """
    table = _table(adata, table_key)
    if function is not None and not isinstance(function, str):
        raise TypeError(f"`function` must be a string such as 'c2lst.tl.adapt' or None, got {function!r}.")
    recs = [r for r in records.lineage(table) if function is None or r["function"] == function]
    cols = ["run_id", "function", "c2lst_version", "created", "seed", "input_table", "parameters", "model_sha256"]
    frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in recs], columns=cols)
    return frame.set_index("run_id")


@_doc
def adapter(adata: Any, key: str = "c2lst_local", *, table_key: str = "table") -> dict[str, Any]:
    """Return an adapter record with its JSON fields parsed (weights excluded).

    {head}
    key
        Adapter key in ``uns["c2lst"]["local"]`` (the ``key_added`` of :func:`c2lst.tl.adapt`).
    {tail}
    A dict with ``genes`` (list), ``config`` and ``summary`` (dicts), ``sha256``, ``central_sha256``,
    ``central_path``, ``expr_key``, ``patch_key``, ``format`` and ``n_weights`` (number of stored tensors).
    """
    rec = records.adapter_record(_table(adata, table_key), key, arg="key")
    out = {k: _json(v) for k, v in rec.items() if k not in ("weights", "genes")}
    out["genes"] = list(records.gene_names(rec.get("genes", [])))
    out["n_weights"] = len(rec.get("weights", {}))
    return out


@_doc
def adapters(adata: Any, *, table_key: str = "table") -> pd.DataFrame:
    """Return one row per adapter stored in the table.

    {head}
    {tail}
    A DataFrame indexed by adapter key with columns ``n_genes``, ``backbone`` (the central model's denoiser:
    ``"unet"``, or ``"transformer"`` for a foundation-model central), ``sha256``, ``central_sha256``,
    ``central_path`` and ``expr_key``.
    """
    table = _table(adata, table_key)
    rows = {}
    text = ("sha256", "central_sha256", "central_path", "expr_key")
    for key in records.section(table, "local"):
        rec = adapter(table, key)
        backbone = str(rec.get("backbone", "")) or "unet"  # records written before transformer centrals
        rows[key] = {"n_genes": len(rec["genes"]), "backbone": backbone, **{c: str(rec.get(c, "")) for c in text}}
    cols = ["n_genes", "backbone", *text]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols).rename_axis("key")


@_doc
def central_models(adata: Any, *, table_key: str = "table") -> pd.DataFrame:
    """Return one row per central model registered in the table by :func:`c2lst.tl.pretrain`.

    {head}
    {tail}
    A DataFrame indexed by registry key with columns ``path``, ``sha256``, ``config`` (dict) and ``summary``
    (dict).
    """
    table = _table(adata, table_key)
    cols = ["path", "sha256", "config", "summary"]
    rows = {k: {c: _json(v.get(c, "")) for c in cols} for k, v in records.section(table, "central").items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols).rename_axis("key")


@_doc
def expression_params(adata: Any, key: str = "c2lst_expr", *, table_key: str = "table") -> dict[str, Any]:
    """Return the preprocessing record of ``obsm[key]`` written by :func:`c2lst.pp.prepare_expression`.

    {head}
    key
        The ``key_added`` of :func:`c2lst.pp.prepare_expression`.
    {tail}
    A dict with ``genes`` (list, model order), ``normalization``, ``target_sum``, ``layer`` and the gene
    selection settings.
    """
    rec = records.expression_record(_table(adata, table_key), key, arg="key")
    rec["genes"] = list(records.gene_names(rec["genes"]))
    return rec


@_doc
def expression_genes(adata: Any, key: str = "c2lst_expr", *, table_key: str = "table") -> list[str]:
    """Return the genes of the prepared expression ``obsm[key]``, in model order.

    {head}
    key
        The ``key_added`` of :func:`c2lst.pp.prepare_expression`.
    {tail}
    The gene names, one per column of ``obsm[key]``.
    """
    return records.expression_genes(_table(adata, table_key), key, arg="key", var_names_fallback=True)


@_doc
def expression(adata: Any, key: str = "c2lst_expr", *, table_key: str = "table") -> pd.DataFrame:
    """Return the prepared expression ``obsm[key]`` as a spots × genes DataFrame (like ``scanpy.get.obs_df``).

    {head}
    key
        The ``key_added`` of :func:`c2lst.pp.prepare_expression`.
    {tail}
    A float32 DataFrame indexed by ``obs_names`` with one column per gene.
    """
    table = _table(adata, table_key)
    genes = expression_genes(table, key)
    return pd.DataFrame(np.asarray(table.obsm[key], dtype=np.float32), index=table.obs_names, columns=genes)


@_doc
def predictions(adata: Any, key: str = "c2lst_pred", *, table_key: str = "table") -> pd.DataFrame:
    """Return the predicted expression ``obsm[key]`` of :func:`c2lst.tl.predict_expression` as a DataFrame.

    {head}
    key
        The ``key_added`` of :func:`c2lst.tl.predict_expression`.
    {tail}
    A float32 DataFrame indexed by ``obs_names`` with one column per predicted gene.
    """
    table = _table(adata, table_key)
    rec = records.prediction_record(table, key, arg="key")
    if key not in table.obsm:
        raise KeyError(f"`key={key!r}` is not in `adata.obsm` (keys: {sorted(table.obsm)}); {records.PRED_HINT}")
    genes = list(records.gene_names(rec["genes"]))
    return pd.DataFrame(np.asarray(table.obsm[key], dtype=np.float32), index=table.obs_names, columns=genes)


@_doc
def metrics(adata: Any, key: str = "c2lst_pred", *, table_key: str = "table") -> pd.DataFrame:
    """Return the per-gene metrics stored by :func:`c2lst.tl.evaluate_prediction` as a DataFrame.

    {head}
    key
        Evaluation key (the ``key_added`` of :func:`c2lst.tl.evaluate_prediction`; by default its ``pred_key``).
    {tail}
    A DataFrame indexed by gene with ``pearson_r`` and ``mse``, plus ``moran_observed``, ``moran_predicted``
    and ``moran_difference`` when the evaluation was spatial.

    Examples
    --------
    >>> c2lst.get.metrics(table).sort_values("pearson_r", ascending=False).head()  # doctest: +SKIP
    """
    table = _table(adata, table_key)
    evals = records.section(table, "evaluation")
    if key not in evals:
        raise KeyError(
            f"no evaluation {key!r} in `uns['c2lst']['evaluation']` (have: {sorted(evals)}); run "
            "`c2lst.tl.evaluate_prediction` first."
        )
    rec = evals[key]
    data = {c: np.asarray(rec[c], dtype=np.float64) for c in _EVAL_COLUMNS if c in rec}
    return pd.DataFrame(data, index=pd.Index(records.gene_names(rec["genes"]), name="gene"))


@_doc
def synthetic_mask(adata: Any, *, table_key: str = "table") -> np.ndarray:
    """Return a boolean mask of the synthetic rows (``obs["c2lst_synthetic"]``) of a table.

    {head}
    {tail}
    A boolean array with one entry per row; all False when the column is absent.
    """
    return records.synthetic_mask(_table(adata, table_key))
