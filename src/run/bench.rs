//! `flowcast bench`: times whole forecast ticks through the real pipeline (features,
//! one batched inference, band, publishing to the gauges) for N ready synthetic series.
//!
//! Owns the synthetic history and the measurement; everything it times is the code the
//! live sidecar runs on one thread. Peak RSS is read from `/proc/self/status` (Linux).

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::cli::{BenchArgs, Failure};
use crate::forecast::band::BandMode;
use crate::forecast::combine::ExpertSet;
use crate::forecast::engine::{Engine, EngineSettings};
use crate::forecast::history::{SeriesLimits, MINUTE_SECONDS, RING_MINUTES};
use crate::forecast::model::{Model, ModelError};
use crate::serve::metrics::{Metrics, MetricsError};
use crate::serve::shared::Shared;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Fewer synthetic series were ready than the bench made.
    #[error("only {ready} of {series} synthetic series are ready")]
    NotReady {
        /// Ready series.
        ready: usize,
        /// Series made.
        series: usize,
    },
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Series forecast per tick.
    pub series: usize,
    /// Monte-Carlo passes per forecast.
    pub mc_passes: usize,
    /// Ticks timed (after one warm-up tick).
    pub ticks: usize,
    /// Median wall time of a tick.
    pub tick_seconds_median: f64,
    /// 99th percentile of the tick time.
    pub tick_seconds_p99: f64,
    /// Median tick time per series.
    pub seconds_per_series: f64,
    /// Forecast interval the CPU share refers to.
    pub forecast_interval_seconds: f64,
    /// Median tick time over the forecast interval: the share of one core used.
    pub cpu_share_at_interval: f64,
    /// Peak resident set size of the process (0 where unknown).
    pub peak_rss_bytes: u64,
}

/// Builds `series` ready series with four hours of history and times `ticks` ticks one
/// minute apart (history advancing between them, as live).
pub fn run(
    model: Arc<Model>,
    series: usize,
    mc_passes: usize,
    ticks: usize,
    forecast_interval_seconds: f64,
) -> Result<BenchReport, BenchError> {
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes,
            seed: 1,
            band: BandMode::default(),
            experts: ExpertSet::ALL,
            limits: SeriesLimits {
                max_series: series,
                max_children: series,
                max_gap_seconds: 120.0,
                shard: None,
                stale_after_seconds: None,
            },
        },
    );
    let metrics = Metrics::new("flowcast", &["route".to_string()])?;
    let shared = Shared::new(metrics, "bench".into(), vec!["route".into()]);
    let keys: Vec<Vec<String>> = (0..series).map(|i| vec![format!("/r{i}")]).collect();
    let start_minute = 28_000_000_i64;
    let rate = |i: usize, m: i64| {
        let day = ((m % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin();
        (10.0 + i as f64 % 50.0) * (1.0 + 0.3 * day) + ((m * 7919 + i as i64) % 13) as f64
    };
    for (i, key) in keys.iter().enumerate() {
        for m in start_minute..start_minute + RING_MINUTES as i64 {
            engine.record_rate(key, m, rate(i, m));
        }
    }
    let mut times = Vec::with_capacity(ticks);
    let first_minute = start_minute + RING_MINUTES as i64;
    for (t, minute) in (0..=ticks).zip(first_minute..) {
        for (i, key) in keys.iter().enumerate() {
            engine.record_rate(key, minute - 1, rate(i, minute - 1));
        }
        let started = Instant::now();
        let report = engine.tick(minute * MINUTE_SECONDS)?;
        let ready = report
            .series
            .iter()
            .filter(|s| s.forecast.is_some())
            .count();
        shared.publish(report);
        let took = started.elapsed().as_secs_f64();
        if ready != series {
            return Err(BenchError::NotReady { ready, series });
        }
        if t > 0 {
            times.push(took); // the first tick warms caches and allocations
        }
    }
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let median = pick(0.5);
    Ok(BenchReport {
        series,
        mc_passes,
        ticks,
        tick_seconds_median: median,
        tick_seconds_p99: pick(0.99),
        seconds_per_series: median / series as f64,
        forecast_interval_seconds,
        cpu_share_at_interval: median / forecast_interval_seconds,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// `VmHWM` of this process, in bytes (0 where /proc is not available).
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:").map_or(0, |kb| kb * 1024)
}

/// A long run on a fast clock through the live pipeline's synchronous path: every 15
/// simulated seconds a scrape of `series` counters (each with churning children), every
/// simulated minute a tick, publishing and an encoded `/metrics`. Returns the resident
/// memory after each simulated hour: with fixed-size rings it must stay flat.
pub fn soak(
    model: Arc<Model>,
    series: usize,
    hours: usize,
    mc_passes: usize,
) -> Result<Vec<(usize, u64)>, BenchError> {
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes,
            seed: 2,
            band: BandMode::default(),
            experts: ExpertSet::ALL,
            limits: SeriesLimits {
                max_series: series,
                max_children: series * 8,
                max_gap_seconds: 120.0,
                shard: None,
                stale_after_seconds: None,
            },
        },
    );
    let metrics = Metrics::new("flowcast", &["route".to_string()])?;
    let shared = Shared::new(metrics, "soak".into(), vec!["route".into()]);
    let keys: Vec<Vec<String>> = (0..series).map(|i| vec![format!("/r{i}")]).collect();
    let mut counters = vec![0.0f64; series * 4];
    let start = 1_700_000_000.0_f64;
    let mut out = Vec::with_capacity(hours);
    for minute in 0..hours * 60 {
        for q in 0..4 {
            let t = start + minute as f64 * 60.0 + q as f64 * 15.0;
            // Four children per series; one of them restarts (a counter reset) every hour.
            let samples: Vec<(u64, usize, f64)> = (0..series * 4)
                .map(|c| {
                    let rate = 5.0 + (c % 17) as f64 + ((minute + c) % 60) as f64 / 10.0;
                    counters[c] = if c % 4 == 0 && minute % 60 == 0 && q == 0 {
                        0.0
                    } else {
                        counters[c] + rate * 15.0
                    };
                    (c as u64, c / 4, counters[c])
                })
                .collect();
            engine.observe(
                t,
                samples
                    .iter()
                    .map(|(h, s, v)| (*h, keys[*s].as_slice(), *v)),
            );
        }
        let origin = (start as i64) + (minute as i64 + 1) * 60;
        let report = engine.tick(origin)?;
        shared.publish(report);
        std::hint::black_box(shared.metrics.encode_text().len());
        if (minute + 1) % 60 == 0 {
            out.push(((minute + 1) / 60, current_rss_bytes()));
        }
    }
    Ok(out)
}

/// `VmRSS` of this process, in bytes (0 where /proc is not available).
pub fn current_rss_bytes() -> u64 {
    proc_status_kb("VmRSS:").map_or(0, |kb| kb * 1024)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
}

/// `flowcast bench`: times ticks (or, with `--soak-hours`, prints the RSS after each
/// simulated hour) and prints the result.
pub fn command(args: &BenchArgs) -> Result<(), Failure> {
    let model = Arc::new(Model::embedded().map_err(Failure::runtime)?);
    if let Some(hours) = args.soak_hours {
        let started = Instant::now();
        let rss = soak(
            model,
            args.series as usize,
            hours as usize,
            args.mc_passes as usize,
        )
        .map_err(Failure::runtime)?;
        for (hour, bytes) in &rss {
            println!("hour {hour:>3}: RSS {:.1} MB", *bytes as f64 / 1e6);
        }
        println!(
            "{} series, {hours} simulated hours in {:.1}s",
            args.series,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let interval = std::time::Duration::from(args.forecast_interval).as_secs_f64();
    let r = run(
        model,
        args.series as usize,
        args.mc_passes as usize,
        args.ticks as usize,
        interval,
    )
    .map_err(Failure::runtime)?;
    if args.json {
        println!("{}", serde_json::to_string(&r).map_err(Failure::runtime)?);
    } else {
        println!(
            "{} series x {} passes, {} ticks: median {:.2} ms, p99 {:.2} ms per tick; {:.1} us per series; {:.3} % of one core at a {}s interval; peak RSS {:.1} MB",
            r.series,
            r.mc_passes,
            r.ticks,
            r.tick_seconds_median * 1e3,
            r.tick_seconds_p99 * 1e3,
            r.seconds_per_series * 1e6,
            r.cpu_share_at_interval * 100.0,
            r.forecast_interval_seconds,
            r.peak_rss_bytes as f64 / 1e6
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_soak_reports_every_hour() {
        let model = Arc::new(Model::embedded().expect("model"));
        let r = soak(model, 2, 2, 1).expect("soak");
        assert_eq!(r.iter().map(|(h, _)| *h).collect::<Vec<_>>(), vec![1, 2]);
        assert!(r.iter().all(|(_, rss)| *rss > 1 << 20));
    }

    #[test]
    fn bench_runs_ready_ticks_and_reports_consistent_numbers() {
        let model = Arc::new(Model::embedded().expect("model"));
        let r = run(model, 3, 5, 4, 60.0).expect("bench");
        assert_eq!((r.series, r.mc_passes, r.ticks), (3, 5, 4));
        assert!(r.tick_seconds_median > 0.0 && r.tick_seconds_p99 >= r.tick_seconds_median);
        assert!((r.cpu_share_at_interval - r.tick_seconds_median / 60.0).abs() < 1e-12);
        assert!(
            r.peak_rss_bytes > 1 << 20,
            "RSS read from /proc: {}",
            r.peak_rss_bytes
        );
    }
}
