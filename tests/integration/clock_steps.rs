//! The wall clock steps while the sidecar runs (issue #23, point 3): back an hour, then
//! forward a day, on the injected clock ([`UnixClock::Shifted`]), with the real scrape
//! source, engine, server and snapshots in this process.
//!
//! What the sidecar must do (README, "Clock steps"): never panic or export a NaN; after a
//! step back, scrapes count again at once (the next scrape is a new baseline); after a
//! step forward, the history older than the ring's span is gone and the series builds up
//! again from the next scrape; a snapshot written on a stepped clock is restored, or
//! refused as `future_timestamp`, by a sidecar on the true clock.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcast::config::FileConfig;
use flowcast::forecast::model::Model;
use flowcast::forecast::state;
use flowcast::host::clock::{system_now, UnixClock};
use flowcast::run::sidecar::Sidecar;
use tokio_util::sync::CancellationToken;

use crate::support::{read_metrics, value, FakeApp, Scraped};

/// The test's NTP: seconds added to the system clock (one per test, as they run at once).
static OFFSET: AtomicI64 = AtomicI64::new(0);
static PROM_OFFSET: AtomicI64 = AtomicI64::new(0);

const SERIES: [(&str, &str); 1] = [("series", "api")];

fn exposition(total: f64) -> String {
    format!("# TYPE app_requests_total counter\napp_requests_total{{code=\"200\"}} {total}\n")
}

fn config_in(app: &FakeApp, state_dir: &std::path::Path) -> flowcast::config::Config {
    FileConfig {
        target: Some(app.url()),
        selector: Some("app_requests_total".into()),
        series_name: Some("api".into()),
        scrape_interval: Some("1s".into()),
        forecast_interval: Some("1s".into()),
        snapshot_interval: Some("10s".into()),
        state_dir: Some(state_dir.to_path_buf()),
        mc_passes: Some(10),
        ..FileConfig::default()
    }
    .validate()
    .expect("valid config")
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcast-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// Every sample of the page is a number: no NaN, no infinity.
fn assert_finite(samples: &[Scraped], when: &str) {
    let bad: Vec<&Scraped> = samples.iter().filter(|s| !s.value.is_finite()).collect();
    assert!(bad.is_empty(), "{when}: non-finite samples {bad:?}");
}

/// Polls `/metrics` (every 250 ms, at most `limit`) until `done`; every page read on the
/// way must be all finite.
async fn until(
    url: &str,
    limit: Duration,
    when: &str,
    done: impl Fn(&[Scraped]) -> bool,
) -> Vec<Scraped> {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), reqwest::get(url)).await {
            last = read_metrics(&r.text().await.unwrap_or_default());
            assert_finite(&last, when);
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{when}: not within {limit:?}; last page: {last:?}");
}

/// Waits until a snapshot stamped by the clock shifted by `shift` seconds is written.
async fn snapshot_on_the_stepped_clock(url: &str, shift: f64, when: &str) {
    until(
        url,
        Duration::from_secs(30),
        &format!("a snapshot {when}"),
        |s| {
            value(s, "flowcast_state_last_snapshot_timestamp_seconds", &[])
                .is_some_and(|t| (t - (system_now() + shift)).abs() < 30.0)
        },
    )
    .await;
}

fn observed(s: &[Scraped]) -> Option<f64> {
    value(s, "flowcast_observed_requests_per_second", &SERIES)
}

fn last_tick(s: &[Scraped]) -> f64 {
    value(s, "flowcast_last_successful_tick_timestamp_seconds", &[]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_steps_back_an_hour_then_forward_a_day() {
    // The app serves 80 req/s; the seeded history (4 hours up to now) is about 20.
    let app = FakeApp::start(&exposition(0.0)).await;
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            // 20 updates a second of 4 requests each, for at most 10 minutes.
            for i in 1..12_000u32 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                app.set(exposition(4.0 * f64::from(i)));
            }
        })
    };
    let dir = tempdir("clock");
    let config = config_in(&app, &dir);
    let model = Arc::new(Model::embedded().expect("model"));
    let fingerprint = model.fingerprint();
    let mut sidecar = Sidecar::with_clock(&config, Arc::clone(&model), UnixClock::Shifted(&OFFSET))
        .expect("sidecar");
    let now_minute = (system_now() / 60.0).floor() as i64;
    for m in now_minute - 240..now_minute {
        sidecar.engine.record_rate(&[], m, 20.0);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sidecar.run(listener, shutdown.clone()));
    until(&url, Duration::from_secs(20), "at start", |s| {
        value(s, "flowcast_ready", &SERIES) == Some(1.0)
    })
    .await;

    // 1. Back an hour. Ticks go on at once on the stepped clock, and the 80 req/s of the
    //    app reach the newest step within two minutes: the scrapes after the step count
    //    (before the fix they were all ignored until the clock caught up, an hour later,
    //    and the newest step kept the seeded 20).
    OFFSET.store(-3600, Ordering::Release);
    let stepped = system_now() - 3600.0;
    until(
        &url,
        Duration::from_secs(10),
        "ticking after the step back",
        |s| (last_tick(s) - stepped).abs() < 30.0,
    )
    .await;
    let after_back = until(
        &url,
        Duration::from_secs(150),
        "fresh rates after the step back",
        |s| observed(s).is_some_and(|o| o > 60.0),
    )
    .await;
    assert_eq!(value(&after_back, "flowcast_ready", &SERIES), Some(1.0));
    // A snapshot written on the stepped clock; a sidecar on the true clock restores it.
    snapshot_on_the_stepped_clock(&url, -3600.0, "after the step back").await;
    let back_copy = dir.with_extension("back");
    let _ = std::fs::remove_dir_all(&back_copy);
    std::fs::create_dir_all(&back_copy).expect("mkdir");
    std::fs::copy(state::path_in(&dir), state::path_in(&back_copy)).expect("copy snapshot");

    // 2. Forward a day (23 hours past the true time). The history is now older than the
    //    ring's four hours: the series is not ready, with no forecast gauges rather than
    //    stale or NaN ones, and builds up again from the next scrapes, at 80 req/s.
    OFFSET.store(23 * 3600, Ordering::Release);
    let after_forward = until(
        &url,
        Duration::from_secs(150),
        "history rebuilding after the step forward",
        |s| {
            value(s, "flowcast_history_seconds", &SERIES)
                .is_some_and(|h| (60.0..=180.0).contains(&h))
                && observed(s).is_some_and(|o| o > 60.0)
        },
    )
    .await;
    assert_eq!(value(&after_forward, "flowcast_ready", &SERIES), Some(0.0));
    assert!(
        !after_forward
            .iter()
            .any(|s| s.name == "flowcast_forecast_upper_requests_per_second"),
        "no forecast from a history that is not there"
    );
    assert!((last_tick(&after_forward) - (system_now() + 23.0 * 3600.0)).abs() < 30.0);
    snapshot_on_the_stepped_clock(&url, 23.0 * 3600.0, "after the step forward").await;
    shutdown.cancel();
    task.await.expect("the sidecar stops without a panic");
    feeder.abort();

    // 3. On the true clock: the snapshot of the step back is restored (its newest minute
    //    is in the true past); the one of the step forward is refused as future_timestamp,
    //    counted, and the sidecar starts empty.
    let restored = Sidecar::new(&config_in(&app, &back_copy), Arc::clone(&model)).expect("sidecar");
    assert_eq!(restored.shared.metrics.restored_series.get(), 1);
    let refused = Sidecar::new(&config, Arc::clone(&model)).expect("sidecar");
    assert_eq!(refused.shared.metrics.restored_series.get(), 0);
    assert_eq!(
        refused
            .shared
            .metrics
            .state_failures
            .with_label_values(&["future_timestamp"])
            .get(),
        1
    );
    match state::read(&dir, fingerprint, &config.state_identity()) {
        Ok(s) => assert!(
            s.saved_at > system_now() + 22.0 * 3600.0,
            "the forward snapshot"
        ),
        Err(e) => panic!("the forward snapshot itself is whole: {e}"),
    }
    OFFSET.store(0, Ordering::Release);
    for d in [&dir, &back_copy] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The Prometheus source after a step back: it queries the current minute at once rather
/// than nothing until the clock has caught up with its last poll (an hour later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_source_polls_on_after_the_clock_steps_back() {
    use crate::prometheus_source::{vector, FakeProm};
    let prom = FakeProm::start(|_path, params| (200, vector(params, &["/a"]))).await;
    let config = FileConfig {
        source: Some("prometheus".into()),
        prometheus_url: Some(format!("{}/", prom.url)),
        query: Some("sum by (route) (rate(http_requests_total[1m]))".into()),
        by: Some(vec!["route".into()]),
        series_name: Some("api".into()),
        scrape_interval: Some("1s".into()),
        forecast_interval: Some("1s".into()),
        mc_passes: Some(10),
        ..FileConfig::default()
    }
    .validate()
    .expect("valid config");
    let sidecar = Sidecar::with_clock(
        &config,
        Arc::new(Model::embedded().expect("model")),
        UnixClock::Shifted(&PROM_OFFSET),
    )
    .expect("sidecar");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sidecar.run(listener, shutdown.clone()));
    // The time of each instant query the source made.
    let queried = || -> Vec<f64> {
        prom.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(path, _, _)| path.ends_with("/api/v1/query"))
            .filter_map(|(_, params, _)| params.get("time")?.parse().ok())
            .collect()
    };
    let wait = |what: &'static str, done: &dyn Fn(&[f64]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let times = queried();
            if done(&times) {
                return times;
            }
            assert!(Instant::now() < deadline, "{what}: queries at {times:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = tokio::task::block_in_place(|| wait("a first query", &|t| !t.is_empty()));
    PROM_OFFSET.store(-3600, Ordering::Release);
    // The next minute on the stepped clock is queried within a minute and a few seconds.
    let stepped = system_now() - 3600.0;
    let after = tokio::task::block_in_place(|| {
        wait("a query after the step back", &|t| {
            t.iter()
                .any(|&q| q <= stepped + 70.0 && q >= stepped - 70.0)
        })
    });
    assert!(before.iter().all(|&q| q > stepped + 3000.0));
    assert!(after.len() > before.len());
    shutdown.cancel();
    task.await.expect("the sidecar stops without a panic");
}
