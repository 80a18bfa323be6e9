"""Adapters in ``uns["c2lst"]["local"]``: verification, rebuilding the local model, export and import."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
from anndata import AnnData

from .. import _records as records
from .._files import publish_directory
from .._logging import logger
from .._utils import as_table, renamed_arguments
from ..models import LocalModel, check_stored_targets
from ..models.peft_io import read_peft_lora, write_peft_lora
from ..models.store import (
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_V1,
    check_finite,
    check_no_pickles,
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


#: Files of an adapter folder (``export_adapter(..., format="peft")``) beside peft's two.
ENCODER_FILE = "gene_encoder.safetensors"
GENES_FILE = "genes.json"
RECORD_FILE = "c2lst_adapter.json"
_FORMATS = ("safetensors", "peft")


@renamed_arguments(key="adapter_key")
def export_adapter(
    adata: Any,
    path: str | os.PathLike,
    *,
    table_key: str = "table",
    adapter_key: str = "c2lst_local",
    format: Literal["safetensors", "peft"] = "safetensors",
) -> Path:
    """Write the adapter ``uns["c2lst"]["local"][adapter_key]`` to a safetensors file or a peft folder.

    Parameters
    ----------
    adata
        Table holding the adapter (an AnnData, or a SpatialData with ``table_key``).
    path
        Target ``.safetensors`` file (``format="safetensors"``) or folder (``format="peft"``; a new or empty
        folder, or one written by this function, which is replaced).
    table_key
        Table read when ``adata`` is a SpatialData (an AnnData is used as it is).
    adapter_key
        Adapter key (the ``key_added`` of :func:`c2lst.tl.adapt`).
    format
        ``"safetensors"``: one file, weights as tensors, gene list, configuration and provenance as metadata.
        ``"peft"``: a folder loadable by ``peft.PeftModel.from_pretrained(unet, path)`` onto the central UNet
        (``adapter_config.json`` + ``adapter_model.safetensors``, peft's key naming) with, beside them, the gene
        encoder (``gene_encoder.safetensors``: the :class:`~c2lst.models.GeneEncoder` state dict), the gene list
        (``genes.json``) and the c2lst record (``c2lst_adapter.json``: configuration, central model, sha256).

    Returns
    -------
    The path written. Both formats load back with :func:`load_adapter` (the sha256 is checked).

    Examples
    --------
    >>> c2lst.tl.export_adapter(adata, "adapter_peft", format="peft")
    >>> from peft import PeftModel
    >>> unet = PeftModel.from_pretrained(UNet2DModel.from_pretrained("central/unet"), "adapter_peft")
    """
    adata = as_table(adata, table_key)
    if format not in _FORMATS:
        raise ValueError(f"`format={format!r}` is unknown; valid formats are {list(_FORMATS)}.")
    record = records.adapter_record(adata, adapter_key)
    path = Path(path)
    if format == "peft":
        return _export_peft(record, path)
    if path.suffix != ".safetensors":
        raise ValueError(f"`path={str(path)!r}` must end in '.safetensors' (or pass `format='peft'` for a folder).")
    meta = _record_meta(record)
    meta["genes"] = json.dumps(_genes(record))
    tensors = numpy_to_tensors(record["weights"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=meta)
    return path


def _record_meta(record: dict) -> dict[str, str]:
    return {k: str(v) for k, v in record.items() if k not in ("weights", "genes")}


def _genes(record: dict) -> list[str]:
    return [str(g) for g in np.asarray(record["genes"]).tolist()]


def _export_peft(record: dict, path: Path) -> Path:
    """Write the peft folder of ``record`` at ``path`` atomically (validated first)."""
    if path.suffix == ".safetensors" or path.is_file():
        raise ValueError(f"`path={str(path)!r}` must be a folder for `format='peft'`, not a file.")
    if path.is_dir() and any(path.iterdir()) and not (path / RECORD_FILE).is_file():
        raise FileExistsError(
            f"`path={str(path)!r}` is a folder with other content; pass a new or empty folder (a folder written by "
            "`export_adapter(..., format='peft')` is replaced)."
        )
    config, genes = verify_adapter(record, "the adapter record")
    weights = {str(k): np.asarray(v, np.float32) for k, v in record["weights"].items()}
    encoder = {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        write_peft_lora(tmp, config, weights, base_model=str(record.get("central_path", "")))
        save_safetensors(encoder, tmp / ENCODER_FILE)
        (tmp / GENES_FILE).write_text(json.dumps(genes))
        (tmp / RECORD_FILE).write_text(json.dumps(_record_meta(record), indent=2, sort_keys=True))
        publish_directory(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _read_peft_folder(path: Path) -> dict:
    """Rebuild an adapter record from a folder written by ``export_adapter(..., format="peft")``."""
    where = f"`path={str(path)!r}`"
    if not (path / RECORD_FILE).is_file():
        raise ValueError(f"{where} is a folder without {RECORD_FILE}; pass a folder written by `export_adapter`.")
    check_no_pickles(list(path.iterdir()))
    try:
        meta = json.loads((path / RECORD_FILE).read_text())
        genes = json.loads((path / GENES_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: {RECORD_FILE} or {GENES_FILE} is missing or not JSON ({err}).") from None
    if not isinstance(meta, dict) or not isinstance(genes, list):
        raise ValueError(f"{where}: {RECORD_FILE} must hold an object and {GENES_FILE} a list of gene names.")
    _check_format(meta, path)
    lora, _ = read_peft_lora(path)
    encoder = {f"encoder.{k}": v.numpy() for k, v in load_safetensors(path / ENCODER_FILE).items()}
    record = {str(k): str(v) for k, v in meta.items()}
    record["weights"] = {**lora, **encoder}
    record["genes"] = np.asarray([str(g) for g in genes], dtype=object)
    return record


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
        A ``.safetensors`` file or a peft folder written by :func:`export_adapter` (pickle-based formats are
        refused).
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
    if Path(path).is_dir():
        record = _read_peft_folder(Path(path))
    else:
        tensors = load_safetensors(path)
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        _check_format(meta, path)
        record = dict(meta)
        record["weights"] = {k: v.numpy() for k, v in tensors.items()}
        try:
            record["genes"] = np.asarray(json.loads(meta["genes"]), dtype=object)
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"`path={str(path)!r}`: the adapter's gene list is missing or not JSON ({err}).") from None
    _check_format(record, path)
    config, _ = verify_adapter(record, f"`path={str(path)!r}`")
    check_stored_targets(config.get("target_modules"), None, f"`path={str(path)!r}`")
    records.store(adata, "local", key_added, record)


def _check_format(meta: dict, path: Any) -> None:
    if meta.get("format") not in (ADAPTER_FORMAT, ADAPTER_FORMAT_V1):
        raise ValueError(f"`path={str(path)!r}` is not a c2lst adapter (format {meta.get('format')!r}).")


def check_key_added(adata: AnnData, key_added: Any, overwrite: bool) -> None:
    """Refuse a missing/invalid adapter key, or an existing one without ``overwrite=True``."""
    records.check_key_added(adata, "local", key_added, overwrite, "an adapter")
