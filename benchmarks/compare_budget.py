"""Paired comparison of two settings' budget curves run on the same slides, splits and seeds.

``bench_budget.py`` compares arms inside one run. A *setting* of the generator (an adapter option, another
central model) is compared across two runs of the same command that differ only in that setting: the same slide
and ``--seed`` give the same splits, subsets and predictor seeds, so the real arm is the same in both (checked
here) and each repeat pairs with itself. This prints, per fraction and arm, the paired difference
``other - base`` over the repeats both runs finished, per slide and pooled over slides (repeats of different
slides counted as independent pairs), and each side's gain ``arm - real``; then one JSON line.

Usage::

    python benchmarks/compare_budget.py --base s37/default.csv s38/default.csv \\
        --other s37/noise.csv s38/noise.csv --names default condition_noise=0.5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

import c2lst

KEYS = ["fraction", "condition", "repeat"]


def scores(path: str) -> pd.Series:
    """Pearson r of one curve, indexed by (fraction, arm, repeat); one setting per arm is required."""
    curve = pd.read_csv(path)
    extra = [c for c in ("synthetic_weight", "real_finetune", "batching") if c in curve]
    dup = curve.duplicated(KEYS)
    if dup.any():
        raise SystemExit(f"{path}: several rows per (fraction, arm, repeat) (a grid over {extra}); compare curves "
                         "with one setting per arm.")
    return curve.set_index(KEYS)["pearson_r"]


def interval(diff: list[float] | np.ndarray) -> dict[str, float]:
    mean, low, high, n = c2lst.metrics.mean_ci(diff)
    return {"diff": round(mean, 4), "ci_low": round(low, 4), "ci_high": round(high, 4), "n": int(n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", nargs="+", required=True, help="curves of the reference setting, one per slide")
    ap.add_argument("--other", nargs="+", required=True, help="curves of the compared setting, same slide order")
    ap.add_argument("--names", nargs=2, default=["base", "other"], metavar=("BASE", "OTHER"))
    args = ap.parse_args()
    if len(args.base) != len(args.other):
        ap.error(f"--base has {len(args.base)} curves and --other {len(args.other)}: give one of each per slide.")
    base_name, other_name = args.names
    rows, gains = [], []
    for slide, (pa, pb) in enumerate(zip(args.base, args.other, strict=True)):
        a, b = scores(pa), scores(pb)
        common = a.index.intersection(b.index)
        real = [k for k in common if k[1] == "real"]
        gap = float(np.max(np.abs(a[real] - b[real]))) if real else float("nan")
        if not real or gap > 1e-9:
            print(f"warning: slide {slide}: the real arms of {pa} and {pb} differ (max |diff| {gap:.3g}): the runs "
                  "do not share their splits and seeds, so the differences below are not paired.")
        d = (b[common] - a[common]).dropna()
        for (f, arm), g in d.groupby(level=[0, 1]):
            if arm != "real":
                rows.append({"slide": slide, "fraction": f, "arm": arm, "values": g.to_numpy()})
        for name, s in ((base_name, a[common]), (other_name, b[common])):  # the repeats both runs finished
            for f in sorted(set(s.index.get_level_values(0))):
                at = s.loc[f]
                for arm in sorted(set(at.index.get_level_values(0)) - {"real"}):
                    g = (at.loc[arm] - at.loc["real"]).dropna()
                    gains.append({"setting": name, "slide": slide, "fraction": f, "arm": arm, "values": g.to_numpy()})

    def table(items: list[dict], by: list[str]) -> pd.DataFrame:
        out = []
        for item in items:
            out.append({**{k: item[k] for k in by}, "slide": item["slide"], **interval(item["values"])})
        pooled: dict[tuple, list] = {}
        for item in items:
            pooled.setdefault(tuple(item[k] for k in by), []).extend(item["values"])
        out += [{**dict(zip(by, k, strict=True)), "slide": "pooled", **interval(v)} for k, v in pooled.items()]
        return pd.DataFrame(out)

    diffs = table(rows, ["fraction", "arm"])
    gain = table(gains, ["setting", "fraction", "arm"])
    pd.set_option("display.width", 160)
    print(f"\npaired difference {other_name} - {base_name} of mean Pearson r, 95% CI:")
    print(diffs.to_string(index=False))
    print("\ngain arm - real of each setting, 95% CI:")
    print(gain.to_string(index=False))
    print(json.dumps({"benchmark": "compare_budget", "base": base_name, "other": other_name,
                      "differences": diffs.to_dict("records"), "gains": gain.to_dict("records")}, default=str))


if __name__ == "__main__":
    main()
