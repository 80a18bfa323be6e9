"""One package logger with scanpy-like verbosity, and the progress-bar switch."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


class _FallbackHandler(logging.StreamHandler):
    """Print ``c2lst: message`` to stderr only while the application has not configured logging.

    The logger propagates, so a user's ``logging.basicConfig`` / handlers on the root logger (or on
    ``"c2lst"``'s parents) receive every record; this handler then stays silent instead of printing twice.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


logger = logging.getLogger("c2lst")
if not any(isinstance(h, _FallbackHandler) for h in logger.handlers):
    _handler = _FallbackHandler()
    _handler.setFormatter(logging.Formatter("c2lst: %(message)s"))
    logger.addHandler(_handler)
logger.setLevel(logging.WARNING)
logger.propagate = True

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class _Settings:
    """Global settings: ``verbosity`` 0 (errors) … 3 (debug); 0 also hides progress bars."""

    def __init__(self) -> None:
        self._verbosity = 1

    @property
    def verbosity(self) -> int:
        """Verbosity level, 0 (errors only, no progress bars) to 3 (debug)."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value not in _LEVELS:
            raise ValueError(f"`verbosity` must be one of 0, 1, 2, 3, got {value!r}.")
        self._verbosity = value
        logger.setLevel(_LEVELS[value])


settings = _Settings()


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """Return a ``tqdm.auto`` bar that is disabled when ``enabled`` is false or verbosity is 0."""
    return tqdm(iterable, disable=(not enabled) or settings.verbosity == 0, **kwargs)
