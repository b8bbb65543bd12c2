#!/usr/bin/env python3
"""Writes the development-set results into models/README.md and the model card.

Reads an evaluation tree written by models/training/evaluate-all.sh:

  OUT/variants.json                 the variants: [{"name", "label", "flags"}], shipped first
  OUT/<protocol>/<variant>/pairs.txt   data:forecast pairs of folds.sh (protocol: source, series)
  OUT/baselines/<stem>__<name>.csv  baselines a, c, d from shared/eval/baselines.py
  OUT/tick-times.json               optional: {variant: seconds per 1-series tick}

scores every forecast file with shared/eval/score.py and shared/eval/scaling.py (replica-hours
at equal risk 1, 2 and 5 %, start-up 5 minutes), caches the numbers in OUT/scores-cache.json,
and regenerates the block between the RESULTS markers in models/README.md and the card's
"dev_scores". Needs numpy and pandas (for the scorer).

  python3 models/training/report.py OUT
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import pandas as pd

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EVAL = os.path.join(ROOT, "..", "shared", "eval")
sys.path.insert(0, EVAL)
import scaling  # noqa: E402
import score  # noqa: E402

BEGIN, END = "<!-- RESULTS:BEGIN (models/training/report.py) -->", "<!-- RESULTS:END -->"
RISKS = ("0.01", "0.02", "0.05")
BASES = {"a": "persistence_conformal", "c": "promql_band", "d": "holt_prom"}
CLARKNET = "clarknet_http_1min"
PROTOCOLS = {
    "source": ("Leave-source-out", "4 folds by source: the ten NAB tweet-count series, the two ISP "
               "link series and the two Twitter service series, each forecast by a model trained on "
               "the other two sources only; and ClarkNet (a web access log in "
               "`shared/data/extra/`), forecast by a model trained on the 14 development series"),
    "series": ("Leave-series-out", "2 folds of 7 series, each forecast by a model trained on the "
               "other 7"),
}
# Issue #15's targets, leave-source-out on the 14 development series.
TARGETS = {"coverage": (0.93, 0.97), "upper_cov": 0.97, "int_score": 0.85, "nMAE": 0.9,
           "rh": 0.9, "rh_series": 12, "rh_max": 1.0}


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


class Cache:
    """Scores by forecast file, recomputed when the file changes."""

    def __init__(self, path):
        self.path = path
        self.data = json.load(open(path)) if os.path.exists(path) else {}

    def get(self, data, fc):
        key = f"{data}|{fc}"
        mtime = os.path.getmtime(fc)
        hit = self.data.get(key)
        if hit and hit["mtime"] == mtime:
            return hit["scores"]
        res = score.score_series(data, fc)
        s = {h: res["rows"][h] for h in ("300", "600", "900", "all")}
        for r in RISKS:
            _, rows = scaling.evaluate(data, [("x", fc)], 300, 0.25, risk=float(r))
            s[f"rh_{r}"] = rows["x upper x m"]["replica_hours_vs_oracle"]
        w = pd.read_csv(fc, usecols=lambda c: c.startswith("w_"))
        s["weights"] = {c[2:]: float(w[c].mean()) for c in w.columns if w[c].notna().any()}
        self.data[key] = {"mtime": mtime, "scores": s}
        json.dump(self.data, open(self.path, "w"))
        return s


def floor(data, risk):
    """The fewest replica-hours (over the oracle's) any policy under-provisioning at most a
    share `risk` of the scored windows can use: the other windows need at least their oracle
    count, ready never exceeds requested, and every window holds at least one replica."""
    ts, val, step = score.read_data(data)
    tg = score.build_targets(ts, val, step)
    full = pd.RangeIndex(tg.index.min(), tg.index.max() + 300, 300)
    tg = tg.reindex(full)
    y = tg["target"].where(tg["scorable"].astype("boolean").fillna(False).astype(bool))
    base = float(np.nanmedian(y.values))
    if not base > 0.1 * float(np.nanmean(y.values)):
        base = float(np.nanmean(y.values))
    cap = base * 0.25 if base > 0 else 1.0
    scored = (y.index >= tg.index.min() + 259200) & y.notna()
    oracle = np.ceil(y[scored] / cap).clip(lower=1).to_numpy()
    spare = np.sort(oracle - 1)[::-1][: int(np.floor(risk * len(oracle)))]
    return float((oracle.sum() - spare.sum()) / oracle.sum())


def baselines_md():
    """The overall table of shared/eval/BASELINES.md: name -> {metric: value}."""
    rows, in_overall = {}, False
    for line in open(os.path.join(EVAL, "BASELINES.md")):
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
        sys.exit("BASELINES.md: no overall baseline table found")
    return rows


def pairs(d):
    with open(os.path.join(d, "pairs.txt")) as f:
        return [tuple(line.strip().split(":", 1)) for line in f if line.strip()]


def summary(per_series, best):
    """Means over the development series, and the replica-hours against the best baseline."""
    dev = {s: v for s, v in per_series.items() if s != CLARKNET}
    mean = lambda key: float(np.mean([v["all"][key] for v in dev.values()]))
    out = {k: mean(k) for k in ("coverage", "upper_cov", "nMAE", "int_score", "rel_width",
                                "outlier_dist", "avg_cov")}
    out["missing"] = int(sum(v["all"]["missing"] for v in dev.values()))
    out["coverage_range"] = [min(v["all"]["coverage"] for v in dev.values()),
                             max(v["all"]["coverage"] for v in dev.values())]
    out["upper_cov_min"] = min(v["all"]["upper_cov"] for v in dev.values())
    for r in RISKS:
        out[f"rh_{r}"] = float(np.mean([v[f"rh_{r}"] for v in dev.values()]))
        ratios = [v[f"rh_{r}"] / best[s][r] for s, v in dev.items()]
        out[f"rh_ratio_{r}"] = float(np.mean(ratios))
        out[f"rh_at_most_0.9_{r}"] = int(sum(x <= 0.9 for x in ratios))
        out[f"rh_above_1_{r}"] = int(sum(x > 1.0 for x in ratios))
    weights = [v["weights"].get("lstm") for v in dev.values() if v.get("weights")]
    out["lstm_weight"] = float(np.mean(weights)) if weights else None
    return out


def fmt_range(r):
    return f"{r[0]:.3f}–{r[1]:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the evaluation tree of evaluate-all.sh")
    ap.add_argument("--readme", default=os.path.join(ROOT, "models", "README.md"))
    ap.add_argument("--card", default=os.path.join(ROOT, "models", "flowcast.card.json"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    variants = json.load(open(os.path.join(out, "variants.json")))
    shipped = variants[0]["name"]
    ticks_path = os.path.join(out, "tick-times.json")
    ticks = json.load(open(ticks_path)) if os.path.exists(ticks_path) else {}
    cache = Cache(os.path.join(out, "scores-cache.json"))

    # Baselines a, c, d on every series any protocol scored.
    datas = sorted({d for p in PROTOCOLS for v in variants
                    if os.path.exists(os.path.join(out, p, v["name"], "pairs.txt"))
                    for d, _ in pairs(os.path.join(out, p, v["name"]))})
    base = {s: {} for s in map(stem, datas)}
    for d in datas:
        for k, name in BASES.items():
            base[stem(d)][k] = cache.get(d, os.path.join(out, "baselines", f"{stem(d)}__{name}.csv"))
    best = {s: {r: min(b[k][f"rh_{r}"] for k in BASES) for r in RISKS} for s, b in base.items()}
    best_by = {s: min(BASES, key=lambda k: b[k][f"rh_{'0.02'}"]) for s, b in base.items()}
    md = baselines_md()
    best_md = {k: min(b[k] for b in md.values()) for k in ("nMAE", "int_score")}
    floors = {stem(d): {r: floor(d, float(r)) for r in RISKS} for d in datas}

    results = {}
    for p in PROTOCOLS:
        for v in variants:
            d = os.path.join(out, p, v["name"])
            if not os.path.exists(os.path.join(d, "pairs.txt")):
                continue
            per = {stem(data): cache.get(data, fc) for data, fc in pairs(d)}
            results[(p, v["name"])] = (per, summary(per, best))

    lines = [BEGIN, ""]
    card_scores = {"scorer": "shared/eval/score.py (3-day warm-up) and shared/eval/scaling.py "
                             "(replica-hours at equal risk, 5-minute start-up), mean over the 14 "
                             "development series; ClarkNet apart",
                   "command": "models/training/evaluate-all.sh", "protocols": {}}
    for p, (title, how) in PROTOCOLS.items():
        if (p, shipped) not in results:
            continue
        per, o = results[(p, shipped)]
        dev_bases = {k: summary({s: b[k] for s, b in base.items()}, best) for k in BASES}
        lines += [f"### {title}", "", f"{how}. No scored point was in the training data of the "
                  "model that forecast it.", "",
                  "| method | cov | upper cov | nMAE | interval score | rel width | outlier dist | "
                  "replica-hours / oracle at 1 / 2 / 5 % risk | missing |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|",
                  f"| **flowcast** ({variants[0]['label']}) | {o['coverage']:.3f} | {o['upper_cov']:.3f} | "
                  f"**{o['nMAE']:.3f}** | **{o['int_score']:.2f}** | {o['rel_width']:.2f} | "
                  f"{o['outlier_dist']:.3f} | "
                  + " / ".join(f"{o[f'rh_{r}']:.3f}" for r in RISKS) + f" | {o['missing']} |"]
        for name, b in md.items():
            k = name[0]
            rh = " / ".join(f"{dev_bases[k][f'rh_{r}']:.3f}" for r in RISKS) if k in BASES else "–"
            lines.append(f"| {name} | {b['coverage']:.3f} | {b['upper_cov']:.3f} | {b['nMAE']:.3f} | "
                         f"{b['int_score']:.2f} | {b['rel_width']:.2f} | {b['outlier_dist']:.3f} | "
                         f"{rh} | {int(b['missing'])} |")
        ratio = {r: o[f"rh_ratio_{r}"] for r in RISKS}
        lines += ["",
                  f"Per-series coverage {fmt_range(o['coverage_range'])}, upper coverage at least "
                  f"{o['upper_cov_min']:.3f}. Interval score {o['int_score'] / best_md['int_score']:.2f}× "
                  f"the best baseline's ({best_md['int_score']:.2f}), nMAE {o['nMAE'] / best_md['nMAE']:.2f}× "
                  f"({best_md['nMAE']:.3f}). Replica-hours at equal risk, as a ratio to the best of "
                  f"a, c and d on each series, averaged: "
                  + ", ".join(f"{ratio[r]:.3f} at {float(r) * 100:.0f} %" for r in RISKS)
                  + f"; at 2 % risk {o['rh_at_most_0.9_0.02']} of 14 series are at or below 0.9× and "
                  f"{o['rh_above_1_0.02']} above 1.0×.", "",
                  "| series | cov | upper cov | nMAE | interval score | replica-hours / oracle, 2 % | "
                  "best of a, c, d | ratio | floor (perfect foresight) |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for s, v in sorted(per.items()):
            a = v["all"]
            lines.append(f"| {s} | {a['coverage']:.3f} | {a['upper_cov']:.3f} | {a['nMAE']:.3f} | "
                         f"{a['int_score']:.2f} | {v['rh_0.02']:.3f} | {best[s]['0.02']:.3f} "
                         f"({best_by[s]}) | {v['rh_0.02'] / best[s]['0.02']:.3f} | "
                         f"{floors[s]['0.02']:.3f} |")
        if p == "source":
            t = TARGETS
            cov_ok = t["coverage"][0] <= o["coverage_range"][0] and o["coverage_range"][1] <= t["coverage"][1]
            checks = [
                ("every series' coverage in 0.93–0.97", cov_ok, fmt_range(o["coverage_range"])),
                ("every series' upper coverage ≥ 0.97", o["upper_cov_min"] >= t["upper_cov"],
                 f"lowest {o['upper_cov_min']:.3f}"),
                ("interval score ≤ 0.85× the best baseline's",
                 o["int_score"] <= t["int_score"] * best_md["int_score"],
                 f"{o['int_score'] / best_md['int_score']:.3f}×"),
                ("nMAE ≤ 0.9× the best baseline's", o["nMAE"] <= t["nMAE"] * best_md["nMAE"],
                 f"{o['nMAE'] / best_md['nMAE']:.3f}×"),
                ("replica-hours at 2 % ≤ 0.9× the best baseline's, on the mean",
                 ratio["0.02"] <= t["rh"], f"{ratio['0.02']:.3f}×"),
                ("… on at least 12 of the 14 series", o["rh_at_most_0.9_0.02"] >= t["rh_series"],
                 f"{o['rh_at_most_0.9_0.02']} series"),
                ("… and on no series above 1.0×", o["rh_above_1_0.02"] == 0,
                 f"{o['rh_above_1_0.02']} series above"),
            ]
            reachable = sum(floors[s]["0.02"] <= 0.9 * best[s]["0.02"] for s in per if s != CLARKNET)
            lines += ["", "Issue #15's targets (leave-source-out):", "",
                      "| target | met | measured |", "|---|---|---|"]
            lines += [f"| {name} | {'yes' if ok else '**no**'} | {val} |" for name, ok, val in checks]
            lines += ["", f"The floor column is the fewest replica-hours any policy that "
                      f"under-provisions at most 2 % of the windows can use, even knowing the future "
                      f"(`floor()` in this script). It is at or below 0.9× the best baseline on only "
                      f"{reachable} of the 14 series: on the others, no forecast can meet the 0.9× target."]
            card_scores["targets"] = {name: {"met": bool(ok), "measured": val} for name, ok, val in checks}
            card_scores["series_where_0.9x_is_reachable"] = reachable
        lines.append("")
        card_scores["protocols"][p] = {
            "method": f"{title.lower()}: {how}",
            "overall": {k: (round(x, 4) if isinstance(x, float) else x) for k, x in o.items()},
            "per_series": {s: {"coverage": round(v["all"]["coverage"], 4),
                               "upper_cov": round(v["all"]["upper_cov"], 4),
                               "nMAE": round(v["all"]["nMAE"], 4),
                               "int_score": round(v["all"]["int_score"], 4),
                               **{f"replica_hours_vs_oracle_{r}": round(v[f"rh_{r}"], 4) for r in RISKS},
                               **{f"best_baseline_{r}": round(best[s][r], 4) for r in RISKS}}
                           for s, v in sorted(per.items())},
            "baselines_replica_hours_vs_oracle": {
                BASES[k]: {r: round(dev_bases[k][f"rh_{r}"], 4) for r in RISKS} for k in BASES},
        }
    # The ablation: every variant, both protocols.
    lines += ["### Ablation (METHOD.md §4–4b), same folds", "",
              "Replica-hours are the mean over the 14 series of each series' ratio to the best of "
              "baselines a, c and d at that risk; \"≤ 0.9 / > 1\" counts series at 2 %. The LSTM "
              "weight is its mean weight in the combination over all origins and horizons.", "",
              "| variant | protocol | cov | per-series cov | upper cov (lowest) | nMAE | interval score | "
              "replica-hours ratio 1 / 2 / 5 % | ≤ 0.9 / > 1 | LSTM weight | ClarkNet: interval score, ratio at 2 % | tick, 1 series |",
              "|---|---|---:|---|---:|---:|---:|---|---|---:|---|---:|"]
    ablation = {}
    for v in variants:
        for p in PROTOCOLS:
            if (p, v["name"]) not in results:
                continue
            per, o = results[(p, v["name"])]
            c = per.get(CLARKNET)
            clark = (f"{c['all']['int_score']:.2f}, {c['rh_0.02'] / best[CLARKNET]['0.02']:.3f}"
                     if c else "–")
            t = ticks.get(v["name"])
            lw = f"{o['lstm_weight']:.3f}" if o["lstm_weight"] is not None else "–"
            lines.append(f"| {v['label']} | {p} | {o['coverage']:.3f} | {fmt_range(o['coverage_range'])} | "
                         f"{o['upper_cov']:.3f} ({o['upper_cov_min']:.3f}) | {o['nMAE']:.3f} | "
                         f"{o['int_score']:.2f} | "
                         + " / ".join(f"{o[f'rh_ratio_{r}']:.3f}" for r in RISKS)
                         + f" | {o['rh_at_most_0.9_0.02']} / {o['rh_above_1_0.02']} | {lw} | {clark} | "
                         + (f"{1000 * t:.2f} ms |" if t else "– |"))
            ablation[f"{v['name']} ({p})"] = {k: (round(x, 4) if isinstance(x, float) else x)
                                              for k, x in o.items()}
    card_scores["ablation"] = ablation
    card_scores["variants"] = variants
    lines += ["", END]
    block = "\n".join(lines)

    text = open(args.readme).read()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Development-set results\n\n" + block + "\n"
    open(args.readme, "w").write(text)
    card = json.load(open(args.card))
    card["dev_scores"] = card_scores
    with open(args.card, "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    print(block)


if __name__ == "__main__":
    main()
