"""c2lst: Central-to-Local adaptive generative diffusion for spatial transcriptomics.

The subpackages ``pp``, ``tl``, ``pl``, ``get``, ``metrics``, ``datasets`` and ``models`` load on first use (PEP 562), so
``import c2lst`` and the ``c2lst --help`` command line start instantly; the first access to, e.g.,
``c2lst.tl`` imports torch, diffusers and spatialdata.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._logging import settings
from ._version import __version__

if TYPE_CHECKING:
    from . import datasets, get, metrics, models, pl, pp, tl

_SUBMODULES = ("datasets", "get", "metrics", "models", "pl", "pp", "tl")

__all__ = ["__version__", "datasets", "get", "metrics", "models", "pl", "pp", "settings", "tl"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})
