"""Resolve the central model users name in ``tl`` calls (an object, a directory, or a registry key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anndata import AnnData

from .. import _records as records
from .._logging import logger
from ..datasets import pretrained_central, pretrained_names
from ..models import CentralModel, central_fingerprint

#: Frozen feature spaces of ``fit_predictor(features=)`` and ``tl.embed_patches``.
FEATURES = ("morphometric", "central")


def resolve_central(central: Any, adata: AnnData | None = None, *, verify: bool = True) -> CentralModel:
    """Return a :class:`CentralModel` from an instance, a model directory, a registry key or a shipped name.

    Lookup order for a string: a key of ``uns["c2lst"]["central"]``, an existing directory, then a central
    model shipped with c2lst (:func:`c2lst.datasets.pretrained_central`, e.g. ``"tiny-sim"``).
    """
    if isinstance(central, CentralModel):
        return central
    if isinstance(central, str | os.PathLike):
        registry = records.section(adata, "central") if adata is not None else {}
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
        if isinstance(central, str) and central in pretrained_names():
            return pretrained_central(central)
        raise KeyError(
            f"`central={str(central)!r}` is neither a registered central model (keys: {sorted(registry)}), an "
            f"existing model directory, nor a shipped model ({list(pretrained_names())}); pass a CentralModel, a directory "
            "from `save_pretrained`, a registry key or a shipped model's name."
        )
    raise TypeError(
        f"`central` must be a CentralModel, a model directory, a key of uns['c2lst']['central'] or a shipped "
        f"model's name ({list(pretrained_names())}), "
        f"got {type(central).__name__}."
    )


def central_for_adapter(central: Any, record: dict, table: AnnData, verify: bool) -> CentralModel:
    """Return the central model an adapter record was trained on (``central=None``: its recorded path).

    The model's fingerprint must match the one the adapter recorded; with ``verify=False`` a mismatch is logged.
    """
    if central is None:
        path = str(record.get("central_path", ""))
        if not path:
            raise ValueError(
                "the adapter does not record where its central model lives (it was adapted from an in-memory "
                "model); pass `central=` (a CentralModel or its directory)."
            )
        central = path
    model = resolve_central(central, table, verify=verify)
    fp = central_fingerprint(model)
    if fp != str(record["central_sha256"]):
        msg = (
            f"the central model's sha256 {fp[:12]}… differs from the one the adapter was trained on "
            f"({str(record['central_sha256'])[:12]}…)"
        )
        if verify:
            raise ValueError(msg + "; pass the original central model, or `verify=False` to proceed anyway.")
        logger.warning(msg + "; continuing because verify=False")
    return model


def feature_backbone(features, mode, central, timestep, backbone, table: AnnData):
    """Validate ``features=`` and return the backbone it implies (``backbone`` unchanged when ``None``)."""
    if features is None:
        if central is not None:
            raise ValueError("`central=` is only used with `features='central'`; pass both or neither.")
        return backbone
    if features not in FEATURES:
        raise ValueError(f"`features={features!r}` is unknown; use None or one of {list(FEATURES)}.")
    if mode != "ridge":
        raise ValueError(
            f"`features={features!r}` is a frozen feature space for `mode='ridge'`, got `mode={mode!r}`; "
            "pass `mode='ridge'`."
        )
    if backbone is not None:
        raise ValueError(f"pass either `feature_extractor=` or `features={features!r}`, not both.")
    if features == "morphometric":
        if central is not None:
            raise ValueError("`central=` is only used with `features='central'`; drop it.")
        return None
    if central is None:
        raise ValueError(
            "`features='central'` needs the central model: pass `central=` (a CentralModel, its directory or a "
            "registry key)."
        )
    from ..models import CentralFeatureExtractor

    return CentralFeatureExtractor(resolve_central(central, table), t=timestep)
