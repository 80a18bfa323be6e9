"""Benchmark the transformer central model (a PixCell-style PixArt latent transformer + VAE) adapted with genes.

No GPU and no foundation checkpoint here: a small random-config ``PixArtTransformer2DModel`` (~2.7 M parameters,
4 blocks of width 192, 8x8x4 latents, one 64-wide condition token) and a tiny ``AutoencoderKL`` (32 px patches) stand in for PixCell-256.
The ratios measure c2lst's overhead around the same diffusers modules, not image quality.

(a) adapter training (LoRA on the attention projections + gene encoder) vs full fine-tuning of the same
transformer: median step time and AdamW optimizer-state memory; goals <= 0.8x time, <= 10 % memory.
The trainable share of the same adapter on a PixCell-256-shaped transformer is counted on the meta device.

(b) ``tl.synthesize`` (adapter rebuilt, LoRA fused, CFG, VAE decode, tables written) vs the raw transformer and
VAE forwards it needs (2 x batch x steps transformer calls with guidance, one VAE decode per batch); goal <= 1.05x.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_foundation.py`` (about 2 min on one core). Prints each ratio
against its named peer, measured in the same run, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _timing import step_times
from diffusers import AutoencoderKL, PixArtTransformer2DModel

import c2lst
from c2lst.models import CentralModel, LocalModel
from c2lst.models.transformer import transformer_config


def build_central(seed: int = 0, layers: int = 4, width: int = 192) -> CentralModel:
    """A tiny PixCell-shaped central model: PixArt transformer (learned-sigma output) + 4-channel VAE."""
    torch.manual_seed(seed)
    tr = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=width // 4, in_channels=4, out_channels=8, num_layers=layers,
        cross_attention_dim=width, sample_size=8, patch_size=2, caption_channels=64,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=32,
    )  # fmt: skip
    return CentralModel(transformer_config(tr, vae), transformer=tr, vae=vae)


def pixcell_shaped_share(n_genes: int, rank: int = 8, hidden: int = 64) -> dict[str, float]:
    """Trainable share of an adapter on a PixCell-256-shaped transformer, counted on the meta device (no weights).

    PixCell-256: 28 blocks of width 1152 (16 heads x 72), 16 latent channels, one 1536-d UNI token. LoRA of
    ``rank`` on the attention projections c2lst targets by default; gene encoder ``G -> hidden -> 1536``.
    """
    import re

    from c2lst.models import DEFAULT_TARGETS

    with torch.device("meta"):
        tr = PixArtTransformer2DModel(
            num_attention_heads=16, attention_head_dim=72, in_channels=16, out_channels=32, num_layers=28,
            cross_attention_dim=1152, sample_size=32, patch_size=2, caption_channels=1536,
        )  # fmt: skip
    base = sum(p.numel() for p in tr.parameters())
    pattern = re.compile(DEFAULT_TARGETS)
    lora = sum(
        rank * (m.in_features + m.out_features)
        for name, m in tr.named_modules()
        if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name)
    )
    encoder = n_genes * hidden + hidden + 2 * hidden + hidden * 1536 + 1536
    return {"parameters": base, "lora": lora, "encoder": encoder, "ratio": (lora + encoder) / base}


def raw_synthesis(central: CentralModel, n: int, steps: int, bs: int) -> float:
    """Seconds of the bare forwards synthesis needs: transformer on 2 x batch per step (CFG), one VAE decode."""
    tr, vae = central.transformer.eval(), central.vae
    cfg = central.config
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, bs):
            m = min(bs, n - start)
            x = torch.randn(2 * m, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
            tokens = torch.randn(2 * m, 1, cfg["caption_channels"])
            for _ in range(steps):
                tr(x, encoder_hidden_states=tokens, timestep=torch.full((2 * m,), 500),
                   added_cond_kwargs={"resolution": None, "aspect_ratio": None})  # fmt: skip
            vae.decode(x[:m])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spots", type=int, default=64)
    ap.add_argument("--adapt-steps", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=15, help="timed optimisation steps per arm in (a)")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps in (b) (PixCell: 20 DPM-Solver steps)")
    ap.add_argument("--width", type=int, default=192, help="transformer width (PixCell-256: 1152)")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (PixCell-256: 28)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating repeats of (b); the minimum is reported")
    args = ap.parse_args()
    t_start = time.perf_counter()
    central = build_central(layers=args.layers, width=args.width)
    sdata = c2lst.datasets.simulated_visium(n_spots=args.spots, seed=0)
    c2lst.pp.extract_patches(sdata, size=central.image_size, progress=False)
    table = sdata.tables["table"]
    c2lst.pp.prepare_expression(table, n_top_genes=30)
    genes = list(table.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])

    # (a) adapter vs full fine-tuning of the transformer, on latents of the slide's patches
    x = central.encode_patches(np.asarray(table.obsm["c2lst_patch"][:16]))
    expr = torch.from_numpy(np.asarray(table.obsm["c2lst_expr"][:16], dtype=np.float32))
    local = LocalModel(central, genes, rank=8)
    full = build_central(layers=args.layers, width=args.width)
    (t_ad, mem_ad), (t_full, mem_full) = step_times(
        [
            (local, [p for p in local.parameters() if p.requires_grad], (expr, torch.zeros(16, dtype=torch.bool))),
            (full, list(full.parameters()), None),
        ],
        x,
        args.train_steps,
    )
    report = local.parameter_report()

    # (b) tl.synthesize vs the raw forwards, alternating so load changes hit both
    c2lst.tl.adapt(table, central=central, n_steps=args.adapt_steps, batch_size=16, progress=False)
    n, bs = table.n_obs, 32
    syn_times, raw_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        c2lst.tl.synthesize(table, central=central, n_steps=args.steps, guidance_scale=2.0, batch_size=bs,
                            progress=False)  # fmt: skip
        syn_times.append(time.perf_counter() - t0)
        raw_times.append(raw_synthesis(central, n, args.steps, bs))
    t_syn, t_raw = min(syn_times), min(raw_times)

    out = {
        "benchmark": "foundation",
        "device": "cpu (no GPU in this run)",
        "torch_threads": torch.get_num_threads(),
        "transformer_parameters": central.n_parameters(),
        "vae_parameters": sum(p.numel() for p in central.vae.parameters()),
        "trainable": report["trainable"],
        "trainable_ratio": report["ratio"],
        "adapter_step_s": t_ad,
        "full_step_s": t_full,
        "time_ratio_adapter_vs_full": t_ad / t_full,
        "optimizer_state_bytes": {"adapter": mem_ad, "full": mem_full},
        "memory_ratio_adapter_vs_full": mem_ad / mem_full,
        "spots": n,
        "denoising_steps": args.steps,
        "synthesis_s": t_syn,
        "raw_transformer_vae_s": t_raw,
        "synthesis_ratio_vs_raw": t_syn / t_raw,
        "synthesis_s_all": syn_times,
        "raw_s_all": raw_times,
        "pixcell256_shaped_adapter": pixcell_shaped_share(len(genes)),
        "total_s": time.perf_counter() - t_start,
    }
    print(f"tiny PixArt transformer: {out['transformer_parameters']} parameters; trainable share "
          f"{100 * report['ratio']:.1f} % (LoRA {report['lora']}, gene encoder {report['encoder']}); CPU only")  # fmt: skip
    print(f"(a) adapter vs full fine-tuning of the transformer: step time x{t_ad / t_full:.3f} "
          f"({1000 * t_ad:.1f} ms vs {1000 * t_full:.1f} ms; goal <= 0.8), optimizer state "
          f"{mem_ad / 2**10:.0f} KiB vs {mem_full / 2**10:.0f} KiB (x{mem_ad / mem_full:.3f}; goal <= 0.10)")  # fmt: skip
    print(f"(b) tl.synthesize {t_syn:.2f}s vs raw transformer + VAE forwards {t_raw:.2f}s for {n} patches, "
          f"{args.steps} steps, CFG: x{t_syn / t_raw:.3f} (goal <= 1.05)")  # fmt: skip
    pc = out["pixcell256_shaped_adapter"]
    print(f"PixCell-256-shaped transformer (meta device, not run): {pc['parameters']} parameters, adapter "
          f"{pc['lora'] + pc['encoder']} trainable ({100 * pc['ratio']:.2f} %; AdamW state x{pc['ratio']:.4f} of full)")  # fmt: skip
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
