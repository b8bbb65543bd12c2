//! The scaling what-if of `flowcast backtest --replica-capacity C --startup D`: what a
//! KEDA/HPA deployment would have done on a recorded series with flowcast's upper bound,
//! with a reactive HPA, and with an oracle; and the horizon, headroom and KEDA thresholds
//! to recommend.
//!
//! Owns a faithful port of `shared/eval/scaling.py`'s replay (its README states the model):
//! 5-minute windows and the scorer's targets; a decision at origin `o` is ready capacity
//! at `o + D`; removed replicas go at once; HPA scale-down stabilisation keeps the largest
//! desired count of the last `stabilisation`; ready(w) is the smallest count set during
//! `[w − D, w]`; the predictive policy takes the larger of its trigger and the reactive
//! one. The operations run in the script's order, so the two give the same numbers (a
//! test runs both). Pure: no I/O, no clock; it reads only targets and forecast rows.

use crate::evidence::dataset::{Row, Series, HORIZON_SECONDS};
use crate::evidence::latency::{Latency, LatencyError, Service};
use crate::forecast::history::STEP_SECONDS;

/// Seconds in one window.
const WINDOW: i64 = STEP_SECONDS;
/// scaling.py's tolerance on "the peak exceeds ready capacity".
const OVER_TOLERANCE: f64 = 1e-9;
/// Headrooms tried for the recommendation (share added to the upper bound).
pub const HEADROOMS: [f64; 9] = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0];

/// Why a what-if cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalingError {
    /// The capacity is not a positive number.
    #[error("replica capacity must be a positive number of req/s per replica, got {0}")]
    Capacity(f64),
    /// The start-up is not 0, 5 or 10 minutes (the forecast reaches 15 minutes).
    #[error("start-up must be 0s, 5m or 10m (the forecast covers D + 5 min ≤ 15 min), got {0} s")]
    Startup(i64),
    /// The utilisation is outside (0, 1].
    #[error("target utilisation must be in (0, 1], got {0}")]
    Utilization(f64),
    /// Minimum above maximum, or a maximum of 0.
    #[error("replica limits must satisfy 1 <= min <= max, got min {min}, max {max}")]
    Limits {
        /// Minimum replicas.
        min: u32,
        /// Maximum replicas.
        max: u32,
    },
    /// No window after the warm-up has a target.
    #[error("no scorable 5-minute window after the warm-up")]
    NoWindows,
    /// The service model is not valid.
    #[error(transparent)]
    Service(#[from] LatencyError),
}

/// The user's deployment, in the units of the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deployment {
    /// Requests per second one replica serves (req/s per replica).
    pub capacity: f64,
    /// Seconds from a scaling decision to a ready replica: 0, 300 or 600.
    pub startup_seconds: i64,
    /// Target utilisation of the reactive HPA (scaling.py: 0.8).
    pub utilization: f64,
    /// HPA scale-down stabilisation window, seconds (scaling.py: 300).
    pub stabilisation_seconds: i64,
    /// Fewest replicas (scaling.py: 1).
    pub min_replicas: u32,
    /// Most replicas (scaling.py: unbounded).
    pub max_replicas: Option<u32>,
    /// Windows before first window + this are not scored (scaling.py: 3 days).
    pub warmup_seconds: i64,
    /// The service model, when latency is asked for (`--service-time`).
    pub service: Option<Service>,
}

impl Deployment {
    /// scaling.py's defaults for everything but the capacity and the start-up.
    pub fn new(capacity: f64, startup_seconds: i64) -> Self {
        Self {
            capacity,
            startup_seconds,
            utilization: 0.8,
            stabilisation_seconds: 300,
            min_replicas: 1,
            max_replicas: None,
            warmup_seconds: 259_200,
            service: None,
        }
    }

    /// Checks the settings; the horizon that matches the start-up is `D + 300`.
    pub fn check(&self) -> Result<(), ScalingError> {
        if !(self.capacity.is_finite() && self.capacity > 0.0) {
            return Err(ScalingError::Capacity(self.capacity));
        }
        if ![0, 300, 600].contains(&self.startup_seconds) {
            return Err(ScalingError::Startup(self.startup_seconds));
        }
        if !(self.utilization > 0.0 && self.utilization <= 1.0) {
            return Err(ScalingError::Utilization(self.utilization));
        }
        if let Some(max) = self.max_replicas {
            if self.min_replicas < 1 || self.min_replicas > max {
                return Err(ScalingError::Limits {
                    min: self.min_replicas,
                    max,
                });
            }
        } else if self.min_replicas < 1 {
            return Err(ScalingError::Limits {
                min: self.min_replicas,
                max: 0,
            });
        }
        if let Some(s) = &self.service {
            s.check()?;
        }
        Ok(())
    }

    /// The forecast horizon (seconds) whose window the new replicas serve first: D + 5 min.
    pub fn matching_horizon(&self) -> i64 {
        self.startup_seconds + WINDOW
    }

    /// Clamps a count to the limits; NaN (no decision) stays NaN.
    fn clamp(&self, replicas: f64) -> f64 {
        if replicas.is_nan() {
            return replicas;
        }
        let low = replicas.max(f64::from(self.min_replicas.max(1)));
        match self.max_replicas {
            Some(max) => low.min(f64::from(max)),
            None => low,
        }
    }
}

/// The 5-minute windows of a series as scaling.py builds them: every window from the
/// first row's to the last row's, the target (peak rate) where it is scorable, NaN
/// elsewhere.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Start of the first window (unix seconds).
    pub first: i64,
    /// Target per window (req/s), NaN where not scorable.
    pub y: Vec<f64>,
    /// Windows between a window's start and the origin that first sees it complete
    /// (1 on the grid, 2 for steps offset from it, as NAB's).
    pub lag: usize,
}

impl Windows {
    /// Builds the windows of `series`.
    pub fn new(series: &Series) -> Self {
        let targets = crate::evidence::dataset::targets(series);
        let (Some(&(t0, _)), Some(&(t1, _))) = (series.rows.first(), series.rows.last()) else {
            return Self {
                first: 0,
                y: Vec::new(),
                lag: 1,
            };
        };
        let first = t0.div_euclid(WINDOW) * WINDOW;
        let last = t1.div_euclid(WINDOW) * WINDOW;
        let n = ((last - first) / WINDOW + 1) as usize;
        let mut y = vec![f64::NAN; n];
        for (w, v) in targets {
            y[((w - first) / WINDOW) as usize] = v;
        }
        // The newest window visible at origin o is [o − 300, o) when its last step ended by
        // o, which holds on the grid; offset stamps see one window older.
        let step = series.step;
        let off = t0.rem_euclid(WINDOW).rem_euclid(step);
        let last_step = off + ((WINDOW - 1 - off) / step) * step;
        let lag = if last_step + step <= WINDOW { 1 } else { 2 };
        Self { first, y, lag }
    }

    /// Start of window `i`.
    pub fn start(&self, i: usize) -> i64 {
        self.first + WINDOW * i as i64
    }

    /// The index of the window starting at `t`, if it is one.
    fn index(&self, t: i64) -> Option<usize> {
        let d = t - self.first;
        (d >= 0 && d % WINDOW == 0 && ((d / WINDOW) as usize) < self.y.len())
            .then_some((d / WINDOW) as usize)
    }
}

/// What one policy did over the scored windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Share of windows whose peak exceeded ready capacity.
    pub under_windows: f64,
    /// Demand above ready capacity as a share of all demand.
    pub unserved_share: f64,
    /// Replica-hours (every requested replica, starting or ready) / the oracle's.
    pub replica_hours_vs_oracle: f64,
    /// Replica-hours of the policy.
    pub replica_hours: f64,
    /// Times the requested replica count changed from one window to the next.
    pub scale_events: usize,
    /// Largest requested replica count.
    pub peak_replicas: f64,
}

/// One row of the what-if table.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Name, as in scaling.py's table.
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// The latency its ready replicas gave, when a service model was given.
    pub latency: Option<Latency>,
    /// The P99 of each hour (start, seconds), for the report's chart; empty without one.
    pub hourly_p99: Vec<(i64, f64)>,
}

/// A candidate of the recommendation: the upper bound at `horizon`, times `1 + headroom`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Horizon (seconds).
    pub horizon: i64,
    /// Share added to the upper bound.
    pub headroom: f64,
    /// What it did.
    pub outcome: Outcome,
}

/// The recommended settings and the numbers behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The chosen candidate.
    pub chosen: Candidate,
    /// Whether it meets the risk target (else it is the least risky candidate).
    pub meets_target: bool,
    /// The target share of under-provisioned windows.
    pub risk_target: f64,
    /// KEDA threshold of the predictive trigger (req/s): capacity / (1 + headroom).
    pub predictive_threshold: f64,
    /// KEDA threshold of the reactive trigger (req/s): utilisation × capacity.
    pub reactive_threshold: f64,
    /// Every candidate tried.
    pub candidates: Vec<Candidate>,
}

/// The what-if: the table and the recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatIf {
    /// The deployment it was run for.
    pub deployment: Deployment,
    /// Scored windows.
    pub windows: usize,
    /// flowcast (upper bound + reactive), reactive HPA, oracle, in that order.
    pub policies: Vec<Policy>,
    /// Horizon, headroom and thresholds.
    pub recommendation: Recommendation,
}

/// Per window: the replicas requested (`rep`) and ready (`ready`).
struct Plan {
    requested: Vec<f64>,
    ready: Vec<f64>,
}

/// Replays desired counts (indexed by window, NaN = no decision) as scaling.py's
/// `replay`: carried forward, 1 before the first, clamped to the limits, stabilised over
/// the last `stabilisation`, ready after the start-up.
fn replay(desired: &[f64], d: &Deployment) -> Plan {
    let mut carried = Vec::with_capacity(desired.len());
    let mut last = f64::NAN;
    for &v in desired {
        if !v.is_nan() {
            last = v;
        }
        carried.push(d.clamp(if last.is_nan() { 1.0 } else { last }));
    }
    let k = (d.stabilisation_seconds / WINDOW).max(1) as usize;
    let requested = rolling(&carried, k, f64::max);
    let j = (d.startup_seconds / WINDOW) as usize + 1;
    let ready = rolling(&requested, j, f64::min);
    Plan { requested, ready }
}

/// `x.rolling(k, min_periods=1).agg()` for max or min.
fn rolling(x: &[f64], k: usize, agg: fn(f64, f64) -> f64) -> Vec<f64> {
    (0..x.len())
        .map(|i| {
            x[i.saturating_sub(k - 1)..=i]
                .iter()
                .copied()
                .reduce(agg)
                .unwrap_or(f64::NAN)
        })
        .collect()
}

/// The ready and requested replicas of a plan judged over the scored windows.
fn summarise(w: &Windows, scored: &[usize], oracle: &[f64], plan: &Plan, cap: f64) -> Outcome {
    let (mut over, mut short, mut demand, mut rep, mut best) = (0usize, 0.0, 0.0, 0.0, 0.0);
    for &i in scored {
        let (y, r) = (w.y[i], plan.ready[i]);
        if y > r * cap * (1.0 + OVER_TOLERANCE) {
            over += 1;
        }
        short += (y - r * cap).max(0.0);
        demand += y;
        rep += plan.requested[i];
        best += oracle[i];
    }
    let events = scored
        .windows(2)
        .filter(|p| p[1] == p[0] + 1 && plan.requested[p[1]] != plan.requested[p[0]])
        .count();
    let n = scored.len().max(1) as f64;
    Outcome {
        under_windows: over as f64 / n,
        unserved_share: short / demand,
        replica_hours_vs_oracle: rep / best,
        replica_hours: rep * WINDOW as f64 / 3600.0,
        scale_events: events,
        peak_replicas: scored
            .iter()
            .map(|&i| plan.requested[i])
            .fold(0.0, f64::max),
    }
}

/// The upper bound per window for forecasts of `horizon` (rows are indexed by origin, a
/// window start), NaN where there is none.
fn uppers(w: &Windows, rows: &[Row], horizon: i64) -> Vec<f64> {
    let mut up = vec![f64::NAN; w.y.len()];
    for r in rows.iter().filter(|r| r.horizon == horizon) {
        if let Some(i) = w.index(r.origin) {
            up[i] = r.upper;
        }
    }
    up
}

/// The state shared by every policy of one what-if.
struct Replayer<'a> {
    w: &'a Windows,
    d: Deployment,
    scored: Vec<usize>,
    oracle: Vec<f64>,
    reactive: Vec<f64>,
}

impl<'a> Replayer<'a> {
    fn new(w: &'a Windows, d: Deployment) -> Self {
        let cap = d.capacity;
        let start = w.first + d.warmup_seconds;
        let scored: Vec<usize> = (0..w.y.len())
            .filter(|&i| w.start(i) >= start && !w.y[i].is_nan())
            .collect();
        let oracle: Vec<f64> = w.y.iter().map(|&y| d.clamp((y / cap).ceil())).collect();
        // The latest complete window's peak, carried across holes like a Prometheus rate.
        let mut seen = vec![f64::NAN; w.y.len()];
        let mut last = f64::NAN;
        let mut filled = Vec::with_capacity(w.y.len());
        for &y in &w.y {
            if !y.is_nan() {
                last = y;
            }
            filled.push(last);
        }
        for i in w.lag..w.y.len() {
            seen[i] = filled[i - w.lag];
        }
        let reactive = seen
            .iter()
            .map(|s| (s / (d.utilization * cap)).ceil())
            .collect();
        Self {
            w,
            d,
            scored,
            oracle,
            reactive,
        }
    }

    fn judge(&self, plan: &Plan) -> Outcome {
        summarise(self.w, &self.scored, &self.oracle, plan, self.d.capacity)
    }

    fn reactive_plan(&self) -> Plan {
        replay(&self.reactive, &self.d)
    }

    #[cfg(test)]
    fn reactive(&self) -> Outcome {
        self.judge(&self.reactive_plan())
    }

    fn predictive(&self, up: &[f64], headroom: f64) -> Outcome {
        self.judge(&self.predictive_plan(up, headroom))
    }

    /// The larger of the reactive trigger and ⌈upper·(1 + headroom) / C⌉ (NaN-skipping).
    fn predictive_plan(&self, up: &[f64], headroom: f64) -> Plan {
        let desired: Vec<f64> = up
            .iter()
            .zip(&self.reactive)
            .map(|(&u, &r)| {
                let p = (u * (1.0 + headroom) / self.d.capacity).ceil();
                match (r.is_nan(), p.is_nan()) {
                    (true, _) => p,
                    (false, true) => r,
                    (false, false) => r.max(p),
                }
            })
            .collect();
        replay(&desired, &self.d)
    }

    #[cfg(test)]
    fn oracle(&self) -> Outcome {
        self.judge(&self.oracle_plan())
    }

    fn oracle_plan(&self) -> Plan {
        let mut o = Vec::with_capacity(self.oracle.len());
        let mut last = f64::NAN;
        for &v in &self.oracle {
            if !v.is_nan() {
                last = v;
            }
            o.push(if last.is_nan() { 1.0 } else { last });
        }
        Plan {
            requested: o.clone(),
            ready: o,
        }
    }

    /// The row of the what-if table for `plan`, with its latency when asked for.
    fn policy(&self, name: String, series: &Series, plan: &Plan) -> Policy {
        let (latency, hourly_p99) = match &self.d.service {
            Some(s) => {
                let mut mask = vec![false; self.w.y.len()];
                for &i in &self.scored {
                    mask[i] = true;
                }
                let f = self.w.first;
                (
                    Some(crate::evidence::latency::latency(
                        series,
                        f,
                        &plan.ready,
                        &mask,
                        s,
                    )),
                    crate::evidence::latency::hourly_p99(series, f, &plan.ready, &mask, s),
                )
            }
            None => (None, Vec::new()),
        };
        Policy {
            name,
            outcome: self.judge(plan),
            latency,
            hourly_p99,
        }
    }
}

/// Name of the predictive policy's row (scaling.py: `NAME upper + reactive`).
pub fn predictive_name(horizon: i64) -> String {
    format!("flowcast upper {}m + reactive", horizon / 60)
}

/// Name of the reactive policy's row.
pub fn reactive_name(d: &Deployment) -> String {
    format!("reactive (HPA, {:.0} %)", d.utilization * 100.0)
}

/// Name of the oracle's row (as scaling.py's).
pub const ORACLE_NAME: &str = "oracle (perfect foresight)";

/// Runs the what-if of `rows` (the backtest's forecasts) on `series` for deployment `d`,
/// and recommends the cheapest horizon and headroom whose share of under-provisioned
/// windows is at most `risk_target`.
pub fn what_if(
    series: &Series,
    rows: &[Row],
    d: Deployment,
    risk_target: f64,
) -> Result<WhatIf, ScalingError> {
    d.check()?;
    let w = Windows::new(series);
    let replayer = Replayer::new(&w, d);
    if replayer.scored.is_empty() {
        return Err(ScalingError::NoWindows);
    }
    let h = d.matching_horizon();
    // The same replays the replica-hours come from give the latency.
    let policies = vec![
        replayer.policy(
            predictive_name(h),
            series,
            &replayer.predictive_plan(&uppers(&w, rows, h), 0.0),
        ),
        replayer.policy(reactive_name(&d), series, &replayer.reactive_plan()),
        replayer.policy(ORACLE_NAME.to_string(), series, &replayer.oracle_plan()),
    ];
    let mut candidates = Vec::new();
    for horizon in HORIZON_SECONDS.into_iter().filter(|&x| x >= h) {
        let up = uppers(&w, rows, horizon);
        for headroom in HEADROOMS {
            candidates.push(Candidate {
                horizon,
                headroom,
                outcome: replayer.predictive(&up, headroom),
            });
        }
    }
    let cheapest = |c: &&Candidate, o: &&Candidate| {
        c.outcome.replica_hours.total_cmp(&o.outcome.replica_hours)
    };
    let meeting = candidates
        .iter()
        .filter(|c| c.outcome.under_windows <= risk_target)
        .min_by(cheapest);
    let (chosen, meets_target) = match meeting {
        Some(c) => (*c, true),
        None => {
            let least = candidates
                .iter()
                .min_by(|a, b| {
                    a.outcome
                        .under_windows
                        .total_cmp(&b.outcome.under_windows)
                        .then(cheapest(a, b))
                })
                .copied()
                .expect("invariant: at least one horizon is at or after D + 5 min");
            (least, false)
        }
    };
    Ok(WhatIf {
        deployment: d,
        windows: replayer.scored.len(),
        policies,
        recommendation: Recommendation {
            chosen,
            meets_target,
            risk_target,
            predictive_threshold: d.capacity / (1.0 + chosen.headroom),
            reactive_threshold: d.utilization * d.capacity,
            candidates,
        },
    })
}

/// A sentence when the forecast changed next to nothing against the reactive HPA alone
/// (the same misses within 0.1 point and replica-hours within 1 %): on such a series the
/// reactive trigger decides nearly every window.
pub fn little_difference(w: &WhatIf) -> Option<&'static str> {
    let (f, r) = (&w.policies[0].outcome, &w.policies[1].outcome);
    ((f.under_windows - r.under_windows).abs() < 0.001
        && (f.replica_hours / r.replica_hours - 1.0).abs() < 0.01)
        .then_some(
            "on this series the reactive trigger decides nearly every window: traffic moves slowly against the start-up, and the forecast changes little",
        )
}

/// The what-if as text: the table, then the recommendation with its numbers.
pub fn to_text(w: &WhatIf) -> String {
    use std::fmt::Write as _;
    let d = &w.deployment;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scaling what-if over {} five-minute windows after the warm-up: capacity {} req/s per replica, start-up {} s, reactive target utilisation {:.0} %, scale-down stabilisation {} s, replicas {}..{}",
        w.windows,
        d.capacity,
        d.startup_seconds,
        d.utilization * 100.0,
        d.stabilisation_seconds,
        d.min_replicas,
        d.max_replicas.map_or("unbounded".to_string(), |m| m.to_string()),
    );
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>11} {:>13} {:>13} {:>7}",
        "policy", "under %", "unserved %", "rep-h/oracle", "replica-hours", "events"
    );
    for p in &w.policies {
        let o = &p.outcome;
        let _ = writeln!(
            out,
            "{:<34} {:>8.2} {:>11.3} {:>13.3} {:>13.1} {:>7}",
            p.name,
            100.0 * o.under_windows,
            100.0 * o.unserved_share,
            o.replica_hours_vs_oracle,
            o.replica_hours,
            o.scale_events
        );
    }
    if let Some(note) = little_difference(w) {
        let _ = writeln!(out, "note: {note}");
    }
    if let Some(s) = &d.service {
        out.push_str(&latency_text(w, s));
    }
    let r = &w.recommendation;
    let c = &r.chosen;
    let _ = writeln!(
        out,
        "recommendation: horizon=\"{}m\", headroom {:.0} % ({}): {:.2} % of windows under-provisioned, {:.3} % of demand unserved, {:.3}x the oracle's replica-hours, {} scale events",
        c.horizon / 60,
        c.headroom * 100.0,
        if r.meets_target {
            format!("the cheapest with at most {:.1} % of windows under-provisioned", r.risk_target * 100.0)
        } else {
            format!("no candidate reached {:.1} % under-provisioned; this one comes closest", r.risk_target * 100.0)
        },
        100.0 * c.outcome.under_windows,
        100.0 * c.outcome.unserved_share,
        c.outcome.replica_hours_vs_oracle,
        c.outcome.scale_events
    );
    let _ = writeln!(
        out,
        "KEDA: predictive trigger on flowcast_forecast_upper_requests_per_second{{horizon=\"{}m\"}} with metricType AverageValue, threshold \"{}\" (req/s = capacity / (1 + headroom)); reactive trigger on the observed rate, threshold \"{}\" (req/s = utilisation × capacity)",
        c.horizon / 60,
        threshold_text(r.predictive_threshold),
        threshold_text(r.reactive_threshold)
    );
    out
}

/// The latency table of the what-if.
fn latency_text(w: &WhatIf, s: &Service) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "latency: each ready replica is {} server{} with a mean service time of {} ms (M/M/c, up to {} req/s per replica at full load); SLO {} ms on each minute's P99",
        s.concurrency,
        if s.concurrency == 1 { "" } else { "s" },
        fmt_ms(s.service_seconds),
        threshold_text(s.throughput()),
        fmt_ms(s.slo_seconds),
    );
    let _ = writeln!(
        out,
        "{:<34} {:>9} {:>9} {:>22} {:>18}",
        "policy", "P50 ms", "P99 ms", "busiest-hour P99 ms", "minutes over SLO"
    );
    for p in &w.policies {
        if let Some(l) = &p.latency {
            let _ = writeln!(
                out,
                "{:<34} {:>9} {:>9} {:>22} {:>18.0}",
                p.name,
                fmt_ms(l.p50),
                fmt_ms(l.p99),
                format!(
                    "{} (worst {})",
                    fmt_ms(l.busiest_hour_p99_median),
                    fmt_ms(l.busiest_hour_p99_worst)
                ),
                l.minutes_over_slo
            );
        }
    }
    out
}

/// Seconds as whole milliseconds ("–" when there is none).
pub fn fmt_ms(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("{:.0}", 1000.0 * seconds)
    } else {
        "–".to_string()
    }
}

/// A threshold as KEDA's metadata takes it: a decimal string with a few significant digits.
pub fn threshold_text(v: f64) -> String {
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        4
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5-minute series: `values` are rates (req/s); starts on the grid.
    fn series(values: &[f64]) -> Series {
        Series {
            rows: values
                .iter()
                .enumerate()
                .map(|(i, v)| (1_700_000_100 + 300 * i as i64, v * 300.0))
                .collect(),
            step: 300,
        }
    }

    fn deployment(cap: f64, startup: i64) -> Deployment {
        Deployment {
            warmup_seconds: 0,
            ..Deployment::new(cap, startup)
        }
    }

    /// A step from 10 to 40 req/s at capacity 10: the reactive HPA sees it one window
    /// late and its replicas are ready one start-up later, so it misses exactly the
    /// windows a hand count says; the oracle misses none; a perfect forecast misses none
    /// either but pays for starting replicas.
    #[test]
    fn a_step_is_missed_by_the_reactive_hpa_for_lag_plus_startup() {
        let mut v = vec![10.0; 20];
        v.extend(vec![40.0; 20]);
        let s = series(&v);
        let w = Windows::new(&s);
        assert_eq!(w.lag, 1);
        let d = Deployment {
            utilization: 1.0,
            ..deployment(10.0, 300)
        };
        let r = Replayer::new(&w, d);
        let reactive = r.reactive();
        // Window 20 is the first at 40: the HPA sees it at 21 (lag 1) and the replicas are
        // ready at 22 (start-up 5 min): windows 20 and 21 are short.
        assert_eq!(reactive.under_windows, 2.0 / 40.0);
        let short = 2.0 * 30.0;
        let demand = 20.0 * 10.0 + 20.0 * 40.0;
        assert!((reactive.unserved_share - short / demand).abs() < 1e-12);
        let oracle = r.oracle();
        assert_eq!(oracle.under_windows, 0.0);
        assert_eq!(oracle.replica_hours_vs_oracle, 1.0);
        // A forecast that knows the step (its upper bound at origin o covers window
        // o + start-up).
        let rows: Vec<Row> = (0..40)
            .map(|i| Row {
                origin: s.rows[i].0,
                horizon: 600,
                mean: f64::NAN,
                lower: f64::NAN,
                upper: v[(i + 1).min(39)],
                weights: crate::evidence::dataset::NO_WEIGHTS,
                experts: crate::evidence::dataset::NO_WEIGHTS,
                u1: f64::NAN,
            })
            .collect();
        let p = r.predictive(&uppers(&w, &rows, 600), 0.0);
        assert_eq!(p.under_windows, 0.0, "{p:?}");
        assert!(p.replica_hours_vs_oracle > 1.0);
        assert_eq!(p.scale_events, 1);
    }

    #[test]
    fn stabilisation_holds_and_readiness_waits() {
        let d = Deployment {
            stabilisation_seconds: 600,
            ..deployment(1.0, 600)
        };
        let plan = replay(&[f64::NAN, 3.0, 1.0, 1.0, 1.0, 5.0, 1.0], &d);
        assert_eq!(plan.requested, vec![1.0, 3.0, 3.0, 1.0, 1.0, 5.0, 5.0]);
        assert_eq!(plan.ready, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let limited = Deployment {
            min_replicas: 2,
            max_replicas: Some(4),
            ..d
        };
        let plan = replay(&[f64::NAN, 3.0, 1.0, 9.0], &limited);
        assert_eq!(plan.requested, vec![2.0, 3.0, 3.0, 4.0]);
    }

    #[test]
    fn offset_stamps_see_one_window_older() {
        let mut s = series(&[1.0; 10]);
        for r in &mut s.rows {
            r.0 += 173; // NAB's :x2:53
        }
        assert_eq!(Windows::new(&s).lag, 2);
        let minute = Series {
            rows: (0..50).map(|i| (1_700_000_100 + 60 * i, 60.0)).collect(),
            step: 60,
        };
        assert_eq!(Windows::new(&minute).lag, 1);
    }

    #[test]
    fn the_recommendation_is_the_cheapest_within_the_risk() {
        let v: Vec<f64> = (0..400)
            .map(|i| 20.0 + 10.0 * ((i as f64) / 20.0).sin())
            .collect();
        let s = series(&v);
        // A forecast that is 30 % low: headroom is needed to stop misses.
        let rows: Vec<Row> = (0..400)
            .flat_map(|i| {
                HORIZON_SECONDS.map(|h| Row {
                    origin: s.rows[i].0,
                    horizon: h,
                    mean: f64::NAN,
                    lower: f64::NAN,
                    upper: 0.7 * v[(i + (h / 300) as usize - 1).min(399)],
                    weights: crate::evidence::dataset::NO_WEIGHTS,
                    experts: crate::evidence::dataset::NO_WEIGHTS,
                    u1: f64::NAN,
                })
            })
            .collect();
        let d = Deployment {
            utilization: 1.0,
            ..deployment(5.0, 300)
        };
        let w = what_if(&s, &rows, d, 0.0).expect("what-if");
        assert_eq!(w.policies.len(), 3);
        let r = &w.recommendation;
        assert!(r.meets_target, "{r:?}");
        assert_eq!(r.chosen.outcome.under_windows, 0.0);
        let bare = r
            .candidates
            .iter()
            .find(|c| c.horizon == 600 && c.headroom == 0.0)
            .expect("10m without headroom");
        assert!(bare.outcome.under_windows > 0.0, "{bare:?}");
        assert!(r.chosen.headroom > 0.0, "a low forecast needs headroom");
        assert!(r
            .candidates
            .iter()
            .filter(|c| c.outcome.under_windows <= 0.0)
            .all(|c| c.outcome.replica_hours >= r.chosen.outcome.replica_hours));
        assert!((r.predictive_threshold - 5.0 / (1.0 + r.chosen.headroom)).abs() < 1e-12);
        assert_eq!(r.candidates.len(), 2 * HEADROOMS.len(), "10m and 15m");
        let text = to_text(&w);
        assert!(text.contains("recommendation: horizon="), "{text}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let s = series(&[1.0; 10]);
        for (d, want) in [
            (deployment(0.0, 300), "capacity"),
            (deployment(1.0, 120), "start-up"),
            (
                Deployment {
                    utilization: 1.5,
                    ..deployment(1.0, 0)
                },
                "utilisation",
            ),
            (
                Deployment {
                    min_replicas: 5,
                    max_replicas: Some(2),
                    ..deployment(1.0, 0)
                },
                "limits",
            ),
        ] {
            let e = what_if(&s, &[], d, 0.02).expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert_eq!(threshold_text(45.4545), "45.5");
        assert_eq!(threshold_text(50.0), "50");
        assert_eq!(threshold_text(0.123456), "0.1235");
    }
}
