"""Synthetic request-count series for training flowcast's network (issue #21, point 7).

Each series is a Poisson count per step around a rate built from parts real traffic has:

* a level from 0.1 to 10^5 counts per step (log-uniform), so the network sees how noisy
  counts are at every level;
* a daily cycle of random shape (one to three harmonics, random amplitudes and phases)
  and a weekly one (a weekend dip of random depth, and a random phase of the week);
* a slow trend and level shifts (regime changes);
* flash crowds (a jump that decays), cron bursts (a spike every 15, 30 or 60 minutes),
  outages (the rate falls to near zero) and holes (rows missing).

The generator is a pure function of its seed: `generate(seed, n)` gives the same series on
every machine (numpy's PCG64). The series use the same dictionary as train.py's
`load_series`: name, file, L (row length in seconds), ts, rate (per second).
"""

import numpy as np

DAY = 86_400
WEEK = 7 * DAY
# 2023-01-02 00:00 UTC, a Monday; each series starts at a random day after it
EPOCH = 1_672_617_600


def one_series(rng, index):
    L = 60 if rng.random() < 0.3 else 300
    days = int(rng.integers(10, 22))
    n = days * DAY // L
    start = EPOCH + int(rng.integers(0, 365)) * DAY
    t = start + L * np.arange(n, dtype=np.int64)
    tod = (t % DAY) / DAY
    tow = ((t - EPOCH) % WEEK) / WEEK

    level = 10.0 ** rng.uniform(-1.0, 5.0)        # counts per step
    shape = np.zeros(n)
    for k in range(1, int(rng.integers(1, 4)) + 1):
        amp = rng.uniform(0.0, 0.9) / k
        shape += amp * np.sin(2 * np.pi * (k * tod + rng.random()))
    daily = np.exp(shape * rng.uniform(0.3, 1.2))
    weekend = rng.uniform(0.4, 1.0) if rng.random() < 0.7 else 1.0
    dow = np.floor((tow * 7 + rng.integers(0, 7)) % 7)
    weekly = np.where(dow >= 5, weekend, 1.0)
    trend = np.exp(rng.normal(0.0, 0.3) * (t - start) / (days * DAY))
    rate = level * daily * weekly * trend

    # regime changes: the level moves by a factor and stays there
    for _ in range(int(rng.poisson(0.8))):
        at = int(rng.integers(0, n))
        rate[at:] *= np.exp(rng.normal(0.0, 0.5))
    # flash crowds: a jump of 2-10x that decays over 10 minutes to 2 hours
    for _ in range(int(rng.poisson(1.5))):
        at = int(rng.integers(0, n))
        tau = rng.uniform(600, 7200) / L
        k = np.arange(n - at)
        rate[at:] *= 1.0 + rng.uniform(1.0, 9.0) * np.exp(-k / tau)
    # cron bursts: every 15/30/60 minutes, one step of extra traffic
    if rng.random() < 0.3:
        period = int(rng.choice([900, 1800, 3600]))
        burst = (t % period) < L
        rate = np.where(burst, rate * (1.0 + rng.uniform(0.5, 3.0)), rate)
    # outages: the rate falls to 0-5 % for 10 minutes to 3 hours
    for _ in range(int(rng.poisson(0.5))):
        at = int(rng.integers(0, n))
        span = int(rng.uniform(600, 10_800) / L)
        rate[at:at + span] *= rng.uniform(0.0, 0.05)

    counts = rng.poisson(np.maximum(rate, 0.0)).astype(np.float64)
    # holes: missing rows, a few long ones and scattered single ones
    keep = np.ones(n, dtype=bool)
    for _ in range(int(rng.poisson(0.7))):
        at = int(rng.integers(0, n))
        keep[at:at + int(rng.uniform(300, 14_400) / L)] = False
    keep &= rng.random(n) >= rng.uniform(0.0, 0.01)
    step = "1min" if L == 60 else "5min"
    name = f"synthetic_{index:03d}_{step}"
    return {"name": name, "file": f"{name}.csv", "L": L, "ts": t[keep],
            "rate": counts[keep] / L, "synthetic": True}


def generate(seed, n):
    """`n` synthetic series, a pure function of `seed`."""
    rng = np.random.default_rng(seed)
    return [one_series(rng, i) for i in range(n)]


if __name__ == "__main__":
    import argparse
    import os
    ap = argparse.ArgumentParser(description="write synthetic series as CSV (timestamp,value)")
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    for se in generate(a.seed, a.n):
        with open(os.path.join(a.out_dir, se["file"]), "w") as f:
            f.write("timestamp,value\n")
            for ts, r in zip(se["ts"], se["rate"]):
                f.write(f"{ts},{int(round(r * se['L']))}\n")
        print(se["file"], len(se["ts"]))
