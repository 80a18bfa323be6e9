"""Run ``tl.pretrain`` under ``accelerate launch`` (one process per rank).

Usage: ``ddp_pretrain.py PATCHES.npy OUT N_STEPS [BATCH_SIZE] [CHECKPOINT_EVERY]``.

Used by ``test_scale.py`` and ``benchmarks/bench_scale.py`` through :func:`launch_command` and
:func:`read_reports`: each rank writes what it saw as JSON to ``OUT.rank{N}.json`` (and prints it; ranks share
stdout, so their printed lines can interleave: read the files).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

import c2lst


def launch_command(patches_file: Path, output_dir: Path, *args: int, processes: int) -> list[str]:
    """Return the ``accelerate launch`` command running this script with ``processes`` CPU processes."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    flags = ["--num_processes", "1"] if processes == 1 else ["--multi_gpu", "--num_processes", str(processes)]
    accelerate = Path(sys.executable).with_name("accelerate")
    return [
        str(accelerate), "launch", *flags, "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(port),
        str(Path(__file__).resolve()), str(patches_file), str(output_dir), *map(str, args),
    ]  # fmt: skip


def read_reports(output_dir: Path, processes: int) -> list[dict]:
    """Return the JSON report of every rank of a run into ``output_dir``."""
    return [json.loads(Path(f"{output_dir}.rank{i}.json").read_text()) for i in range(processes)]


def main(patches_file: str, output_dir: str, n_steps: int, batch_size: int = 4, every: int = 0) -> None:
    """Pretrain the tiny preset on the patches and report the process layout, steps/s and the model sha256."""
    from accelerate import PartialState

    torch.set_num_threads(1)
    patches = np.load(patches_file, allow_pickle=False)
    t0 = time.perf_counter()
    model = c2lst.tl.pretrain(
        patches,
        preset="tiny",
        n_steps=n_steps,
        batch_size=batch_size,
        output_dir=output_dir,
        checkpoint_every=every or max(1, n_steps // 2),
        device="cpu",
        seed=0,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    state = PartialState()
    report = json.dumps(
        {
            "rank": state.process_index,
            "world": state.num_processes,
            "backend": str(state.backend),
            "sha256": model.sha256,
            "seconds": seconds,
            "train_seconds": model.training_summary["seconds"],
            "steps": n_steps,
            "batch_size": batch_size,
        }
    )
    Path(f"{output_dir}.rank{state.process_index}.json").write_text(report)
    print(report, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *[int(a) for a in sys.argv[3:6]])
