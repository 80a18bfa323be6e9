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
        "save\n    Write the figure to this path (parent folders are created; format from the suffix) when it is a\n"
        "    :class:`~pathlib.Path` or a string with a folder part (``\"out/fig.png\"``). Like scanpy, ``True`` or a\n"
        "    bare string (``\"_pred.png\"``) writes ``scanpy.settings.figdir / (function name + save)``, the format\n"
        "    from the suffix, else ``scanpy.settings.file_format_figs``."
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


_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".eps")


def save_path(save: str | Path | bool | None, name: str) -> Path | None:
    """Return where ``save`` asks to write the figure of the plot ``name`` (``None``: nowhere).

    A :class:`~pathlib.Path`, or a string with a folder part, is the file itself. ``True`` and a bare string
    follow scanpy's ``savefig_or_show``: ``settings.figdir / f"{name}{save}{settings.plot_suffix}.{ext}"``, the
    extension taken from ``save`` when it ends in a known format, else ``settings.file_format_figs``.
    """
    if save is None or save is False:
        return None
    if isinstance(save, Path) or (isinstance(save, str) and ("/" in save or "\\" in save)):
        return Path(save)
    from scanpy import settings

    suffix = "" if save is True else str(save)
    ext = next((e for e in _FORMATS if suffix.lower().endswith(e)), None)
    if ext is not None:
        suffix = suffix[: -len(ext)]
    ext = ext or f".{settings.file_format_figs}"
    return Path(settings.figdir) / f"{name}{suffix}{settings.plot_suffix}{ext}"


def finish(
    fig: Figure, show: bool | None, save: str | Path | bool | None, *, name: str = "c2lst", dpi: int = 150
) -> Figure:
    """Save ``fig`` where ``save`` says (:func:`save_path`; parent folders created) and show it if asked.

    ``show=None`` does not call :func:`matplotlib.pyplot.show`: notebooks display the returned figure anyway
    and scripts are not blocked. ``show=True`` calls it.
    """
    path = save_path(save, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if show:
        plt.show()
    return fig


def check_show_save(show: object, save: object) -> None:
    """Validate ``show`` / ``save`` before any drawing."""
    if show is not None and not isinstance(show, bool):
        raise TypeError(f"`show` must be True, False or None, got {show!r}.")
    if save is not None and not isinstance(save, str | Path | bool):
        raise TypeError(
            f"`save` must be a file path (Path or str), True, a scanpy-style suffix (str) or None, "
            f"got {type(save).__name__}."
        )
    if isinstance(save, str) and not save.strip():
        raise ValueError("`save` is an empty string; pass a path, a suffix such as '_pred.png', True or None.")
