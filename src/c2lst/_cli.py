"""The ``c2lst`` command line: thin wrappers over ``c2lst.tl`` (``demo``, ``pretrain``, ``synthesize``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="c2lst", description="Central-to-Local adaptive diffusion for spatial omics."
    )
    p.add_argument("--version", action="version", version=f"c2lst {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole pipeline on embedded simulated data")
    d.add_argument("--out", default="c2lst_demo", help="output directory (default: ./c2lst_demo)")
    d.add_argument("--quick", action="store_true", help="tiny settings (under a minute on 2 CPU cores)")
    d.add_argument(
        "--pretrain",
        action="store_true",
        help="pretrain the central model on a simulated corpus instead of loading the shipped 'tiny-sim' model",
    )
    d.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("pretrain", help="pretrain a central model on the patches of SpatialData zarr stores")
    t.add_argument("zarr", nargs="+", help="SpatialData .zarr stores (patches are extracted if missing)")
    t.add_argument("--out", required=True, help="output directory (checkpoints/ and model/)")
    t.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    t.add_argument("--size", type=int, default=None, help="patch size (default: the preset's)")
    t.add_argument("--n-steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    t.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("synthesize", help="synthesize patches into a zarr store whose table holds an adapter")
    s.add_argument("zarr", help="SpatialData .zarr store")
    s.add_argument("--table-key", default="table")
    s.add_argument("--adapter-key", default="c2lst_local")
    s.add_argument("--central", default=None, help="central model directory (default: the recorded path)")
    s.add_argument("--n-per-condition", type=int, default=1)
    s.add_argument("--guidance-scale", type=float, default=2.0)
    s.add_argument("--steps", type=int, default=25)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--table-added", default="c2lst_synthetic")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``c2lst`` command."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.out, quick=args.quick, seed=args.seed, pretrain=args.pretrain)
        return 0
    import spatialdata

    from . import pp, tl
    from .models.central import PRESETS

    if args.command == "pretrain":
        size = args.size or PRESETS[args.preset]["sample_size"]
        slides = [spatialdata.read_zarr(z) for z in args.zarr]
        for sd in slides:
            if not any("c2lst_patch" in t.obsm for t in sd.tables.values()):
                pp.extract_patches(sd, size=size)
        model = tl.pretrain(
            slides,
            preset=args.preset,
            n_steps=args.n_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            output_dir=args.out,
            mixed_precision=args.mixed_precision,
            seed=args.seed,
        )
        print(f"central model written to {args.out}/model (sha256 {model.sha256})")
        return 0
    if args.command == "synthesize":
        sd = spatialdata.read_zarr(args.zarr)
        tl.synthesize(
            sd,
            table_key=args.table_key,
            adapter_key=args.adapter_key,
            central=args.central,
            n_per_condition=args.n_per_condition,
            guidance_scale=args.guidance_scale,
            n_steps=args.steps,
            seed=args.seed,
            key_added=args.table_added,
        )
        print(f"wrote table {args.table_added!r} (+ image and circles) into {args.zarr}")
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
