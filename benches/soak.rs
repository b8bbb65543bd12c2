//! The 24-hour soak (issue #17): a hostile endpoint, `by` set, on a fast clock. Every
//! 15 simulated seconds an exposition is parsed and selected exactly as a scrape is
//! (`exposition::parse`, the selector, `Engine::observe`), and every minute the live tick
//! runs (eviction, the model, publishing, the `/metrics` encoding). The endpoint serves
//! 20 real routes, a new route every 30 minutes that lives 3 hours, a burst of 2,000 junk
//! series with hostile label values every 10 minutes (each seen once), and a garbage body
//! every hour. `max_series` is 100 and `series_stale_after` 1 hour, so junk fills the cap
//! and eviction must free it. Prints, per simulated hour, the resident set, the series held,
//! the evictions and the drops; fails if anything panics or the resident set keeps growing.
//!
//! `cargo bench --bench soak -- [HOURS]` (default 24).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use flowcast::forecast::engine::{Engine, EngineSettings};
use flowcast::forecast::history::SeriesLimits;
use flowcast::forecast::model::Model;
use flowcast::ingest::exposition::{self, Format};
use flowcast::ingest::selector::Selector;
use flowcast::serve::metrics::Metrics;
use flowcast::serve::shared::Shared;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// What the endpoint answers at simulated second `t` (since the start).
fn body(t: i64, counters: &mut Vec<(String, f64)>) -> String {
    if t % 3600 == 1800 {
        return "\u{0}garbage{{{ 1 2\n".to_string();
    }
    let mut out = String::from("# TYPE app_requests_total counter\n");
    // 20 routes that stay, and one more every 30 minutes that lives 3 hours.
    let born = |k: i64| k * 1800;
    let mut routes: Vec<String> = (0..20).map(|i| format!("/api/{i}")).collect();
    routes.extend(
        (0..=t / 1800)
            .filter(|&k| t >= born(k) && t < born(k) + 3 * 3600)
            .map(|k| format!("/new/{k}")),
    );
    let day = (t as f64 / 86_400.0 * std::f64::consts::TAU).sin();
    for (i, route) in routes.iter().enumerate() {
        let c = match counters.iter_mut().find(|(r, _)| r == route) {
            Some((_, c)) => c,
            None => {
                counters.push((route.clone(), 0.0));
                &mut counters.last_mut().expect("pushed").1
            }
        };
        *c += 15.0 * (20.0 + i as f64) * (1.5 + day);
        out.push_str(&format!("app_requests_total{{route=\"{route}\"}} {c}\n"));
    }
    counters.retain(|(r, _)| routes.contains(r));
    if t % 600 == 0 {
        // 2,000 junk series, each seen once, with quotes, backslashes, newlines and 200 B.
        for j in 0..2000 {
            out.push_str(&format!(
                "app_requests_total{{route=\"junk\\\"\\\\\\n{t}-{j}-{}\"}} 1\n",
                "x".repeat(180)
            ));
        }
    }
    out
}

fn main() {
    let hours: i64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(24);
    let model = Arc::new(Model::embedded().expect("model"));
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes: 30,
            seed: 1,
            band: flowcast::forecast::band::BandMode::default(),
            experts: flowcast::forecast::combine::ExpertSet::ALL,
            limits: SeriesLimits {
                max_series: 100,
                max_children: 10_000,
                max_gap_seconds: 45.0,
                shard: None,
                stale_after_seconds: Some(3600.0),
            },
        },
    );
    let shared = Shared::new(
        Metrics::new("flowcast", &["route".to_string()]).expect("metrics"),
        "api".into(),
        vec!["route".into()],
    );
    let selector: Selector = "app_requests_total".parse().expect("selector");
    let start = 1_700_006_400_i64; // a UTC midnight
    let mut counters = Vec::new();
    let (mut dropped, mut parse_failures, mut evicted) = (0usize, 0usize, 0usize);
    let mut hourly = Vec::new();
    let started = std::time::Instant::now();
    println!("hour  rss MB  series  evicted  dropped  parse failures  /metrics kB");
    for step in 0..hours * 240 {
        let t = step * 15;
        let text = body(t, &mut counters);
        let mut matched: Vec<(u64, Vec<String>, f64)> = Vec::new();
        let parsed = exposition::parse(text.as_bytes(), Format::Text004, |s| {
            if selector.matches(&s.name, &s.labels) {
                let mut h = DefaultHasher::new();
                s.name.hash(&mut h);
                for (k, v) in s.labels.iter() {
                    k.hash(&mut h);
                    v.hash(&mut h);
                }
                let key = vec![s
                    .labels
                    .get("route")
                    .map(|v| v.into_owned())
                    .unwrap_or_default()];
                matched.push((h.finish(), key, s.value));
            }
        });
        let now = (start + t) as f64;
        match parsed {
            Ok(_) => {
                let stats =
                    engine.observe(now, matched.iter().map(|(h, k, v)| (*h, k.as_slice(), *v)));
                dropped += stats.dropped;
            }
            Err(_) => {
                parse_failures += 1;
                engine.mark_gap();
            }
        }
        if t % 60 == 0 {
            let origin = start + t;
            let gone = engine.evict_stale(origin);
            evicted += gone.len();
            let mut report = engine.tick(origin).expect("tick");
            report.evicted = gone;
            shared.publish(report);
        }
        if (t + 15) % 3600 == 0 {
            let hour = (t + 15) / 3600;
            let text = shared.metrics.encode_text();
            let rss = rss_mb();
            let held = engine.series_set().series().len();
            println!(
                "{hour:>4}  {rss:>6.1}  {held:>6}  {evicted:>7}  {dropped:>7}  {parse_failures:>14}  {:>11.1}",
                text.len() as f64 / 1024.0
            );
            hourly.push(rss);
        }
    }
    let after_warmup = &hourly[hourly.len().min(4) - 1..];
    let (low, high) = after_warmup
        .iter()
        .fold((f64::MAX, 0.0_f64), |(l, h), &r| (l.min(r), h.max(r)));
    println!(
        "{hours} simulated hours in {:.0} s; RSS from hour 4 on: {low:.1}–{high:.1} MB; {evicted} series evicted, {dropped} samples dropped",
        started.elapsed().as_secs_f64()
    );
    assert!(evicted > 0, "series came and went through eviction");
    assert!(
        high <= low * 1.15 + 2.0,
        "the resident set kept growing: {low:.1} → {high:.1} MB"
    );
}
