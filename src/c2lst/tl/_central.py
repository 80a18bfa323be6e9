"""Resolve the central model users name in ``tl`` calls (an object, a directory, or a registry key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._utils import UNS_KEY
from ..datasets._pretrained import PRETRAINED, pretrained_central
from ..models.central import CentralModel


def resolve_central(central: Any, adata: AnnData | None = None, *, verify: bool = True) -> CentralModel:
    """Return a :class:`CentralModel` from an instance, a model directory, a registry key or a shipped name.

    Lookup order for a string: a key of ``uns["c2lst"]["central"]``, an existing directory, then a central
    model shipped with c2lst (:func:`c2lst.datasets.pretrained_central`, e.g. ``"tiny-sim"``).
    """
    if isinstance(central, CentralModel):
        return central
    if isinstance(central, str | os.PathLike):
        registry = adata.uns.get(UNS_KEY, {}).get("central", {}) if adata is not None else {}
        if isinstance(central, str) and central in registry:
            entry = registry[central]
            path = str(entry.get("path", ""))
            if not path:
                raise ValueError(
                    f"`central={central!r}` is registered without a path (it was trained with `output_dir=None`); "
                    "pass the CentralModel object instead."
                )
            if not Path(path).is_dir():  # a path read from `.uns` is never looked up on the hub
                raise FileNotFoundError(
                    f"`central={central!r}` is registered at {path!r}, which is not a directory; pass the model "
                    "directory (or the CentralModel object) as `central=`."
                )
            model = CentralModel.from_pretrained(path, verify=verify)
            recorded = str(entry.get("sha256", ""))
            if verify and recorded and model.sha256 != recorded:
                raise ValueError(
                    f"`central={central!r}`: the model at {path!r} has sha256 {str(model.sha256)[:12]}…, the registry "
                    f"recorded {recorded[:12]}…; pass `verify=False` to use it anyway."
                )
            return model
        if Path(central).exists():
            return CentralModel.from_pretrained(central, verify=verify)
        if isinstance(central, str) and central in PRETRAINED:
            return pretrained_central(central)
        raise KeyError(
            f"`central={str(central)!r}` is neither a registered central model (keys: {sorted(registry)}), an "
            f"existing model directory, nor a shipped model ({list(PRETRAINED)}); pass a CentralModel, a directory "
            "from `save_pretrained`, a registry key or a shipped model's name."
        )
    raise TypeError(
        f"`central` must be a CentralModel, a model directory, a key of uns['c2lst']['central'] or a shipped "
        f"model's name ({list(PRETRAINED)}), "
        f"got {type(central).__name__}."
    )
