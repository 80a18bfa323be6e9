"""Shared plumbing of the plotting functions: scanpy-style ``show=`` / ``save=``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def finish(fig: Figure, show: bool | None, save: str | Path | None, *, dpi: int = 150) -> Figure:
    """Save ``fig`` to ``save`` (parent folders created; format from the suffix) and show it if asked.

    ``show=None`` does not call :func:`matplotlib.pyplot.show`: notebooks display the returned figure anyway
    and scripts are not blocked. ``show=True`` calls it.
    """
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def check_show_save(show: object, save: object) -> None:
    """Validate ``show`` / ``save`` before any drawing."""
    if show is not None and not isinstance(show, bool):
        raise TypeError(f"`show` must be True, False or None, got {show!r}.")
    if save is not None and not isinstance(save, str | Path):
        raise TypeError(f"`save` must be a file path (str or Path) or None, got {type(save).__name__}.")
