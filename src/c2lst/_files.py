"""Atomic publication of a finished folder, shared by the engine (saved predictors) and the skin (exports)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def publish_directory(tmp: Path, directory: Path) -> None:
    """Rename the complete folder ``tmp`` to ``directory``, swapping out an earlier one (restored on failure).

    Readers see either the earlier folder or the new one, never a half-written one.
    """
    if not directory.exists():
        os.replace(tmp, directory)
        return
    old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)
