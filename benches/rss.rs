//! Resident memory of `flowcast run` with one series (issue #7: ≤ 20 MB).
//!
//! `cargo bench --bench rss -- [SECONDS] [--binary PATH]` (default 120 s; the binary
//! defaults to the one cargo built for this bench). Writes a `--state-dir` snapshot with
//! four hours of one series' history, serves that series as a live counter on loopback,
//! starts the real binary on both (15 s scrapes, 15 s forecasts, 30 passes), scrapes its
//! `/metrics` (gzip, as Prometheus does), `/api/v1/forecast` and the web page every 5 s,
//! and prints `VmRSS`, `RssAnon` and `RssFile` from `/proc/PID/status` every 15 s. The
//! figure reported is the largest `VmRSS` after the first minute. Ends the process it
//! started, by its handle. `--binary` runs another build, e.g. a wrapper script; the bench
//! flushes that file to disk before starting it (see below).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowcast::config::FileConfig;

// The integration tests' fake app, seeded snapshot and child guard; this bench uses part.
#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

const SELECTOR: &str = "http_requests_total";
const ROUTE: &str = "/orders";
/// Requests per second the live counter grows by.
const RATE: f64 = 20.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args
        .iter()
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(120)
        .max(75);
    let binary = args
        .iter()
        .position(|a| a == "--binary")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_flowcast").to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(seconds, &binary));
}

/// The exposition of the one series' counter at `value`.
fn exposition(value: f64) -> String {
    format!("# TYPE {SELECTOR} counter\n{SELECTOR}{{route=\"{ROUTE}\",code=\"200\"}} {value}\n")
}

/// `VmRSS`, `RssAnon` and `RssFile` of `pid` in kB.
fn rss_kb(pid: u32) -> Option<[u64; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some([field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?])
}

async fn run(seconds: u64, binary: &str) {
    // The counter grows by RATE per second while the sidecar scrapes it.
    let app = support::FakeApp::start(&exposition(1e6)).await;
    let target = app.url();
    let feeder = app.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            feeder.set(exposition(1e6 + RATE * started.elapsed().as_secs_f64()));
        }
    });
    let listen = format!("127.0.0.1:{}", support::free_port());
    let dir = std::env::temp_dir().join(format!("flowcast-bench-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("state dir");

    // The snapshot a previous replica would have left: four hours of this one series.
    let config = FileConfig {
        target: Some(target.clone()),
        selector: Some(SELECTOR.into()),
        by: Some(vec!["route".into()]),
        ..FileConfig::default()
    }
    .validate()
    .expect("config");
    support::seed_snapshot(&dir, &config, &[ROUTE.to_string()]);

    // A binary cargo has just written sits in the page cache as dirty pages for up to
    // half a minute, and dirty pages cannot be paged out: flush it first, so the process
    // starts from a file as clean as a deployed one (an image layer).
    std::fs::File::open(binary)
        .and_then(|f| f.sync_all())
        .expect("the binary can be flushed");
    let child = Command::new(binary)
        .args(["run", "--target", &target, "--selector", SELECTOR])
        .args(["--by", "route", "--listen", &listen])
        .args(["--scrape-interval", "15s", "--forecast-interval", "15s"])
        .arg("--state-dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flowcast starts");
    let child = support::ChildGuard(child);
    let pid = child.0.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let base = format!("http://{listen}");
    println!("flowcast run, 1 series ({binary}), pid {pid}");
    println!(
        "{:>6} {:>10} {:>10} {:>10}  forecast",
        "s", "VmRSS kB", "anon kB", "file kB"
    );
    let started = Instant::now();
    let mut steady_max = 0_u64;
    let mut forecasting = false;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for path in ["/metrics", "/api/v1/forecast", "/"] {
            let r = client
                .get(format!("{base}{path}"))
                .header("accept-encoding", "gzip")
                .send()
                .await;
            if let (Ok(r), "/metrics") = (r, path) {
                let body = r.bytes().await.unwrap_or_default();
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut flate2::read::MultiGzDecoder::new(&body[..]),
                    &mut text,
                );
                forecasting = text.contains(&format!(
                    "flowcast_forecast_upper_requests_per_second{{horizon=\"5m\",route=\"{ROUTE}\",series=\"requests\"}}"
                ));
            }
        }
        let t = started.elapsed().as_secs();
        if t % 15 < 5 {
            let Some([rss, anon, file]) = rss_kb(pid) else {
                panic!("flowcast (pid {pid}) exited early");
            };
            if t >= 60 {
                steady_max = steady_max.max(rss);
            }
            println!("{t:>6} {rss:>10} {anon:>10} {file:>10}  {forecasting}");
        }
    }
    assert!(forecasting, "the series was never forecast");
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "largest VmRSS after the first minute: {:.1} MB (target 20 MB: {})",
        steady_max as f64 / 1024.0,
        if steady_max <= 20 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
}
