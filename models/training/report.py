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
PROTOCOLS = {
    "source": ("Leave-source-out", "5 folds by source: the ten NAB tweet-count series, the two ISP "
               "link series, the two Twitter service series, ClarkNet (a web access log) and the five "
               "Microsoft MongoDB request-rate series (both in `shared/data/extra/`), each forecast "
               "by a model trained on every other source and the synthetic series"),
    "series": ("Leave-series-out", "2 folds of 7 development series, each forecast by a model "
               "trained on the other 7, the six extra series and the synthetic ones"),
}


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


def pairs(d):
    with open(os.path.join(d, "pairs.txt")) as f:
        return [tuple(line.strip().split(":", 1)) for line in f if line.strip()]


def u1_correlation(data, fc):
    """Spearman's rank correlation of the network's u1 with the absolute error of the
    forecast's mean, over the scored targets of one series (None without a u1 column)."""
    f = pd.read_csv(fc)
    if "u1" not in f.columns or f["u1"].notna().sum() < 30:
        return None
    ts, val, step = score.read_data(data)
    tg = score.build_targets(ts, val, step)
    y = tg["target"].where(tg["scorable"].astype("boolean").fillna(False).astype(bool))
    f = f[f["origin"] >= int(tg.index.min()) + 259200]
    t = f["origin"] + f["horizon_seconds"] - 300
    err = (y.reindex(t.values).to_numpy() - f["mean"].to_numpy())
    ok = np.isfinite(err) & np.isfinite(f["u1"].to_numpy())
    if ok.sum() < 30:
        return None
    # Spearman = Pearson of the ranks (pandas' method="spearman" needs scipy)
    ra = pd.Series(np.abs(err[ok])).rank().to_numpy()
    rb = pd.Series(f["u1"].to_numpy()[ok]).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def summary(per, best, floors):
    """Means over the scored series, and the ratios to the best baseline per series."""
    mean = lambda key: float(np.mean([v["all"][key] for v in per.values()]))
    out = {k: mean(k) for k in ("coverage", "upper_cov", "nMAE", "int_score", "rel_width")}
    out["series"] = len(per)
    out["missing"] = int(sum(v["all"]["missing"] for v in per.values()))
    out["coverage_range"] = [min(v["all"]["coverage"] for v in per.values()),
                             max(v["all"]["coverage"] for v in per.values())]
    out["upper_cov_min"] = min(v["all"]["upper_cov"] for v in per.values())
    out["int_score_ratio"] = float(np.mean([v["all"]["int_score"] for v in per.values()])
                                   / np.mean([best[s]["int_score"] for s in per]))
    out["nMAE_ratio"] = float(np.mean([v["all"]["nMAE"] for v in per.values()])
                              / np.mean([best[s]["nMAE"] for s in per]))
    for r in RISKS:
        ratios = [v[f"rh_{r}"] / best[s][r] for s, v in per.items()]
        out[f"rh_ratio_{r}"] = float(np.mean(ratios))
        out[f"rh_ratio_max_{r}"] = float(np.max(ratios))
        out[f"rh_above_1_{r}"] = int(sum(x > 1.0 for x in ratios))
    gaps = [(best[s]["0.02"] - v["rh_0.02"]) / (best[s]["0.02"] - floors[s]["0.02"])
            for s, v in per.items() if best[s]["0.02"] - floors[s]["0.02"] > 1e-9]
    out["gap_closed"] = float(np.mean(gaps)) if gaps else None
    weights = [v["weights"].get("lstm") for v in per.values() if v.get("weights")]
    weights = [w for w in weights if w is not None]
    out["lstm_weight"] = float(np.mean(weights)) if weights else None
    return out


def fmt_range(r):
    return f"{r[0]:.3f}–{r[1]:.3f}"


def f3(x):
    return "–" if x is None else f"{x:.3f}"


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
    best = {s: {**{r: min(b[k][f"rh_{r}"] for k in BASES) for r in RISKS},
                "int_score": min(b[k]["all"]["int_score"] for k in BASES),
                "nMAE": min(b[k]["all"]["nMAE"] for k in BASES)} for s, b in base.items()}
    best_by = {s: min(BASES, key=lambda k: b[k]["rh_0.02"]) for s, b in base.items()}
    floors = {stem(d): {r: floor(d, float(r)) for r in RISKS} for d in datas}

    results = {}
    for p in PROTOCOLS:
        for v in variants:
            d = os.path.join(out, p, v["name"])
            if not os.path.exists(os.path.join(d, "pairs.txt")):
                continue
            per = {stem(data): cache.get(data, fc) for data, fc in pairs(d)}
            results[(p, v["name"])] = (per, summary(per, best, floors))

    lines = [BEGIN, ""]
    card_scores = {"scorer": "shared/eval/score.py (3-day warm-up) and shared/eval/scaling.py "
                             "(replica-hours at equal risk, 5-minute start-up), means over the "
                             "scored series; ratios to the best of baselines a, c, d per series",
                   "command": "models/training/evaluate-all.sh", "protocols": {}}
    for p, (title, how) in PROTOCOLS.items():
        if (p, shipped) not in results:
            continue
        per, o = results[(p, shipped)]
        n = o["series"]
        lines += [f"### {title}", "", f"{how}. No scored point was in the training data of the "
                  f"model that forecast it. Means over the {n} scored series.", "",
                  "| method | cov | upper cov | nMAE | interval score | rel width | "
                  "replica-hours / best of a, c, d at 1 / 2 / 5 % risk | gap closed | missing |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|",
                  f"| **flowcast** ({variants[0]['label']}) | {o['coverage']:.3f} | {o['upper_cov']:.3f} | "
                  f"**{o['nMAE']:.3f}** | **{o['int_score']:.2f}** | {o['rel_width']:.2f} | "
                  + " / ".join(f"{o[f'rh_ratio_{r}']:.3f}" for r in RISKS)
                  + f" | {f3(o['gap_closed'])} | {o['missing']} |"]
        for k, name in BASES.items():
            b = summary({s: base[s][k] for s in per}, best, floors)
            lines.append(f"| {k}. {name} | {b['coverage']:.3f} | {b['upper_cov']:.3f} | {b['nMAE']:.3f} | "
                         f"{b['int_score']:.2f} | {b['rel_width']:.2f} | "
                         + " / ".join(f"{b[f'rh_ratio_{r}']:.3f}" for r in RISKS)
                         + f" | {f3(b['gap_closed'])} | {b['missing']} |")
        lines += ["",
                  f"Per-series coverage {fmt_range(o['coverage_range'])}, upper coverage at least "
                  f"{o['upper_cov_min']:.3f}. Interval score {o['int_score_ratio']:.3f}× and nMAE "
                  f"{o['nMAE_ratio']:.3f}× the best of a, c, d per series (ratio of the means). "
                  f"Replica-hours at 2 % risk {o['rh_ratio_0.02']:.3f}× on the mean, at most "
                  f"{o['rh_ratio_max_0.02']:.3f}× on one series, above 1.0× on {o['rh_above_1_0.02']} "
                  f"of {n}. Gap closed = (best − flowcast) / (best − floor) per series at 2 % risk, "
                  f"averaged.", "",
                  "| series | cov | upper cov | nMAE | interval score | replica-hours / oracle, 2 % | "
                  "best of a, c, d | ratio | floor (perfect foresight) | gap closed | network weight |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for s, v in sorted(per.items()):
            a = v["all"]
            gap = ((best[s]["0.02"] - v["rh_0.02"]) / (best[s]["0.02"] - floors[s]["0.02"])
                   if best[s]["0.02"] - floors[s]["0.02"] > 1e-9 else None)
            lines.append(f"| {s} | {a['coverage']:.3f} | {a['upper_cov']:.3f} | {a['nMAE']:.3f} | "
                         f"{a['int_score']:.2f} | {v['rh_0.02']:.3f} | {best[s]['0.02']:.3f} "
                         f"({best_by[s]}) | {v['rh_0.02'] / best[s]['0.02']:.3f} | "
                         f"{floors[s]['0.02']:.3f} | {f3(gap)} | {f3(v.get('weights', {}).get('lstm'))} |")
        if p == "source":
            alone = results.get((p, "lstm"), (None, None))[1]
            without = results.get((p, "no-lstm"), (None, None))[1]
            cost_rh = without["rh_ratio_0.02"] / o["rh_ratio_0.02"] - 1 if without else None
            cost_is = without["int_score"] / o["int_score"] - 1 if without else None
            cov_ok = 0.93 <= o["coverage_range"][0] and o["coverage_range"][1] <= 0.97
            checks = [
                ("the network alone: replica-hours at 2 % ≤ 1.00×",
                 bool(alone and alone["rh_ratio_0.02"] <= 1.0), f3(alone and alone["rh_ratio_0.02"]) + "×"),
                ("the network alone: interval score ≤ 0.85×",
                 bool(alone and alone["int_score_ratio"] <= 0.85), f3(alone and alone["int_score_ratio"]) + "×"),
                ("the network's mean weight ≥ 0.35", (o["lstm_weight"] or 0) >= 0.35, f3(o["lstm_weight"])),
                ("removing it costs ≥ 3 % in replica-hours", cost_rh is not None and cost_rh >= 0.03,
                 "–" if cost_rh is None else f"{100 * cost_rh:+.1f} %"),
                ("removing it costs ≥ 3 % in interval score", cost_is is not None and cost_is >= 0.03,
                 "–" if cost_is is None else f"{100 * cost_is:+.1f} %"),
                ("the combination: replica-hours ≤ 0.95× on the mean", o["rh_ratio_0.02"] <= 0.95,
                 f"{o['rh_ratio_0.02']:.3f}×"),
                ("… and no series above 1.03×", o["rh_ratio_max_0.02"] <= 1.03,
                 f"highest {o['rh_ratio_max_0.02']:.3f}×"),
                ("it closes ≥ 15 % of the gap to the floor on the mean", (o["gap_closed"] or 0) >= 0.15,
                 f"{100 * (o['gap_closed'] or 0):.1f} %"),
                ("every series' coverage in 0.93–0.97", cov_ok, fmt_range(o["coverage_range"])),
                ("every series' upper coverage ≥ 0.97", o["upper_cov_min"] >= 0.97,
                 f"lowest {o['upper_cov_min']:.3f}"),
            ]
            lines += ["", "Issue #21's targets (leave-source-out, all scored series):", "",
                      "| target | met | measured |", "|---|---|---|"]
            lines += [f"| {name} | {'yes' if ok else '**no**'} | {val} |" for name, ok, val in checks]
            card_scores["targets"] = {name: {"met": bool(ok), "measured": val} for name, ok, val in checks}
            corr = {s: u1_correlation(d, fc) for d, fc in pairs(os.path.join(out, p, shipped))
                    for s in [stem(d)]}
            vals = [c for c in corr.values() if c is not None]
            if vals:
                lines += ["", "Rank correlation (Spearman) of the network's u1 with the combination's "
                          f"absolute error, per series: mean {np.mean(vals):.3f}, range "
                          f"{min(vals):.3f}–{max(vals):.3f} ({len(vals)} series)."]
                card_scores["u1_spearman_abs_error"] = {s: (round(c, 4) if c is not None else None)
                                                        for s, c in corr.items()}
        lines.append("")
        card_scores["protocols"][p] = {
            "method": f"{title.lower()}: {how}",
            "overall": {k: (round(x, 4) if isinstance(x, float) else x) for k, x in o.items()},
            "per_series": {s: {"coverage": round(v["all"]["coverage"], 4),
                               "upper_cov": round(v["all"]["upper_cov"], 4),
                               "nMAE": round(v["all"]["nMAE"], 4),
                               "int_score": round(v["all"]["int_score"], 4),
                               **{f"replica_hours_vs_oracle_{r}": round(v[f"rh_{r}"], 4) for r in RISKS},
                               **{f"best_baseline_{r}": round(best[s][r], 4) for r in RISKS},
                               "floor_0.02": round(floors[s]["0.02"], 4)}
                           for s, v in sorted(per.items())},
        }
    # The ablation: every variant, both protocols.
    lines += ["### Ablation, same folds", "",
              "Ratios are to the best of baselines a, c and d per series (replica-hours: the mean of "
              "the per-series ratios; interval score: the ratio of the means). The network weight is "
              "its mean weight in the combination over all origins and horizons.", "",
              "| variant | protocol | network weight | cov (per-series range) | upper cov (lowest) | nMAE | "
              "interval score (ratio) | replica-hours ratio 1 / 2 / 5 % | highest at 2 % | gap closed | tick, 1 series |",
              "|---|---|---:|---|---:|---:|---|---|---:|---:|---:|"]
    ablation = {}
    for v in variants:
        for p in PROTOCOLS:
            if (p, v["name"]) not in results:
                continue
            per, o = results[(p, v["name"])]
            t = ticks.get(v["name"])
            lines.append(f"| {v['label']} | {p} | {f3(o['lstm_weight'])} | {o['coverage']:.3f} "
                         f"({fmt_range(o['coverage_range'])}) | "
                         f"{o['upper_cov']:.3f} ({o['upper_cov_min']:.3f}) | {o['nMAE']:.3f} | "
                         f"{o['int_score']:.2f} ({o['int_score_ratio']:.3f}) | "
                         + " / ".join(f"{o[f'rh_ratio_{r}']:.3f}" for r in RISKS)
                         + f" | {o['rh_ratio_max_0.02']:.3f} | {f3(o['gap_closed'])} | "
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
