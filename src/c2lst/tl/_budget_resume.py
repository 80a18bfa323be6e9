"""Resumable :func:`~c2lst.tl.budget_curve`: each finished (repeat, fraction) run is appended to a fingerprinted log.

A budget curve on a CPU takes hours (one adaptation and several predictor fits per run), so an interrupted call
should not lose the runs it finished. With ``checkpoint=`` the rows of every finished run are appended, as one
JSON line, to ``runs.jsonl`` in the checkpoint folder, next to ``c2lst_fingerprint.json``: a digest of the
slide, the central model and every setting that changes a row. A later call with the same fingerprint reads
the finished runs back and skips them; each run is seeded by its own (repeat, fraction), so the result is
the same as an uninterrupted call's. ``n_repeats`` is outside the fingerprint: raising it extends a curve.

Two calls may share a folder (two processes started on one configuration, say): each append takes an exclusive
lock on ``runs.jsonl`` (``fcntl.flock`` where the platform has it) and first checks that the fingerprint is its
own and that nobody appended since this call last read or wrote the log. Otherwise it raises before writing, so
lines never interleave, a run is never logged twice, and one configuration's runs never land under another's
fingerprint.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._logging import logger

try:  # POSIX; elsewhere appends are guarded by the checks in RunLog.add alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUNS_FILE = "runs.jsonl"
FINGERPRINT_FILE = "c2lst_fingerprint.json"
FORMAT = "c2lst-budget-runs-v1"


def _plain(value: Any) -> Any:
    """JSON form of a setting or a row value: numpy scalars as Python ones; other objects by their type only."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return f"<{type(value).__name__}>"  # e.g. a model object inside a kwargs mapping: its identity is not a setting


def table_digest(table: AnnData, keys: Mapping[str, str]) -> str:
    """Return a sha256 over the spot and gene names and the arrays that :func:`budget_curve` reads.

    ``keys`` maps a role (``"patches"``, ``"expression"``, ...) to an ``obsm`` key, ``"X"`` or a layer name;
    keys the table lacks are skipped.
    """
    from ..models.store import sha256_tensors

    arrays: dict[str, Any] = {
        "obs_names": np.asarray(table.obs_names.astype(str), dtype=np.str_),
        "var_names": np.asarray(table.var_names.astype(str), dtype=np.str_),
    }
    for role, key in keys.items():
        if key in table.obsm:
            value = table.obsm[key]
        elif key == "X":
            value = table.X
        elif key in table.layers:
            value = table.layers[key]
        else:
            continue
        if value is None:
            continue
        if sp.issparse(value):
            csr = sp.csr_matrix(value)
            arrays.update({f"{role}.data": csr.data, f"{role}.indices": csr.indices, f"{role}.indptr": csr.indptr,
                           f"{role}.shape": np.asarray(csr.shape)})
        else:
            arrays[role] = np.asarray(value)
    return sha256_tensors(arrays)


class RunLog:
    """The finished runs of one :func:`budget_curve` configuration, kept in a checkpoint folder."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any], done: dict[tuple[int, float], list[dict]],
                 size: int = 0):
        self.folder = folder
        self.fingerprint = fingerprint
        self.done = done
        self._size = size  # bytes of runs.jsonl when this call last read or wrote it

    @classmethod
    def open(cls, checkpoint: str | os.PathLike, fingerprint: Mapping[str, Any]) -> RunLog:
        """Check ``checkpoint`` against ``fingerprint`` and read its finished runs; write nothing."""
        if not isinstance(checkpoint, str | os.PathLike):
            raise TypeError(
                f"`checkpoint` must be a folder path (str or PathLike), got {type(checkpoint).__name__}."
            )
        folder = Path(checkpoint)
        mine = json.loads(json.dumps({"format": FORMAT, **fingerprint}, default=_plain))
        if folder.exists() and not folder.is_dir():
            raise ValueError(
                f"`checkpoint={str(checkpoint)!r}` is a file; pass a folder (created if absent) for the finished runs."
            )
        done: dict[tuple[int, float], list[dict]] = {}
        if not folder.is_dir():
            return cls(folder, mine, done)
        meta = folder / FINGERPRINT_FILE
        if not meta.is_file():
            ours = {meta.with_suffix(".tmp").name, RUNS_FILE}  # a first write cut before the fingerprint landed
            if any(p.name not in ours or (p.name == RUNS_FILE and p.stat().st_size) for p in folder.iterdir()):
                raise ValueError(
                    f"`checkpoint={str(checkpoint)!r}` is a folder with other files and no {FINGERPRINT_FILE}: it is "
                    "not a budget_curve checkpoint. Pass an empty or new folder."
                )
            return cls(folder, mine, done)
        try:
            saved = json.loads(meta.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise TypeError("not a JSON object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(
                f"`checkpoint={str(checkpoint)!r}`: {FINGERPRINT_FILE} is unreadable ({type(err).__name__}); delete "
                "the folder to start over."
            ) from None
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise ValueError(
                f"`checkpoint={str(checkpoint)!r}` holds runs of a different budget curve (it differs in {diff}); "
                "pass the original settings to resume it, or another folder for this one. Nothing was overwritten."
            )
        runs = folder / RUNS_FILE
        try:
            raw = runs.read_bytes() if runs.is_file() else b""
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(
                f"`checkpoint={str(checkpoint)!r}`: {RUNS_FILE} is unreadable ({type(err).__name__}); delete the "
                "folder to start over."
            ) from None
        lines = text.split("\n")
        if lines[-1]:  # no newline after it: the last line of an interrupted write; that run is done again
            logger.warning("budget: %s ends in an incomplete line; that run is repeated", runs)
        for i, line in enumerate(lines[:-1]):
            try:
                run = json.loads(line)
                key = (int(run["repeat"]), float(run["fraction"]))
                rows = [dict(row) for row in run["rows"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ValueError(
                    f"`checkpoint={str(checkpoint)!r}`: line {i + 1} of {RUNS_FILE} is not a finished run; the file "
                    "was edited or corrupted. Delete the folder to start over."
                ) from None
            done[key] = rows
        logger.info("budget: %d finished runs read back from %s", len(done), folder)
        return cls(folder, mine, done, size=len(raw))

    def add(self, repeat: int, fraction: float, rows: list[dict[str, Any]]) -> None:
        """Append one finished run (its rows) and make it durable before the next run starts.

        Raises ``RuntimeError``, writing nothing, when another call wrote to the folder since this one read it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        runs = self.folder / RUNS_FILE
        with open(runs, "ab") as fh, self._locked(fh):
            meta = self.folder / FINGERPRINT_FILE
            if meta.is_file():
                try:
                    theirs = json.loads(meta.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    theirs = None
                if theirs != self.fingerprint:
                    raise RuntimeError(
                        f"`checkpoint={str(self.folder)!r}` was claimed by a budget curve of another configuration "
                        "while this one ran; nothing was written. Pass another folder for this curve."
                    )
            else:
                tmp = meta.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))
                os.replace(tmp, meta)
            if os.fstat(fh.fileno()).st_size != self._size:
                raise RuntimeError(
                    f"`checkpoint={str(self.folder)!r}`: another call appended runs to {RUNS_FILE} while this one "
                    "ran (two processes on one folder); nothing was written. Let one finish, then call again with "
                    "the folder: the finished runs are read back."
                )
            self._drop_incomplete_tail(runs)
            line = json.dumps({"repeat": int(repeat), "fraction": float(fraction), "rows": rows}, default=_plain)
            fh.write((line + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            self._size = os.fstat(fh.fileno()).st_size
        self.done[(int(repeat), float(fraction))] = rows

    @staticmethod
    @contextlib.contextmanager
    def _locked(fh: Any) -> Iterator[None]:
        """Hold an exclusive advisory lock on the open log for one append (waits for another process's append)."""
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _drop_incomplete_tail(runs: Path) -> None:
        """Cut a last line that an interrupted write left without its newline, so the next line starts clean."""
        if not runs.is_file() or runs.stat().st_size == 0:
            return
        with open(runs, "r+b") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":  # the usual case: read one byte, not the log
                return
            fh.seek(0)
            fh.truncate(fh.read().rfind(b"\n") + 1)


def open_run_log(checkpoint: str | os.PathLike | None, *, table: AnnData, model: Any, other: AnnData | None,
                 record: Mapping[str, Any], **settings: Any) -> RunLog | None:
    """Fingerprint a :func:`budget_curve` call (slide, central model, ``settings``) and open its checkpoint."""
    if checkpoint is None:
        return None
    from .._version import __version__
    from ..models import central_fingerprint

    layer = str(record.get("layer", "X"))
    keys = {"patches": settings["patch_key"], "expression": settings["expr_key"], "spatial": "spatial",
            "counts": layer}
    fingerprint = {
        "c2lst": __version__,
        "slide": table_digest(table, keys),
        "central": central_fingerprint(model),
        "conditions_table": None if other is None else table_digest(other, keys),
        "expression_record": dict(record),
        **settings,
    }
    return RunLog.open(checkpoint, fingerprint)
