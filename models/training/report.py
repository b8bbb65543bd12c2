#!/usr/bin/env python3
"""Writes the development-set results into models/README.md and the model card.

Reads the scores of a leave-series-out run (models/training/folds.sh OUT_DIR, which calls
this script at its end), optional ablation runs, and the baselines' overall table from
shared/eval/BASELINES.md; regenerates the block between the RESULTS markers in
models/README.md and the card's "dev_scores". Standard library only.

  python3 models/training/report.py --main target/folds \
      [--ablation "UN2 (u1+u2), 30 passes=target/folds-un2" ...] [--tick-times FILE.json]
"""
import argparse
import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BEGIN, END = "<!-- RESULTS:BEGIN (models/training/report.py) -->", "<!-- RESULTS:END -->"


def scores(d):
    """score.py's JSON with the series as a dict: name -> {"300", "600", "900", "all"}."""
    with open(os.path.join(d, "scores.json")) as f:
        s = json.load(f)
    if isinstance(s["series"], list):
        s["series"] = {e["series"]: e["rows"] for e in s["series"]}
    return s


def baselines(path):
    """The overall table of BASELINES.md: name -> {metric: value}."""
    rows, in_overall = {}, False
    for line in open(path):
        if line.startswith("## "):
            in_overall = line.startswith("## Overall")
            continue
        m = re.match(r"\| ([a-f])\. (\S+) \((\d+) series\) \|(.*)\|\s*$", line)
        if in_overall and m:
            cells = [c.strip() for c in m.group(4).split("|")]
            keys = ["coverage", "upper_cov", "nMAE", "SMAPE", "rel_width", "int_score",
                    "outlier_dist", "avg_cov", "missing"]
            rows[f"{m.group(1)}. {m.group(2)}"] = dict(zip(keys, map(float, cells)))
    if not rows:
        sys.exit(f"{path}: no overall baseline table found")
    return rows


def series_range(s, key):
    vals = [v["all"][key] for v in s["series"].values()]
    return min(vals), max(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", required=True, help="OUT_DIR of the shipped configuration's run")
    ap.add_argument("--ablation", action="append", default=[], metavar="LABEL=DIR")
    ap.add_argument("--tick-times", help="JSON {passes: seconds} of flowcast bench runs")
    ap.add_argument("--baselines", default=os.path.join(ROOT, "..", "shared", "eval", "BASELINES.md"))
    ap.add_argument("--readme", default=os.path.join(ROOT, "models", "README.md"))
    ap.add_argument("--card", default=os.path.join(ROOT, "models", "flowcast.card.json"))
    args = ap.parse_args()

    main_scores = scores(args.main)
    base = baselines(args.baselines)
    o = main_scores["overall"]["all"]
    best = {k: min(b[k] for b in base.values()) for k in ("nMAE", "int_score")}
    lo, hi = series_range(main_scores, "coverage")
    out = [BEGIN, "",
           "Leave-series-out: 2 folds of 7 series; each fold's model is trained on the other 7",
           "series only (`train.py --exclude`), then backtested on its held-out series. No",
           "scored point was in the training data of the model that forecast it. Scored with",
           "`shared/eval/score.py --pairs` (3-day warm-up), mean over the 14 series.",
           "",
           "| method | cov | upper cov | nMAE | interval score | rel width | outlier dist | avg cov | missing |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
           f"| **flowcast** (calibrated band) | {o['coverage']:.3f} | {o['upper_cov']:.3f} | "
           f"**{o['nMAE']:.3f}** | **{o['int_score']:.2f}** | {o['rel_width']:.2f} | "
           f"{o['outlier_dist']:.3f} | {o['avg_cov']:.2f} | {o['missing']} |"]
    for name, b in base.items():
        out.append(f"| {name} | {b['coverage']:.3f} | {b['upper_cov']:.3f} | {b['nMAE']:.3f} | "
                   f"{b['int_score']:.2f} | {b['rel_width']:.2f} | {b['outlier_dist']:.3f} | "
                   f"{b['avg_cov']:.2f} | {int(b['missing'])} |")
    gain = 1 - o["int_score"] / best["int_score"]
    out += ["",
            f"Per-series coverage {lo:.3f}–{hi:.3f}. Interval score {100 * gain:.1f} % below the best "
            f"baseline ({best['int_score']:.2f}); nMAE {o['nMAE']:.3f} against the best baseline's "
            f"{best['nMAE']:.3f}. All six baselines ran on all 14 series, so there is no restricted table.",
            "",
            "| series | cov | upper cov | nMAE | interval score | missing |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, v in sorted(main_scores["series"].items()):
        a = v["all"]
        out.append(f"| {name} | {a['coverage']:.3f} | {a['upper_cov']:.3f} | {a['nMAE']:.3f} | "
                   f"{a['int_score']:.2f} | {a['missing']} |")
    ablation = {}
    tick = json.load(open(args.tick_times)) if args.tick_times else {}
    if args.ablation:
        out += ["", "### Ablation (METHOD.md §4–5), same folds",
                "",
                "| band | passes | cov | upper cov | per-series cov | interval score | outlier dist | avg cov | cov 5m / 10m / 15m | interval score 5m / 10m / 15m | tick, 1 series |",
                "|---|---:|---:|---:|---|---:|---:|---:|---|---|---:|"]
        for spec in args.ablation:
            label, d = spec.rsplit("=", 1)
            band, passes = [x.strip() for x in label.split(",")]
            s = scores(d)
            a = s["overall"]["all"]
            l2, h2 = series_range(s, "coverage")
            per_h = " / ".join(f"{s['overall'][h]['coverage']:.3f}" for h in ("300", "600", "900"))
            per_h_is = " / ".join(f"{s['overall'][h]['int_score']:.2f}" for h in ("300", "600", "900"))
            t = tick.get(passes.split()[-1])
            ablation[label] = {k: round(a[k], 4) for k in ("coverage", "upper_cov", "nMAE", "int_score", "outlier_dist", "avg_cov")}
            ablation[label]["per_series_coverage"] = [round(l2, 4), round(h2, 4)]
            out.append(f"| {band} | {passes} | {a['coverage']:.3f} | {a['upper_cov']:.3f} | {l2:.3f}–{h2:.3f} | "
                       f"{a['int_score']:.2f} | {a['outlier_dist']:.3f} | {a['avg_cov']:.2f} | {per_h} | {per_h_is} | "
                       + (f"{1000 * t:.1f} ms |" if t else "– |"))
    out += ["", END]
    block = "\n".join(out)

    text = open(args.readme).read()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Development-set results\n\n" + block + "\n"
    open(args.readme, "w").write(text)

    card = json.load(open(args.card))
    card["dev_scores"] = {
        "method": "leave-series-out, 2 folds (models/training/folds.sh); each series forecast by a model that never saw it",
        "command": "models/training/folds.sh target/folds",
        "scorer": "shared/eval/score.py --pairs (3-day warm-up), all 14 development series",
        "overall": {k: round(o[k], 4) for k in ("coverage", "upper_cov", "nMAE", "SMAPE", "rel_width", "int_score", "outlier_dist", "avg_cov")},
        "per_series": {n: {k: round(v["all"][k], 4) for k in ("coverage", "upper_cov", "nMAE", "int_score")}
                       for n, v in sorted(main_scores["series"].items())},
        "best_baseline": best,
        "ablation": ablation,
    }
    with open(args.card, "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    print(block)


if __name__ == "__main__":
    main()
