"""Adapters in ``uns["c2lst"]["local"]``: verification, rebuilding the local model, export and import."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from .. import _records as records
from .._logging import logger
from .._utils import as_table, renamed_arguments
from ..models import LocalModel, check_stored_targets
from ..models.store import (
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_V1,
    check_finite,
    fingerprint,
    load_safetensors,
    numpy_to_tensors,
    save_safetensors,
    sha256_tensors,
)

get_adapter = records.adapter_record


def verify_adapter(record: dict, where: str) -> tuple[dict, list[str]]:
    """Check an adapter record against its recorded fingerprint; return its configuration and gene list.

    Records of the current format (:data:`ADAPTER_FORMAT`) carry one sha256 over weights, configuration and gene
    list; records written before it (:data:`ADAPTER_FORMAT_V1`) only over the weights, which is accepted with a
    logged warning. Non-finite weights are refused. Nothing is compiled or evaluated.
    """
    fmt = str(record.get("format", ""))
    if fmt not in (ADAPTER_FORMAT, ADAPTER_FORMAT_V1):
        raise ValueError(f"{where} is not a c2lst adapter (format {fmt!r}, expected {ADAPTER_FORMAT!r}).")
    weights = record.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{where} holds no adapter weights; run `c2lst.tl.adapt` or `c2lst.tl.load_adapter` again.")
    try:
        config = json.loads(str(record["config"]))
        genes = list(records.gene_names(record["genes"]))
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{where} has no valid configuration or gene list ({err}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: the adapter configuration must be a JSON object, got {type(config).__name__}.")
    arrays = {str(k): np.asarray(v) for k, v in weights.items()}
    bad = [k for k, v in arrays.items() if v.dtype.kind not in "fiu"]
    if bad:
        raise TypeError(f"{where}: adapter weights {bad[:5]} are not numeric arrays.")
    recorded = str(record.get("sha256", ""))
    if fmt == ADAPTER_FORMAT:
        actual = fingerprint({k: v.astype(np.float32) for k, v in arrays.items()}, {"config": config}, genes)
        what = "weights, configuration and gene list"
    else:
        actual = sha256_tensors({k: v.astype(np.float32) for k, v in arrays.items()})
        what = "weights"
    if actual != recorded:
        raise ValueError(
            f"{where}: the adapter's {what} do not match their recorded sha256 ({actual[:12]}… vs "
            f"{recorded[:12]}…); the record was changed or corrupted. Adapt again or load the original file."
        )
    if fmt == ADAPTER_FORMAT_V1:
        logger.warning(
            "%s was written by an older c2lst: only its weights are covered by its sha256, not its configuration "
            "or gene list; export it again with `c2lst.tl.export_adapter` after checking it.",
            where,
        )
    check_finite(arrays, where)
    return config, genes


def load_local_model(record: dict, central, where: str = "the adapter record") -> LocalModel:
    """Rebuild the :class:`LocalModel` stored in an adapter record, after checking its fingerprint."""
    config, genes = verify_adapter(record, where)
    return LocalModel.from_adapter(central, genes, config, dict(record["weights"]))


@renamed_arguments(key="adapter_key")
def export_adapter(
    adata: Any, path: str | os.PathLike, *, table_key: str = "table", adapter_key: str = "c2lst_local"
) -> Path:
    """Write the adapter ``uns["c2lst"]["local"][adapter_key]`` to a safetensors file.

    Parameters
    ----------
    adata
        Table holding the adapter (an AnnData, or a SpatialData with ``table_key``).
    path
        Target ``.safetensors`` file.
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    adapter_key
        Adapter key (the ``key_added`` of :func:`c2lst.tl.adapt`).

    Returns
    -------
    The path written. Weights are tensors; gene list, configuration and provenance are JSON metadata.
    """
    adata = as_table(adata, table_key)
    record = records.adapter_record(adata, adapter_key)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"`path={str(path)!r}` must end in '.safetensors'.")
    meta = {k: str(v) for k, v in record.items() if k not in ("weights", "genes")}
    meta["genes"] = json.dumps([str(g) for g in np.asarray(record["genes"]).tolist()])
    tensors = numpy_to_tensors(record["weights"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=meta)
    return path


def load_adapter(
    adata: Any,
    path: str | os.PathLike,
    *,
    table_key: str = "table",
    key_added: str = "c2lst_local",
    overwrite: bool = False,
) -> None:
    """Read an adapter written by :func:`export_adapter` into ``uns["c2lst"]["local"][key_added]``.

    Parameters
    ----------
    adata
        Table to receive the adapter (an AnnData, or a SpatialData with ``table_key``).
    path
        A ``.safetensors`` file (pickle-based formats are refused).
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    key_added
        Adapter key.
    overwrite
        Replace an existing adapter of that key.
    """
    from safetensors import safe_open

    adata = as_table(adata, table_key)
    check_key_added(adata, key_added, overwrite)
    tensors = load_safetensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    if meta.get("format") not in (ADAPTER_FORMAT, ADAPTER_FORMAT_V1):
        raise ValueError(f"`path={str(path)!r}` is not a c2lst adapter (format {meta.get('format')!r}).")
    record = dict(meta)
    record["weights"] = {k: v.numpy() for k, v in tensors.items()}
    try:
        record["genes"] = np.asarray(json.loads(meta["genes"]), dtype=object)
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"`path={str(path)!r}`: the adapter's gene list is missing or not JSON ({err}).") from None
    config, _ = verify_adapter(record, f"`path={str(path)!r}`")
    check_stored_targets(config.get("target_modules"), None, f"`path={str(path)!r}`")
    records.store(adata, "local", key_added, record)


def check_key_added(adata: AnnData, key_added: Any, overwrite: bool) -> None:
    """Refuse a missing/invalid adapter key, or an existing one without ``overwrite=True``."""
    records.check_key_added(adata, "local", key_added, overwrite, "an adapter")
