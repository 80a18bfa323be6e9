"""Small helpers shared by the skin (``pp``, ``tl``): validation, ``.uns`` bookkeeping, lineage."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import uuid
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ._version import __version__

UNS_KEY = "c2lst"


# --------------------------------------------------------------------------- validation
def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as int, or raise naming ``name`` when it is not an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be a positive integer, got {value!r} of type {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}; pass a value >= 1.")
    return int(value)


def check_nonneg_float(value: Any, name: str) -> float:
    """Return ``value`` as float, or raise naming ``name`` when it is not a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"`{name}` must be a number >= 0, got {value!r} of type {type(value).__name__}.")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return float(value)


def check_positive_float(value: Any, name: str) -> float:
    """Return ``value`` as float, or raise naming ``name`` when it is not a finite number > 0."""
    value = check_nonneg_float(value, name)
    if value <= 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")
    return value


def check_seed(seed: Any) -> int:
    """Return ``seed`` as a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TypeError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return int(seed)


def get_table(sdata: Any, table_key: str):
    """Return ``sdata.tables[table_key]`` or raise a :class:`KeyError` that lists the tables present."""
    tables = getattr(sdata, "tables", None)
    if tables is None:
        raise TypeError(f"`sdata` must be a SpatialData object, got {type(sdata).__name__}.")
    if table_key not in tables:
        raise KeyError(
            f"`table_key={table_key!r}` is not a table of this SpatialData; available tables: {sorted(tables)}. "
            "Pass one of them as `table_key=`."
        )
    return tables[table_key]


def require_obsm(adata: Any, key: str, arg: str, hint: str) -> np.ndarray:
    """Return ``adata.obsm[key]`` or raise a :class:`KeyError` that names ``arg`` and the step to run."""
    if key not in adata.obsm:
        raise KeyError(f"`{arg}={key!r}` is not in `adata.obsm` (keys: {sorted(adata.obsm)}); {hint}")
    return adata.obsm[key]


# --------------------------------------------------------------------------- .uns bookkeeping
def c2lst_uns(adata: Any, section: str | None = None) -> dict:
    """Return (creating it) ``adata.uns["c2lst"]`` or one of its sections."""
    root = adata.uns.setdefault(UNS_KEY, {})
    if section is None:
        return root
    return root.setdefault(section, {})


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
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    c2lst_uns(adata, "lineage")[run_id] = record
    return run_id


def lineage(adata: Any) -> list[dict]:
    """Return the lineage records of ``adata`` with parameters parsed, oldest first."""
    recs = []
    for rec in c2lst_uns(adata, "lineage").values() if UNS_KEY in adata.uns else []:
        rec = dict(rec)
        for key in ("parameters", "model_sha256"):
            if isinstance(rec.get(key), str):
                rec[key] = json.loads(rec[key])
        recs.append(rec)
    return sorted(recs, key=lambda r: r["created"])


@contextlib.contextmanager
def quiet_io_warnings() -> Iterator[None]:
    """Silence third-party warnings that say nothing about the user's data.

    zarr >= 3 warns once per written array that "autosharding will be the default in the next minor release"
    (one warning per image scale, table column, ...), and squidpy's docstring helper (docrep) emits
    ``SyntaxWarning`` on import. Everything else still reaches the user.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding will be the default", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*is not a valid key", category=SyntaxWarning)
        yield


def keep_torch_threads(func):
    """Decorate ``func`` so that torch's intra-op thread count is the same after it as before.

    scanpy's numba kernels run in numba's OpenMP threading layer, which shares libgomp with torch and leaves
    the OpenMP thread count at ``NUMBA_NUM_THREADS`` (all cores) after they return. That silently overrides
    ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` for the rest of the process, and on a shared machine the
    next training loop then runs several times slower. torch is not imported here when the caller has not.
    """
    import functools
    import sys

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        torch = sys.modules.get("torch")
        before = torch.get_num_threads() if torch is not None else None
        try:
            return func(*args, **kwargs)
        finally:
            torch = sys.modules.get("torch")
            if torch is not None and before is not None and torch.get_num_threads() != before:
                torch.set_num_threads(before)

    return wrapper
