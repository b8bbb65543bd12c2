#!/usr/bin/env python3
"""One line per folds.sh output directory, as models/training/report.py scores it at 2 % risk:
the mean and largest replica-hours ratio to the best of baselines a, c, d per series, the
interval-score ratio, the gap closed to the perfect-foresight floor, coverage, upper coverage
and the network's mean weight. For quick ablations of issue21-levers.patch (see README.md
here); the tables of models/README.md come from report.py.

  python3 models/training/experiments/summarise.py --baselines target/eval-all/baselines DIR... [-v]
"""
import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from report import BASES, floor, pairs, scaling, score, stem  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--baselines", required=True, help="baselines.py output (evaluate-all.sh's OUT/baselines)")
    ap.add_argument("--cache", default=None, help="score cache (default <baselines>/../summarise-cache.json)")
    ap.add_argument("-v", action="store_true", help="per-series lines")
    a = ap.parse_args()
    path = a.cache or os.path.join(a.baselines, "..", "summarise-cache.json")
    cache = json.load(open(path)) if os.path.exists(path) else {}

    def get(data, fc):
        key, m = f"{data}|{fc}", os.path.getmtime(fc)
        if key not in cache or cache[key]["mtime"] != m:
            s = {"all": score.score_series(data, fc)["rows"]["all"]}
            _, rows = scaling.evaluate(data, [("x", fc)], 300, 0.25, risk=0.02)
            s["rh"] = rows["x upper x m"]["replica_hours_vs_oracle"]
            w = pd.read_csv(fc, usecols=lambda c: c == "w_lstm")
            s["w"] = float(w["w_lstm"].mean()) if len(w.columns) and w["w_lstm"].notna().any() else None
            cache[key] = {"mtime": m, "s": s}
        return cache[key]["s"]

    for d in a.dirs:
        per, best, fl = {}, {}, {}
        for data, fc in pairs(d):
            s = stem(data)
            per[s] = get(data, fc)
            b = [get(data, os.path.join(a.baselines, f"{s}__{n}.csv")) for n in BASES.values()]
            best[s] = {"rh": min(x["rh"] for x in b), "is": min(x["all"]["int_score"] for x in b)}
            cache.setdefault(f"floor|{data}", floor(data, 0.02))
            fl[s] = cache[f"floor|{data}"]
        ratio = {s: v["rh"] / best[s]["rh"] for s, v in per.items()}
        gap = {s: (best[s]["rh"] - v["rh"]) / (best[s]["rh"] - fl[s]) for s, v in per.items()}
        isr = np.mean([v["all"]["int_score"] for v in per.values()]) / np.mean([best[s]["is"] for s in per])
        cov = [v["all"]["coverage"] for v in per.values()]
        ucov = [v["all"]["upper_cov"] for v in per.values()]
        ws = [v["w"] for v in per.values() if v.get("w") is not None]
        print(f"{os.path.basename(os.path.normpath(d)):28s} n={len(per):2d} replica-hours {np.mean(list(ratio.values())):.3f} "
              f"(max {max(ratio.values()):.3f}) interval score {isr:.3f} gap closed {np.mean(list(gap.values())):+.3f} "
              f"cov {min(cov):.3f}-{max(cov):.3f} upper cov >= {min(ucov):.3f} "
              f"network weight {np.mean(ws) if ws else float('nan'):.3f}")
        if a.v:
            for s in sorted(per):
                print(f"   {s:38s} replica-hours {ratio[s]:.3f} gap closed {gap[s]:+.3f} "
                      f"upper cov {per[s]['all']['upper_cov']:.3f}")
    json.dump(cache, open(path, "w"))


if __name__ == "__main__":
    main()
