#!/usr/bin/env python3
"""How much the network could carry the combination, with hindsight (issue #21).

For each backtested series (data:forecast pairs, as folds.sh writes them in pairs.txt), reads
every expert's own forecast (the backtest's f_<expert> columns) at one horizon and the
scorer's targets, and compares in the combination's log space, zeta = ln(1 + v / S) with S
twice the trailing week's mean target (the engine uses twice a week-long slow level):

* each expert's mean squared zeta-error over persistence's;
* the shipped online combination's (the forecast's mean column);
* the best fixed convex combination of the experts, fitted with hindsight on the first half
  of the scored origins and scored on the second, with and without the network, and the
  weight it gives the network.

If the best weights with hindsight give the network little weight, and leaving it out does
not raise their error, no rule for the online weights can make the network carry the
combination: the network itself must forecast better than the pool.

  python3 models/training/oracle_weights.py target/eval-all/source/combined [--horizon 600]
"""
import argparse
import os
import sys

import numpy as np
import pandas as pd

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "eval"))
import score  # noqa: E402

EXPERTS = ["lstm", "persistence", "holt", "day_ago", "week_ago", "mean_1h", "mean_3h", "mean_1d"]
WARMUP = 259200
WEEK_WINDOWS = 7 * 288


def simplex_least_squares(X, y, iters=3000):
    """argmin ||X w - y||^2 over w >= 0, sum w = 1, by projected gradient."""
    n = X.shape[1]
    w = np.full(n, 1.0 / n)
    step = 1.0 / max(np.linalg.eigvalsh(X.T @ X / len(y)).max(), 1e-12)
    for _ in range(iters):
        v = w - step * (X.T @ (X @ w - y) / len(y))
        u = np.sort(v)[::-1]
        css = np.cumsum(u)
        rho = np.nonzero(u * np.arange(1, n + 1) > css - 1)[0][-1]
        w = np.maximum(v - (css[rho] - 1) / (rho + 1), 0.0)
    return w


def analyse(data, fc, horizon):
    ts, val, step = score.read_data(data)
    tg = score.build_targets(ts, val, step)
    y = tg["target"].where(tg["scorable"].astype("boolean").fillna(False).astype(bool))
    full = pd.RangeIndex(tg.index.min(), tg.index.max() + 300, 300)
    y = y.reindex(full)
    scale = 2.0 * y.shift(1).rolling(WEEK_WINDOWS, min_periods=12).mean()
    f = pd.read_csv(fc)
    missing = [c for c in ("f_" + e for e in EXPERTS) if c not in f.columns]
    if missing:
        sys.exit(f"{fc}: no {missing[0]} column (a backtest of an older flowcast?)")
    f = f[(f["horizon_seconds"] == horizon) & (f["origin"] >= int(tg.index.min()) + WARMUP)]
    target_at = (f["origin"] + horizon - 300).to_numpy()
    s = scale.reindex(f["origin"].to_numpy()).to_numpy()
    t = y.reindex(target_at).to_numpy()
    zeta = lambda v: np.log1p(np.maximum(v, 0.0) / s)
    cols = [e for e in EXPERTS if e != "week_ago"]   # absent for the first week
    X = np.stack([zeta(f["f_" + e].to_numpy()) for e in cols], 1)
    comb = zeta(f["mean"].to_numpy())
    zt = zeta(t)
    ok = np.isfinite(X).all(1) & np.isfinite(zt) & np.isfinite(comb) & (s > 0)
    X, zt, comb = X[ok], zt[ok], comb[ok]
    half = len(zt) // 2
    test = slice(half, None)
    mse = lambda pred: float(np.mean((pred[test] - zt[test]) ** 2))
    base = mse(X[:, cols.index("persistence")])
    w = simplex_least_squares(X[:half], zt[:half])
    net = cols.index("lstm")
    others = [i for i in range(len(cols)) if i != net]
    w_without = simplex_least_squares(X[:half][:, others], zt[:half])
    return {
        "n": int(ok.sum()),
        "experts": {e: mse(X[:, i]) / base for i, e in enumerate(cols)},
        "online": mse(comb) / base,
        "hindsight": mse(X @ w) / base,
        "hindsight_without_network": mse(X[:, others] @ w_without) / base,
        "network_weight": float(w[net]),
        "weights": dict(zip(cols, w.round(3).tolist())),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="a folds.sh output directory (with pairs.txt)")
    ap.add_argument("--horizon", type=int, default=600, choices=(300, 600, 900),
                    help="seconds ahead (600: the window KEDA's new pods serve after 5 minutes)")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "pairs.txt")) as fh:
        pairs = [line.strip().split(":", 1) for line in fh if line.strip()]
    print(f"zeta-MSE over persistence's, horizon {args.horizon} s; hindsight weights fitted on the "
          "first half of the scored origins, scored on the second")
    print(f"{'series':36s} {'network':>8s} {'online':>8s} {'hindsight':>9s} {'without':>8s} {'w_net':>6s}")
    rows = []
    for data, fc in pairs:
        r = analyse(data, fc, args.horizon)
        rows.append(r)
        print(f"{os.path.basename(data)[:-4]:36s} {r['experts']['lstm']:8.3f} {r['online']:8.3f} "
              f"{r['hindsight']:9.3f} {r['hindsight_without_network']:8.3f} {r['network_weight']:6.3f}")
    m = lambda k: float(np.mean([r[k] for r in rows]))
    print(f"{'mean':36s} {np.mean([r['experts']['lstm'] for r in rows]):8.3f} {m('online'):8.3f} "
          f"{m('hindsight'):9.3f} {m('hindsight_without_network'):8.3f} {m('network_weight'):6.3f}")


if __name__ == "__main__":
    main()
