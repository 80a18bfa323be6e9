"""Argument checks shared by the metrics: arrays in, a clear error naming the argument out."""

from __future__ import annotations

from typing import Any

import numpy as np


def as_float_array(value: Any, name: str, *, ndim: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Return ``value`` as a float64 array with one of ``ndim`` dimensions and at least one row."""
    if isinstance(value, str | bytes) or value is None:
        raise TypeError(f"`{name}` must be a numeric array, got {type(value).__name__}.")
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"`{name}` must hold numbers, got an array of dtype {arr.dtype}.") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim not in ndim:
        dims = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"`{name}` must be {dims}, got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` is empty; pass at least one value.")
    return arr


def same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    """Raise when two paired arrays differ in shape."""
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}.")


def check_ci(ci: Any) -> float:
    """Return the confidence level ``ci`` as float, or raise when it is not a number in (0, 1)."""
    if isinstance(ci, bool) or not isinstance(ci, int | float | np.integer | np.floating):
        raise TypeError(f"`ci` must be a number in (0, 1), got {ci!r} of type {type(ci).__name__}.")
    if not (0 < ci < 1):
        raise ValueError(f"`ci={ci}` must be in (0, 1), e.g. 0.95.")
    return float(ci)
