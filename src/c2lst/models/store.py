"""Weights on disk and in memory: safetensors only, sha256 fingerprints, no unpickling anywhere."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MODEL_FORMAT = "c2lst-central-v1"
ADAPTER_FORMAT = "c2lst-local-v1"

#: File suffixes that need unpickling to read; c2lst refuses to load them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_no_pickles(paths: Iterable[Path], root: str | Path | None = None) -> None:
    """Raise :class:`ValueError` if any of ``paths`` is a pickle-based weight file.

    With ``root``, files in a ``checkpoints/`` folder *below* ``root`` are allowed (accelerate's training state,
    read only on resume and with ``weights_only=True``); a ``checkpoints`` folder above ``root`` does not count.
    """
    bad = [str(p) for p in paths if Path(p).suffix.lower() in PICKLE_SUFFIXES and Path(p).is_file()]
    if root is not None:
        bad = [p for p in bad if "checkpoints" not in Path(p).relative_to(root).parts]
    if bad:
        raise ValueError(
            f"refusing to load pickle-based weight files {bad}: loading them can execute code. Convert them to "
            "safetensors (e.g. `UNet2DModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)` "
            "in a trusted environment) and load that directory."
        )


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write ``tensors`` (made contiguous, on CPU) to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a corrupt or truncated file into a clear :class:`ValueError`."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        check_no_pickles([path])
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"weights file {str(path)!r} is not a valid safetensors file ({err}).") from None


def sha256_files(paths: Iterable[str | Path]) -> str:
    """Return one sha256 hex digest over the bytes of ``paths``, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_tensors(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> str:
    """Return a sha256 digest of named tensors (name, dtype, shape and bytes, in sorted name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = tensors[name]
        arr = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        arr = np.ascontiguousarray(arr)
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def tensors_to_numpy(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Convert a state dict to float32 numpy arrays (for storage in ``.uns``)."""
    return {k: v.detach().cpu().to(torch.float32).numpy().copy() for k, v in tensors.items()}


def numpy_to_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Convert arrays read from ``.uns`` back to float32 tensors, refusing anything that is not numeric."""
    out = {}
    for k, v in arrays.items():
        arr = np.asarray(v)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"adapter weight {k!r} has dtype {arr.dtype}; expected a numeric array.")
        out[str(k)] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return out
