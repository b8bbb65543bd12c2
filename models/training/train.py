#!/usr/bin/env python3
"""Train the flowcast Seq2Seq LSTM forecaster and export it to ONNX.

Writes into --out-dir (default: models/):
  flowcast.onnx        the inference graph (see McForecaster): inputs x, xf (one row per
                       series, axis "S"), mask and rows (one row per pass, axis "B");
                       outputs mean, logvar (axis "B")
  flowcast.card.json   the model card the Rust runtime reads
  golden.json          PyTorch reference outputs (model_cases) and feature-code
                       reference cases (feature_cases) for the Rust tests

The feature contract is described in models/README.md; the Rust runtime implements the
same thing. Everything runs on the CPU with one thread and fixed seeds.

Usage:
  python3 models/training/train.py [--data-dir DIR] [--out-dir DIR] [--exclude STEM ...]
                                   [--max-epochs N] [--seed S]
"""
import argparse
import copy
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn

# ---------------------------------------------------------------------------------------
# Contract constants
# ---------------------------------------------------------------------------------------
STEP = 300          # seconds per model step
WINDOW = 36         # encoder steps (3 h)
HORIZON = 3         # decoder steps (15 min)
MIN_PRESENT = 18    # readiness: at least this many present steps ...
RECENT = 3          # ... and at least one present among the newest RECENT steps
HIDDEN = 32
P_DROP = 0.2
MASK_WIDTH = 3 * HIDDEN      # training: dropout after encoder layer 1, decoder layers 1 and 2
MC_MASK_WIDTH = 2 * HIDDEN   # inference: Monte-Carlo dropout in the decoder only (McForecaster)
LOGVAR_MIN, LOGVAR_MAX = -10.0, 6.0   # clamp inside the graph (also in the ONNX file)

# Training hyper-parameters
LR = 1e-3
BATCH = 256
PER_SERIES_PER_EPOCH = 6000
PATIENCE = 6
VAL_FRACTION = 0.2
GRAD_CLIP = 5.0
MC_PASSES_CAL = 30

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.dirname(SCRIPT_DIR)
REPO_ROOT = os.path.dirname(MODELS_DIR)
DEFAULT_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "traffic"))


# ---------------------------------------------------------------------------------------
# Data loading
# ---------------------------------------------------------------------------------------
def step_len_from_name(name):
    if "_1min" in name:
        return 60
    if "_5min" in name:
        return 300
    raise ValueError(f"{name}: file name must contain _1min or _5min")


def load_series(path):
    name = os.path.splitext(os.path.basename(path))[0]
    L = step_len_from_name(name)
    ts, vals = [], []
    with open(path) as f:
        header = f.readline().strip()
        if header != "timestamp,value":
            raise ValueError(f"{path}: unexpected header {header!r}")
        for line in f:
            line = line.strip()
            if not line:
                continue
            a, b = line.split(",")
            ts.append(int(a))
            vals.append(float(b))
    ts = np.asarray(ts, dtype=np.int64)
    rate = np.asarray(vals, dtype=np.float64) / L
    assert np.all(np.diff(ts) > 0), f"{path}: timestamps not sorted/unique"
    return {"name": name, "file": os.path.basename(path), "L": L, "ts": ts, "rate": rate}


# ---------------------------------------------------------------------------------------
# Reference (literal) implementation of the contract, used for golden cases and checks
# ---------------------------------------------------------------------------------------
def ref_steps(series, o):
    """36 window values (req/s or None), oldest first, as seen at origin o."""
    ts, rate, L = series["ts"], series["rate"], series["L"]
    lo = np.searchsorted(ts, o - STEP * WINDOW, side="left")
    hi = np.searchsorted(ts, o, side="left")
    out = [None] * WINDOW
    for i in range(lo, hi):
        t = int(ts[i])
        if t + L > o:               # not yet available at o
            continue
        k = WINDOW - 1 - (o - 1 - t) // STEP   # window that contains t
        if 0 <= k < WINDOW:
            v = float(rate[i])
            out[k] = v if out[k] is None else max(out[k], v)
    return out


def ref_targets(series, o):
    ts, rate, L = series["ts"], series["rate"], series["L"]
    expected = STEP // L
    out = []
    for j in range(1, HORIZON + 1):
        a, b = o + STEP * (j - 1), o + STEP * j
        lo = np.searchsorted(ts, a, side="left")
        hi = np.searchsorted(ts, b, side="left")
        n = hi - lo
        if n * 2 < expected or n == 0:
            out.append(None)
        else:
            out.append(float(rate[lo:hi].max()))
    return out


def time_feats(w):
    w = int(w)
    tod = (w % 86400) / 86400.0
    dow = ((w // 86400 + 3) % 7) / 7.0
    return [math.sin(2 * math.pi * tod), math.cos(2 * math.pi * tod),
            math.sin(2 * math.pi * dow), math.cos(2 * math.pi * dow)]


def ref_features(steps, o):
    """Returns (ready, scale, x[36][6], xf[3][4]) exactly as the contract says."""
    present = [v is not None for v in steps]
    npres = sum(present)
    ready = npres >= MIN_PRESENT and any(present[WINDOW - RECENT:])
    if npres == 0:
        return ready, None, None, None
    s = sum(v for v in steps if v is not None) / npres
    if s <= 0:
        s = 1.0
    first = next(math.log1p(v / s) for v in steps if v is not None)
    x = []
    last = first
    for k, v in enumerate(steps):
        if v is not None:
            last = math.log1p(v / s)
        w = o - STEP * (WINDOW - k)
        x.append([last, 1.0 if v is not None else 0.0] + time_feats(w))
    xf = [time_feats(o + STEP * j) for j in range(HORIZON)]
    return ready, s, x, xf


# ---------------------------------------------------------------------------------------
# Fast vectorised windowing (checked against the reference implementation)
# ---------------------------------------------------------------------------------------
def sliding_nanmax(a, m):
    """out[i] = nanmax(a[i:i+m]) (NaN if all NaN) and count of non-NaN, a padded with NaN."""
    n = len(a)
    pad = np.concatenate([a, np.full(m, np.nan)])
    stack = np.stack([pad[i:i + n] for i in range(m)], axis=0)
    cnt = np.sum(~np.isnan(stack), axis=0)
    with np.errstate(all="ignore"):
        mx = np.where(cnt > 0, np.nanmax(np.where(np.isnan(stack), -np.inf, stack), axis=0), np.nan)
    return mx, cnt


def build_windows(series, origin_stride):
    """All origins (multiples of origin_stride) with their 36 step values and 3 targets."""
    ts, rate, L = series["ts"], series["rate"], series["L"]
    g = L
    m = STEP // g
    assert origin_stride == g
    # This fast path assumes rows start on a multiple of the row length, or (5-min data)
    # at a fixed offset inside the 300-s window; "closed" = row ends by its window's end.
    b0 = int(ts[0] // g)
    b = (ts // g - b0).astype(np.int64)
    nb = int(b[-1]) + 1
    assert len(np.unique(b)) == len(b)
    R = np.full(nb, np.nan)
    R[b] = rate
    closed = (ts % g) == 0
    if L < STEP:
        assert closed.all(), "1-min rows must start on a multiple of 60 s"
    Rc = np.full(nb, np.nan)
    Rc[b[closed]] = rate[closed]
    vfull, cnt = sliding_nanmax(R, m)
    vclosed, _ = sliding_nanmax(Rc, m)
    # pad on the right so target indices beyond the data read NaN
    extra = m * HORIZON + 1
    vfull = np.concatenate([vfull, np.full(extra, np.nan)])
    cnt = np.concatenate([cnt, np.zeros(extra, dtype=cnt.dtype)])
    io = np.arange(m * WINDOW, nb + 1, dtype=np.int64)        # origin bucket indices
    origins = (b0 + io) * g
    k = np.arange(WINDOW)
    idx = io[:, None] - m * (WINDOW - k)[None, :]
    steps = vfull[idx]
    steps[:, WINDOW - 1] = vclosed[io - m]
    tidx = io[:, None] + m * np.arange(HORIZON)[None, :]
    tgt = vfull[tidx]
    tgt[(cnt[tidx] * 2) < m] = np.nan
    return origins, steps, tgt


def time_feats_np(w):
    w = w.astype(np.int64)
    tod = (w % 86400) / 86400.0
    dow = ((w // 86400 + 3) % 7) / 7.0
    return np.stack([np.sin(2 * np.pi * tod), np.cos(2 * np.pi * tod),
                     np.sin(2 * np.pi * dow), np.cos(2 * np.pi * dow)], axis=-1)


def features_np(origins, steps, tgt):
    present = ~np.isnan(steps)
    npres = present.sum(1)
    ready = (npres >= MIN_PRESENT) & present[:, WINDOW - RECENT:].any(1)
    with np.errstate(all="ignore"):
        s = np.nansum(steps, axis=1) / np.maximum(npres, 1)
    s = np.where(s > 0, s, 1.0)
    z = np.log1p(steps / s[:, None])
    ar = np.arange(WINDOW)[None, :]
    idx = np.where(present, ar, -1)
    idx = np.maximum.accumulate(idx, axis=1)
    first = np.argmax(present, axis=1)
    idx = np.where(idx < 0, first[:, None], idx)
    z = np.take_along_axis(z, idx, axis=1)
    w = origins[:, None] - STEP * (WINDOW - np.arange(WINDOW))[None, :]
    tf = time_feats_np(w)
    x = np.concatenate([z[..., None], present[..., None].astype(np.float64), tf], axis=-1)
    wf = origins[:, None] + STEP * np.arange(HORIZON)[None, :]
    xf = time_feats_np(wf)
    y = np.log1p(tgt / s[:, None])
    return ready, s, x, xf, y


def check_against_reference(series, origins, steps, tgt, rng, n=150):
    picks = rng.choice(len(origins), size=min(n, len(origins)), replace=False)
    for i in picks:
        o = int(origins[i])
        rs = ref_steps(series, o)
        rt = ref_targets(series, o)
        for k in range(WINDOW):
            a, b = rs[k], steps[i, k]
            assert (a is None and np.isnan(b)) or (a is not None and a == b), \
                (series["name"], o, k, a, b)
        for j in range(HORIZON):
            a, b = rt[j], tgt[i, j]
            assert (a is None and np.isnan(b)) or (a is not None and a == b), \
                (series["name"], o, j, a, b)


def prepare(series_list, rng):
    data = []
    for se in series_list:
        origins, steps, tgt = build_windows(se, se["L"])
        check_against_reference(se, origins, steps, tgt, rng)
        ready, s, x, xf, y = features_np(origins, steps, tgt)
        valid = ~np.isnan(y)
        keep = ready & valid.any(1)
        origins, x, xf, y, valid, s = origins[keep], x[keep], xf[keep], y[keep], valid[keep], s[keep]
        n = len(origins)
        cut = origins[int(math.floor((1 - VAL_FRACTION) * n))]
        is_val = origins >= cut
        # validation uses only origins on the 300-s grid (what the live system sees)
        val_sel = is_val & (origins % STEP == 0)
        tr_sel = ~is_val
        def pack(sel):
            return {"origin": origins[sel],
                    "x": torch.from_numpy(x[sel].astype(np.float32)),
                    "xf": torch.from_numpy(xf[sel].astype(np.float32)),
                    "y": torch.from_numpy(np.nan_to_num(y[sel]).astype(np.float32)),
                    "m": torch.from_numpy(valid[sel].astype(np.float32))}
        d = {"name": se["name"], "file": se["file"], "train": pack(tr_sel), "val": pack(val_sel),
             "val_cut": int(cut)}
        print(f"  {se['name']:42s} L={se['L']:3d} windows={n:6d} train={int(tr_sel.sum()):6d} "
              f"val={int(val_sel.sum()):5d} (val from {time.strftime('%Y-%m-%d %H:%M', time.gmtime(int(cut)))})",
              flush=True)
        data.append(d)
    return data


# ---------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------
class FlowcastNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.LSTM(6, HIDDEN, batch_first=True)
        self.enc2 = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
        self.dec1 = nn.LSTM(4, HIDDEN, batch_first=True)
        self.dec2 = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x, xf, mask):
        m1 = mask[:, 0:HIDDEN].unsqueeze(1)
        m2 = mask[:, HIDDEN:2 * HIDDEN].unsqueeze(1)
        m3 = mask[:, 2 * HIDDEN:3 * HIDDEN].unsqueeze(1)
        e1, (h1, c1) = self.enc1(x)
        _, (h2, c2) = self.enc2(e1 * m1)
        d1, _ = self.dec1(xf, (h1, c1))
        d2, _ = self.dec2(d1 * m2, (h2, c2))
        out = self.head(d2 * m3)                    # [B, 3, 2]
        mean = x[:, WINDOW - 1, 0:1] + out[:, :, 0]  # persistence skip connection
        logvar = torch.clamp(out[:, :, 1], LOGVAR_MIN, LOGVAR_MAX)
        return mean, logvar


class McForecaster(nn.Module):
    """The exported inference graph: FlowcastNet with the encoder kept deterministic.

    The encoder (both layers) and decoder layer 1 run once per series (inputs x, xf with
    one row per series, axis S); decoder layer 2 and the head run once per Monte-Carlo pass
    (mask and rows with one row per pass, axis B; rows[b] is the series of pass b). Row b
    gives exactly what FlowcastNet gives for x[rows[b]], xf[rows[b]] and the training-layout
    mask [ones(HIDDEN), mask[b]]: dropout after encoder layer 1 is a training regulariser
    only. About 93 % of the network's FLOPs are in the encoder, so 100 passes cost little
    more than one (issue #7; the quality effect is measured in models/README.md).

    The decoder runs time-major ([step, row, unit], the layout of ONNX LSTM outputs) on
    time-major copies of dec1 and dec2 (same parameters), and each dropout mask is repeated
    over the 3 steps to the exact shape of what it multiplies. A [B, 1, H] mask broadcast
    over [B, 3, H] fell to tract's generic element-by-element path, 14 % of a 1 × 100 tick;
    equal shapes take its vectorised path, and the transposes around decoder layer 2 go.
    The same arithmetic: outputs are bit-identical to the batch-first formulation.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.dec1 = time_major(net.dec1)
        self.dec2 = time_major(net.dec2)

    def forward(self, x, xf, mask, rows):
        n = self.net
        m2 = torch.cat([mask[:, 0:HIDDEN].unsqueeze(0)] * HORIZON, 0)               # [3, B, H]
        m3 = torch.cat([mask[:, HIDDEN:2 * HIDDEN].unsqueeze(0)] * HORIZON, 0)      # [3, B, H]
        e1, (h1, c1) = n.enc1(x)
        _, (h2, c2) = n.enc2(e1)
        d1, _ = self.dec1(xf.transpose(0, 1), (h1, c1))     # [3, S, H]
        d1r = torch.index_select(d1, 1, rows)                 # [3, B, H]
        h2r = torch.index_select(h2, 1, rows)
        c2r = torch.index_select(c2, 1, rows)
        d2, _ = self.dec2(d1r * m2, (h2r, c2r))               # [3, B, H]
        out = n.head(d2 * m3)                                 # [3, B, 2]
        last = torch.index_select(x[:, WINDOW - 1, 0], 0, rows).unsqueeze(0)   # [1, B]
        mean = (last + out[:, :, 0]).t()
        logvar = torch.clamp(out[:, :, 1], LOGVAR_MIN, LOGVAR_MAX).t()
        return mean, logvar


def time_major(lstm):
    """A copy of a batch-first nn.LSTM that takes [step, batch, feature] inputs."""
    tm = copy.deepcopy(lstm)    # a copy, not a new nn.LSTM: no draw from torch's RNG
    tm.batch_first = False
    return tm


def draw_masks(n, gen, width=MASK_WIDTH):
    keep = torch.bernoulli(torch.full((n, width), 1.0 - P_DROP), generator=gen)
    return keep * (1.0 / (1.0 - P_DROP))


def mc_masks(n, gen):
    """Training-layout masks for Monte-Carlo passes at inference: encoder mask all ones."""
    return torch.cat([torch.ones(n, MASK_WIDTH - MC_MASK_WIDTH), draw_masks(n, gen, MC_MASK_WIDTH)], 1)


def kg_loss(mean, logvar, y, m):
    per = 0.5 * torch.exp(-logvar) * (y - mean) ** 2 + 0.5 * logvar
    return (per * m).sum() / m.sum().clamp_min(1.0)


@torch.no_grad()
def eval_loss(model, part, bs=4096):
    tot, cnt = 0.0, 0.0
    n = part["x"].shape[0]
    for i in range(0, n, bs):
        x, xf, y, m = (part[k][i:i + bs] for k in ("x", "xf", "y", "m"))
        mean, lv = model(x, xf, torch.ones(x.shape[0], MASK_WIDTH))
        per = 0.5 * torch.exp(-lv) * (y - mean) ** 2 + 0.5 * lv
        tot += float((per * m).sum())
        cnt += float(m.sum())
    return tot / max(cnt, 1.0), cnt


def val_losses(model, data):
    per_series = {}
    tot, cnt = 0.0, 0.0
    for d in data:
        l, c = eval_loss(model, d["val"])
        per_series[d["name"]] = l
        tot += l * c
        cnt += c
    return float(np.mean(list(per_series.values()))), tot / max(cnt, 1.0), per_series


# ---------------------------------------------------------------------------------------
# Calibration prior on the validation windows
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def calibrate(model, data, gen, bs=4096):
    mus, u1s, u2s, ys, ms, origins, names = [], [], [], [], [], [], []
    for d in data:
        part = d["val"]
        n = part["x"].shape[0]
        for i in range(0, n, bs):
            x, xf = part["x"][i:i + bs], part["xf"][i:i + bs]
            B = x.shape[0]
            mu, _ = model(x, xf, torch.ones(B, MASK_WIDTH))
            xr = x.repeat(MC_PASSES_CAL, 1, 1)
            xfr = xf.repeat(MC_PASSES_CAL, 1, 1)
            mc_mean, mc_lv = model(xr, xfr, mc_masks(B * MC_PASSES_CAL, gen))
            mc_mean = mc_mean.view(MC_PASSES_CAL, B, HORIZON)
            mc_lv = mc_lv.view(MC_PASSES_CAL, B, HORIZON)
            mus.append(mu.double().numpy())
            u1s.append(mc_mean.double().var(dim=0, unbiased=False).numpy())
            u2s.append(torch.exp(mc_lv.double()).mean(dim=0).numpy())
        ys.append(part["y"].double().numpy())
        ms.append(part["m"].numpy() > 0.5)
        origins.append(part["origin"])
        names += [d["name"]] * n
    mu, u1, u2 = np.concatenate(mus), np.concatenate(u1s), np.concatenate(u2s)
    y, valid, origin = np.concatenate(ys), np.concatenate(ms), np.concatenate(origins)
    names = np.asarray(names)
    e = y - mu
    hours = ((origin[:, None] + STEP * np.arange(HORIZON)[None, :]) % 86400) // 3600
    u3_by_hour = []
    k_up, k_lo, cov196, cov_k, cov_u12 = [], [], [], [], []
    u3sq_all = np.zeros_like(mu)
    for j in range(HORIZON):
        v = valid[:, j]
        overall = float(np.mean(e[v, j] ** 2))
        row = []
        for h in range(24):
            sel = v & (hours[:, j] == h)
            row.append(float(np.mean(e[sel, j] ** 2)) if sel.sum() >= 30 else overall)
        u3_by_hour.append(row)
        u3sq_all[:, j] = np.asarray(row)[hours[:, j]]
    sigma = np.sqrt(u1 + u2 + u3sq_all)
    r = e / sigma
    sig12 = np.sqrt(u1 + u2)
    for j in range(HORIZON):
        v = valid[:, j]
        rj = r[v, j]
        ku = float(np.percentile(rj, 97.5))
        kl = float(-np.percentile(rj, 2.5))
        k_up.append(ku)
        k_lo.append(kl)
        cov196.append(float(np.mean(np.abs(rj) <= 1.96)))
        cov_k.append(float(np.mean((rj >= -kl) & (rj <= ku))))
        cov_u12.append(float(np.mean(np.abs(e[v, j]) <= 1.96 * sig12[v, j])))
    by_series = {}
    for nm in dict.fromkeys(names):
        sel = names == nm
        rs = r[sel][valid[sel]]
        by_series[str(nm)] = {
            "n": int(valid[sel].sum()),
            "coverage_1.96": float(np.mean(np.abs(rs) <= 1.96)),
            "upper_coverage_1.96": float(np.mean(rs <= 1.96)),
            "mean_u1_sq": float(np.mean(u1[sel])), "mean_u2_sq": float(np.mean(u2[sel])),
            "mse_z": float(np.mean((e[sel][valid[sel]]) ** 2)),
        }
    stats = {
        "n_windows": int(len(mu)),
        "n_targets_per_horizon": [int(valid[:, j].sum()) for j in range(HORIZON)],
        "mc_passes": MC_PASSES_CAL,
        "coverage_1.96_sigma_u123": cov196,
        "coverage_1.96_sigma_u12_only": cov_u12,
        "coverage_k_scaled": cov_k,
        "mean_u1_sq": [float(np.mean(u1[valid[:, j], j])) for j in range(HORIZON)],
        "mean_u2_sq": [float(np.mean(u2[valid[:, j], j])) for j in range(HORIZON)],
        "mean_u3_sq": [float(np.mean(u3sq_all[valid[:, j], j])) for j in range(HORIZON)],
        "mse_z": [float(np.mean(e[valid[:, j], j] ** 2)) for j in range(HORIZON)],
        "by_series": by_series,
    }
    return {"u3_sq_by_hour": u3_by_hour, "k_upper": k_up, "k_lower": k_lo}, stats


# ---------------------------------------------------------------------------------------
# Golden cases
# ---------------------------------------------------------------------------------------
def pick_feature_cases(series_by_name):
    cases = []

    def add(label, se, o):
        steps = ref_steps(se, o)
        ready, s, x, xf = ref_features(steps, o)
        cases.append({"label": label, "series": se["name"], "origin": int(o),
                      "steps": steps, "ready": bool(ready), "scale": s, "x": x, "xf": xf})

    def first_origin(se, pred, start_frac=0.0):
        ts = se["ts"]
        o0 = (int(ts[0] + (ts[-1] - ts[0]) * start_frac) // STEP + WINDOW) * STEP
        for o in range(o0, int(ts[-1]), STEP):
            steps = ref_steps(se, o)
            if pred(steps):
                return o
        return None

    def ready_of(st):
        return ref_features(st, 0)[0]

    if "twitter_sample_stream_2021_08_1min" in series_by_name:
        se = series_by_name["twitter_sample_stream_2021_08_1min"]
        o = first_origin(se, lambda st: ready_of(st) and sum(v is None for v in st) >= 3
                         and st[-1] is not None, 0.3)
        if o is not None:
            add("1-min series with holes (daily missing block)", se, o)
    zero_pick = None
    for nm in ("nab_twitter_volume_CVS_5min", "nab_twitter_volume_PFE_5min"):
        if nm in series_by_name:
            se = series_by_name[nm]
            o = first_origin(se, lambda st: ready_of(st)
                             and all(v == 0.0 for v in st if v is not None), 0.5)
            if o is not None:
                zero_pick = (se, o)
                break
    if zero_pick:
        add("all-zero values (scale falls back to 1.0); NAB newest step is a hole", *zero_pick)
    if "nab_twitter_volume_AAPL_5min" in series_by_name:
        se = series_by_name["nab_twitter_volume_AAPL_5min"]
        o = first_origin(se, ready_of, 0.6)
        add("NAB offset timestamps (:x2:53/:x7:53): newest window is always a hole", se, o)
    if "twitter_anomalydetection_raw_1min" in series_by_name:
        se = series_by_name["twitter_anomalydetection_raw_1min"]
        o = first_origin(se, ready_of, 0.5)
        add("1-min series, no holes: step = max of five 1-min rates", se, o)
    if "isp_internet_traffic_uk_5min" in series_by_name:
        se = series_by_name["isp_internet_traffic_uk_5min"]
        o = first_origin(se, ready_of, 0.4)
        add("5-min series on the 300-s grid, large values", se, o)
    # a not-ready window: only a few steps at the start of a series
    se = series_by_name.get("isp_internet_traffic_eu_5min") or next(iter(series_by_name.values()))
    o = (int(se["ts"][0]) // STEP + 10) * STEP
    add("NOT ready: only ~10 present steps at the start of a series", se, o)
    return cases


# ---------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--out-dir", default=MODELS_DIR)
    ap.add_argument("--exclude", nargs="*", default=[], metavar="NAME",
                    help="series file stems (without .csv) to leave out entirely")
    ap.add_argument("--max-epochs", type=int, default=80)
    ap.add_argument("--patience", type=int, default=PATIENCE)
    ap.add_argument("--per-series", type=int, default=PER_SERIES_PER_EPOCH,
                    help="random training windows per series per epoch")
    ap.add_argument("--seed", type=int, default=20260101)
    args = ap.parse_args()

    t_start = time.time()
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    deterministic = True
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as ex:  # pragma: no cover
        deterministic = False
        print("warning: use_deterministic_algorithms failed:", ex)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    files = sorted(f for f in os.listdir(args.data_dir) if f.endswith(".csv"))
    stems = [os.path.splitext(f)[0] for f in files]
    unknown = [e for e in args.exclude if e not in stems]
    if unknown:
        sys.exit(f"--exclude: unknown series {unknown}; known: {stems}")
    used = [f for f in files if os.path.splitext(f)[0] not in args.exclude]
    print(f"data dir {args.data_dir}: {len(used)} series used, excluded {args.exclude}", flush=True)
    series = [load_series(os.path.join(args.data_dir, f)) for f in used]
    data = prepare(series, rng)
    print(f"prepared in {time.time() - t_start:.1f}s", flush=True)

    model = FlowcastNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model parameters: {nparams}", flush=True)

    best = (float("inf"), None, -1)
    history = []
    bad = 0
    t_train = time.time()
    train_loss = float("nan")
    for epoch in range(1, args.max_epochs + 1):
        te = time.time()
        model.train()
        # equal weight per series: a fixed number of random training windows per series
        parts = []
        for si, d in enumerate(data):
            n = d["train"]["x"].shape[0]
            k = args.per_series
            idx = rng.choice(n, size=k, replace=n < k)
            parts.append(np.stack([np.full(k, si), idx], axis=1))
        order = np.concatenate(parts)
        order = order[rng.permutation(len(order))]
        tot, cnt = 0.0, 0
        for bi in range(0, len(order), BATCH):
            chunk = order[bi:bi + BATCH]
            xs, xfs, ys, ms = [], [], [], []
            for si in np.unique(chunk[:, 0]):
                ii = torch.from_numpy(chunk[chunk[:, 0] == si, 1])
                tr = data[si]["train"]
                xs.append(tr["x"][ii]); xfs.append(tr["xf"][ii]); ys.append(tr["y"][ii]); ms.append(tr["m"][ii])
            x, xf, y, m = torch.cat(xs), torch.cat(xfs), torch.cat(ys), torch.cat(ms)
            mean, lv = model(x, xf, draw_masks(x.shape[0], gen))
            loss = kg_loss(mean, lv, y, m)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            opt.step()
            tot += float(loss.detach()) * x.shape[0]
            cnt += x.shape[0]
        train_loss = tot / cnt
        model.eval()
        vl, vl_pooled, _ = val_losses(model, data)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": vl,
                        "val_loss_pooled": vl_pooled, "seconds": time.time() - te})
        mark = ""
        if vl < best[0]:
            best = (vl, copy.deepcopy(model.state_dict()), epoch)
            bad = 0
            mark = " *"
        else:
            bad += 1
        print(f"epoch {epoch:3d}  train {train_loss:.4f}  val {vl:.4f} (pooled {vl_pooled:.4f})  "
              f"{time.time() - te:.1f}s  total {time.time() - t_start:.0f}s{mark}", flush=True)
        if bad >= args.patience:
            print(f"early stop: no val improvement for {args.patience} epochs", flush=True)
            break
    train_seconds = time.time() - t_train
    model.load_state_dict(best[1])
    model.eval()
    best_epoch = best[2]
    best_train = history[best_epoch - 1]["train_loss"]
    vl, vl_pooled, vl_series = val_losses(model, data)
    print(f"best epoch {best_epoch}: train {best_train:.4f} val {vl:.4f} (pooled {vl_pooled:.4f}); "
          f"training {train_seconds:.0f}s", flush=True)
    for k, v in vl_series.items():
        print(f"  val loss {k:42s} {v:.4f}")

    # --- calibration prior --------------------------------------------------------------
    tc = time.time()
    cal, cal_stats = calibrate(model, data, gen)
    print(f"calibration ({time.time() - tc:.0f}s): coverage mu±1.96σ per horizon "
          f"{[round(c, 4) for c in cal_stats['coverage_1.96_sigma_u123']]}, "
          f"k_upper {[round(k, 3) for k in cal['k_upper']]}, k_lower {[round(k, 3) for k in cal['k_lower']]}",
          flush=True)

    # --- export ---------------------------------------------------------------------------
    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "flowcast.onnx")
    mc = McForecaster(model).eval()
    # the inference graph must be the training network with the encoder mask at one
    with torch.no_grad():
        vx, vxf = data[0]["val"]["x"][:4], data[0]["val"]["xf"][:4]
        # passes out of order, one series twice
        vrows = torch.tensor([2, 0, 3, 3, 1, 0], dtype=torch.int64) % vx.shape[0]
        vm = draw_masks(len(vrows), gen, MC_MASK_WIDTH)
        a_mean, a_lv = mc(vx, vxf, vm, vrows)
        full = torch.cat([torch.ones(len(vrows), MASK_WIDTH - MC_MASK_WIDTH), vm], 1)
        b_mean, b_lv = model(vx[vrows], vxf[vrows], full)
        gap = max(float((a_mean - b_mean).abs().max()), float((a_lv - b_lv).abs().max()))
        assert gap < 1e-5, f"McForecaster disagrees with FlowcastNet by {gap}"
    dummy = (torch.zeros(2, WINDOW, 6), torch.zeros(2, HORIZON, 4), torch.ones(3, MC_MASK_WIDTH),
             torch.tensor([0, 1, 1], dtype=torch.int64))
    torch.onnx.export(mc, dummy, onnx_path, dynamo=False, opset_version=17,
                      input_names=["x", "xf", "mask", "rows"], output_names=["mean", "logvar"],
                      dynamic_axes={"x": {0: "S"}, "xf": {0: "S"}, "mask": {0: "B"},
                                    "rows": {0: "B"}, "mean": {0: "B"}, "logvar": {0: "B"}})
    with open(onnx_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    size = os.path.getsize(onnx_path)
    print(f"exported {onnx_path}: {size} bytes, sha256 {sha}", flush=True)

    # --- golden cases -----------------------------------------------------------------------
    g_gen = torch.Generator().manual_seed(args.seed + 7)
    g_rng = np.random.default_rng(args.seed + 7)
    model_cases = []
    picks = g_rng.choice(len(data), size=6, replace=len(data) < 6)
    for ci in range(6):
        d = data[int(picks[ci])]
        part = d["val"] if d["val"]["x"].shape[0] > 0 else d["train"]
        i = int(g_rng.integers(part["x"].shape[0]))
        x, xf = part["x"][i:i + 1], part["xf"][i:i + 1]
        mask = torch.ones(1, MC_MASK_WIDTH) if ci < 3 else draw_masks(1, g_gen, MC_MASK_WIDTH)
        with torch.no_grad():
            mean, lv = mc(x, xf, mask, torch.zeros(1, dtype=torch.int64))
        model_cases.append({"series": d["name"], "origin": int(part["origin"][i]),
                            "mask_kind": "ones" if ci < 3 else "random",
                            "x": x.tolist(), "xf": xf.tolist(), "mask": mask.tolist(),
                            "mean": mean.tolist(), "logvar": lv.tolist()})
    # ONNX sanity check with the onnx reference evaluator (pure Python)
    try:
        import onnx
        from onnx.reference import ReferenceEvaluator
        onnx.checker.check_model(onnx.load(onnx_path))
        sess = ReferenceEvaluator(onnx_path)
        xb = torch.cat([torch.tensor(c["x"]) for c in model_cases])
        xfb = torch.cat([torch.tensor(c["xf"]) for c in model_cases])
        mb = torch.cat([torch.tensor(c["mask"]) for c in model_cases])
        # passes in reverse order, so that the check also covers the rows gather
        rb = np.arange(len(model_cases), dtype=np.int64)[::-1].copy()
        om, olv = sess.run(None, {"x": xb.numpy(), "xf": xfb.numpy(), "mask": mb.numpy()[rb],
                                  "rows": rb})
        om, olv = om[::-1], olv[::-1]
        tm = np.concatenate([np.asarray(c["mean"]) for c in model_cases])
        tl = np.concatenate([np.asarray(c["logvar"]) for c in model_cases])
        diff = max(float(np.abs(om - tm).max()), float(np.abs(olv - tl).max()))
        print(f"onnx reference evaluator vs torch (batch {len(model_cases)}): max abs diff {diff:.2e}", flush=True)
        assert diff < 1e-4
    except ImportError:
        print("onnx not installed: skipped the ONNX check")
        diff = None

    series_by_name = {se["name"]: se for se in series}
    feature_cases = pick_feature_cases(series_by_name)
    # cross-check the reference feature code against the vectorised one used for training
    for fc in feature_cases:
        if fc["scale"] is None:
            continue
        st = np.array([[np.nan if v is None else v for v in fc["steps"]]])
        _, s2, x2, xf2, _ = features_np(np.array([fc["origin"]]), st, np.full((1, 3), np.nan))
        assert abs(s2[0] - fc["scale"]) <= 1e-12 * max(1.0, fc["scale"])
        assert np.abs(x2[0] - np.asarray(fc["x"])).max() < 1e-12
        assert np.abs(xf2[0] - np.asarray(fc["xf"])).max() < 1e-12
    golden = {
        "description": "model_cases: PyTorch outputs of flowcast.onnx's network, each with one series and one "
                       "pass (x [1,36,6], xf [1,3,4], mask [1,64], rows [0], mean [1,3], logvar [1,3]; "
                       "float32 values). "
                       "feature_cases: the feature contract computed in float64 from real rows: origin "
                       "(unix s), steps (36 req/s values oldest first, null = hole), ready, scale, "
                       "x [36,6], xf [3,4] (no batch axis).",
        "model_cases": model_cases,
        "feature_cases": feature_cases,
    }
    with open(os.path.join(args.out_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)

    wall = time.time() - t_start
    card = {
        "format_version": 1,
        "model_file": "flowcast.onnx",
        "model_sha256": sha,
        "inputs": {"x": [None, WINDOW, 6], "xf": [None, HORIZON, 4], "mask": [None, MC_MASK_WIDTH],
                   "rows": [None]},
        "batch_axes": {"S": "one row per series: x, xf", "B": "one row per pass: mask, rows, mean, logvar"},
        "outputs": {"mean": [None, HORIZON], "logvar": [None, HORIZON]},
        "step_seconds": STEP, "window_steps": WINDOW, "horizon_steps": HORIZON,
        "encoder_features": ["z", "present", "sin_tod", "cos_tod", "sin_dow", "cos_dow"],
        "decoder_features": ["sin_tod", "cos_tod", "sin_dow", "cos_dow"],
        "normalisation": {"kind": "log1p_over_window_mean", "zero_scale_fallback": 1.0},
        "readiness": {"min_present_steps": MIN_PRESENT, "recent_steps": RECENT},
        "dropout": {"rate": P_DROP, "mask_width": MC_MASK_WIDTH,
                    "mask_layout": [["decoder_layer1_output", HIDDEN], ["decoder_layer2_output", HIDDEN]],
                    "training_mask_layout": [["encoder_layer1_output", HIDDEN],
                                             ["decoder_layer1_output", HIDDEN],
                                             ["decoder_layer2_output", HIDDEN]],
                    "monte_carlo_scope": "decoder: the encoder and decoder layer 1 run once per series, "
                                         "decoder layer 2 and the head once per pass"},
        "mc_passes": 30,  # the sidecar's default: models/README.md's ablation
        "calibration_prior": cal,
        "training": {
            "data": used,
            "excluded": list(args.exclude),
            "split": "last 20% of each series by time is validation",
            "validation_origins": "300-s grid only (1-min series train on every 60-s origin)",
            "seed": args.seed,
            "epochs": len(history),
            "max_epochs": args.max_epochs,
            "best_epoch": best_epoch,
            "train_loss": best_train,
            "val_loss": vl,
            "val_loss_definition": "Kendall-Gal loss with all-ones mask, mean over series of the per-series mean",
            "val_loss_pooled": vl_pooled,
            "val_loss_by_series": vl_series,
            "val_coverage_1.96_sigma": cal_stats["coverage_1.96_sigma_u123"],
            "calibration_stats": cal_stats,
            "wall_seconds": round(wall, 1),
            "train_seconds": round(train_seconds, 1),
            "torch_version": torch.__version__,
            "deterministic_algorithms": deterministic,
            "threads": 1,
            "parameters": nparams,
            "hyper_parameters": {"lr": LR, "batch": BATCH, "windows_per_series_per_epoch": args.per_series,
                                 "patience": args.patience, "grad_clip_norm": GRAD_CLIP,
                                 "logvar_clamp": [LOGVAR_MIN, LOGVAR_MAX]},
            "onnx_bytes": size,
            "onnx_vs_torch_max_abs_diff": diff,
            "history": history,
        },
        "dev_scores": None,
    }
    with open(os.path.join(args.out_dir, "flowcast.card.json"), "w") as f:
        json.dump(card, f, indent=1)
    print(f"wrote {args.out_dir}/flowcast.onnx, flowcast.card.json, golden.json; wall {wall:.0f}s", flush=True)


if __name__ == "__main__":
    main()
