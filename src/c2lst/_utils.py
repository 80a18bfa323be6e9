"""Small helpers shared by the skin (``pp``, ``tl``): validation and warnings (records live in ``_records``)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


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


def check_seed(seed: Any, name: str = "seed") -> int:
    """Return ``seed`` as a non-negative int (``name``: the argument named in the error)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TypeError(f"`{name}` must be a non-negative integer, got {seed!r}.")
    return int(seed)


#: Largest seed: synthetic row ``i`` gets seed ``seed + i``, stored as int64 in ``obs["c2lst_seed"]``.
MAX_SEED = 2**63 - 1
#: Largest classifier-free guidance weight accepted; beyond it the guided noise estimate saturates every pixel.
MAX_GUIDANCE = 100.0


def check_seed_range(seed: int, n: int, arg: str = "seed") -> None:
    """Raise when ``seed + n - 1`` (the last per-row seed) does not fit into an int64."""
    if seed + max(n, 1) - 1 > MAX_SEED:
        raise ValueError(
            f"`{arg}={seed}` with {n} rows gives seeds up to {seed + n - 1}, beyond int64 ({MAX_SEED}) where "
            f"`obs['c2lst_seed']` would wrap negative; pass `{arg}<={MAX_SEED - n + 1}`."
        )


def check_guidance_scale(value: Any) -> float:
    """Return ``guidance_scale`` as float, or raise when it is not a finite number in ``[0, MAX_GUIDANCE]``."""
    value = check_nonneg_float(value, "guidance_scale")
    if value > MAX_GUIDANCE:
        raise ValueError(
            f"`guidance_scale={value!r}` is beyond {MAX_GUIDANCE:g}; such weights saturate every pixel. Typical "
            "values are 1-5."
        )
    return value


def check_device(device: Any, arg: str = "device") -> Any:
    """Validate a device argument (``None``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`).

    Raises a :class:`TypeError` for other types and a :class:`ValueError` for an unknown device string or a CUDA
    device on a machine without one, before any compute. Returns ``device`` unchanged.
    """
    if device is None:
        return None
    import torch

    if not isinstance(device, str | torch.device):
        raise TypeError(f"`{arg}` must be None, a string such as 'cpu' or 'cuda', got {type(device).__name__}.")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"`{arg}={device!r}` is not a device; pass 'cpu', 'cuda', 'cuda:<index>' or None.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"`{arg}={device!r}` but this PyTorch has no usable CUDA device; pass `{arg}='cpu'` or None."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"`{arg}={device!r}`: only {torch.cuda.device_count()} CUDA devices exist; pass an index below it."
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"`{arg}={device!r}` but MPS is not available; pass `{arg}='cpu'` or None.")
    elif dev.type != "cpu":
        raise ValueError(f"`{arg}={device!r}` is not supported; pass 'cpu', 'cuda' or None.")
    return device


def check_element_name(name: Any, arg: str) -> str:
    """Return ``name`` if spatialdata accepts it as an element name, else raise naming ``arg`` (before any work)."""
    if not isinstance(name, str):
        raise TypeError(f"`{arg}` must be a string, got {name!r} of type {type(name).__name__}.")
    from spatialdata._core.validation import check_valid_name

    try:
        check_valid_name(name)
    except ValueError as err:
        raise ValueError(
            f"`{arg}={name!r}` is not a valid element name ({err}); use letters, digits, '_', '-' and '.'."
        ) from None
    return name


def available_memory() -> int:
    """Return the machine's physical memory in bytes (a generous bound; 1 TiB where it cannot be read)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_memory(nbytes: float, arg: str, detail: str) -> None:
    """Raise a :class:`ValueError` naming ``arg`` when an allocation of ``nbytes`` cannot fit into memory."""
    limit = available_memory()
    if nbytes > limit:
        raise ValueError(
            f"`{arg}`: {detail} needs about {nbytes / 2**30:.3g} GiB, more than this machine's "
            f"{limit / 2**30:.3g} GiB of memory; pass a smaller `{arg}`."
        )


def as_float_matrix(value: Any, arg: str) -> np.ndarray:
    """Return a list/array/DataFrame of numbers as a float32 array, with one clear error for bad cells.

    Ragged nested lists raise :class:`ValueError`; strings or other non-numeric cells raise :class:`TypeError`.
    """
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        bad = [str(c) for c, dt in value.dtypes.items() if not pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt)]
        if bad:
            raise TypeError(
                f"`{arg}` has non-numeric columns {bad[:10]}; every cell must be a number (expression value)."
            )
        return value.to_numpy(dtype=np.float32)
    if isinstance(value, list):
        rows = [len(r) if isinstance(r, list | tuple | np.ndarray) else -1 for r in value]
        if len(set(rows)) > 1:
            raise ValueError(
                f"`{arg}` is a ragged list (row lengths {sorted(set(rows))[:5]}); every profile needs one value per "
                "gene."
            )
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "fiu":
        raise TypeError(
            f"`{arg}` holds non-numeric values (dtype {arr.dtype}); every cell must be a number (expression value)."
        )
    return arr.astype(np.float32)


def check_kwargs(kwargs: Any, arg: str, reserved: Mapping[str, str]) -> dict:
    """Return ``kwargs`` (``None`` or a mapping of keyword arguments) as a dict, refusing reserved keys.

    ``reserved`` maps the keys the caller sets itself to the way to set them instead; a duplicate would be a raw
    "got multiple values for keyword argument" error in the middle of the work.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(f"`{arg}` must be a dict of keyword arguments or None, got {type(kwargs).__name__}.")
    bad_keys = [k for k in kwargs if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"`{arg}` keys must be argument names (strings), got {bad_keys[:5]}.")
    dup = sorted(set(kwargs) & set(reserved))
    if dup:
        how = "; ".join(f"{k}: {reserved[k]}" for k in dup)
        raise ValueError(f"`{arg}` sets {dup}, which the caller already passes ({how}); remove them from `{arg}`.")
    return dict(kwargs)


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


def as_table(data: Any, table_key: str = "table", arg: str = "adata") -> Any:
    """Return ``data`` when it is an AnnData, else the table ``table_key`` of a SpatialData.

    This is how every function that reads one table accepts either container (scverse users hold both).
    """
    from anndata import AnnData

    if isinstance(data, AnnData):
        return data
    if getattr(data, "tables", None) is None:
        raise TypeError(
            f"`{arg}` must be an AnnData or a SpatialData (with `table_key=`), got {type(data).__name__}."
        )
    return get_table(data, table_key)


def renamed_arguments(**renames: str):
    """Decorate a public function whose keyword arguments were renamed: ``old=value`` still works, with a warning.

    ``renames`` maps each old name to its new name. Passing both names is a :class:`TypeError`.
    """
    import functools

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"`{old}` was renamed `{new}`; pass only `{new}=`.")
                    warnings.warn(
                        f"`{func.__module__.split('._')[0]}.{func.__name__}({old}=...)` is deprecated; use `{new}=`.",
                        FutureWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return decorate


def check_patch_extent(patch_um: Any, patch_px: Any) -> tuple[float | None, float | None]:
    """Validate the two exclusive ways to give a patch's extent (µm or pixels); return ``(patch_um, patch_px)``."""
    if patch_um is not None and patch_px is not None:
        raise ValueError(
            f"Pass either `patch_um` or `patch_px`, not both (got patch_um={patch_um!r}, patch_px={patch_px!r})."
        )
    if patch_px is not None:
        patch_px = check_positive_float(patch_px, "patch_px")
    if patch_um is not None:
        patch_um = check_positive_float(patch_um, "patch_um")
    return patch_um, patch_px


def check_patches(patches: Any, name: str = "patches", *, min_n: int = 1) -> np.ndarray:
    """Return ``patches`` as a uint8 RGB stack ``(n, S, S, 3)`` of square patches, or raise naming ``name``.

    Array-likes (dask, zarr) are materialised once. Used by the skin and the engine alike.
    """
    if not isinstance(patches, np.ndarray):
        patches = np.asarray(patches)
    if patches.dtype != np.uint8:
        raise TypeError(
            f"`{name}` must be uint8 RGB patches (n, S, S, 3), got dtype {patches.dtype}; patches from "
            "`c2lst.pp.extract_patches` are uint8 (or convert with `skimage.util.img_as_ubyte`)."
        )
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.shape[1] != patches.shape[2]:
        raise ValueError(f"`{name}` patches must have shape (n, S, S, 3) (square, RGB), got {patches.shape}.")
    if patches.shape[0] < min_n:
        held = "no patches" if patches.shape[0] == 0 else f"{patches.shape[0]} patch(es)"
        raise ValueError(f"`{name}` holds {held}; pass at least {min_n}.")
    return patches


def require_obsm(adata: Any, key: str, arg: str, hint: str) -> np.ndarray:
    """Return ``adata.obsm[key]`` or raise a :class:`KeyError` that names ``arg`` and the step to run."""
    if key not in adata.obsm:
        raise KeyError(f"`{arg}={key!r}` is not in `adata.obsm` (keys: {sorted(adata.obsm)}); {hint}")
    return adata.obsm[key]


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
