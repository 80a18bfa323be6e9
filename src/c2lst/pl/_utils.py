"""Shared plumbing of the plotting functions: scanpy-style ``show=`` / ``save=`` and their docstring text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

_F = TypeVar("_F", bound=Callable)

#: Parameter text shared by the plotting functions; a docstring line ``{name}`` is replaced by it.
_DOC_PARAMS = {
    "ax": "ax\n    Draw into this axes instead of a new figure.",
    "show_save": (
        "show\n    Call :func:`matplotlib.pyplot.show` (``None``: no, the figure is returned).\n"
        "save\n    Write the figure to this path (parent folders are created; format from the suffix)."
    ),
}


def doc_params(func: _F) -> _F:
    """Fill the ``{ax}`` / ``{show_save}`` lines of ``func``'s docstring with the shared parameter text.

    Like scanpy's ``_doc_params``, but only whole placeholder lines are replaced (indented like the
    placeholder), so braces elsewhere in a docstring need no escaping.
    """
    out = []
    for line in (func.__doc__ or "").split("\n"):
        key = line.strip()[1:-1] if line.strip().startswith("{") and line.strip().endswith("}") else None
        if key not in _DOC_PARAMS:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out.extend(indent + text for text in _DOC_PARAMS[key].split("\n"))
    func.__doc__ = "\n".join(out)
    return func


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
