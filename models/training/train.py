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
DAY_STEPS = 86400 // STEP            # 288
WEEK_STEPS = 7 * DAY_STEPS
# Contract version 2 (issue #21): seasonal context and the reference level in the decoder
# input, the window normalised by the recent level (the persistence path), quantile heads.
FORMAT_VERSION = 2
ENCODER_FEATURES = ["z", "present", "sin_tod", "cos_tod", "sin_dow", "cos_dow"]
DECODER_FEATURES = ["sin_tod", "cos_tod", "sin_dow", "cos_dow", "reference",
                    "day_level", "day_change", "day_present",
                    "week_level", "week_change", "week_present",
                    "slow_level", "slow_present", "log_scale"]
ENC = len(ENCODER_FEATURES)
DEC = len(DECODER_FEATURES)
REF = DECODER_FEATURES.index("reference")
DAY_F = DECODER_FEATURES.index("day_level")      # day_level, day_change, day_present
WEEK_F = DECODER_FEATURES.index("week_level")    # week_level, week_change, week_present
LOG_SCALE_DIV = 10.0                             # log_scale = ln(1 + s) / 10
QUANTILES = [0.025, 0.1, 0.5, 0.9, 0.975]
Q_MID = QUANTILES.index(0.5)
# pinball weights: the upper tail is what KEDA reads
Q_WEIGHTS = [1.0, 1.0, 1.0, 1.5, 2.0]
# training windows lose their week (a sidecar's first week) or their day and week (its
# first day) with these probabilities, on top of the windows that have none
P_DROP_WEEK = 0.25
P_DROP_DAY = 0.10

# Training hyper-parameters
LR = 1e-3
BATCH = 256
PER_SERIES_PER_EPOCH = 2000
PATIENCE = 4
VAL_FRACTION = 0.2
GRAD_CLIP = 5.0
MSE_WEIGHT = 0.0    # --mse-weight (issue #21: 5 makes the network the best NAB expert)
MC_PASSES_CAL = 30
CAL_PER_SERIES = 2500

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.dirname(SCRIPT_DIR)
REPO_ROOT = os.path.dirname(MODELS_DIR)
DEFAULT_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "traffic"))
DEFAULT_EXTRA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "extra"))


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


def ref_window_value(series, t):
    """The step value of the window [t, t + 300): the largest rate of the rows that start
    in it (None if none does), as the sidecar's week of steps holds it."""
    ts, rate = series["ts"], series["rate"]
    lo = np.searchsorted(ts, t, side="left")
    hi = np.searchsorted(ts, t + STEP, side="left")
    return float(rate[lo:hi].max()) if hi > lo else None


def ref_seasonal(series, o):
    """The seasonal context at origin o: the windows a day and a week before each target
    and before the last window, and the mean of the last day's windows. The windows are
    those of the 300-s grid (the sidecar keeps its week of steps on it): the first target
    is the grid window that holds o."""
    def at(t):
        return ref_window_value(series, t) if t >= 0 else None
    o = (o // STEP) * STEP
    days = [at(o - 86400 + STEP * j) for j in range(HORIZON)]
    weeks = [at(o - 7 * 86400 + STEP * j) for j in range(HORIZON)]
    last = [at(o - STEP * k) for k in range(1, DAY_STEPS + 1)]
    pres = [v for v in last if v is not None]
    return {"day_target": days, "day_base": at(o - STEP - 86400),
            "week_target": weeks, "week_base": at(o - STEP - 7 * 86400),
            "day_mean": sum(pres) / len(pres) if pres else None}


def ref_features(steps, o, seas):
    """Returns (ready, scale, x[36][6], xf[3][14]) exactly as the contract says."""
    present = [v is not None for v in steps]
    npres = sum(present)
    ready = npres >= MIN_PRESENT and any(present[WINDOW - RECENT:])
    if npres == 0:
        return ready, None, None, None
    recent = [v for v in steps[WINDOW - RECENT:] if v is not None]
    reference = sum(recent) / len(recent) if recent else 0.0
    mean = sum(v for v in steps if v is not None) / npres
    s = reference if reference > 0 else (mean if mean > 0 else 1.0)

    def z(v):
        return math.log1p(v / s)

    def pair(target, base):
        if target is None or base is None:
            return [0.0, 0.0, 0.0]
        return [z(target), z(target) - z(base), 1.0]
    first = next(math.log1p(v / s) for v in steps if v is not None)
    x = []
    last = first
    for k, v in enumerate(steps):
        if v is not None:
            last = math.log1p(v / s)
        w = o - STEP * (WINDOW - k)
        x.append([last, 1.0 if v is not None else 0.0] + time_feats(w))
    dm = seas["day_mean"]
    slow = [z(dm), 1.0] if dm is not None else [0.0, 0.0]
    xf = [time_feats(o + STEP * j) + [z(reference)]
          + pair(seas["day_target"][j], seas["day_base"])
          + pair(seas["week_target"][j], seas["week_base"])
          + slow + [math.log1p(s) / LOG_SCALE_DIV]
          for j in range(HORIZON)]
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
    # one window of empty buckets before the first row, so that a window reaching back
    # before the series' start holds what the rows inside it say (as in ref_window_value)
    b0 = int(ts[0] // g) - m
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

    def back(idx):  # vfull at bucket indices, NaN before the series starts
        return np.where(idx >= 0, vfull[np.maximum(idx, 0)], np.nan)
    d, w = 86400 // g, 7 * 86400 // g
    # the seasonal windows are on the 300-s grid: ia is the bucket of the grid window
    # that holds the origin (= io for origins on the grid)
    ia = (origins // STEP) * STEP // g - b0
    aidx = ia[:, None] + m * np.arange(HORIZON)[None, :]
    seas = {"day_target": back(aidx - d), "day_base": back(ia - m - d),
            "week_target": back(aidx - w), "week_base": back(ia - m - w)}
    # mean of the present windows io - m*k, k = 1..288: cumulative sums along stride m
    pv = np.nan_to_num(vfull)
    pc = (~np.isnan(vfull)).astype(np.float64)
    def strided_cumsum(a):
        n = len(a)
        pad = (-n) % m
        c = np.concatenate([a, np.zeros(pad)]).reshape(-1, m).cumsum(axis=0).reshape(-1)
        return c[:n]
    cs_v, cs_c = strided_cumsum(pv), strided_cumsum(pc)
    def window_sum(cs, last):  # sum of a[last - m*k] for k = 0..DAY_STEPS-1
        first = last - m * DAY_STEPS
        hi = np.where(last >= 0, cs[np.maximum(last, 0)], 0.0)
        lo = np.where(first >= 0, cs[np.maximum(first, 0)], 0.0)
        return hi - lo
    sv, sc = window_sum(cs_v, ia - m), window_sum(cs_c, ia - m)
    with np.errstate(all="ignore"):
        seas["day_mean"] = np.where(sc > 0, sv / np.maximum(sc, 1), np.nan)
    return origins, steps, tgt, seas


def time_feats_np(w):
    w = w.astype(np.int64)
    tod = (w % 86400) / 86400.0
    dow = ((w // 86400 + 3) % 7) / 7.0
    return np.stack([np.sin(2 * np.pi * tod), np.cos(2 * np.pi * tod),
                     np.sin(2 * np.pi * dow), np.cos(2 * np.pi * dow)], axis=-1)


def features_np(origins, steps, tgt, seas):
    present = ~np.isnan(steps)
    npres = present.sum(1)
    ready = (npres >= MIN_PRESENT) & present[:, WINDOW - RECENT:].any(1)
    rp = present[:, WINDOW - RECENT:]
    with np.errstate(all="ignore"):
        mean = np.nansum(steps, axis=1) / np.maximum(npres, 1)
        reference = np.where(rp.any(1), np.nansum(steps[:, WINDOW - RECENT:], axis=1)
                             / np.maximum(rp.sum(1), 1), 0.0)
    s = np.where(reference > 0, reference, np.where(mean > 0, mean, 1.0))
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
    n = len(origins)

    def zz(v):
        return np.log1p(v / (s[:, None] if v.ndim == 2 else s))

    def pair(target, base):
        ok = ~np.isnan(target) & ~np.isnan(base)[:, None]
        lvl = np.where(ok, zz(np.nan_to_num(target)), 0.0)
        chg = np.where(ok, lvl - zz(np.nan_to_num(base))[:, None], 0.0)
        return [lvl, chg, ok.astype(np.float64)]
    dm = seas["day_mean"]
    dm_ok = ~np.isnan(dm)
    slow = np.where(dm_ok, zz(np.nan_to_num(dm)), 0.0)
    cols = ([time_feats_np(wf)[..., i] for i in range(4)]
            + [np.repeat(zz(reference)[:, None], HORIZON, 1)]
            + pair(seas["day_target"], seas["day_base"])
            + pair(seas["week_target"], seas["week_base"])
            + [np.repeat(slow[:, None], HORIZON, 1),
               np.repeat(dm_ok.astype(np.float64)[:, None], HORIZON, 1),
               np.repeat((np.log1p(s) / LOG_SCALE_DIV)[:, None], HORIZON, 1)])
    xf = np.stack(cols, axis=-1)
    assert xf.shape == (n, HORIZON, DEC)
    y = np.log1p(tgt / s[:, None])
    return ready, s, x, xf, y


def check_against_reference(series, origins, steps, tgt, seas, rng, n=150):
    picks = rng.choice(len(origins), size=min(n, len(origins)), replace=False)
    for i in picks:
        o = int(origins[i])
        rs = ref_steps(series, o)
        rt = ref_targets(series, o)
        rseas = ref_seasonal(series, o)
        for key in ("day_target", "week_target"):
            for j in range(HORIZON):
                a, b = rseas[key][j], seas[key][i, j]
                assert (a is None and np.isnan(b)) or (a is not None and a == b), \
                    (series["name"], o, key, j, a, b)
        for key in ("day_base", "week_base", "day_mean"):
            a, b = rseas[key], seas[key][i]
            assert (a is None and np.isnan(b)) or (a is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a))), \
                (series["name"], o, key, a, b)
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
        origins, steps, tgt, seas = build_windows(se, se["L"])
        if not se.get("synthetic"):
            check_against_reference(se, origins, steps, tgt, seas, rng)
        ready, s, x, xf, y = features_np(origins, steps, tgt, seas)
        valid = ~np.isnan(y)
        keep = ready & valid.any(1)
        origins, x, xf, y, valid, s = origins[keep], x[keep], xf[keep], y[keep], valid[keep], s[keep]
        n = len(origins)
        # synthetic series train on every window; real ones keep their last 20 % for validation
        cut = origins[-1] + 1 if se.get("synthetic") else origins[int(math.floor((1 - VAL_FRACTION) * n))]
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
             "val_cut": int(cut), "synthetic": bool(se.get("synthetic"))}
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
        self.enc1 = nn.LSTM(ENC, HIDDEN, batch_first=True)
        self.enc2 = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
        self.dec1 = nn.LSTM(DEC, HIDDEN, batch_first=True)
        self.dec2 = nn.LSTM(HIDDEN, HIDDEN, batch_first=True)
        # per step: mean correction, log variance, median correction, and four positive
        # quantile spacings; zero at initialisation, so the untrained network is persistence
        # of the reference level (the persistence path) with unit variance
        self.head = nn.Linear(HIDDEN, 2 + len(QUANTILES))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x, xf, mask):
        m1 = mask[:, 0:HIDDEN].unsqueeze(1)
        m2 = mask[:, HIDDEN:2 * HIDDEN].unsqueeze(1)
        m3 = mask[:, 2 * HIDDEN:3 * HIDDEN].unsqueeze(1)
        e1, (h1, c1) = self.enc1(x)
        _, (h2, c2) = self.enc2(e1 * m1)
        d1, _ = self.dec1(xf, (h1, c1))
        d2, _ = self.dec2(d1 * m2, (h2, c2))
        out = self.head(d2 * m3)                    # [B, 3, 7]
        return heads(xf[:, :, REF], out)


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
        out = n.head(d2 * m3)                                 # [3, B, 7]
        reference = torch.index_select(xf[:, :, REF], 0, rows)   # [B, 3]
        return heads(reference, out.transpose(0, 1))


def heads(reference, out):
    """mean, logvar [B, 3] and monotone quantiles [B, 3, 5] from the head's outputs, each a
    correction to the reference level (z-space)."""
    mean = reference + out[..., 0]
    logvar = torch.clamp(out[..., 1], LOGVAR_MIN, LOGVAR_MAX)
    mid = reference + out[..., 2]
    sp = nn.functional.softplus(out[..., 3:7])
    lo1 = mid - sp[..., 0]
    lo2 = lo1 - sp[..., 1]
    hi1 = mid + sp[..., 2]
    hi2 = hi1 + sp[..., 3]
    return mean, logvar, torch.stack([lo2, lo1, mid, hi1, hi2], dim=-1)


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


_TAU = torch.tensor(QUANTILES)
_QW = torch.tensor(Q_WEIGHTS) / sum(Q_WEIGHTS)


def pinball_loss(q, y, m):
    """Weighted pinball loss of the quantiles q [B, 3, 5] at targets y [B, 3]."""
    d = y.unsqueeze(-1) - q
    per = torch.maximum(_TAU * d, (_TAU - 1.0) * d) * _QW
    return (per.sum(-1) * m).sum() / m.sum().clamp_min(1.0)


def loss_fn(outputs, y, m, quantile_weight):
    mean, lv, q = outputs
    loss = kg_loss(mean, lv, y, m)
    if MSE_WEIGHT > 0:
        # The Kendall-Gal loss lets the mean give up where the predicted variance is high,
        # which is where the combination's squared error is made: this term holds it there.
        loss = loss + MSE_WEIGHT * (((y - mean) ** 2) * m).sum() / m.sum().clamp_min(1.0)
    if quantile_weight > 0:
        loss = loss + quantile_weight * pinball_loss(q, y, m)
    return loss


def drop_context(xf, gen):
    """Training windows as a young sidecar sees them: no week (P_DROP_WEEK), or no day and
    no week (P_DROP_DAY)."""
    n = xf.shape[0]
    u = torch.rand(n, generator=gen)
    xf = xf.clone()
    no_week = (u < P_DROP_WEEK + P_DROP_DAY).float().view(n, 1, 1)
    no_day = (u < P_DROP_DAY).float().view(n, 1, 1)
    xf[:, :, WEEK_F:WEEK_F + 3] *= 1.0 - no_week
    xf[:, :, DAY_F:DAY_F + 3] *= 1.0 - no_day
    return xf


QUANTILE_WEIGHT = 1.0   # set from --head in main()


@torch.no_grad()
def eval_loss(model, part, bs=4096):
    tot, cnt = 0.0, 0.0
    n = part["x"].shape[0]
    for i in range(0, n, bs):
        x, xf, y, m = (part[k][i:i + bs] for k in ("x", "xf", "y", "m"))
        mm = float(m.sum())
        tot += float(loss_fn(model(x, xf, torch.ones(x.shape[0], MASK_WIDTH)), y, m, QUANTILE_WEIGHT)) * mm
        cnt += mm
    return tot / max(cnt, 1.0), cnt


def val_losses(model, data):
    per_series = {}
    tot, cnt = 0.0, 0.0
    for d in data:
        if d["synthetic"]:
            continue
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
    mus, u1s, u2s, qs, ys, ms, origins, names = [], [], [], [], [], [], [], []
    for d in data:
        if d["synthetic"]:
            continue
        part = d["val"]
        n = part["x"].shape[0]
        # at most CAL_PER_SERIES evenly spaced windows a series: the 1-min series have five
        # origins per step, and 30 passes over all of them cost minutes
        keep = np.unique(np.linspace(0, n - 1, min(n, CAL_PER_SERIES)).astype(np.int64)) if n else np.zeros(0, np.int64)
        part = {k: (v[keep] if k != "origin" else v[keep]) for k, v in part.items()}
        n = len(keep)
        for i in range(0, n, bs):
            x, xf = part["x"][i:i + bs], part["xf"][i:i + bs]
            B = x.shape[0]
            mu, _, q = model(x, xf, torch.ones(B, MASK_WIDTH))
            xr = x.repeat(MC_PASSES_CAL, 1, 1)
            xfr = xf.repeat(MC_PASSES_CAL, 1, 1)
            mc_mean, mc_lv, _ = model(xr, xfr, mc_masks(B * MC_PASSES_CAL, gen))
            mc_mean = mc_mean.view(MC_PASSES_CAL, B, HORIZON)
            mc_lv = mc_lv.view(MC_PASSES_CAL, B, HORIZON)
            mus.append(mu.double().numpy())
            qs.append(q.double().numpy())
            u1s.append(mc_mean.double().var(dim=0, unbiased=False).numpy())
            u2s.append(torch.exp(mc_lv.double()).mean(dim=0).numpy())
        ys.append(part["y"].double().numpy())
        ms.append(part["m"].numpy() > 0.5)
        origins.append(part["origin"])
        names += [d["name"]] * n
    mu, u1, u2 = np.concatenate(mus), np.concatenate(u1s), np.concatenate(u2s)
    q = np.concatenate(qs)
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
    # the quantile band: per side, sigma = sqrt(((q_side - q50) / 1.96)^2 + u1^2), and the
    # multiplier that makes it cover 97.5 % on that side on the validation windows
    med = q[..., Q_MID]
    s_hi = np.sqrt(((q[..., -1] - med) / 1.96) ** 2 + u1)
    s_lo = np.sqrt(((med - q[..., 0]) / 1.96) ** 2 + u1)
    rq = y - med
    qk_up, qk_lo, q_cov, q_up_cov, q_levels = [], [], [], [], []
    for j in range(HORIZON):
        v = valid[:, j]
        qk_up.append(float(np.percentile(rq[v, j] / s_hi[v, j], 97.5)))
        qk_lo.append(float(-np.percentile(rq[v, j] / s_lo[v, j], 2.5)))
        q_cov.append(float(np.mean((y[v, j] >= q[v, j, 0]) & (y[v, j] <= q[v, j, -1]))))
        q_up_cov.append(float(np.mean(y[v, j] <= q[v, j, -1])))
        q_levels.append([float(np.mean(y[v, j] <= q[v, j, i])) for i in range(len(QUANTILES))])
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
        "quantile_coverage_95": q_cov,
        "quantile_upper_coverage_97.5": q_up_cov,
        "quantile_hit_rates": q_levels,
        "by_series": by_series,
    }
    return {"u3_sq_by_hour": u3_by_hour, "k_upper": k_up, "k_lower": k_lo,
            "quantile_k_upper": qk_up, "quantile_k_lower": qk_lo}, stats


# ---------------------------------------------------------------------------------------
# Golden cases
# ---------------------------------------------------------------------------------------
NO_SEASONAL = {"day_target": [None] * HORIZON, "day_base": None, "week_target": [None] * HORIZON,
               "week_base": None, "day_mean": None}


def pick_feature_cases(series_by_name):
    cases = []

    def add(label, se, o):
        steps = ref_steps(se, o)
        seas = ref_seasonal(se, o)
        ready, s, x, xf = ref_features(steps, o, seas)
        cases.append({"label": label, "series": se["name"], "origin": int(o),
                      "steps": steps, "seasonal": seas, "ready": bool(ready), "scale": s,
                      "x": x, "xf": xf})

    def first_origin(se, pred, start_frac=0.0):
        ts = se["ts"]
        o0 = (int(ts[0] + (ts[-1] - ts[0]) * start_frac) // STEP + WINDOW) * STEP
        for o in range(o0, int(ts[-1]), STEP):
            steps = ref_steps(se, o)
            if pred(steps):
                return o
        return None

    def ready_of(st):
        return ref_features(st, 0, NO_SEASONAL)[0]

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
        o = first_origin(se, lambda st: ready_of(st), 0.8)
        add("5-min series with a day and a week of history", se, o)
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
    ap.add_argument("--extra-dir", default=DEFAULT_EXTRA,
                    help="more real series (ClarkNet, Microsoft); '' for none")
    ap.add_argument("--synthetic", type=int, default=24,
                    help="synthetic series (models/training/synthetic.py) added to training")
    ap.add_argument("--synthetic-seed", type=int, default=20261203)
    ap.add_argument("--head", choices=["quantile", "gaussian"], default="quantile",
                    help="gaussian: train the mean and log variance only (the ablation)")
    ap.add_argument("--no-seasonal", action="store_true",
                    help="zero the day/week/slow-level decoder inputs (the ablation)")
    ap.add_argument("--mse-weight", type=float, default=MSE_WEIGHT,
                    help="weight of a squared-error term on the mean beside the Kendall-Gal loss")
    args = ap.parse_args()
    global QUANTILE_WEIGHT, MSE_WEIGHT
    MSE_WEIGHT = args.mse_weight
    QUANTILE_WEIGHT = 1.0 if args.head == "quantile" else 0.0

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

    paths = sorted(os.path.join(args.data_dir, f) for f in os.listdir(args.data_dir) if f.endswith(".csv"))
    if args.extra_dir:
        paths += sorted(os.path.join(args.extra_dir, f) for f in os.listdir(args.extra_dir) if f.endswith(".csv"))
    stems = [os.path.splitext(os.path.basename(f))[0] for f in paths]
    unknown = [e for e in args.exclude if e not in stems]
    if unknown:
        sys.exit(f"--exclude: unknown series {unknown}; known: {stems}")
    used_paths = [f for f in paths if os.path.splitext(os.path.basename(f))[0] not in args.exclude]
    used = [os.path.basename(f) for f in used_paths]
    print(f"data: {len(used)} real series used, excluded {args.exclude}; "
          f"{args.synthetic} synthetic (seed {args.synthetic_seed})", flush=True)
    series = [load_series(f) for f in used_paths]
    import synthetic
    synth = synthetic.generate(args.synthetic_seed, args.synthetic)
    data = prepare(series + synth, rng)
    if args.no_seasonal:
        for d in data:
            for part in (d["train"], d["val"]):
                part["xf"][:, :, DAY_F:DAY_F + 3] = 0.0
                part["xf"][:, :, WEEK_F:WEEK_F + 3] = 0.0
                part["xf"][:, :, DAY_F + 6:DAY_F + 8] = 0.0   # slow_level, slow_present
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
            outputs = model(x, drop_context(xf, gen), draw_masks(x.shape[0], gen))
            loss = loss_fn(outputs, y, m, QUANTILE_WEIGHT)
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
        a_out = mc(vx, vxf, vm, vrows)
        full = torch.cat([torch.ones(len(vrows), MASK_WIDTH - MC_MASK_WIDTH), vm], 1)
        b_out = model(vx[vrows], vxf[vrows], full)
        gap = max(float((a - b).abs().max()) for a, b in zip(a_out, b_out))
        assert gap < 1e-5, f"McForecaster disagrees with FlowcastNet by {gap}"
    dummy = (torch.zeros(2, WINDOW, ENC), torch.zeros(2, HORIZON, DEC), torch.ones(3, MC_MASK_WIDTH),
             torch.tensor([0, 1, 1], dtype=torch.int64))
    torch.onnx.export(mc, dummy, onnx_path, dynamo=False, opset_version=17,
                      input_names=["x", "xf", "mask", "rows"],
                      output_names=["mean", "logvar", "quantiles"],
                      dynamic_axes={"x": {0: "S"}, "xf": {0: "S"}, "mask": {0: "B"},
                                    "rows": {0: "B"}, "mean": {0: "B"}, "logvar": {0: "B"},
                                    "quantiles": {0: "B"}})
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
            mean, lv, q = mc(x, xf, mask, torch.zeros(1, dtype=torch.int64))
        model_cases.append({"series": d["name"], "origin": int(part["origin"][i]),
                            "mask_kind": "ones" if ci < 3 else "random",
                            "x": x.tolist(), "xf": xf.tolist(), "mask": mask.tolist(),
                            "mean": mean.tolist(), "logvar": lv.tolist(), "quantiles": q.tolist()})
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
        om, olv, oq = sess.run(None, {"x": xb.numpy(), "xf": xfb.numpy(), "mask": mb.numpy()[rb],
                                      "rows": rb})
        om, olv, oq = om[::-1], olv[::-1], oq[::-1]
        tm = np.concatenate([np.asarray(c["mean"]) for c in model_cases])
        tl = np.concatenate([np.asarray(c["logvar"]) for c in model_cases])
        tq = np.concatenate([np.asarray(c["quantiles"]) for c in model_cases])
        diff = max(float(np.abs(om - tm).max()), float(np.abs(olv - tl).max()),
                   float(np.abs(oq - tq).max()))
        print(f"onnx reference evaluator vs torch (batch {len(model_cases)}): max abs diff {diff:.2e}", flush=True)
        assert diff < 1e-4
    except ImportError:
        print("onnx not installed: skipped the ONNX check")
        diff = None

    series_by_name = {se["name"]: se for se in series if se["file"] in used}
    feature_cases = pick_feature_cases(series_by_name)
    # cross-check the reference feature code against the vectorised one used for training
    for fc in feature_cases:
        if fc["scale"] is None:
            continue
        st = np.array([[np.nan if v is None else v for v in fc["steps"]]])
        sz = fc["seasonal"]
        nn_ = lambda v: np.nan if v is None else v
        seas_np = {"day_target": np.array([[nn_(v) for v in sz["day_target"]]]),
                   "week_target": np.array([[nn_(v) for v in sz["week_target"]]]),
                   "day_base": np.array([nn_(sz["day_base"])]),
                   "week_base": np.array([nn_(sz["week_base"])]),
                   "day_mean": np.array([nn_(sz["day_mean"])])}
        _, s2, x2, xf2, _ = features_np(np.array([fc["origin"]]), st, np.full((1, 3), np.nan), seas_np)
        assert abs(s2[0] - fc["scale"]) <= 1e-12 * max(1.0, fc["scale"])
        assert np.abs(x2[0] - np.asarray(fc["x"])).max() < 1e-12
        assert np.abs(xf2[0] - np.asarray(fc["xf"])).max() < 1e-12
    golden = {
        "description": "model_cases: PyTorch outputs of flowcast.onnx's network, each with one series and one "
                       "pass (x [1,36,6], xf [1,3,14], mask [1,64], rows [0], mean [1,3], logvar [1,3], "
                       "quantiles [1,3,5]; float32 values). "
                       "feature_cases: the feature contract computed in float64 from real rows: origin "
                       "(unix s), steps (36 req/s values oldest first, null = hole), seasonal (the windows "
                       "a day and a week before each target and before the last window, the last day's "
                       "mean; null = absent), ready, scale, x [36,6], xf [3,14] (no batch axis).",
        "model_cases": model_cases,
        "feature_cases": feature_cases,
    }
    with open(os.path.join(args.out_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)

    wall = time.time() - t_start
    card = {
        "format_version": FORMAT_VERSION,
        "model_file": "flowcast.onnx",
        "model_sha256": sha,
        "inputs": {"x": [None, WINDOW, ENC], "xf": [None, HORIZON, DEC], "mask": [None, MC_MASK_WIDTH],
                   "rows": [None]},
        "batch_axes": {"S": "one row per series: x, xf",
                       "B": "one row per pass: mask, rows, mean, logvar, quantiles"},
        "outputs": {"mean": [None, HORIZON], "logvar": [None, HORIZON],
                    "quantiles": [None, HORIZON, len(QUANTILES)]},
        "quantile_levels": QUANTILES,
        "step_seconds": STEP, "window_steps": WINDOW, "horizon_steps": HORIZON,
        "encoder_features": ENCODER_FEATURES,
        "decoder_features": DECODER_FEATURES,
        "normalisation": {"kind": "log1p_over_recent_level", "zero_scale_fallback": 1.0},
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
            "synthetic": {"series": args.synthetic, "seed": args.synthetic_seed,
                          "generator": "models/training/synthetic.py"},
            "head": args.head,
            "mse_weight": MSE_WEIGHT,
            "seasonal_inputs": not args.no_seasonal,
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
