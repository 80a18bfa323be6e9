"""Checkpoints of :func:`c2lst.models.train.train`: atomic writes, fingerprinted, exact resume."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .store import load_safetensors, save_safetensors

STATE_FILE = "c2lst_state.safetensors"
FINGERPRINT_FILE = "c2lst_fingerprint.json"


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file() and p.name[5:].isdigit()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_checkpoint(output_dir: str | Path, fingerprint: dict[str, Any] | None = None) -> Path | None:
    """Return the newest complete checkpoint under ``output_dir``; check its fingerprint if given."""
    ckpts = _checkpoints(Path(output_dir))
    if not ckpts:
        return None
    last = ckpts[-1]
    if fingerprint is not None:
        try:
            saved = json.loads((last / FINGERPRINT_FILE).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"`output_dir={str(output_dir)!r}`: the checkpoint {last.name} has no readable {FINGERPRINT_FILE} "
                f"({type(err).__name__}), so it cannot be matched to this run; delete it (or the whole "
                "`checkpoints/` folder) to start over, or pass `resume=False`."
            ) from None
        if not isinstance(saved, dict):
            raise ValueError(
                f"`output_dir={str(output_dir)!r}`: {last.name}/{FINGERPRINT_FILE} is not a JSON object; delete the "
                "checkpoint to start over, or pass `resume=False`."
            )
        mine = json.loads(json.dumps(fingerprint))
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise ValueError(
                f"`output_dir={str(output_dir)!r}` holds a checkpoint ({last.name}) of a different run "
                f"configuration (differs in {diff}); pass `resume=False` to start over in another `output_dir`, "
                "or use the original settings. Nothing was overwritten."
            )
    return last


def check_resume(out: Path, n_steps: int, resume: bool, fingerprint: dict[str, Any]) -> Path | None:
    """Return the checkpoint to resume from (or None), refusing what resume cannot honour before any work."""
    root = out / "checkpoints"
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"`output_dir={str(out)!r}` holds a file named 'checkpoints' where the checkpoints folder goes; move it "
            "away or pass another `output_dir`."
        )
    if not resume:
        return None
    start = latest_checkpoint(out, fingerprint)
    if start is not None and int(start.name[5:]) > n_steps:
        raise ValueError(
            f"`n_steps={n_steps}` is below the step of the newest checkpoint in `output_dir={str(out)!r}` "
            f"({start.name}); resuming cannot train fewer steps than were done. Pass `n_steps>={start.name[5:]}`, "
            "or `resume=False` / another `output_dir` to train from scratch."
        )
    return start


def set_aside_old_checkpoints(out: Path) -> None:
    """With ``resume=False``, move an earlier run's checkpoints aside (kept, and logged).

    They are then neither resumed nor mistaken for this run's when checkpoints are pruned.
    """
    from .._logging import logger

    root = out / "checkpoints"
    if not root.is_dir() or not any(root.iterdir()):
        return
    dest = out / f"checkpoints.previous-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while dest.exists():
        n += 1
        dest = out / f"checkpoints.previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    root.rename(dest)
    logger.warning("resume=False: the earlier run's checkpoints in %s were moved to %s", root, dest)




def save_checkpoint(
    accelerator, out: Path, step: int, losses, ema, fingerprint: dict[str, Any], keep: int
) -> None:
    """Write ``checkpoints/step_<step>`` atomically (temp folder, then rename) and keep the newest ``keep``."""
    root = out / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    # every rank writes its own random_states_<rank>.pkl: wait for all of them before the rename publishes it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": torch.tensor(step), "losses": torch.tensor(losses, dtype=torch.float64)}
        if ema is not None:
            state.update({f"ema.{i}": p for i, p in enumerate(ema.shadow_params)})
        (tmp / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, sort_keys=True))
        save_safetensors(state, tmp / STATE_FILE)  # written last: marks the checkpoint complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, path: Path) -> tuple[int, list[float], list[torch.Tensor]]:
    """Restore accelerate's state from ``path``; return its step, loss history and EMA shadow weights."""
    try:  # accelerate reads its .bin/.pkl files with torch.load(weights_only=True): code-bearing pickles fail
        accelerator.load_state(str(path))
    except Exception as err:
        raise ValueError(
            f"the checkpoint {str(path)!r} could not be loaded safely ({type(err).__name__}: "
            f"{str(err).split('. ')[0]}); it is "
            "corrupted or was tampered with. Delete it to resume from an earlier one, or pass `resume=False`."
        ) from None
    state = load_safetensors(path / STATE_FILE)
    n_ema = sum(1 for k in state if k.startswith("ema."))
    return int(state["step"].item()), state["losses"].tolist(), [state[f"ema.{i}"] for i in range(n_ema)]
