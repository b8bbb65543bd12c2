//! The baselines the backtest report compares flowcast with, run in-process on the same
//! data: (a) persistence with a conformal band, (c) PromQL `predict_linear ± 2σ`, (d) Holt
//! (Prometheus's `double_exponential_smoothing`) with a band from its own errors.
//!
//! Owns a port of `shared/eval/baselines.py`'s `a`, `c` and `d` that gives the same rows
//! (a test compares them with the script's CSVs): the 5-minute target series of the
//! scorer, causal origins (a window is used once its last step ended), the same fallback
//! band, the same numbers of windows per day and week. Pure: no I/O, no clock.

use crate::evidence::dataset::{Row, Series, HORIZON_SECONDS};
use crate::forecast::history::STEP_SECONDS;

/// Windows per day.
const DAY: usize = 288;
/// Windows per week.
const WEEK: usize = 7 * DAY;
/// Own past errors needed before the conformal band replaces the fallback.
const MIN_ERRORS: usize = 50;
/// Windows in PromQL's `[1h]` range.
const PROMQL_WINDOW: usize = 12;
/// Holt's smoothing and trend factors (Prometheus's `double_exponential_smoothing(…, 0.5, 0.1)`).
const HOLT: (f64, f64) = (0.5, 0.1);

/// A baseline of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// (a) the last window's peak, band from the quantiles of its own past errors.
    PersistenceConformal,
    /// (c) `predict_linear` over the last hour, band ± 2 × `stddev_over_time`.
    PromqlBand,
    /// (d) Holt's level + k·trend, band ± 1.96 σ of its one-step errors over a day.
    Holt,
}

impl Baseline {
    /// Every baseline, in the report's order.
    pub const ALL: [Baseline; 3] = [Self::PersistenceConformal, Self::PromqlBand, Self::Holt];

    /// The name baselines.py gives its file (`<series>__<name>.csv`).
    pub fn name(self) -> &'static str {
        match self {
            Self::PersistenceConformal => "persistence_conformal",
            Self::PromqlBand => "promql_band",
            Self::Holt => "holt_prom",
        }
    }

    /// A label for people.
    pub fn label(self) -> &'static str {
        match self {
            Self::PersistenceConformal => "persistence + conformal band",
            Self::PromqlBand => "PromQL predict_linear ± 2σ",
            Self::Holt => "Holt (double_exponential_smoothing)",
        }
    }
}

/// The target series as baselines.py's `Series` holds it.
struct Targets {
    /// Start of window 0.
    w0: i64,
    /// Target per window, NaN where not scorable.
    y: Vec<f64>,
    /// Extra windows of latency when steps are offset from the grid.
    lag: usize,
    /// First origin written.
    o_start: i64,
    /// First window index written.
    j_start: usize,
}

impl Targets {
    fn new(series: &Series, warmup_seconds: i64) -> Option<Self> {
        let (&(t0, _), &(t1, _)) = (series.rows.first()?, series.rows.last()?);
        let w0 = t0.div_euclid(STEP_SECONDS) * STEP_SECONDS;
        let n = ((t1.div_euclid(STEP_SECONDS) * STEP_SECONDS - w0) / STEP_SECONDS + 1) as usize;
        let mut y = vec![f64::NAN; n];
        for (w, v) in crate::evidence::dataset::targets(series) {
            y[((w - w0) / STEP_SECONDS) as usize] = v;
        }
        let lag = usize::from(t0.rem_euclid(series.step) > 0);
        let o_start = (t0 + warmup_seconds).div_euclid(STEP_SECONDS) * STEP_SECONDS
            + if (t0 + warmup_seconds).rem_euclid(STEP_SECONDS) > 0 {
                STEP_SECONDS
            } else {
                0
            };
        let j_start = ((o_start - w0).div_euclid(STEP_SECONDS) - 1 - lag as i64).max(0) as usize;
        Some(Self {
            w0,
            y,
            lag,
            o_start,
            j_start,
        })
    }

    fn n(&self) -> usize {
        self.y.len()
    }

    fn origin(&self, j: usize) -> i64 {
        self.w0 + STEP_SECONDS * (j + 1 + self.lag) as i64
    }

    /// Windows ahead of the last available one for horizon index `kk`.
    fn kstep(&self, kk: usize) -> usize {
        kk + 1 + self.lag
    }

    /// (0, max(3·mean, 2·max)) of the present windows of the last week up to `j`.
    fn fallback_interval(&self, j: usize) -> (f64, f64) {
        let lo = (j + 1).saturating_sub(WEEK);
        let hist: Vec<f64> = self.y[lo..=j]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        if hist.is_empty() {
            return (0.0, f64::NAN);
        }
        let mean = hist.iter().sum::<f64>() / hist.len() as f64;
        let max = hist.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (0.0, (3.0 * mean).max(2.0 * max))
    }
}

/// Point forecasts and bounds per window index and horizon.
type Band = (Vec<[f64; 3]>, Vec<[f64; 3]>, Vec<[f64; 3]>);

/// Forward fill (leading holes stay NaN).
fn ffill(y: &[f64]) -> Vec<f64> {
    let mut last = f64::NAN;
    y.iter()
        .map(|&v| {
            if v.is_finite() {
                last = v;
            }
            last
        })
        .collect()
}

/// numpy's default (`linear`) quantile of sorted finite values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = (n - 1) as f64 * q;
    if virtual_index >= (n - 1) as f64 {
        return sorted[n - 1];
    }
    let previous = virtual_index.floor();
    let t = virtual_index - previous;
    let (a, b) = (sorted[previous as usize], sorted[previous as usize + 1]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// A multiset of finite values kept sorted, for sliding quantiles.
#[derive(Default)]
struct Sorted(Vec<f64>);

impl Sorted {
    fn insert(&mut self, v: f64) {
        if v.is_finite() {
            let at = self.0.partition_point(|x| *x < v);
            self.0.insert(at, v);
        }
    }

    fn remove(&mut self, v: f64) {
        if v.is_finite() {
            let at = self.0.partition_point(|x| *x < v);
            if self.0.get(at).is_some_and(|x| *x == v) {
                self.0.remove(at);
            }
        }
    }
}

/// baselines.py's `conformal`: bounds from the 2.5/97.5 % quantiles of the forecast's own
/// errors at origins of the trailing week whose targets were already observed.
fn conformal(t: &Targets, f: &[[f64; 3]]) -> (Vec<[f64; 3]>, Vec<[f64; 3]>) {
    let n = t.n();
    let mut lower = vec![[f64::NAN; 3]; n];
    let mut upper = vec![[f64::NAN; 3]; n];
    for kk in 0..3 {
        let k = t.kstep(kk);
        let e: Vec<f64> = (0..n)
            .map(|j| {
                if j + k < n {
                    t.y[j + k] - f[j][kk]
                } else {
                    f64::NAN
                }
            })
            .collect();
        // The window of errors [lo, hi] slides right by at most one each step.
        let mut window = Sorted::default();
        let (mut have_lo, mut have_hi) = (0usize, 0usize); // held: [have_lo, have_hi)
        for j in 0..n {
            let lo = j.saturating_sub(WEEK);
            let hi_excl = (j + 1).saturating_sub(k); // hi = j - k, inclusive
            while have_hi < hi_excl {
                window.insert(e[have_hi]);
                have_hi += 1;
            }
            while have_lo < lo.min(have_hi) {
                window.remove(e[have_lo]);
                have_lo += 1;
            }
            have_lo = have_lo.max(lo);
            have_hi = have_hi.max(have_lo);
            let count = if hi_excl > lo { window.0.len() } else { 0 };
            if count >= MIN_ERRORS && f[j][kk].is_finite() {
                lower[j][kk] = f[j][kk] + quantile(&window.0, 0.025);
                upper[j][kk] = f[j][kk] + quantile(&window.0, 0.975);
            } else {
                let (l, u) = t.fallback_interval(j);
                lower[j][kk] = l;
                upper[j][kk] = u;
            }
        }
    }
    (lower, upper)
}

fn persistence(t: &Targets) -> Band {
    let f: Vec<[f64; 3]> = ffill(&t.y).into_iter().map(|v| [v; 3]).collect();
    let (l, u) = conformal(t, &f);
    (f, l, u)
}

fn promql(t: &Targets) -> Band {
    let n = t.n();
    let y = &t.y;
    let last = ffill(y);
    let present: Vec<usize> = (0..n).filter(|&i| y[i].is_finite()).collect();
    let mut out: Band = (
        vec![[f64::NAN; 3]; n],
        vec![[f64::NAN; 3]; n],
        vec![[f64::NAN; 3]; n],
    );
    for (j, &last_j) in last.iter().enumerate() {
        let (mut cnt, mut sx, mut sy, mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for (k, i) in (j as i64 - PROMQL_WINDOW as i64 + 1..=j as i64).enumerate() {
            let v = if i >= 0 { y[i as usize] } else { f64::NAN };
            if v.is_finite() {
                let x = k as f64 - (PROMQL_WINDOW - 1) as f64;
                cnt += 1.0;
                sx += x;
                sy += v;
                sxx += x * x;
                sxy += x * v;
                syy += v * v;
            }
        }
        let (icpt, slope, sd) = if cnt < 2.0 {
            // Fewer than 2 windows in the hour: the last value, flat, with the spread of
            // the last 12 present windows.
            let upto = present.partition_point(|&p| p <= j);
            let p = &present[upto.saturating_sub(PROMQL_WINDOW)..upto];
            let sd = if p.is_empty() {
                f64::NAN
            } else {
                let m = p.iter().map(|&i| y[i]).sum::<f64>() / p.len() as f64;
                (p.iter().map(|&i| (y[i] - m) * (y[i] - m)).sum::<f64>() / p.len() as f64).sqrt()
            };
            (last_j, 0.0, sd)
        } else {
            let den = cnt * sxx - sx * sx;
            let slope = if den > 0.0 {
                (cnt * sxy - sx * sy) / den
            } else {
                0.0
            };
            let icpt = (sy - slope * sx) / cnt;
            let mu = sy / cnt;
            let var = syy / cnt - mu * mu;
            (icpt, slope, var.max(0.0).sqrt())
        };
        for kk in 0..3 {
            let f = icpt + slope * t.kstep(kk) as f64;
            out.0[j][kk] = f;
            out.1[j][kk] = f - 2.0 * sd;
            out.2[j][kk] = f + 2.0 * sd;
        }
    }
    out
}

/// Sample standard deviation (ddof 1) of the finite values of each trailing window of
/// `DAY` positions holding at least 10 of them (pandas' `rolling(DAY, min_periods=10)`).
fn rolling_std(e: &[f64]) -> Vec<f64> {
    (0..e.len())
        .map(|i| {
            let w: Vec<f64> = e[(i + 1).saturating_sub(DAY)..=i]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            if w.len() < 10 {
                return f64::NAN;
            }
            let m = w.iter().sum::<f64>() / w.len() as f64;
            let ss: f64 = w.iter().map(|v| (v - m) * (v - m)).sum();
            (ss / (w.len() - 1) as f64).sqrt()
        })
        .collect()
}

fn holt(t: &Targets) -> Band {
    let (sf, tf) = HOLT;
    let n = t.n();
    let mut level = vec![f64::NAN; n];
    let mut trend = vec![f64::NAN; n];
    let mut e1 = vec![f64::NAN; n];
    let mut state: Option<(f64, f64)> = None;
    let mut first: Option<f64> = None;
    for i in 0..n {
        let v = t.y[i];
        if v.is_finite() {
            match (state, first) {
                (None, None) => first = Some(v),
                (None, Some(f0)) => {
                    // Level initialised at v[0] and updated with v[1], as Prometheus does.
                    let b = v - f0;
                    let s = sf * v + (1.0 - sf) * (f0 + b);
                    let b = tf * (s - f0) + (1.0 - tf) * b;
                    state = Some((s, b));
                }
                (Some((s, b)), _) => {
                    e1[i] = v - (s + b);
                    let s_new = sf * v + (1.0 - sf) * (s + b);
                    let b = tf * (s_new - s) + (1.0 - tf) * b;
                    state = Some((s_new, b));
                }
            }
        }
        if let Some((s, b)) = state {
            level[i] = s;
            trend[i] = b;
        }
    }
    let sd = rolling_std(&e1);
    let mut out: Band = (
        vec![[f64::NAN; 3]; n],
        vec![[f64::NAN; 3]; n],
        vec![[f64::NAN; 3]; n],
    );
    for j in 0..n {
        for kk in 0..3 {
            let f = level[j] + t.kstep(kk) as f64 * trend[j];
            out.0[j][kk] = f;
            if sd[j].is_finite() {
                out.1[j][kk] = f - 1.96 * sd[j];
                out.2[j][kk] = f + 1.96 * sd[j];
            } else {
                let (l, u) = t.fallback_interval(j);
                out.1[j][kk] = l;
                out.2[j][kk] = u;
            }
        }
    }
    out
}

/// Runs `baseline` on `series` and returns its rows as baselines.py writes them: origins
/// from the first after the warm-up, every horizon, values clipped at 0 (NaN kept).
pub fn run(baseline: Baseline, series: &Series, warmup_seconds: i64) -> Vec<Row> {
    let Some(t) = Targets::new(series, warmup_seconds) else {
        return Vec::new();
    };
    let (f, l, u) = match baseline {
        Baseline::PersistenceConformal => persistence(&t),
        Baseline::PromqlBand => promql(&t),
        Baseline::Holt => holt(&t),
    };
    let clip = |v: f64| if v < 0.0 { 0.0 } else { v };
    let mut rows = Vec::with_capacity(3 * t.n().saturating_sub(t.j_start));
    for j in t.j_start..t.n() {
        let origin = t.origin(j);
        if origin < t.o_start {
            continue;
        }
        for (kk, horizon) in HORIZON_SECONDS.into_iter().enumerate() {
            rows.push(Row {
                origin,
                horizon,
                mean: clip(f[j][kk]),
                lower: clip(l[j][kk]),
                upper: clip(u[j][kk]),
                weights: crate::evidence::dataset::NO_WEIGHTS,
                experts: crate::evidence::dataset::NO_WEIGHTS,
                u1: f64::NAN,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 10.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        // (n-1)·q = 3.9: 4 + 0.9·6 computed from the upper end.
        assert!((quantile(&v, 0.975) - 9.4).abs() < 1e-12);
        assert!((quantile(&v, 0.025) - 1.1).abs() < 1e-12);
    }

    #[test]
    fn the_sorted_window_adds_and_removes() {
        let mut s = Sorted::default();
        for v in [3.0, 1.0, f64::NAN, 2.0, 1.0] {
            s.insert(v);
        }
        assert_eq!(s.0, vec![1.0, 1.0, 2.0, 3.0]);
        s.remove(1.0);
        s.remove(f64::NAN);
        s.remove(7.0);
        assert_eq!(s.0, vec![1.0, 2.0, 3.0]);
    }

    /// A linear ramp: predict_linear extrapolates it exactly with a band of ± 2σ of the
    /// hour, Holt converges to it, persistence lags by the horizon.
    #[test]
    fn a_ramp_is_extrapolated_by_predict_linear() {
        let series = Series {
            rows: (0..2000)
                .map(|i| (1_700_000_100 + 300 * i, 300.0 * (10.0 + i as f64)))
                .collect(),
            step: 300,
        };
        let rows = run(Baseline::PromqlBand, &series, 0);
        let r = rows
            .iter()
            .find(|r| r.origin == 1_700_000_100 + 300 * 101 && r.horizon == 900)
            .expect("a row");
        // Origin 101 sees windows up to 100 (value 110); 3 windows ahead: 113.
        assert!((r.mean - 113.0).abs() < 1e-9, "{r:?}");
        let sd = (143.0f64 / 12.0).sqrt(); // population sd of 12 consecutive integers
        assert!((r.upper - r.mean - 2.0 * sd).abs() < 1e-9, "{r:?}");
        let p = run(Baseline::PersistenceConformal, &series, 0);
        let r = p
            .iter()
            .find(|r| r.origin == 1_700_000_100 + 300 * 1000 && r.horizon == 300)
            .expect("a row");
        assert_eq!(r.mean, 1009.0);
        // Its own errors are always +1 (one window ahead): a zero-width conformal band
        // shifted up by one.
        assert!((r.lower - 1010.0).abs() < 1e-9 && (r.upper - 1010.0).abs() < 1e-9);
        let h = run(Baseline::Holt, &series, 0);
        let r = h
            .iter()
            .find(|r| r.origin == 1_700_000_100 + 300 * 1000 && r.horizon == 600)
            .expect("a row");
        assert!((r.mean - 1011.0).abs() < 1e-6, "{r:?}");
        assert!(p.iter().all(|r| r.origin >= 1_700_000_100));
    }
}
