"""c2lst: Central-to-Local adaptive generative diffusion for spatial transcriptomics."""

from . import datasets, pl, pp, tl
from ._logging import settings
from ._version import __version__

__all__ = ["__version__", "datasets", "pl", "pp", "settings", "tl"]
