"""Weights on disk and in memory: safetensors only, sha256 fingerprints, no unpickling anywhere."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MODEL_FORMAT = "c2lst-central-v1"
#: Adapter records: v2 fingerprints weights + configuration + gene list (:func:`fingerprint`) and stores the
#: resolved LoRA module names; v1 (c2lst <= 0.x before issue 13) fingerprinted the weights only.
ADAPTER_FORMAT = "c2lst-local-v2"
ADAPTER_FORMAT_V1 = "c2lst-local-v1"
#: ``c2lst.json`` field naming what its ``sha256`` covers; absent in models saved before issue 13 (weights only).
FINGERPRINT_VERSION = "weights+config-v2"

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


def default_file_mode() -> int:
    """Return the mode a new file gets from the process umask (``0o666 & ~umask``), as ``open()`` would."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask(paths: Iterable[str | Path]) -> None:
    """Give files written by libraries that create them ``0600`` (safetensors) the process umask's mode.

    A lab's shared model directory must be readable by the group when the umask says so, like every other file.
    """
    mode = default_file_mode()
    for p in paths:
        p = Path(p)
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def save_safetensors(
    tensors: Mapping[str, torch.Tensor | np.ndarray], path: str | Path, metadata: dict | None = None
) -> None:
    """Write ``tensors`` (torch tensors or numpy arrays; made contiguous, on CPU) to ``path`` atomically.

    The file gets the process umask's mode. Numpy arrays keep their dtype (callers of ``tl`` pass arrays, so
    the skin needs no torch).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    as_t = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in tensors.items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in as_t.items()}, str(tmp), metadata=metadata)
    apply_umask([tmp])  # safetensors creates its files 0600
    tmp.replace(path)


def check_finite(tensors: Mapping[str, torch.Tensor | np.ndarray], where: str) -> None:
    """Raise :class:`ValueError` naming ``where`` and the first tensors holding NaN or Inf."""
    bad = []
    for name, t in tensors.items():
        ok = bool(torch.isfinite(t).all()) if isinstance(t, torch.Tensor) else bool(np.isfinite(np.asarray(t)).all())
        if not ok:
            bad.append(str(name))
    if bad:
        raise ValueError(
            f"{where}: weights {bad[:5]} contain NaN or Inf ({len(bad)} tensors); such a model makes black or "
            "noise patches. Use the weights of an earlier checkpoint or retrain."
        )


def canonical_json(obj: Any) -> str:
    """Return ``obj`` (a mapping or a JSON string) as canonical JSON (sorted keys, no whitespace)."""
    if isinstance(obj, str | bytes):
        obj = json.loads(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(
    weights: str | Mapping[str, torch.Tensor | np.ndarray],
    configs: Mapping[str, Any],
    genes: Sequence[str] = (),
) -> str:
    """Return one sha256 over weights, every configuration that changes the output and the gene list.

    Parameters
    ----------
    weights
        Named tensors (hashed with :func:`sha256_tensors`) or the hex digest of the weight files.
    configs
        ``{name: configuration}``: mappings or JSON strings, hashed as canonical JSON in name order.
    genes
        The gene list, in model order (empty for a central model).
    """
    h = hashlib.sha256(b"c2lst-fingerprint-v2\0")
    h.update((weights if isinstance(weights, str) else sha256_tensors(weights)).encode())
    for name in sorted(configs):
        h.update(f"\0{name}\0".encode())
        h.update(canonical_json(configs[name]).encode())
    h.update(b"\0genes\0")
    h.update(json.dumps([str(g) for g in genes]).encode())
    return h.hexdigest()


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


#: JSON files of a saved central model whose content changes the output (``c2lst.json``'s own ``config`` is
#: added by the caller). Keys starting with ``_`` (diffusers' class name and version) are bookkeeping.
#: ``model_index.json`` is left out on purpose: it only names the pipeline and component classes for diffusers'
#: loaders, c2lst never reads it, and covering it would change the sha256 of models saved before it existed
#: (the shipped ones included) without any change to their output.
MODEL_CONFIG_FILES = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")


def model_configs(directory: str | Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the configurations covered by a central model's fingerprint: ``config`` and its JSON files."""
    directory = Path(directory)
    out: dict[str, Any] = {"c2lst.json:config": dict(config)}
    for rel in MODEL_CONFIG_FILES:
        f = directory / rel
        if not f.is_file():
            continue
        try:
            doc = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"`path={str(directory)!r}`: {rel} is not valid JSON ({err}).") from None
        if not isinstance(doc, dict):
            raise ValueError(f"`path={str(directory)!r}`: {rel} must hold a JSON object.")
        out[rel] = {k: v for k, v in doc.items() if not str(k).startswith("_")}
    return out
