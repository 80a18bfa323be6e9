"""The spot-budget plan read pooled over several slides' curves of one setting.

``bench_budget.py`` reads one slide: with 12 to 24 repeats its paired intervals at 50 % are about ±0.006 to
±0.011 wide, the size of the effects in question. Read pooled, the repeats of every slide are paired
differences to the all-spot fit of their own repeat and slide, counted as independent pairs (repeat ``r`` of
slide ``s`` becomes repeat ``s * 10_000 + r``), and :func:`c2lst.tl.plan_budget` names the smallest
non-inferior fraction with and without synthesis on all of them. Slide-to-slide differences in level cancel in
the pairing; differences in effect widen the interval. Fix the reading (pooled or per slide) before running.

Usage::

    python benchmarks/pool_budget.py s39/budget_curve_unpaired.csv s40/budget_curve_unpaired.csv --margin 0.02
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

import c2lst

SLIDE_STRIDE = 10_000


def read_curve(path: str) -> pd.DataFrame:
    curve = pd.read_csv(path)
    if "repeat" not in curve or curve["repeat"].max() >= SLIDE_STRIDE:
        raise SystemExit(f"{path}: not a budget curve with fewer than {SLIDE_STRIDE} repeats.")
    return curve


def pooled_curve(curves: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate budget curves of several slides, giving every (slide, repeat) its own repeat number."""
    parts = [c.assign(repeat=c["repeat"] + slide * SLIDE_STRIDE, slide=slide) for slide, c in enumerate(curves)]
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("curves", nargs="+", help="budget_curve CSVs of one setting, one per slide")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--arm", default="real+synthetic")
    args = ap.parse_args()
    pd.set_option("display.width", 160)
    out = []
    curves = {path: read_curve(path) for path in args.curves}  # each file read once
    for name, curve in [*curves.items(), ("pooled", pooled_curve(list(curves.values())))]:
        plan = c2lst.tl.plan_budget(curve, margin=args.margin, arm=args.arm)
        diffs = pd.DataFrame(plan["differences"])
        gain = pd.DataFrame(plan["gain"])
        print(f"\n{name}: {plan['n_repeats']} paired repeats; smallest non-inferior fraction: real alone "
              f"{plan['fraction_real']}, {args.arm} {plan['fraction']}; saving {plan['saving']}")
        print("difference to all spots of the same repeat (95% CI):")
        print(diffs.to_string(index=False))
        print(f"gain {args.arm} - real (95% CI):")
        print(gain.to_string(index=False))
        for text in plan["caveats"]:
            print(f"caveat: {text}")
        out.append({"curve": name, "n_repeats": plan["n_repeats"], "fraction_real": plan["fraction_real"],
                    "fraction": plan["fraction"], "saving": plan["saving"], "caveats": plan["caveats"],
                    "differences": diffs.to_dict("records"), "gain": gain.to_dict("records")})
    print(json.dumps({"benchmark": "pool_budget", "arm": args.arm, "margin": args.margin, "plans": out},
                     default=str))


if __name__ == "__main__":
    main()
