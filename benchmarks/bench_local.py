"""Benchmark local adaptation and gene-conditioned synthesis.

(a) ``tl.synthesize`` wall time vs raw UNet compute for the same number of forwards (classifier-free
guidance doubles the batch; counted) — goal <= 1.05x;
(b) adapter training (LoRA + gene encoder) vs full fine-tuning of the same UNet: optimizer-state memory and
step time — goal <= 50% memory, <= 80% time;
(c) conditioning works: on the simulated slide, after adapting the ``small`` preset on <= 300 spots, the nuclei
density of synthesized patches correlates (Spearman) with the ground-truth density of their parent spots;
(d) the genes come back out: a ridge predictor (``reader``) trained on real spots reads the synthetic patches
(``tl.evaluate_conditioning``); its Pearson r with the conditioning profile is set between the same reader on
the parents' real patches (ceiling) and shuffled conditions (null), over all genes and over the image-visible
``marker`` genes. The reader never sees the parents it is scored on: the slide's spots are split in two halves,
each half's synthetic rows are read by a ridge fitted on the other half (cross-fitting), and the two halves'
figures are averaged. (Another simulated slide would not do: each slide draws its own gene programmes.)
(e) with ``--adapt-spots N --unseen``: the same reading for profiles the adapter never saw (half of the spots
not adapted on, read by a ridge fitted on the other half), as the unpaired conditions of the budget runs are.

Run: ``python benchmarks/bench_local.py`` (``small`` preset, 240 spots, 500 + 500 training steps: about
35 min on 2 CPU cores; ``--preset tiny`` for a few minutes). Prints figures and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from _timing import step_times
from scipy import stats

import c2lst
from c2lst.models import CentralModel, LocalModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--spots", type=int, default=240)
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--adapt-steps", type=int, default=500)
    ap.add_argument("--steps", type=int, default=10, help="denoising steps")
    ap.add_argument("--guidance", type=float, nargs="+", default=[2.0, 5.0],
                    help="guidance scales; (a) uses the first, (c) is reported for each")
    ap.add_argument("--central", default=None,
                    help="a shipped central model (e.g. tiny-sim) instead of pretraining (sets the patch size)")
    ap.add_argument("--encoder-lr", type=float, default=None, help="gene-encoder learning rate (default: 1e-3)")
    ap.add_argument("--timestep-bias", type=float, default=0.0,
                    help="adaptation timesteps of conditioned spots drawn with density ~ t**bias (0: uniform)")
    ap.add_argument("--seed", type=int, default=0, help="adaptation seed")
    ap.add_argument("--adapt-spots", type=int, default=None,
                    help="adapt on this many random spots only (the budget regime); the others train the reader")
    ap.add_argument("--unseen", action="store_true",
                    help="with --adapt-spots: also condition on spots neither adapted on nor read (half of the "
                         "others; the reader is fitted on the other half), as unpaired profiles are in the budget")
    ap.add_argument("--candidates", type=int, default=1,
                    help="with --unseen: draw this many patches per unseen profile and also read the best of them, "
                         "as chosen by a ridge fitted on the adapted spots (tl.select_synthetic), against all")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank of the adapter")
    ap.add_argument("--condition-noise", type=float, default=0.0,
                    help="adaptation: Gaussian noise on the training profiles, in units of each gene's spread")
    ap.add_argument("--hidden", type=int, default=64, help="hidden width of the gene encoder")
    ap.add_argument("--raw-batches", type=int, default=2,
                    help="time the raw UNet on this many batches only and scale per forward (0: all)")
    args = ap.parse_args()
    if args.unseen and not args.adapt_spots:
        ap.error("--unseen needs --adapt-spots (the spots not adapted on supply the unseen profiles)")
    if args.candidates > 1 and not args.unseen:
        ap.error("--candidates needs --unseen (the selection is read on the unseen profiles)")
    shipped = c2lst.datasets.pretrained_central(args.central) if args.central else None
    if shipped is not None:
        args.preset = shipped.config.get("preset", args.preset)  # (b) times an untrained copy of its architecture
    size = shipped.image_size if shipped is not None else c2lst.models.PRESETS[args.preset]["sample_size"]
    t_start = time.perf_counter()

    # data: a central corpus from two other "institutions" and the local slide
    corpus = [
        c2lst.datasets.simulated_visium(n_spots=args.spots, seed=s, stain=st)
        for s, st in ((11, "institution_a"), (12, "institution_b"))
    ]
    local = c2lst.datasets.simulated_visium(n_spots=args.spots, seed=0)
    for sd in [*corpus, local]:
        c2lst.pp.extract_patches(sd, size=size, progress=False)
    c2lst.pp.prepare_expression(local.tables["table"], n_top_genes=30)
    others = None
    if args.adapt_spots:  # the budget regime: a few labelled spots; the rest of the slide trains the reader
        full = local.tables["table"]
        pick = np.sort(np.random.default_rng(0).choice(full.n_obs, args.adapt_spots, replace=False))
        local.tables["table"] = full[pick].copy()
        others = full[np.setdiff1d(np.arange(full.n_obs), pick)].copy()
    table = local.tables["table"]
    central = shipped if shipped is not None else c2lst.tl.pretrain(
        corpus, preset=args.preset, n_steps=args.pretrain_steps, batch_size=16, lr=1e-3, progress=False
    )
    c2lst.tl.adapt(table, central=central, n_steps=args.adapt_steps, batch_size=16, lr=1e-3,
                   encoder_lr=args.encoder_lr, timestep_bias=args.timestep_bias, rank=args.rank, hidden=args.hidden,
                   condition_noise=args.condition_noise, seed=args.seed,
                   progress=False)
    t_train = time.perf_counter() - t_start

    # (a) synthesis vs raw UNet compute (same forwards: 2x batch with guidance)
    n = table.n_obs
    bs = 32
    t0 = time.perf_counter()
    c2lst.tl.synthesize(
        local, central=central, n_steps=args.steps, guidance_scale=args.guidance[0], batch_size=bs, progress=False
    )
    t_syn = time.perf_counter() - t0
    syn = local.tables["c2lst_synthetic"]
    unet = central.unet.eval()
    x = torch.randn(2 * bs, 3, size, size)
    cond = central.null_condition(2 * bs).detach()
    n_batches = int(np.ceil(n / bs))
    with torch.inference_mode():
        unet(x, torch.full((2 * bs,), 500), class_labels=cond)
        timed = range(min(args.raw_batches, n_batches) if args.raw_batches > 0 else n_batches)
        t0 = time.perf_counter()
        forwards = 0
        for b in timed:
            m = min(bs, n - b * bs)
            for _ in range(args.steps):
                unet(x[: 2 * m], torch.full((2 * m,), 500), class_labels=cond[: 2 * m])
            forwards += 2 * m * args.steps
        # normalised per sample-forward, for the 2 * n * steps forwards synthesis made
        t_raw = (time.perf_counter() - t0) * (2 * n * args.steps) / forwards

    # (b) adapter vs full fine-tuning
    genes = list(table.uns["c2lst"]["expr"]["c2lst_expr"]["genes"])
    xb = torch.rand(16, 3, size, size) * 2 - 1
    expr = torch.from_numpy(np.asarray(table.obsm["c2lst_expr"][:16]))
    local_model = LocalModel(CentralModel.from_preset(args.preset, seed=0), genes)
    full = CentralModel.from_preset(args.preset, seed=0)
    (t_ad, mem_ad), (t_full, mem_full) = step_times(
        [
            (local_model, [p for p in local_model.parameters() if p.requires_grad],
             (expr, torch.zeros(16, dtype=torch.bool))),
            (full, list(full.parameters()), None),
        ],
        xb,
    )

    # (d) readers of the genes: a ridge per half of the spots, each scored on the other half's synthetic rows
    # (with --adapt-spots: one ridge on the spots not adapted on, scored on all synthetic rows)
    genes_kind = table.var["c2lst_gene_kind"].reindex(genes).astype(str).to_numpy()
    if others is not None:
        readers = [(table, c2lst.tl.fit_predictor(others, mode="ridge", progress=False))]
    else:
        half = np.arange(table.n_obs) % 2 == 0
        readers = [(table[h], c2lst.tl.fit_predictor(table[~h].copy(), mode="ridge", progress=False))
                   for h in (half, ~half)]

    if args.unseen:  # half of the spots not adapted on give the profiles, the other half trains their reader
        side = np.random.default_rng(1).permutation(others.n_obs) < others.n_obs // 2
        unseen = others[side].copy()
        unseen_reader = c2lst.tl.fit_predictor(others[~side].copy(), mode="ridge", progress=False)
        chooser = c2lst.tl.fit_predictor(table, mode="ridge", progress=False)  # the labelled spots only

    def read_back(syn, readers):
        """Reader figures, averaged over ``readers`` (pairs of parents and the ridge that reads them)."""
        parts = []
        for parents, reader in readers:
            mine = syn[syn.obs["c2lst_parent"].astype(str).isin(parents.obs_names)]
            parts.append(c2lst.tl.evaluate_conditioning(parents, mine, predictor=reader, progress=False))
        marker = [p.loc[genes_kind == "marker"] for p in parts]
        d = {
            **{k: float(np.mean([p.attrs[k] for p in parts]))
               for k in ("mean_synthetic_r", "mean_real_r", "mean_shuffled_r")},
            **{f"marker_{c}": float(np.mean([m[c].mean() for m in marker]))
               for c in ("synthetic_r", "real_r", "shuffled_r")},
        }
        d["recovery"] = d["mean_synthetic_r"] / d["mean_real_r"] if d["mean_real_r"] > 0 else float("nan")
        return d

    # (c) conditioning: nuclei density of synthesized patches vs ground truth of their parents
    by_guidance = {}
    for i, w in enumerate(args.guidance):
        if i:
            c2lst.tl.synthesize(local, central=central, n_steps=args.steps, guidance_scale=w, batch_size=bs,
                                progress=False, overwrite=True)
            syn = local.tables["c2lst_synthetic"]
        comp = c2lst.tl.evaluate_composition(table, syn)
        rho = comp.attrs["spearman"]
        # a shuffled-parent control shows the correlation is not an artefact of the measurement
        rng = np.random.default_rng(0)
        by_guidance[w] = {
            "synthetic": rho.get("synthetic_n_nuclei_vs_true_n_cells", float("nan")),
            "p_value": float(stats.spearmanr(comp["synthetic_n_nuclei"], comp["true_n_cells"])[1]),
            "real": rho.get("real_n_nuclei_vs_true_n_cells", float("nan")),
            "shuffled": float(stats.spearmanr(comp["synthetic_n_nuclei"], rng.permutation(comp["true_n_cells"]))[0]),
            "mean_nuclei_synthetic": float(comp["synthetic_n_nuclei"].mean()),
            "mean_nuclei_real": float(comp["real_n_nuclei"].mean()),
        }
        by_guidance[w]["reader"] = read_back(syn, readers)
        if args.unseen:  # (e) profiles the adapter never saw, read by a ridge that never saw them either
            c2lst.tl.synthesize(local, central=central, conditions=unseen, n_steps=args.steps, guidance_scale=w,
                                batch_size=bs, key_added="c2lst_unseen", progress=False, overwrite=True,
                                n_per_condition=args.candidates)
            by_guidance[w]["unseen"] = read_back(local.tables["c2lst_unseen"], [(unseen, unseen_reader)])
            if args.candidates > 1:  # the same candidates, only the best of each profile's kept
                best = c2lst.tl.select_synthetic(local.tables["c2lst_unseen"], predictor=chooser, progress=False)
                by_guidance[w]["unseen_selected"] = read_back(best, [(unseen, unseen_reader)])
    truth = comp["true_n_cells"].to_numpy()
    rho_syn, rho_real, rho_shuffled = (by_guidance[args.guidance[0]][k] for k in ("synthetic", "real", "shuffled"))

    out = {
        "benchmark": "local",
        "preset": args.central or args.preset,
        "spots": n,
        "adapt_spots": args.adapt_spots,
        "adapt_steps": args.adapt_steps,
        "encoder_lr": args.encoder_lr,
        "timestep_bias": args.timestep_bias,
        "rank": args.rank,
        "condition_noise": args.condition_noise,
        "hidden": args.hidden,
        "candidates": args.candidates,
        "sampler_steps": args.steps,
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "synthesis_s": t_syn,
        "raw_unet_s_same_forwards": t_raw,
        "synthesis_ratio_vs_raw": t_syn / t_raw,
        "adapter_step_s": t_ad,
        "full_step_s": t_full,
        "time_ratio_adapter_vs_full": t_ad / t_full,
        "optimizer_state_bytes": {"adapter": mem_ad, "full": mem_full},
        "memory_ratio_adapter_vs_full": mem_ad / mem_full,
        "trainable_ratio": local_model.parameter_report()["ratio"],
        "spearman_synthetic_nuclei_vs_truth": rho_syn,
        "spearman_real_nuclei_vs_truth": rho_real,
        "spearman_shuffled_control": rho_shuffled,
        "spearman_by_guidance": by_guidance,
        "guidance": args.guidance,
        "n_truth_pairs": len(truth),
        "train_s": t_train,
    }
    print(f"(a) synthesis {t_syn:.1f}s vs raw UNet {t_raw:.1f}s for the same forwards: x{t_syn / t_raw:.3f}")
    print(
        f"(b) adapter vs full fine-tuning: step time x{t_ad / t_full:.3f}, optimizer state "
        f"{mem_ad / 2**20:.2f} MiB vs {mem_full / 2**20:.2f} MiB (x{mem_ad / mem_full:.3f})"
    )
    print(
        f"(c) Spearman(nuclei in synthetic patch, true cells under parent) = {rho_syn:.3f} "
        f"(real patches: {rho_real:.3f}; shuffled control: {rho_shuffled:.3f})"
    )
    for w, r in by_guidance.items():
        print(f"    guidance {w:g}: synthetic {r['synthetic']:.3f} (p={r['p_value']:.1e}), shuffled {r['shuffled']:.3f}, "
              f"mean nuclei synthetic {r['mean_nuclei_synthetic']:.1f} vs real {r['mean_nuclei_real']:.1f}")
    print(f"(d) reader (ridge on {'the spots not adapted on' if others is not None else 'the other half'}) on "
          "synthetic patches vs the conditioning profile, "
          "Pearson r: synthetic / real parents (ceiling) / shuffled (null)")
    print_readings(by_guidance, "reader")
    if args.unseen:
        print(f"(e) unseen profiles ({unseen.n_obs} spots neither adapted on nor read), reader r: synthetic / "
              "real patches of those spots (ceiling) / shuffled (null)")
        print_readings(by_guidance, "unseen")
        if args.candidates > 1:
            print(f"    best of {args.candidates} per profile (chosen by a ridge on the {n} adapted spots), read "
                  "by the same independent ridge:")
            print_readings(by_guidance, "unseen_selected")
    print(json.dumps(out, default=float))


def print_readings(by_guidance: dict, key: str) -> None:
    """One line per guidance of the reader figures stored under ``key`` ("reader" or "unseen")."""
    for w, r in by_guidance.items():
        d = r[key]
        print(f"    guidance {w:g}: all genes {d['mean_synthetic_r']:.3f} / {d['mean_real_r']:.3f} / "
              f"{d['mean_shuffled_r']:.3f} (recovery {d['recovery']:.2f}); marker genes "
              f"{d['marker_synthetic_r']:.3f} / {d['marker_real_r']:.3f} / {d['marker_shuffled_r']:.3f}")


if __name__ == "__main__":
    main()
