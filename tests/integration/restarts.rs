//! `--state-dir` across real restarts of the binary: restore at start, snapshot on SIGTERM
//! with exit 0, a kill -9 in the middle of a snapshot write, and snapshots that must be
//! ignored (another config, corrupt bytes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowcast::ingest::selector::Selector;

use flowcast::forecast::model::Model;
use flowcast::forecast::state;

use crate::support::{
    free_port, get, read_metrics, seed_snapshot, sigterm, value, wait_exit, FakeApp,
};

const SELECTOR: &str = "app_requests_total{code!~\"5..\"}";

fn exposition(orders: f64) -> String {
    format!(
        "# TYPE app_requests_total counter\n\
         app_requests_total{{route=\"/orders\",code=\"200\"}} {orders}\n"
    )
}

fn identity(selector: &str) -> String {
    let selector: Selector = selector.parse().expect("selector");
    state::identity(&format!("selector={selector}"), &["route".to_string()])
}

/// A snapshot holding four hours of `/orders` history up to now, written as a previous
/// sidecar with this model and config would have.
fn seed(dir: &Path) -> state::Snapshot {
    let config = flowcast::config::FileConfig {
        target: Some("http://127.0.0.1:1/metrics".into()),
        selector: Some(SELECTOR.into()),
        by: Some(vec!["route".into()]),
        ..flowcast::config::FileConfig::default()
    }
    .validate()
    .expect("config");
    let snapshot = seed_snapshot(dir, &config, &["/orders".to_string()]);
    assert_eq!(snapshot.config, identity(SELECTOR));
    snapshot
}

struct Sidecar {
    child: Child,
    metrics: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // Ends only the process this test started, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(app: &FakeApp, dir: &Path, selector: &str, env: &[(&str, &str)]) -> Sidecar {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    cmd.args([
        "run",
        "--target",
        &app.url(),
        "--selector",
        selector,
        "--by",
        "route",
    ])
    .args([
        "--scrape-interval",
        "1s",
        "--forecast-interval",
        "1s",
        "--mc-passes",
        "10",
    ])
    .args(["--snapshot-interval", "10s", "--shutdown-grace", "30s"])
    .arg("--state-dir")
    .arg(dir)
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .stdout(Stdio::null())
    .stderr(log_file(dir));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Sidecar {
        child: cmd.spawn().expect("flowcast starts"),
        metrics: format!("http://127.0.0.1:{port}/metrics"),
    }
}

/// Polls /metrics until `done` holds (at most `limit`); returns the last samples.
async fn wait_for(
    s: &Sidecar,
    limit: Duration,
    done: impl Fn(&[crate::support::Scraped]) -> bool,
) -> Option<Vec<crate::support::Scraped>> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(2), reqwest::get(&s.metrics)).await
        {
            let samples = read_metrics(&r.text().await.unwrap_or_default());
            if done(&samples) {
                return Some(samples);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn orders_ready(samples: &[crate::support::Scraped]) -> bool {
    let l = [("series", "requests"), ("route", "/orders")];
    value(samples, "flowcast_ready", &l) == Some(1.0)
        && value(
            samples,
            "flowcast_forecast_upper_requests_per_second",
            &[
                ("series", "requests"),
                ("route", "/orders"),
                ("horizon", "15m"),
            ],
        )
        .is_some()
}

/// The log of the sidecars started on `dir` (appended, beside the directory).
fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .expect("log file")
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcast-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("log"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restarts_sigterm_and_a_kill_during_the_write() {
    let app = FakeApp::start(&exposition(1000.0)).await;
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 1..2400 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                app.set(exposition(1000.0 + 5.0 * i as f64));
            }
        })
    };
    let dir = tempdir("state");
    let seeded = seed(&dir);
    let snapshot_path = state::path_in(&dir);
    let fingerprint = Model::embedded().expect("model").fingerprint();

    // 1. A start with a snapshot serves ready forecasts at once (without it, the series
    //    would need three hours of history).
    let mut first = start(&app, &dir, SELECTOR, &[]);
    let samples = wait_for(&first, Duration::from_secs(15), orders_ready)
        .await
        .expect("ready forecasts from the restored history");
    assert_eq!(
        value(&samples, "flowcast_state_restored_series", &[]),
        Some(1.0)
    );

    // 2. SIGTERM: exit 0, with a fresh snapshot of this run.
    sigterm(&first.child);
    let status =
        wait_exit(&mut first.child, Duration::from_secs(30)).expect("exits within the grace");
    assert!(status.success(), "exit status {status:?}");
    let after_term =
        state::read(&dir, fingerprint, &identity(SELECTOR)).expect("snapshot readable");
    assert!(
        after_term.saved_at > seeded.saved_at + 1.0,
        "a new snapshot was written on SIGTERM"
    );
    assert_eq!(after_term.series.len(), 1);
    assert!(
        after_term.series[0].calibrator.is_some(),
        "calibration is saved too"
    );

    // 3. kill -9 while the shutdown snapshot is half written: the previous snapshot stays
    //    whole and usable.
    let before = std::fs::read(&snapshot_path).expect("snapshot bytes");
    let mut second = start(
        &app,
        &dir,
        SELECTOR,
        &[(flowcast::host::faults::SNAPSHOT_PAUSE_ENV, "20000")],
    );
    wait_for(&second, Duration::from_secs(15), orders_ready)
        .await
        .expect("second start is ready");
    sigterm(&second.child);
    let tmp = dir.join(format!("{}.tmp", state::FILE_NAME));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(tmp.exists()
        && std::fs::metadata(&tmp)
            .map(|m| m.len() > 0)
            .unwrap_or(false))
    {
        assert!(
            Instant::now() < deadline,
            "the snapshot write never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    second.child.kill().expect("kill -9");
    let _ = second.child.wait();
    assert_eq!(
        std::fs::read(&snapshot_path).expect("bytes"),
        before,
        "previous snapshot untouched"
    );
    assert!(std::fs::metadata(&tmp).expect("tmp").len() < before.len() as u64);
    state::read(&dir, fingerprint, &identity(SELECTOR)).expect("previous snapshot still valid");

    // 4. The next start restores it despite the leftover temporary file.
    let third = start(&app, &dir, SELECTOR, &[]);
    wait_for(&third, Duration::from_secs(15), orders_ready)
        .await
        .expect("ready after the crash");
    drop(third);

    // 5. Another configuration's snapshot is refused cleanly: counted, logged, start empty.
    let other = start(&app, &dir, "app_requests_total", &[]);
    let samples = wait_for(&other, Duration::from_secs(15), |s| {
        value(s, "flowcast_state_failures_total", &[("reason", "foreign")]) == Some(1.0)
    })
    .await
    .expect("foreign snapshot counted");
    assert!(
        !orders_ready(&samples),
        "nothing restored from another config"
    );
    drop(other);

    // 6. Corrupt bytes: counted, not fatal; /healthz answers.
    let mut corrupt = before.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xFF;
    std::fs::write(&snapshot_path, &corrupt).expect("corrupt it");
    let broken = start(&app, &dir, SELECTOR, &[]);
    wait_for(&broken, Duration::from_secs(15), |s| {
        value(s, "flowcast_state_failures_total", &[("reason", "corrupt")]) == Some(1.0)
    })
    .await
    .expect("corrupt snapshot counted");
    let health = broken.metrics.replace("/metrics", "/healthz");
    assert_eq!(get(&health).await.0, 200);
    drop(broken);

    feeder.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(dir.with_extension("log"));
}

/// Once the model has run, the start-up code's pages leave memory (src/host/pages.rs), and the
/// sidecar goes on forecasting with the code it still needs faulted back in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_pages_are_released_after_the_first_forecast_and_ticks_go_on() {
    let app = FakeApp::start(&exposition(1000.0)).await;
    let dir = tempdir("pages");
    let log = dir.with_extension("log");
    let _ = std::fs::remove_file(&log);
    seed(&dir);
    let sidecar = start(&app, &dir, SELECTOR, &[]);
    let samples = wait_for(&sidecar, Duration::from_secs(15), orders_ready)
        .await
        .expect("ready forecasts from the restored history");
    let tick = |s: &[crate::support::Scraped]| {
        value(s, "flowcast_last_successful_tick_timestamp_seconds", &[]).unwrap_or(0.0)
    };
    let first_tick = tick(&samples);
    // The release is logged as "N mappings, B MB resident before, A MB after".
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("start-up code pages released"))
        {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no release logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = numbers.len();
    assert!(n >= 3, "{line}");
    let (mappings, before, after) = (numbers[n - 3], numbers[n - 2], numbers[n - 1]);
    assert!(mappings >= 1.0, "{line}");
    assert!(before > 1.0 && after < before / 2.0, "{line}");
    // Ticks go on after the release, with forecasts.
    let later = wait_for(&sidecar, Duration::from_secs(15), |s| {
        orders_ready(s) && tick(s) >= first_tick + 2.0
    })
    .await;
    assert!(later.is_some(), "no forecast tick after the release");
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}
