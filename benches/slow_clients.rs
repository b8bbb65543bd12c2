//! `/metrics` under `wrk` while slow clients hold the listener (issue #23, point 4).
//!
//! `cargo bench --bench slow_clients -- [SLOW] [SECONDS] [RPS]` (defaults 1000 20 200):
//! the real `flowcast run` binary, ready at once from a seeded `--state-dir` snapshot, with
//! SLOW hostile connections (a third each slowloris, idle, kept-alive after one request;
//! tests/integration/support/hostile_clients.rs) held against its cap of 256, and Debian's
//! `wrk` asking for `/metrics` at about RPS requests per second: twice, once over
//! keep-alive connections and once with a new connection per request (as the kubelet's
//! probes and a restarted Prometheus open them). Prints wrk's latency percentiles, its
//! errors, and flowcast's count of shed connections.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flowcast::config::FileConfig;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use support::hostile_clients::{self, Kind};
use support::{free_port, read_metrics, value, ChildGuard, FakeApp};

const SELECTOR: &str = "http_requests_total{code!~\"5..\"}";

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let (slow, seconds, rps) = (arg(0, 1000) as usize, arg(1, 20), arg(2, 200));
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("slow_clients: wrk is not installed (Debian's package wrk)");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(slow, seconds, rps));
}

async fn run(slow: usize, seconds: u64, rps: u64) {
    let dir = std::env::temp_dir().join(format!("flowcast-bench-slow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let app = FakeApp::start(
        "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1000\n",
    )
    .await;
    let config = FileConfig {
        target: Some(app.url()),
        selector: Some(SELECTOR.to_string()),
        series_name: Some("api".into()),
        ..FileConfig::default()
    }
    .validate()
    .expect("config");
    support::seed_snapshot(&dir, &config, &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let _flowcast = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_flowcast"))
            .args(["run", "--target", &app.url(), "--selector", SELECTOR])
            .args(["--series-name", "api", "--state-dir"])
            .arg(&dir)
            .args(["--listen", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flowcast starts"),
    );
    let metrics_url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(2), reqwest::get(&metrics_url)).await
        {
            let body = r.text().await.unwrap_or_default();
            if value(&read_metrics(&body), "flowcast_ready", &[("series", "api")]) == Some(1.0) {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "flowcast not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "flowcast ready; /metrics is {} bytes; {slow} slow connections against a cap of 256",
        ready.len()
    );

    let stop = CancellationToken::new();
    let per_kind = slow.div_ceil(3);
    let (tally, clients) = hostile_clients::start(
        addr.parse().expect("address"),
        &[Kind::Slowloris, Kind::Idle, Kind::KeptAlive],
        per_kind,
        &stop,
    );
    // Let every slow client connect before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // wrk has no rate option: 4 connections, each pausing between requests so that together
    // they ask for about `rps` per second (a pause of 4000/rps ms, less the answer's time).
    let script = dir.join("pace.lua");
    std::fs::write(
        &script,
        format!(
            "function delay() return {} end\n",
            (4000 / rps.max(1)).max(1)
        ),
    )
    .expect("wrk script");
    for (label, close) in [
        ("keep-alive", false),
        ("a new connection per request", true),
    ] {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t",
            "2",
            "-c",
            "4",
            "-d",
            &format!("{seconds}s"),
            "--latency",
        ])
        .args(["-H", "Accept-Encoding: gzip"])
        .arg("-s")
        .arg(&script);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(&metrics_url);
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("wrk task")
            .expect("wrk runs");
        println!(
            "== wrk, {label}:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let (_, _, body) = support::get(&metrics_url).await;
    let own = read_metrics(&body);
    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
    println!(
        "slow clients: {} connections opened, {} closed by flowcast; flowcast shed {:?}, open {:?}",
        tally.opened.load(Ordering::Relaxed),
        tally.closed_by_server.load(Ordering::Relaxed),
        value(&own, "flowcast_http_connections_shed_total", &[]),
        value(&own, "flowcast_http_open_connections", &[]),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
