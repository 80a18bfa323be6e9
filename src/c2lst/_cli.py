"""The ``c2lst`` command line: thin wrappers over ``c2lst.pp`` / ``c2lst.tl`` that work on SpatialData zarr stores.

The chain a lab runs from a job scheduler, one store at a time::

    c2lst extract slide.zarr --size 64
    c2lst prepare slide.zarr --n-top-genes 50
    c2lst pretrain corpus_*.zarr --out central --preset small      # or use the shipped model "tiny-sim"
    c2lst adapt slide.zarr --central central/model --n-steps 1000
    c2lst synthesize slide.zarr --n-per-condition 2
    c2lst evaluate slide.zarr --out fidelity.json
    c2lst budget slide.zarr --central central/model --out curve.csv

Commands that annotate the table (``extract``, ``prepare``, ``adapt``) write it back into the store atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

_EXAMPLES = {
    "extract": "c2lst extract slide.zarr --size 64            # obsm['c2lst_patch'] of table 'table'",
    "prepare": "c2lst prepare slide.zarr --n-top-genes 50    # obsm['c2lst_expr'] + its gene record",
    "pretrain": "c2lst pretrain a.zarr b.zarr --out central --preset small --n-steps 2000",
    "adapt": "c2lst adapt slide.zarr --central central/model --n-steps 1000   # or --central tiny-sim",
    "synthesize": "c2lst synthesize slide.zarr --n-per-condition 2 --key-added c2lst_synthetic",
    "evaluate": "c2lst evaluate slide.zarr --synthetic-key c2lst_synthetic --out fidelity.json",
    "budget": "c2lst budget slide.zarr --central central/model --fractions 0.1 0.25 1.0 --out curve.csv",
}


def _command(sub: Any, name: str, help_text: str, *, store: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {_EXAMPLES[name]}" if name in _EXAMPLES else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if store:
        p.add_argument("zarr", help="SpatialData .zarr store")
        p.add_argument("--table-key", default="table", help="table of the store (default: table)")
    return p


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="c2lst", description="Central-to-Local adaptive diffusion for spatial omics."
    )
    p.add_argument("--version", action="version", version=f"c2lst {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = _command(sub, "demo", "run the whole pipeline on embedded simulated data", store=False)
    d.add_argument("--out", default="c2lst_demo", help="output directory (default: ./c2lst_demo)")
    d.add_argument("--quick", action="store_true", help="tiny settings (under a minute on 2 CPU cores)")
    d.add_argument(
        "--pretrain",
        action="store_true",
        help="pretrain the central model on a simulated corpus instead of loading the shipped 'tiny-sim' model",
    )
    d.add_argument("--seed", type=int, default=0)

    e = _command(sub, "extract", "cut one patch per spot of the store's table (pp.extract_patches)")
    e.add_argument("--size", type=int, default=64, help="patch side in pixels (default: 64)")
    e.add_argument("--patch-um", type=float, default=None, help="patch side in µm (default: the spot diameter)")
    e.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="µm per unit of the spots' coordinates, for --patch-um (default: read from the data, see "
        "pp.extract_patches)",
    )
    e.add_argument("--key-added", default="c2lst_patch")

    r = _command(sub, "prepare", "select genes and normalise expression (pp.prepare_expression)")
    r.add_argument("--n-top-genes", type=int, default=50)
    r.add_argument("--genes", nargs="+", default=None, help="use these genes instead of highly variable ones")
    r.add_argument("--key-added", default="c2lst_expr")

    t = _command(sub, "pretrain", "pretrain a central model on the patches of SpatialData zarr stores", store=False)
    t.add_argument("zarr", nargs="+", help="SpatialData .zarr stores (patches are extracted if missing)")
    t.add_argument("--out", required=True, help="output directory (checkpoints/ and model/)")
    t.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    t.add_argument("--size", type=int, default=None, help="patch size (default: the preset's)")
    t.add_argument("--n-steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    t.add_argument("--seed", type=int, default=0)

    a = _command(sub, "adapt", "adapt a central model to the store's paired spots (tl.adapt)")
    a.add_argument("--central", required=True, help="central model directory or a shipped name (tiny-sim)")
    a.add_argument("--n-steps", type=int, default=1000)
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--timestep-bias", type=float, default=0.0,
                   help="timesteps of conditioned spots drawn with density ~ t**bias (0: uniform; tl.adapt)")
    a.add_argument("--condition-noise", type=float, default=0.0,
                   help="Gaussian noise on the training profiles, in units of each gene's spread (0: none; tl.adapt)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--key-added", default="c2lst_local")
    a.add_argument("--overwrite", action="store_true", help="replace an adapter of the same key")

    s = _command(sub, "synthesize", "synthesize patches into a zarr store whose table holds an adapter")
    s.add_argument("--adapter-key", default="c2lst_local")
    s.add_argument("--central", default=None, help="central model directory (default: the recorded path)")
    s.add_argument("--n-per-condition", type=int, default=1)
    s.add_argument("--guidance-scale", type=float, default=2.0)
    s.add_argument("--n-steps", "--steps", dest="n_steps", type=int, default=25, help="denoising steps")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--key-added", "--table-added", dest="key_added", default="c2lst_synthetic", help="name of the new table"
    )
    s.add_argument("--overwrite", action="store_true", help="replace synthetic elements of the same name")

    v = _command(sub, "evaluate", "fidelity of the synthetic table against the real one (tl.evaluate_fidelity)")
    v.add_argument("--synthetic-key", default="c2lst_synthetic")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", default=None, help="also write the JSON report to this file")

    b = _command(sub, "budget", "spot-budget curve: real vs real+synthetic predictors (tl.budget_curve)")
    b.add_argument("--central", required=True, help="central model directory or a shipped name (tiny-sim)")
    b.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    b.add_argument("--n-repeats", type=int, default=8)
    b.add_argument("--arms", nargs="+", default=["real", "real+synthetic"], metavar="ARM",
                   help="arms of the curve (tl.budget_curve): real, real+synthetic, and the controls real+null, "
                        "real+copy, synthetic-only, null-only, copy-only; default: real real+synthetic")
    b.add_argument("--conditions", default=None, metavar="mixup|STORE",
                   help="profiles the synthetic arm is conditioned on: the training spots (default), 'mixup' "
                        "(mixtures of them), or another section's zarr store whose table --conditions-table holds "
                        "its raw counts (unpaired expression of the same tissue type)")
    b.add_argument("--conditions-table", default="table", help="table of the --conditions store (default: table)")
    b.add_argument("--n-per-condition", type=int, default=2)
    b.add_argument("--n-candidates", type=int, default=1,
                   help="best-of-k: candidates generated per synthetic row; the one a ridge reader of the run's "
                        "labelled spots reads closest to its profile is kept (tl.select_synthetic; default 1: all)")
    b.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="folder that keeps each finished (repeat, fraction) run; the same command again resumes an "
                        "interrupted curve from it (tl.budget_curve(checkpoint=))")
    b.add_argument("--adapt-steps", type=int, default=800)
    b.add_argument("--n-steps", type=int, default=20, help="denoising steps of the synthesis")
    b.add_argument("--mode", default="cnn", choices=["cnn", "ridge"], help="predictor (default: cnn)")
    b.add_argument("--synthetic-weight", type=_weight, default=0.3,
                   help="loss weight of synthetic rows: a number >= 0, 'auto' (one weight chosen by grouped "
                        "validation on each fit's training spots) or 'auto-gene' (one per gene); default 0.3")
    b.add_argument("--real-finetune", type=_share, default=0.0,
                   help="staged training of the cnn predictor: share of its steps, at the end, on the real spots "
                        "alone (in [0, 1); default 0)")
    b.add_argument("--batching", default=None, choices=["mixed", "stacked"],
                   help="how the cnn predictor's steps take synthetic rows: 'stacked' (the cnn's default) adds a "
                        "batch of them to every batch of real spots, 'mixed' shuffles them in with the real spots")
    b.add_argument("--early-stopping", action="store_true",
                   help="each cnn predictor chooses its optimiser steps (up to 200) on a validation slice of its "
                        "own training spots instead of taking 200")
    b.add_argument("--validation-folds", type=int, default=1,
                   help="with --early-stopping: disjoint validation slices; the fit ends at the median of their "
                        "choices (steadier on few spots)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True, help="CSV file for the curve (the plan is printed as JSON)")
    return p


def _share(value: str) -> float:
    """``--real-finetune``: a number in [0, 1)."""
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0 <= share < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is no share; pass a number in [0, 1) (e.g. 0.33), or 0 for none")
    return share


def _weight(value: str) -> float | str:
    """``--synthetic-weight``: a number >= 0, ``auto`` or ``auto-gene``."""
    if value in ("auto", "auto-gene"):
        return value
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not (weight >= 0 and weight != float("inf")):
        raise argparse.ArgumentTypeError(f"{value!r} is no weight; pass a number >= 0 (e.g. 0.3), auto or auto-gene")
    return weight


def _read(args: argparse.Namespace, check: bool = True):
    import spatialdata

    from ._utils import get_table, quiet_io_warnings

    with quiet_io_warnings():
        sd = spatialdata.read_zarr(args.zarr)
    if check:
        get_table(sd, args.table_key)  # a clear error before any work
    return sd


def _write_table(sd: Any, table_key: str) -> None:
    """Write the annotated table back into its store (atomically: the old table stays until the new is whole)."""
    from .tl._elements import add_elements

    add_elements(sd, {table_key: ("tables", sd.tables[table_key])}, overwrite=True)


def _jsonable(value: Any) -> Any:
    """Plain JSON values for a report: frames become lists of records, arrays lists, numpy scalars numbers."""
    import numpy as np
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return _jsonable(value.to_dict(orient="records"))
    if isinstance(value, pd.Series | np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _print(report: dict, out: str | None) -> None:
    text = json.dumps(_jsonable(report), indent=2, sort_keys=True)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``c2lst`` command."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.out, quick=args.quick, seed=args.seed, pretrain=args.pretrain)
        return 0
    return _RUN[args.command](args)


def _annotate(args: argparse.Namespace, what: str, call: Any) -> int:
    """Read the store, let ``call`` annotate it, write the table back and say so."""
    sd = _read(args)
    call(sd)
    _write_table(sd, args.table_key)
    print(f"{what} {args.key_added!r} written to table {args.table_key!r} of {args.zarr}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from . import pp

    kw = {"size": args.size, "patch_um": args.patch_um, "mpp": args.mpp, "key_added": args.key_added}
    return _annotate(args, "patches", lambda sd: pp.extract_patches(sd, table_key=args.table_key, **kw))


def _prepare(args: argparse.Namespace) -> int:
    from . import pp

    kw = {"genes": args.genes, "n_top_genes": args.n_top_genes, "key_added": args.key_added}
    return _annotate(args, "expression", lambda sd: pp.prepare_expression(sd, table_key=args.table_key, **kw))


def _pretrain(args: argparse.Namespace) -> int:
    import spatialdata

    from . import pp, tl
    from .models import PRESETS

    size = args.size or PRESETS[args.preset]["sample_size"]
    slides = [spatialdata.read_zarr(z) for z in args.zarr]
    for sd in slides:
        if not any("c2lst_patch" in t.obsm for t in sd.tables.values()):
            pp.extract_patches(sd, size=size)
    model = tl.pretrain(
        slides, preset=args.preset, n_steps=args.n_steps, batch_size=args.batch_size, lr=args.lr,
        output_dir=args.out, mixed_precision=args.mixed_precision, seed=args.seed, key_added=None,
    )  # fmt: skip
    print(f"central model written to {args.out}/model (sha256 {model.sha256})")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from . import tl

    kw = {"central": args.central, "n_steps": args.n_steps, "batch_size": args.batch_size, "lr": args.lr}
    kw |= {"timestep_bias": args.timestep_bias, "condition_noise": args.condition_noise, "seed": args.seed}
    kw |= {"key_added": args.key_added, "overwrite": args.overwrite}
    return _annotate(args, "adapter", lambda sd: tl.adapt(sd, table_key=args.table_key, **kw))


def _synthesize(args: argparse.Namespace) -> int:
    from . import tl

    sd = _read(args)
    tl.synthesize(
        sd, table_key=args.table_key, adapter_key=args.adapter_key, central=args.central,
        n_per_condition=args.n_per_condition, guidance_scale=args.guidance_scale, n_steps=args.n_steps,
        seed=args.seed, key_added=args.key_added, overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote table {args.key_added!r} (+ image and circles) into {args.zarr}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from . import tl
    from ._utils import get_table

    sd = _read(args)
    real, syn = sd.tables[args.table_key], get_table(sd, args.synthetic_key)
    report = tl.evaluate_fidelity(real, syn, seed=args.seed)
    _print({"table": args.table_key, "synthetic": args.synthetic_key, **report}, args.out)
    return 0


def _budget(args: argparse.Namespace) -> int:
    from . import tl

    sd = _read(args)
    conditions = args.conditions
    if conditions not in (None, "mixup"):  # another section's store: its table, read before any work
        if not os.path.isdir(conditions):
            raise ValueError(f"`--conditions {conditions}` is neither 'mixup' nor a zarr store; pass 'mixup' or the "
                             "path of another section's store (its table holds raw counts of the same genes).")
        other = _read(argparse.Namespace(zarr=conditions, table_key=None), check=False)
        if args.conditions_table not in other.tables:
            raise KeyError(f"`--conditions-table {args.conditions_table}` is not a table of {conditions}; its tables: "
                           f"{sorted(other.tables)}. Pass one of them.")
        conditions = other.tables[args.conditions_table]
    curve = tl.budget_curve(
        sd, table_key=args.table_key, central=args.central, fractions=args.fractions, n_repeats=args.n_repeats,
        arms=args.arms, conditions=conditions,
        n_per_condition=args.n_per_condition, n_candidates=args.n_candidates, adapt_kwargs={"n_steps": args.adapt_steps},
        synthesize_kwargs={"n_steps": args.n_steps},
        predictor_kwargs={"mode": args.mode, **({"early_stopping": True, "validation_folds": args.validation_folds}
                                                if args.early_stopping else {})},
        synthetic_weight=args.synthetic_weight, real_finetune=args.real_finetune,
        batching=args.batching, seed=args.seed, checkpoint=args.checkpoint,
    )  # fmt: skip
    curve.to_csv(args.out, index=False)
    if args.n_repeats >= 3:  # a paired interval needs repeats
        _print({"curve": args.out, "plan": tl.plan_budget(curve)}, None)
    else:
        _print({"curve": args.out, "plan": None, "note": "plan_budget needs --n-repeats >= 3 (8+ for useful CIs)"}, None)
    return 0


_RUN = {
    "extract": _extract,
    "prepare": _prepare,
    "pretrain": _pretrain,
    "adapt": _adapt,
    "synthesize": _synthesize,
    "evaluate": _evaluate,
    "budget": _budget,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
