//! Latency of the scaling what-if (`flowcast backtest … --service-time S [--concurrency N]
//! [--slo L]`): how slow requests would have been under each policy's ready replicas.
//!
//! The queue: each ready replica is `N` parallel servers with exponential service of mean
//! `S` (M/M/c, first come first served, c = ready replicas × N). Demand is the series'
//! own steps (minute-level rates where the data has them), arrivals Poisson at each step's
//! rate. Per step:
//! - with no backlog and the rate below capacity, the queue is in its steady state: the
//!   wait is 0 with probability 1 − C (Erlang C) and otherwise exponential with rate
//!   cμ − λ; the response time is that wait plus the service;
//! - at or above capacity, or while a backlog left by an earlier step drains, the queue is
//!   a fluid: the backlog grows (or drains) at λ − cμ, a request that arrives when it is B
//!   waits B / (cμ) and then its service. The backlog carries into the next step and the
//!   next window, so a latency is always finite.
//!
//! Pure: no I/O, no clock. A test checks the formulas against a discrete-event simulation
//! of the same queue.

use crate::evidence::dataset::Series;
use crate::forecast::history::STEP_SECONDS;

/// Seconds in a day and an hour (UTC days, as the report's).
const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// Why a latency model cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LatencyError {
    /// The service time is not a positive duration.
    #[error("--service-time must be a positive duration, got {0} s")]
    ServiceTime(f64),
    /// No servers.
    #[error("--concurrency must be at least 1")]
    Concurrency,
    /// The SLO is not a positive duration.
    #[error("--slo must be a positive duration, got {0} s")]
    Slo(f64),
}

/// The service model of one replica and the latency objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Service {
    /// Mean service time of one request (seconds).
    pub service_seconds: f64,
    /// Requests one replica serves in parallel.
    pub concurrency: u32,
    /// The latency objective the P99 of each minute is held against (seconds).
    pub slo_seconds: f64,
}

impl Service {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), LatencyError> {
        if !(self.service_seconds.is_finite() && self.service_seconds > 0.0) {
            return Err(LatencyError::ServiceTime(self.service_seconds));
        }
        if self.concurrency == 0 {
            return Err(LatencyError::Concurrency);
        }
        if !(self.slo_seconds.is_finite() && self.slo_seconds > 0.0) {
            return Err(LatencyError::Slo(self.slo_seconds));
        }
        Ok(())
    }

    /// Requests per second one replica completes when busy: N / S.
    pub fn throughput(&self) -> f64 {
        f64::from(self.concurrency) / self.service_seconds
    }
}

/// The response-time distribution of the requests that arrive in one stretch of time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece {
    /// M/M/c in steady state: waits with probability `c_wait`, then Exp(`theta`); service
    /// Exp(`mu`).
    Steady { mu: f64, c_wait: f64, theta: f64 },
    /// Fluid backlog: the queueing delay runs linearly from `d0` to `d1` over the stretch's
    /// arrivals; then service Exp(`mu`).
    Backlog { mu: f64, d0: f64, d1: f64 },
}

impl Piece {
    /// P(response time > t).
    fn survival(&self, t: f64) -> f64 {
        match *self {
            Piece::Steady { mu, c_wait, theta } => {
                let service = (-mu * t).exp();
                // P(Exp(θ) + Exp(μ) > t).
                let both = if (mu - theta).abs() < 1e-9 * mu {
                    (1.0 + mu * t) * service
                } else {
                    (mu * (-theta * t).exp() - theta * service) / (mu - theta)
                };
                (1.0 - c_wait) * service + c_wait * both
            }
            Piece::Backlog { mu, d0, d1 } => {
                let (a, b) = (d0.min(d1), d0.max(d1));
                if b - a < 1e-12 {
                    return (-mu * (t - a).max(0.0)).exp();
                }
                // The mean over u ∈ [a, b] of P(Exp(μ) > t − u).
                if t <= a {
                    1.0
                } else if t < b {
                    ((b - t) + (1.0 - (-mu * (t - a)).exp()) / mu) / (b - a)
                } else {
                    ((-mu * (t - b)).exp() - (-mu * (t - a)).exp()) / (mu * (b - a))
                }
            }
        }
    }

    /// Mean response time.
    fn mean(&self) -> f64 {
        match *self {
            Piece::Steady { mu, c_wait, theta } => 1.0 / mu + c_wait / theta,
            Piece::Backlog { mu, d0, d1 } => 1.0 / mu + 0.5 * (d0 + d1),
        }
    }
}

/// Erlang C: the probability that an arrival waits in an M/M/c queue with offered load
/// `a` = λ/μ < c, by the stable Erlang B recursion.
pub fn erlang_c(servers: u64, a: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=servers {
        b = a * b / (k as f64 + a * b);
    }
    let rho = a / servers as f64;
    b / (1.0 - rho * (1.0 - b))
}

/// The requests of one step of the series and how long they took.
#[derive(Debug, Clone)]
struct Step {
    /// Start (unix seconds).
    start: i64,
    /// Length (seconds).
    seconds: i64,
    /// Whether its window is scored.
    scored: bool,
    /// (requests, distribution); two parts when a backlog empties within the step.
    parts: Vec<(f64, Piece)>,
}

/// The smallest t with Σ n·P(T > t) ≤ (1 − p)·Σ n over `parts`.
fn quantile<'a>(parts: impl Iterator<Item = &'a (f64, Piece)> + Clone, p: f64) -> f64 {
    let total: f64 = parts.clone().map(|(n, _)| n).sum();
    if total <= 0.0 {
        return f64::NAN;
    }
    let tail = (1.0 - p) * total;
    let above = |t: f64| parts.clone().map(|(n, q)| n * q.survival(t)).sum::<f64>();
    let (mut lo, mut hi) = (0.0, 1e-3);
    while above(hi) > tail && hi < 1e12 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if above(mid) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Replays the series' demand through the queue of `ready` replicas per 5-minute window
/// (`ready[i]` serves the window starting at `first + 300·i`); `scored[i]` says whether
/// window i counts.
fn steps(series: &Series, first: i64, ready: &[f64], scored: &[bool], s: &Service) -> Vec<Step> {
    let mu = 1.0 / s.service_seconds;
    let mut backlog = 0.0f64;
    let mut last_end: Option<i64> = None;
    let mut out = Vec::with_capacity(series.rows.len());
    for &(ts, count) in &series.rows {
        let w = (ts.div_euclid(STEP_SECONDS) * STEP_SECONDS - first) / STEP_SECONDS;
        let Some(&replicas) = usize::try_from(w).ok().and_then(|w| ready.get(w)) else {
            continue;
        };
        let servers = (replicas.max(1.0) as u64).saturating_mul(u64::from(s.concurrency));
        let cap = servers as f64 * mu;
        // A hole in the data: no arrivals, the backlog drains.
        if let Some(end) = last_end {
            if ts > end {
                backlog = (backlog - cap * (ts - end) as f64).max(0.0);
            }
        }
        last_end = Some(ts + series.step);
        let length = series.step as f64;
        let rate = if count.is_finite() && count > 0.0 {
            count / length
        } else {
            0.0
        };
        let mut parts = Vec::with_capacity(2);
        let drift = rate - cap;
        if backlog <= 0.0 && drift < 0.0 {
            if rate > 0.0 {
                let a = rate / mu;
                parts.push((
                    rate * length,
                    Piece::Steady {
                        mu,
                        c_wait: erlang_c(servers, a),
                        theta: -drift,
                    },
                ));
            }
        } else {
            // How long the fluid lasts within this step: all of it, unless it drains.
            let fluid = if drift < 0.0 {
                (backlog / -drift).min(length)
            } else {
                length
            };
            let end = backlog + drift * fluid;
            if rate > 0.0 {
                parts.push((
                    rate * fluid,
                    Piece::Backlog {
                        mu,
                        d0: backlog / cap,
                        d1: end.max(0.0) / cap,
                    },
                ));
            }
            backlog = end.max(0.0);
            if fluid < length && rate > 0.0 {
                backlog = 0.0;
                parts.push((
                    rate * (length - fluid),
                    Piece::Steady {
                        mu,
                        c_wait: erlang_c(servers, rate / mu),
                        theta: -drift,
                    },
                ));
            }
        }
        out.push(Step {
            start: ts,
            seconds: series.step,
            scored: scored.get(w as usize).copied().unwrap_or(false),
            parts,
        });
    }
    out
}

/// The latency one policy gave over the scored windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median response time over all requests (seconds).
    pub p50: f64,
    /// 99th percentile over all requests (seconds).
    pub p99: f64,
    /// Mean response time (seconds).
    pub mean: f64,
    /// The P99 of each day's busiest hour (by requests): the median over the days.
    pub busiest_hour_p99_median: f64,
    /// … and the worst day's.
    pub busiest_hour_p99_worst: f64,
    /// Days with scored requests.
    pub days: usize,
    /// Minutes whose P99 was above the SLO (a 5-minute step counts 5).
    pub minutes_over_slo: f64,
}

/// The latency of a policy whose ready replicas per window are `ready`.
pub fn latency(
    series: &Series,
    first: i64,
    ready: &[f64],
    scored: &[bool],
    s: &Service,
) -> Latency {
    let steps: Vec<Step> = steps(series, first, ready, scored, s)
        .into_iter()
        .filter(|x| x.scored)
        .collect();
    let all = || steps.iter().flat_map(|x| x.parts.iter());
    let requests: f64 = all().map(|(n, _)| n).sum();
    let mean = all().map(|(n, p)| n * p.mean()).sum::<f64>() / requests;
    let mut minutes_over_slo = 0.0;
    for x in &steps {
        if quantile(x.parts.iter(), 0.99) > s.slo_seconds {
            minutes_over_slo += x.seconds as f64 / 60.0;
        }
    }
    // Each day's busiest hour.
    let mut hours: std::collections::BTreeMap<i64, (f64, Vec<usize>)> = Default::default();
    for (i, x) in steps.iter().enumerate() {
        let e = hours.entry(x.start.div_euclid(HOUR)).or_default();
        e.0 += x.parts.iter().map(|(n, _)| n).sum::<f64>();
        e.1.push(i);
    }
    let mut busiest: std::collections::BTreeMap<i64, (f64, i64)> = Default::default();
    for (&h, (n, _)) in &hours {
        let e = busiest
            .entry(h * HOUR / DAY)
            .or_insert((f64::NEG_INFINITY, h));
        if *n > e.0 {
            *e = (*n, h);
        }
    }
    let mut peaks: Vec<f64> = busiest
        .values()
        .filter(|(n, _)| *n > 0.0)
        .map(|(_, h)| {
            let idx = &hours[h].1;
            quantile(idx.iter().flat_map(|&i| steps[i].parts.iter()), 0.99)
        })
        .collect();
    peaks.sort_by(f64::total_cmp);
    Latency {
        p50: quantile(all(), 0.5),
        p99: quantile(all(), 0.99),
        mean,
        busiest_hour_p99_median: peaks.get(peaks.len() / 2).copied().unwrap_or(f64::NAN),
        busiest_hour_p99_worst: peaks.last().copied().unwrap_or(f64::NAN),
        days: peaks.len(),
        minutes_over_slo,
    }
}

/// The P99 of each hour (start, seconds) over the scored windows, for the report's chart.
pub fn hourly_p99(
    series: &Series,
    first: i64,
    ready: &[f64],
    scored: &[bool],
    s: &Service,
) -> Vec<(i64, f64)> {
    let steps = steps(series, first, ready, scored, s);
    let mut hours: std::collections::BTreeMap<i64, Vec<&(f64, Piece)>> = Default::default();
    for x in steps.iter().filter(|x| x.scored) {
        hours
            .entry(x.start.div_euclid(HOUR) * HOUR)
            .or_default()
            .extend(x.parts.iter());
    }
    hours
        .into_iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(h, p)| (h, quantile(p.iter().copied(), 0.99)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Exponential variate of rate `rate`.
    fn exp(rng: &mut rand_chacha::ChaCha8Rng, rate: f64) -> f64 {
        let u: f64 = rng.random();
        -(1.0 - u).ln() / rate
    }

    /// A discrete-event simulation of the same queue, independent of the formulas: Poisson
    /// arrivals at a piecewise-constant rate (`segments`: (seconds, req/s)), `servers`
    /// FCFS servers with exponential service of rate `mu`, starting empty. Returns the
    /// response times of the arrivals after `skip` seconds.
    fn simulate(
        segments: &[(f64, f64)],
        servers: usize,
        mu: f64,
        skip: f64,
        seed: u64,
    ) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut free = vec![0.0f64; servers];
        let mut out = Vec::new();
        let mut start = 0.0;
        for &(length, rate) in segments {
            let mut t = start;
            loop {
                t += exp(&mut rng, rate);
                if t >= start + length {
                    break;
                }
                let (k, &f) = free
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .expect("servers");
                let done = t.max(f) + exp(&mut rng, mu);
                free[k] = done;
                if t >= skip {
                    out.push(done - t);
                }
            }
            start += length;
        }
        out.sort_by(f64::total_cmp);
        out
    }

    fn pct(sorted: &[f64], p: f64) -> f64 {
        sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
    }

    /// A series of 1-minute steps at the given rates (req/s), on the 5-minute grid.
    fn minutes(rates: &[f64]) -> Series {
        Series {
            rows: rates
                .iter()
                .enumerate()
                .map(|(i, r)| (1_700_000_100 + 60 * i as i64, r * 60.0))
                .collect(),
            step: 60,
        }
    }

    fn service(ms: f64, n: u32) -> Service {
        Service {
            service_seconds: ms / 1000.0,
            concurrency: n,
            slo_seconds: 0.8,
        }
    }

    #[test]
    fn erlang_c_matches_known_values() {
        // M/M/1: P(wait) = ρ. M/M/2 at a = 1: C = 1/3 (textbook value).
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // 10 servers at a = 8: 0.409 (tables of Erlang C).
        assert!(
            (erlang_c(10, 8.0) - 0.4092).abs() < 1e-3,
            "{}",
            erlang_c(10, 8.0)
        );
        // Stable for many servers.
        let c = erlang_c(5000, 4900.0);
        assert!(c.is_finite() && c > 0.0 && c < 1.0, "{c}");
    }

    /// Steady loads: the formulas' P50, P99 and mean against the simulation, at loads
    /// from light to near saturation and 1 to 40 servers.
    #[test]
    fn steady_state_matches_a_discrete_event_simulation() {
        let mu = 1.0 / 0.15;
        eprintln!("load  servers  P50 model/sim (ms)  P99 model/sim (ms)  mean model/sim (ms)");
        for (k, &(rho, c)) in [(0.5, 1usize), (0.9, 1), (0.8, 4), (0.9, 10), (0.85, 40)]
            .iter()
            .enumerate()
        {
            let rate = rho * c as f64 * mu;
            // Long enough for ~600k arrivals.
            let length = 600_000.0 / rate;
            let sim = simulate(&[(length, rate)], c, mu, length * 0.05, 17 + k as u64);
            let piece = Piece::Steady {
                mu,
                c_wait: erlang_c(c as u64, rate / mu),
                theta: c as f64 * mu - rate,
            };
            let parts = [(1.0, piece)];
            let (p50, p99) = (quantile(parts.iter(), 0.5), quantile(parts.iter(), 0.99));
            let sim_mean = sim.iter().sum::<f64>() / sim.len() as f64;
            eprintln!(
                "{rho:.2}  {c:>7}  {:>7.0} / {:<7.0}  {:>8.0} / {:<8.0}  {:>7.0} / {:<7.0}",
                1e3 * p50,
                1e3 * pct(&sim, 0.5),
                1e3 * p99,
                1e3 * pct(&sim, 0.99),
                1e3 * piece.mean(),
                1e3 * sim_mean
            );
            for (m, s, what) in [
                (p50, pct(&sim, 0.5), "P50"),
                (p99, pct(&sim, 0.99), "P99"),
                (piece.mean(), sim_mean, "mean"),
            ] {
                let tol = if rho >= 0.9 { 0.06 } else { 0.04 };
                assert!(
                    (m / s - 1.0).abs() < tol,
                    "ρ {rho} c {c} {what}: model {m}, sim {s}"
                );
            }
        }
    }

    /// An overload: 10 minutes at 1.4× capacity, then 20 at 0.6×. The fluid backlog and its
    /// drain give the simulation's percentiles over the whole 30 minutes.
    #[test]
    fn an_overload_and_its_backlog_match_the_simulation() {
        let s = service(150.0, 4);
        let cap = s.throughput();
        let mut rates = vec![1.4 * cap; 10];
        rates.extend(vec![0.6 * cap; 20]);
        let series = minutes(&rates);
        let first = series.rows[0].0.div_euclid(300) * 300;
        let lat = latency(&series, first, &[1.0; 6], &[true; 6], &s);
        let segments: Vec<(f64, f64)> = rates.iter().map(|&r| (60.0, r)).collect();
        let mut sims = Vec::new();
        for seed in 0..20 {
            sims.extend(simulate(&segments, 4, 1.0 / 0.15, 0.0, 100 + seed));
        }
        sims.sort_by(f64::total_cmp);
        let sim_mean = sims.iter().sum::<f64>() / sims.len() as f64;
        eprintln!(
            "overload: P50 {:.2}/{:.2} s, P99 {:.2}/{:.2} s, mean {:.2}/{:.2} s (model/sim)",
            lat.p50,
            pct(&sims, 0.5),
            lat.p99,
            pct(&sims, 0.99),
            lat.mean,
            sim_mean
        );
        // The backlog peaks at 0.4·cap·600 s requests, a wait of 0.4·600 = 240 s.
        assert!((lat.p99 / pct(&sims, 0.99) - 1.0).abs() < 0.1, "{lat:?}");
        assert!((lat.mean / sim_mean - 1.0).abs() < 0.1, "{lat:?}");
        assert!((lat.p50 / pct(&sims, 0.5) - 1.0).abs() < 0.15, "{lat:?}");
        assert!(lat.p99.is_finite() && lat.p99 > 100.0 && lat.p99 < 240.0 + 5.0);
        // Every minute but the last few of the drain is above the 800 ms SLO.
        assert!(
            lat.minutes_over_slo > 10.0 && lat.minutes_over_slo < 30.0,
            "{lat:?}"
        );
    }

    /// More replicas never make requests slower, and a hole in the data drains the backlog.
    #[test]
    fn more_capacity_is_never_slower_and_holes_drain() {
        let s = service(100.0, 2);
        let cap = s.throughput();
        let rates: Vec<f64> = (0..600)
            .map(|i| cap * (1.5 + 1.2 * (i as f64 / 40.0).sin()))
            .collect();
        let series = minutes(&rates);
        let first = series.rows[0].0.div_euclid(300) * 300;
        let scored = vec![true; 120];
        let mut last = f64::INFINITY;
        for r in [2.0, 3.0, 4.0, 8.0] {
            let l = latency(&series, first, &vec![r; 120], &scored, &s);
            assert!(l.p99 <= last, "{r} replicas: {l:?}");
            assert!(l.p50 >= 0.1 * 0.5, "{l:?}");
            last = l.p99;
        }
        let l = latency(&series, first, &[8.0; 120], &scored, &s);
        assert!(l.p99 < 1.0 && l.minutes_over_slo == 0.0, "{l:?}");
        // An overloaded minute, then an hour without data, then a light minute: the light
        // minute sees no backlog.
        let mut hole = minutes(&[3.0 * cap, 0.5 * cap]);
        hole.rows[1].0 += 3600;
        let first = hole.rows[0].0.div_euclid(300) * 300;
        let l = latency(
            &hole,
            first,
            &[1.0; 14],
            &[
                false, true, true, true, true, true, true, true, true, true, true, true, true, true,
            ],
            &s,
        );
        assert!(l.p99 < 1.0, "{l:?}");
        assert_eq!(l.days, 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(service(0.0, 1).check().is_err());
        assert!(service(f64::NAN, 1).check().is_err());
        assert!(service(100.0, 0).check().is_err());
        assert!(Service {
            slo_seconds: -1.0,
            ..service(100.0, 1)
        }
        .check()
        .is_err());
        assert!(service(100.0, 1).check().is_ok());
    }
}
