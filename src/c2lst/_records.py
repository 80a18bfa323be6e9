"""The one reader and writer of ``uns["c2lst"]``: central models, adapters, expression, predictions, lineage.

Every c2lst function that stores or reads a record in ``adata.uns["c2lst"]`` goes through this module, so the
layout of a record is written down once. It imports no torch and no other c2lst subpackage (``pp``, ``tl``,
``get`` and ``pl`` all sit above it). Users read the records through :mod:`c2lst.get`.

Sections of ``uns["c2lst"]``:

``central``
    central models by key: ``{"path", "sha256", "config", "summary"}`` (:func:`c2lst.tl.pretrain`).
``local``
    adapters by key: weights, genes, configuration, sha256 and provenance (:func:`c2lst.tl.adapt`).
``expr``
    prepared expression by ``obsm`` key: ``{"genes", "normalization", "target_sum", ...}``
    (:func:`c2lst.pp.prepare_expression`).
``patches``, ``pred``, ``evaluation``, ``features``
    the parameters of :func:`c2lst.pp.extract_patches`, :func:`c2lst.tl.predict_expression`,
    :func:`c2lst.tl.evaluate_prediction` and :func:`c2lst.tl.image_features` by their ``key_added``.
``augmented``
    the real and synthetic tables an augmented table was built from (:func:`c2lst.tl.concat_augmented`).
``lineage``
    one record per write, by run id (:func:`record_lineage`).
``scale``
    the physical scale of the table's spots: ``{"um_per_unit": float, "source": str}``, micrometres per unit of
    the intrinsic coordinates of the shapes element the table annotates (:func:`record_scale`,
    :func:`physical_scale`; read by :func:`c2lst.pp.extract_patches`).
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._version import __version__

UNS_KEY = "c2lst"
SECTIONS = ("central", "local", "expr", "patches", "pred", "evaluation", "features", "augmented", "lineage")

EXPR_HINT = "run `c2lst.pp.prepare_expression` first (or pass the `key_added` it used as `expr_key`)."
PRED_HINT = "run `c2lst.tl.predict_expression` first (or pass the `key_added` it used as `pred_key`)."
PATCH_HINT = "run `c2lst.pp.extract_patches` first (or pass the `patch_key` it used)."
SYNTHETIC_COLUMN = "c2lst_synthetic"


# --------------------------------------------------------------------------- sections
def section(adata: Any, name: str, *, create: bool = False) -> dict:
    """Return ``adata.uns["c2lst"][name]``; an empty dict (not stored) when absent, unless ``create=True``."""
    if create:
        return adata.uns.setdefault(UNS_KEY, {}).setdefault(name, {})
    return adata.uns.get(UNS_KEY, {}).get(name, {})


def root(adata: Any) -> dict:
    """Return (creating it) ``adata.uns["c2lst"]``."""
    return adata.uns.setdefault(UNS_KEY, {})


def store(adata: Any, name: str, key: str, value: Any) -> None:
    """Store ``value`` as ``adata.uns["c2lst"][name][key]``."""
    section(adata, name, create=True)[key] = value


def require(adata: Any, name: str, key: str, *, arg: str, hint: str) -> dict:
    """Return ``uns["c2lst"][name][key]`` or raise a :class:`KeyError` naming ``arg``, the keys present and a fix."""
    entries = section(adata, name)
    if key not in entries:
        raise KeyError(f"`{arg}={key!r}` is not in `uns['c2lst']['{name}']` (keys: {sorted(entries)}); {hint}")
    return entries[key]


def check_key_added(adata: Any, name: str, key_added: Any, overwrite: Any, what: str) -> None:
    """Refuse a missing/invalid ``key_added``, or one that already holds ``what`` without ``overwrite=True``."""
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    if not isinstance(overwrite, bool):
        raise TypeError(f"`overwrite` must be True or False, got {overwrite!r}.")
    if not overwrite and key_added in section(adata, name):
        raise ValueError(
            f"`key_added={key_added!r}` already holds {what}; pass `overwrite=True` to replace it, or another "
            "`key_added=`."
        )


# --------------------------------------------------------------------------- lineage
def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths into plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"<array shape={obj.shape} dtype={obj.dtype}>"
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def new_run_id() -> str:
    """Return a fresh run identifier."""
    return uuid.uuid4().hex[:12]


def record_lineage(
    adata: Any,
    *,
    function: str,
    parameters: Mapping[str, Any],
    seed: int | None,
    input_table: str | None,
    model_sha256: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> str:
    """Append a lineage record to ``adata.uns["c2lst"]["lineage"]`` and return its run id.

    Records are stored under their run id. ``parameters`` is kept as a JSON string so the record
    survives zarr/h5ad round trips unchanged; it is parsed with :func:`json.loads`, never evaluated.
    """
    run_id = run_id or new_run_id()
    record = {
        "run_id": run_id,
        "function": function,
        "c2lst_version": __version__,
        "parameters": json.dumps(to_jsonable(dict(parameters)), sort_keys=True),
        "seed": -1 if seed is None else int(seed),
        "input_table": "" if input_table is None else str(input_table),
        "model_sha256": json.dumps(dict(model_sha256 or {}), sort_keys=True),
        # microseconds: calls within one second keep their order (run ids are random, so a store's key order is not)
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
    }
    store(adata, "lineage", run_id, record)
    return run_id


def lineage(adata: Any) -> list[dict]:
    """Return the lineage records of ``adata`` with parameters parsed, oldest first."""
    recs = []
    for rec in section(adata, "lineage").values():
        rec = dict(rec)
        for key in ("parameters", "model_sha256"):
            if isinstance(rec.get(key), str):
                rec[key] = json.loads(rec[key])
        recs.append(rec)
    return sorted(recs, key=lambda r: r["created"])


# --------------------------------------------------------------------------- physical scale
def _positive(value: Any) -> float | None:
    try:
        out = float(np.asarray(value))
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def record_scale(adata: Any, um_per_unit: float, source: str) -> None:
    """Store ``uns["c2lst"]["scale"] = {"um_per_unit", "source"}``: micrometres per shapes unit and their origin.

    A "unit" is one unit of the intrinsic coordinates of the shapes element the table annotates (full-resolution
    pixels for Space Ranger output, micrometres for Xenium).
    """
    value = _positive(um_per_unit)
    if value is None or isinstance(um_per_unit, bool):
        raise ValueError(f"`um_per_unit` must be a positive finite number, got {um_per_unit!r}.")
    if not isinstance(source, str) or not source:
        raise TypeError(f"`source` must be a non-empty string naming where the scale comes from, got {source!r}.")
    root(adata)["scale"] = {"um_per_unit": value, "source": source}


def physical_scale(adata: Any) -> tuple[float, str] | None:
    """Return ``(um_per_unit, source)`` recorded for the table's spots, else ``None``.

    Reads ``uns["c2lst"]["scale"]`` (:func:`record_scale`), then the simulator's record
    ``uns["c2lst"]["simulation"]["mpp"]`` (:func:`c2lst.datasets.simulated_visium`), then
    ``uns["c2lst"]["source"]["mpp"]`` (:func:`c2lst.datasets.from_visium_crop`). Records that are not a
    positive finite number are ignored.
    """
    rec = adata.uns.get(UNS_KEY, {})
    scale = rec.get("scale", {})
    value = _positive(scale.get("um_per_unit")) if isinstance(scale, Mapping) else None
    if value is not None:
        return value, str(scale.get("source", "")) or "uns['c2lst']['scale']"
    for name in ("simulation", "source"):
        old = rec.get(name, {})
        value = _positive(old.get("mpp")) if isinstance(old, Mapping) else None
        if value is not None:
            return value, f"table.uns['c2lst']['{name}']['mpp']"
    return None


# --------------------------------------------------------------------------- genes and synthetic rows
def gene_names(values: Any) -> np.ndarray:
    """Return gene names as an object array of ``str`` (also from numpy ``StringDType`` arrays read from zarr)."""
    return np.asarray([str(v) for v in np.asarray(values).tolist()], dtype=object)


def synthetic_mask(adata: Any) -> np.ndarray:
    """Return a boolean mask of rows marked ``obs["c2lst_synthetic"]`` (all False when the column is absent)."""
    if SYNTHETIC_COLUMN not in adata.obs:
        return np.zeros(adata.n_obs, dtype=bool)
    col = adata.obs[SYNTHETIC_COLUMN]
    return np.asarray(col.astype("boolean").fillna(False), dtype=bool)


# --------------------------------------------------------------------------- expression
def expression_record(adata: Any, key: str = "c2lst_expr", *, arg: str = "expr_key") -> dict:
    """Return the record ``uns["c2lst"]["expr"][key]`` written by :func:`c2lst.pp.prepare_expression`."""
    rec = section(adata, "expr").get(key)
    if rec is None or "genes" not in rec:
        raise KeyError(
            f"`{arg}={key!r}` has no expression record in `uns['c2lst']['expr']` (keys: {sorted(section(adata, 'expr'))}"
            f"); run `c2lst.pp.prepare_expression(adata, key_added={key!r})` first."
        )
    return dict(rec)


def expression_genes(
    adata: Any, key: str = "c2lst_expr", *, arg: str = "expr_key", var_names_fallback: bool = False
) -> list[str]:
    """Return the genes of ``obsm[key]`` in model order, checked against the matrix's width.

    With ``var_names_fallback=True`` a table without a record whose ``obsm[key]`` has one column per variable
    (e.g. a synthetic table whose ``X`` holds the conditioning genes) uses its ``var_names``.
    """
    if key not in adata.obsm:
        raise KeyError(f"`{arg}={key!r}` is not in `adata.obsm` (keys: {sorted(adata.obsm)}); {EXPR_HINT}")
    width = np.shape(adata.obsm[key])[1] if np.ndim(adata.obsm[key]) == 2 else -1
    if var_names_fallback and "genes" not in section(adata, "expr").get(key, {}) and width == adata.n_vars:
        return list(gene_names(adata.var_names))
    genes = list(gene_names(expression_record(adata, key, arg=arg)["genes"]))
    if len(genes) != width:
        raise ValueError(f"`obsm[{key!r}]` has shape {np.shape(adata.obsm[key])}, expected (n_obs, {len(genes)}).")
    return genes


def expression_matrix(adata: Any, key: str = "c2lst_expr") -> tuple[np.ndarray, list[str], dict]:
    """Return the prepared expression ``obsm[key]`` as finite float32, its genes and its record."""
    genes = expression_genes(adata, key)
    expr = np.asarray(adata.obsm[key], dtype=np.float32)
    if not np.isfinite(expr).all():
        raise ValueError(f"`obsm[{key!r}]` contains NaN or Inf; fix the counts and re-run `prepare_expression`.")
    return expr, genes, expression_record(adata, key)


def expression_key_of(adata: Any, genes: Sequence[str], default: str = "c2lst_expr") -> str:
    """Return the key of the expression record over exactly ``genes`` (in order), else ``default``."""
    for key, rec in section(adata, "expr").items():
        if list(gene_names(rec.get("genes", []))) == list(genes):
            return str(key)
    return default


def expression_entry(params: Mapping[str, Any], genes: Sequence[str]) -> dict:
    """Return an expression record for ``genes`` from normalisation parameters (``None`` values dropped)."""
    rec = {k: v for k, v in params.items() if v is not None}
    rec["genes"] = np.asarray(list(genes), dtype=str)
    return rec


# --------------------------------------------------------------------------- central models and adapters
def central_entry(adata: Any, key: str) -> dict | None:
    """Return the central-model record ``uns["c2lst"]["central"][key]``, or ``None``."""
    entry = section(adata, "central").get(key) if adata is not None else None
    return None if entry is None else dict(entry)


def central_path_of(adata: Any, sha256: str | None) -> str:
    """Return the recorded path of the central model with this sha256, or ``""``."""
    for entry in section(adata, "central").values():
        if sha256 and entry.get("sha256") == sha256:
            return str(entry.get("path", ""))
    return ""


def adapter_record(adata: Any, key: str, arg: str = "adapter_key") -> dict:
    """Return the adapter record ``uns["c2lst"]["local"][key]`` or raise a :class:`KeyError` listing the keys."""
    return require(adata, "local", key, arg=arg, hint="run `c2lst.tl.adapt` or `c2lst.tl.load_adapter` first.")


def prediction_record(adata: Any, key: str, arg: str = "pred_key") -> dict:
    """Return the prediction record ``uns["c2lst"]["pred"][key]`` (with its genes) or raise a :class:`KeyError`."""
    rec = require(adata, "pred", key, arg=arg, hint=PRED_HINT)
    if "genes" not in rec:
        raise KeyError(f"`uns['c2lst']['pred'][{key!r}]` has no gene list; {PRED_HINT}")
    return rec
