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
    start_every(app, dir, selector, env, "10s")
}

/// [`start`] with this snapshot interval.
fn start_every(
    app: &FakeApp,
    dir: &Path,
    selector: &str,
    env: &[(&str, &str)],
    snapshot_interval: &str,
) -> Sidecar {
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
    .args([
        "--snapshot-interval",
        snapshot_interval,
        "--shutdown-grace",
        "30s",
    ])
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

/// Issue #23, point 2: the state volume fills up (ENOSPC, by the fault hook), is replaced by
/// a file, and goes away. Throughout, the sidecar keeps serving and `/readyz` stays ready; each
/// cause is counted under its own reason, each change is logged once (not once per
/// attempt), the last good snapshot stays, and snapshots are written again as soon as the
/// directory is usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_state_volume_is_counted_logged_once_and_outlived() {
    let dir = tempdir("volume");
    let log = dir.with_extension("log");
    let full = dir.with_extension("full");
    let aside = dir.with_extension("aside");
    for p in [&log, &full] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&aside);
    let app = FakeApp::start(&exposition(100.0)).await;
    // Four hours of history, so the series is ready at once.
    seed(&dir);
    let full_s = full.to_str().expect("utf-8").to_string();
    let s = start_every(
        &app,
        &dir,
        SELECTOR,
        &[("FLOWCAST_FAULT_SNAPSHOT_NO_SPACE_FILE", &full_s)],
        "10s",
    );
    let written = |x: &[crate::support::Scraped]| {
        value(x, "flowcast_state_last_snapshot_timestamp_seconds", &[]).unwrap_or(0.0)
    };
    let failed = |x: &[crate::support::Scraped], reason: &str| {
        value(x, "flowcast_state_failures_total", &[("reason", reason)]).unwrap_or(0.0)
    };
    let log_lines = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    let readyz = s.metrics.replace("/metrics", "/readyz");
    let ready = || async { get(&readyz).await.0 == 200 };
    // The shortest snapshot interval the config allows is 10 s.
    let limit = Duration::from_secs(45);
    let first = wait_for(&s, limit, |x| written(x) > 0.0 && orders_ready(x))
        .await
        .expect("a first snapshot and a ready series");
    assert!(ready().await);

    // 1. The volume is full: counted as write_no_space, logged once, the snapshot kept.
    std::fs::write(&full, "").expect("fill the volume");
    let x = wait_for(&s, limit, |x| failed(x, "write_no_space") >= 2.0)
        .await
        .expect("ENOSPC counted");
    let stuck = written(&x);
    assert!(stuck >= written(&first));
    assert!(
        ready().await,
        "a failing snapshot must not make the pod unready"
    );
    assert!(orders_ready(&x), "forecasting goes on");
    let failed_line = "state snapshot failed";
    assert_eq!(log_lines(failed_line), 1, "one line for two failures");
    let kept = state::read(
        &dir,
        Model::embedded().expect("model").fingerprint(),
        &identity(SELECTOR),
    )
    .expect("the last good snapshot is still there and whole");
    assert!(kept.saved_at <= stuck + 1.0);

    // 2. Space again: written at the next interval, and said once.
    std::fs::remove_file(&full).expect("free the volume");
    let x = wait_for(&s, limit, |x| written(x) > stuck)
        .await
        .expect("written again");
    assert_eq!(log_lines("state snapshots are written again"), 1);
    let no_space = failed(&x, "write_no_space");

    // 3. The directory is replaced by a file, then 4. goes away altogether.
    std::fs::rename(&dir, &aside).expect("move the directory aside");
    std::fs::write(&dir, "not a directory").expect("a file in its place");
    wait_for(&s, limit, |x| failed(x, "write_not_a_directory") >= 1.0)
        .await
        .expect("ENOTDIR counted");
    std::fs::remove_file(&dir).expect("remove the file");
    let x = wait_for(&s, limit, |x| failed(x, "write_missing") >= 2.0)
        .await
        .expect("a missing directory counted");
    assert!(ready().await);
    assert_eq!(
        failed(&x, "write_no_space"),
        no_space,
        "ENOSPC stopped with the fault"
    );
    assert_eq!(
        log_lines(failed_line),
        3,
        "one line per change: full, not a directory, missing"
    );
    let stuck = written(&x);

    // 5. The directory is back (with the snapshot it held): written again.
    std::fs::rename(&aside, &dir).expect("the directory is back");
    wait_for(&s, limit, |x| written(x) > stuck)
        .await
        .expect("written again after the directory came back");
    assert_eq!(log_lines("state snapshots are written again"), 2);
    assert!(ready().await);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}
