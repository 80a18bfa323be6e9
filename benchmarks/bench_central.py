"""Benchmark the central model: training throughput and sampling overhead against plain diffusers code.

(a) steps/s of ``c2lst.tl.pretrain`` vs a hand-written diffusers loop (noise, UNet, MSE, AdamW) on the same
UNet, batch and data (goal: ratio >= 0.95);
(b) ``CentralModel.sample`` wall time vs stock ``DDPMPipeline`` with the same scheduler and steps, and vs the
raw UNet forward time x steps (goal: <= 1.05x raw UNet compute);
(c) whether channels_last, torch.compile or bf16 autocast help sampling on this machine.

Run: ``python benchmarks/bench_central.py [--preset small] [--steps 40]``. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler

import c2lst
from c2lst.models import CentralModel


def plain_loop(model: CentralModel, data: torch.Tensor, n_steps: int, batch: int, lr: float) -> float:
    """A minimal diffusers training loop; returns steps/s."""
    unet, sched = model.unet, DDPMScheduler(**model.scheduler_config)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    cond = model.null_condition(batch).detach()
    unet.train()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x = data[idx].float() / 127.5 - 1
        noise = torch.randn(x.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        pred = unet(sched.add_noise(x, noise, t), t, class_labels=cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return n_steps / (time.perf_counter() - t0)


def time_it(fn, repeat: int = 2) -> float:
    """Best-of-``repeat`` wall time of ``fn()``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n", type=int, default=16, help="samples")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile trial (slow to compile)")
    args = ap.parse_args()
    torch.manual_seed(0)
    size = c2lst.models.PRESETS[args.preset]["sample_size"]
    patches = (np.random.default_rng(0).random((256, size, size, 3)) * 255).astype(np.uint8)
    data = torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()

    # (a) training throughput; warm-up steps are excluded on both sides
    plain_model = CentralModel.from_preset(args.preset, seed=0)
    plain_loop(plain_model, data, 3, args.batch, 1e-4)
    plain = plain_loop(plain_model, data, args.train_steps, args.batch, 1e-4)
    res = {}
    for ema in (False, True):
        c2lst.tl.pretrain(
            patches, preset=args.preset, n_steps=3, batch_size=args.batch, ema=ema, progress=False
        )
        m = c2lst.tl.pretrain(
            patches,
            preset=args.preset,
            n_steps=args.train_steps,
            batch_size=args.batch,
            ema=ema,
            progress=False,
        )
        res[ema] = m.training_summary["steps"] / m.training_summary["seconds"]
    print(f"[train] plain {plain:.3f} steps/s, pretrain {res[False]:.3f}, with EMA {res[True]:.3f}", flush=True)

    # (b) sampling overhead
    model = CentralModel.from_preset(args.preset, seed=0).eval()
    n, steps = args.n, args.steps
    x = torch.randn(n, 3, size, size)
    cond = model.null_condition(n).detach()

    @torch.inference_mode()
    def raw():
        for t in range(steps):
            model.unet(x, torch.full((n,), 999 - t * (1000 // steps)), class_labels=cond)

    for sched in ("ddpm", "dpmsolver++"):
        model.sample(n, steps=2, scheduler=sched, generator=torch.Generator().manual_seed(0), batch_size=n)
    raw()
    t_raw = time_it(raw)
    t_ours = time_it(
        lambda: model.sample(
            n, steps=steps, scheduler="ddpm", batch_size=n, generator=torch.Generator().manual_seed(0)
        )
    )
    t_dpm = time_it(
        lambda: model.sample(
            n, steps=steps, scheduler="dpmsolver++", batch_size=n, generator=torch.Generator().manual_seed(0)
        )
    )

    class _Unet(torch.nn.Module):  # stock pipeline needs an unconditional UNet call: bind the null embedding
        def __init__(self, unet):
            super().__init__()
            self.unet, self.config, self.dtype, self.device = unet, unet.config, unet.dtype, unet.device

        def forward(self, sample, t, **kw):
            return self.unet(sample, t, class_labels=cond[: sample.shape[0]], **kw)

    pipe = DDPMPipeline(unet=_Unet(model.unet), scheduler=DDPMScheduler(**model.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    t_pipe = time_it(
        lambda: pipe(
            batch_size=n,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
    )

    # (c) CPU options for sampling
    options = {}
    cl = CentralModel.from_preset(args.preset, seed=0).eval()
    cl.unet.to(memory_format=torch.channels_last)
    options["channels_last"] = t_ours / time_it(
        lambda: cl.sample(
            n, steps=steps, scheduler="ddpm", batch_size=n, generator=torch.Generator().manual_seed(0)
        )
    )

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.sample(
                n, steps=steps, scheduler="ddpm", batch_size=n, generator=torch.Generator().manual_seed(0)
            )

    bf16()
    options["bf16_autocast"] = t_ours / time_it(bf16)
    try:
        if args.no_compile:
            raise RuntimeError("skipped (--no-compile)")
        comp = CentralModel.from_preset(args.preset, seed=0).eval()
        comp.unet = torch.compile(comp.unet)
        comp.sample(n, steps=2, scheduler="ddpm", batch_size=n, generator=torch.Generator().manual_seed(0))
        options["torch_compile"] = t_ours / time_it(
            lambda: comp.sample(
                n, steps=steps, scheduler="ddpm", batch_size=n, generator=torch.Generator().manual_seed(0)
            )
        )
    except Exception as err:
        options["torch_compile"] = f"unavailable: {type(err).__name__}"

    out = {
        "benchmark": "central",
        "preset": args.preset,
        "torch_threads": torch.get_num_threads(),
        "train_steps_per_s": {
            "plain_diffusers": plain,
            "pretrain_no_ema": res[False],
            "pretrain_ema": res[True],
        },
        "train_ratio_vs_plain": {"no_ema": res[False] / plain, "ema": res[True] / plain},
        "sample_s": {
            "raw_unet": t_raw,
            "c2lst_ddpm": t_ours,
            "c2lst_dpmsolver++": t_dpm,
            "DDPMPipeline": t_pipe,
        },
        "sample_ratio_vs_raw_unet": t_ours / t_raw,
        "sample_ratio_vs_DDPMPipeline": t_ours / t_pipe,
        "speedup_of_options": options,
    }
    print(
        f"training steps/s: plain {plain:.2f}, pretrain {res[False]:.2f} (ratio {res[False] / plain:.3f}), "
        f"with EMA {res[True]:.2f} (ratio {res[True] / plain:.3f})"
    )
    print(
        f"sampling {n}x{steps} steps: raw UNet {t_raw:.2f}s, c2lst {t_ours:.2f}s (x{t_ours / t_raw:.3f} raw), "
        f"DDPMPipeline {t_pipe:.2f}s (c2lst/pipeline {t_ours / t_pipe:.3f}), dpmsolver++ {t_dpm:.2f}s"
    )
    print("speed-up of CPU options on sampling (>1 helps):", options)
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
