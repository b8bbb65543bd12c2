//! Where the peak RSS of a tick with many series comes from (issue #7: ≤ 150 MB with
//! 10,000 series). Runs the live tick's stages one by one on the calling thread, as
//! `flowcast bench` does, and prints for each the resident set before it, its peak and
//! after it. The peak is `VmHWM` of `/proc/self/status`, reset before each stage by writing
//! `5` to `/proc/self/clear_refs` (Linux ≥ 4.0), so each stage's peak is its own.
//!
//! `cargo bench --bench memory_stages -- [SERIES] [PASSES] [TICKS]` (defaults 10000 30 2).

use std::sync::Arc;

use flowcast::forecast::engine::{Engine, EngineSettings};
use flowcast::forecast::history::{MINUTE_SECONDS, RING_MINUTES};
use flowcast::forecast::model::Model;
use flowcast::serve::metrics::{ExpositionFormat, Metrics};
use flowcast::serve::shared::Shared;

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `stage`, printing RSS before, its own peak and RSS after, in MB.
fn stage<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let before = status_kb("VmRSS:");
    // Resets VmHWM to the current RSS.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = std::time::Instant::now();
    let out = f();
    let took = started.elapsed().as_secs_f64();
    let (peak, after) = (status_kb("VmHWM:"), status_kb("VmRSS:"));
    println!(
        "{name:<34} rss before {:>7.1} MB  peak {:>7.1} MB{}  after {:>7.1} MB  ({took:.2} s)",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        if reset { "" } else { " (not reset)" },
        after as f64 / 1024.0,
    );
    out
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (series, passes, ticks) = (arg(0, 10_000), arg(1, 30), arg(2, 2));
    println!("{series} series x {passes} passes, {ticks} ticks");
    let model = stage("load model", || Arc::new(Model::embedded().expect("model")));
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes: passes,
            seed: 1,
            band: flowcast::forecast::band::BandMode::default(),
            experts: flowcast::forecast::combine::ExpertSet::ALL,
            limits: flowcast::forecast::history::SeriesLimits {
                max_series: series,
                max_children: series,
                max_gap_seconds: 120.0,
                shard: None,
                stale_after_seconds: None,
            },
        },
    );
    let shared = Shared::new(
        Metrics::new("flowcast", &["route".to_string()]).expect("metrics"),
        "bench".into(),
        vec!["route".into()],
    );
    let keys: Vec<Vec<String>> = (0..series).map(|i| vec![format!("/r{i}")]).collect();
    let start = 28_000_000_i64;
    // The same synthetic rates as `flowcast bench`.
    let rate = |i: usize, m: i64| {
        let day = ((m % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin();
        (10.0 + i as f64 % 50.0) * (1.0 + 0.3 * day) + ((m * 7919 + i as i64) % 13) as f64
    };
    stage("record 4 h of history", || {
        for (i, key) in keys.iter().enumerate() {
            for m in start..start + RING_MINUTES as i64 {
                engine.record_rate(key, m, rate(i, m));
            }
        }
    });
    for (tick, minute) in (0..ticks).zip(start + RING_MINUTES as i64..) {
        println!("tick {tick}");
        for (i, key) in keys.iter().enumerate() {
            engine.record_rate(key, minute - 1, rate(i, minute - 1));
        }
        let prepared = stage("  prepare (features)", || {
            engine.prepare(minute * MINUTE_SECONDS)
        });
        let (inputs, seeds) = stage("  inputs", || prepared.inputs());
        let outputs = stage("  predict (tract, chunked)", || {
            engine
                .model()
                .predict(&inputs, &seeds, passes)
                .expect("predict")
        });
        drop((inputs, seeds));
        let report = stage("  finish (bands)", || engine.finish(prepared, &outputs));
        stage("  publish (gauges + encode + gzip)", || {
            shared.publish(report)
        });
        let sent = stage("  /metrics request, gzip", || {
            let e = shared.metrics.exposition(ExpositionFormat::Text, true);
            e.chunks.iter().map(|c| c.len()).sum::<usize>()
        });
        // A client without gzip: the plain text is inflated once per change.
        let size = stage("  /metrics request, plain", || {
            let e = shared.metrics.exposition(ExpositionFormat::Text, false);
            e.chunks.iter().map(|c| c.len()).sum::<usize>()
        });
        println!(
            "  /metrics is {:.1} MB, {:.1} MB with gzip",
            size as f64 / 1e6,
            sent as f64 / 1e6
        );
    }
    println!(
        "whole run: peak since the last reset {:.1} MB, RSS now {:.1} MB",
        status_kb("VmHWM:") as f64 / 1024.0,
        status_kb("VmRSS:") as f64 / 1024.0
    );
}
