"""Training-step timing shared by the adapter benchmarks (bench_local, bench_foundation)."""

from __future__ import annotations

import time

import numpy as np
import torch

from c2lst.models import LocalModel
from c2lst.models.diffusion import denoising_loss


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer state (AdamW: two moments per trainable parameter)."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def step_times(models, x, n: int = 12) -> list[tuple[float, int]]:
    """Median seconds per optimisation step and optimizer-state bytes of each ``(module, params, condition)``.

    The models take turns step by step, so a change of machine load hits all of them alike; each is put in
    training mode before its step.
    """
    runs = []
    for module, params, c in models:
        sched = module.central.noise_scheduler if isinstance(module, LocalModel) else module.noise_scheduler
        runs.append((module, torch.optim.AdamW(params, lr=1e-4), sched, c, []))
    for i in range(n + 1):
        for module, opt, sched, c, times in runs:
            module.train()
            g = torch.Generator().manual_seed(i)
            t0 = time.perf_counter()
            loss = denoising_loss(module, sched, x, g, condition=c)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first step warms up allocations
                times.append(time.perf_counter() - t0)
    return [(float(np.median(t)), optimizer_state_bytes(opt)) for _, opt, _, _, t in runs]
