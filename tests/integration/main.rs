//! Integration tests: the real entry points over loopback, the real binary, the real model.

mod clock_steps;
mod evidence;
mod hostile;
mod prometheus_source;
mod restarts;
mod robustness;
mod secrets;
mod shard;
mod shutdown;
mod support;
mod tls;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcast::config::FileConfig;
use flowcast::forecast::model::Model;
use flowcast::host::clock::system_now;
use flowcast::run::sidecar::Sidecar;
use support::{get, read_metrics, value, FakeApp};
use tokio_util::sync::CancellationToken;

const HORIZONS: [&str; 3] = ["5m", "10m", "15m"];

fn exposition(orders: f64, search: f64) -> String {
    format!(
        "# TYPE app_requests_total counter\n\
         app_requests_total{{route=\"/orders\",code=\"200\"}} {orders}\n\
         app_requests_total{{route=\"/orders\",code=\"500\"}} 3\n\
         app_requests_total{{route=\"/search\",code=\"200\"}} {search}\n\
         # TYPE app_request_duration_seconds histogram\n\
         app_request_duration_seconds_bucket{{route=\"/orders\",code=\"200\",le=\"+Inf\"}} {orders}\n\
         app_request_duration_seconds_sum{{route=\"/orders\",code=\"200\"}} {latency_sum}\n\
         app_request_duration_seconds_count{{route=\"/orders\",code=\"200\"}} {orders}\n\
         # TYPE app_up gauge\napp_up 1\n",
        latency_sum = 0.2 * orders
    )
}

/// A sidecar scraping a fake app: `/orders` has 4 hours of seeded history, `/search` none,
/// so one series is ready and the other must export `ready 0` and no forecast gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_serves_ordered_bands_and_hides_unready_series() {
    let app = FakeApp::start(&exposition(1000.0, 10.0)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = FileConfig {
        target: Some(app.url()),
        selector: Some("app_requests_total{code!~\"5..\"}".into()),
        by: Some(vec!["route".into()]),
        series_name: Some("api".into()),
        scrape_interval: Some("1s".into()),
        forecast_interval: Some("1s".into()),
        mc_passes: Some(30),
        listen: Some(addr.to_string()),
        latency_histogram: Some("app_request_duration_seconds".into()),
        replica_capacity: Some(10.0),
        ..FileConfig::default()
    }
    .validate()
    .expect("valid config");
    let model = Arc::new(Model::embedded().expect("model"));
    let mut sidecar = Sidecar::new(&config, model).expect("sidecar");
    let now_minute = (system_now() / 60.0).floor() as i64;
    for m in now_minute - 240..now_minute {
        let rate = 20.0 + 5.0 * ((m % 30) as f64 / 30.0);
        sidecar
            .engine
            .record_rate(&["/orders".to_string()], m, rate);
    }
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sidecar.run(listener, shutdown.clone()));

    // The app's counters keep growing while the sidecar scrapes them.
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 1..200 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                app.set(exposition(1000.0 + 5.0 * i as f64, 10.0 + i as f64));
            }
        })
    };

    let url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let (status, ct, body) = get(&url).await;
        assert_eq!(status, 200);
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        let samples = read_metrics(&body);
        let search_seen = value(
            &samples,
            "flowcast_ready",
            &[("series", "api"), ("route", "/search")],
        )
        .is_some();
        let orders_ready = value(
            &samples,
            "flowcast_ready",
            &[("series", "api"), ("route", "/orders")],
        ) == Some(1.0);
        // The mean latency needs two scrapes with requests in between.
        let latency_known = samples
            .iter()
            .any(|s| s.name == "flowcast_forecast_concurrency_upper");
        if search_seen && orders_ready && latency_known {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "series did not appear within 20 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let orders = [("series", "api"), ("route", "/orders")];
    for h in HORIZONS {
        let labels = [orders[0], orders[1], ("horizon", h)];
        let mean = value(&samples, "flowcast_forecast_requests_per_second", &labels).expect("mean");
        let lower = value(
            &samples,
            "flowcast_forecast_lower_requests_per_second",
            &labels,
        )
        .expect("lower");
        let upper = value(
            &samples,
            "flowcast_forecast_upper_requests_per_second",
            &labels,
        )
        .expect("upper");
        let sd = value(
            &samples,
            "flowcast_forecast_stddev_requests_per_second",
            &labels,
        )
        .expect("stddev");
        assert!(
            0.0 <= lower && lower <= mean && mean <= upper,
            "{h}: {lower} {mean} {upper}"
        );
        assert!(
            mean > 5.0 && mean < 100.0,
            "{h}: mean {mean} is near the seeded 20-25 req/s"
        );
        assert!(sd > 0.0);
        // Capacity signals: Little's law with the 0.2 s mean latency, and replicas for
        // 10 req/s each with the default 10 % headroom.
        let concurrency =
            value(&samples, "flowcast_forecast_concurrency_upper", &labels).expect("concurrency");
        assert!(
            (concurrency - 0.2 * upper).abs() < 1e-6 * upper,
            "{h}: L = {concurrency}"
        );
        let replicas = value(&samples, "flowcast_recommended_replicas", &labels).expect("replicas");
        assert_eq!(replicas, (upper * 1.1 / 10.0).ceil(), "{h}");
        for c in ["epistemic", "heteroscedastic", "homoscedastic"] {
            let l = [orders[0], orders[1], ("horizon", h), ("component", c)];
            assert!(
                value(&samples, "flowcast_uncertainty_requests_per_second", &l)
                    .is_some_and(|v| v >= 0.0),
                "{c}"
            );
        }
    }
    assert!(value(&samples, "flowcast_history_seconds", &orders).is_some_and(|v| v >= 4.0 * 3600.0));
    // Not ready: ready 0 and no forecast gauges at all (KEDA's fallback then takes over).
    assert_eq!(
        value(
            &samples,
            "flowcast_ready",
            &[("series", "api"), ("route", "/search")]
        ),
        Some(0.0)
    );
    let leaked: Vec<_> = samples
        .iter()
        .filter(|s| {
            s.name.starts_with("flowcast_forecast_")
                && s.labels.get("route").map(String::as_str) == Some("/search")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "unready series exported forecasts: {leaked:?}"
    );
    assert!(samples
        .iter()
        .any(|s| s.name == "flowcast_scrape_duration_seconds_count" && s.value >= 1.0));
    assert!(value(&samples, "flowcast_mc_passes", &[]) == Some(30.0));

    let (status, ct, body) = get(&format!("http://{addr}/api/v1/forecast")).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    let series = doc["series"].as_array().expect("series array");
    let ready: Vec<_> = series.iter().filter(|s| s["ready"] == true).collect();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0]["forecast"].as_array().map(Vec::len), Some(3));
    assert_eq!(get(&format!("http://{addr}/healthz")).await.0, 200);
    assert_eq!(get(&format!("http://{addr}/readyz")).await.0, 200);
    let (_, ct, page) = get(&format!("http://{addr}/")).await;
    assert!(
        ct.starts_with("text/html") && page.contains("<svg") && page.contains("class=\"band\"")
    );

    // A scraper that prefers OpenMetrics (Prometheus's default Accept) gets OpenMetrics 1.0,
    // which a strict OpenMetrics parser reads to the same forecast.
    let om = reqwest::Client::new()
        .get(&url)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .expect("openmetrics scrape");
    assert_eq!(
        om.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om_body = om.text().await.expect("body");
    assert!(om_body.ends_with("# EOF\n"));
    let mut om_upper = None;
    flowcast::ingest::exposition::parse(
        om_body.as_bytes(),
        flowcast::ingest::exposition::Format::OpenMetrics,
        |s| {
            if s.name == "flowcast_forecast_upper_requests_per_second"
                && s.labels.get("route").as_deref() == Some("/orders")
                && s.labels.get("horizon").as_deref() == Some("5m")
            {
                om_upper = Some(s.value);
            }
        },
    )
    .expect("valid OpenMetrics");
    assert!(om_upper.is_some_and(|v| v > 0.0));

    feeder.abort();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops in time")
        .expect("no panic");
}

/// Multiplying the history by 1000 multiplies mean and bounds by about 1000. Not exactly:
/// since issue #21 the network reads the log of the level (`log_scale`), because counts at
/// a low level are noisier, so the two forecasts may differ by what that teaches it. Every
/// other input is scale-free (`features::tests::normalisation_is_scale_free`); here the
/// whole engine stays within 10 %.
#[test]
fn forecasts_follow_the_scale() {
    let model = Arc::new(Model::embedded().expect("model"));
    let settings = flowcast::forecast::engine::EngineSettings {
        mc_passes: 50,
        seed: 3,
        band: flowcast::forecast::band::BandMode::default(),
        experts: flowcast::forecast::combine::ExpertSet::ALL,
        limits: flowcast::forecast::history::SeriesLimits {
            max_series: 1,
            max_children: 1,
            max_gap_seconds: 60.0,
            shard: None,
            stale_after_seconds: None,
        },
    };
    let origin = 1_700_000_000 / 300 * 300;
    let mut engines = [1.0, 1000.0].map(|factor| {
        let mut e = flowcast::forecast::engine::Engine::new(Arc::clone(&model), settings);
        for m in origin / 60 - 240..origin / 60 {
            let rate =
                0.5 + 0.3 * ((m as f64) / 37.0).sin().abs() + if m % 53 < 3 { 1.0 } else { 0.0 };
            e.record_rate(&[], m, rate * factor);
        }
        e
    });
    let [a, b] = &mut engines;
    let fa = a.tick(origin).expect("tick").series[0]
        .forecast
        .clone()
        .expect("ready");
    let fb = b.tick(origin).expect("tick").series[0]
        .forecast
        .clone()
        .expect("ready");
    for (x, y) in fa.horizons.iter().zip(&fb.horizons) {
        for (p, q) in [(x.mean, y.mean), (x.lower, y.lower), (x.upper, y.upper)] {
            assert!(p > 0.0 && (q / p / 1000.0 - 1.0).abs() < 0.1, "{p} vs {q}");
        }
    }
}

fn flowcast() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowcast"))
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn bad_flags_and_configs_exit_2_naming_the_problem() {
    let dir = std::env::temp_dir().join(format!("flowcast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let cases: Vec<(Vec<String>, &str)> = {
        let unknown = dir.join("unknown.yaml");
        std::fs::write(
            &unknown,
            "target: http://127.0.0.1:1/metrics\nselector: x_total\nscrape_intervall: 15s\n",
        )
        .expect("write");
        let timeout = dir.join("timeout.yaml");
        std::fs::write(
            &timeout,
            "target: http://127.0.0.1:1/metrics\nselector: x_total\nscrape_timeout: 30s\n",
        )
        .expect("write");
        // Backtest data whose timestamps cannot be trusted: named by line, never replayed.
        let csv = |name: &str, text: &str| -> Vec<String> {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            args(&["backtest", "--data", &path.display().to_string()])
                .into_iter()
                .chain([
                    "--out".to_string(),
                    dir.join("out.csv").display().to_string(),
                ])
                .collect()
        };
        let future = csv("future.csv", "timestamp,value\n0,1\n60,1\n4102444800,1\n");
        let negative = csv("negative.csv", "timestamp,value\n-300,1\n0,1\n");
        let backwards = csv("backwards.csv", "timestamp,value\n600,1\n660,1\n300,1\n");
        let gap = csv("gap.csv", "timestamp,value\n0,1\n300,1\n1000000000,1\n");
        let empty = dir.join("empty-password");
        std::fs::write(&empty, "\n").expect("write");
        let empty_password = args(&[
            "check-config",
            "--target",
            "http://127.0.0.1:1/",
            "--selector",
            "x_total",
            "--listen-basic-auth-user",
            "u",
            "--listen-basic-auth-password-file",
            &empty.display().to_string(),
        ]);
        vec![
            (future, "line 4: timestamp 4102444800 is"),
            (negative, "line 2: timestamp -300 is negative"),
            (backwards, "line 4: unsorted timestamp 300"),
            (gap, "line 4: a gap of"),
            (empty_password, "an empty secret is refused"),
            (
                vec![
                    "run".into(),
                    "--target".into(),
                    "not a url".into(),
                    "--selector".into(),
                    "x_total".into(),
                ],
                "`target`",
            ),
            (
                vec![
                    "run".into(),
                    "--target".into(),
                    "http://127.0.0.1:1/".into(),
                    "--selector".into(),
                    "x{a=~\"(\"}".into(),
                ],
                "`selector`",
            ),
            (
                vec![
                    "check-config".into(),
                    "--config".into(),
                    unknown.display().to_string(),
                ],
                "scrape_intervall",
            ),
            (
                vec![
                    "check-config".into(),
                    "--config".into(),
                    timeout.display().to_string(),
                ],
                "`scrape_timeout`",
            ),
            (
                vec!["run".into(), "--no-such-flag".into()],
                "--no-such-flag",
            ),
            (
                args(&["check-config", "--source", "prometheus", "--query", "up"]),
                "`prometheus_url`",
            ),
            (
                args(&[
                    "check-config",
                    "--source",
                    "graphite",
                    "--target",
                    "http://a/",
                ]),
                "`source`",
            ),
            (
                args(&[
                    "check-config",
                    "--source",
                    "prometheus",
                    "--prometheus-url",
                    "http://127.0.0.1:9090",
                    "--query",
                    "up",
                    "--prometheus-bearer-token-file",
                    "/nonexistent/token",
                ]),
                "`prometheus_bearer_token_file`",
            ),
            (
                args(&[
                    "check-config",
                    "--target",
                    "http://127.0.0.1:1/",
                    "--selector",
                    "x_total",
                    "--backfill-url",
                    "http://127.0.0.1:9090",
                ]),
                "`backfill_query`",
            ),
            (
                args(&[
                    "check-config",
                    "--target",
                    "http://127.0.0.1:1/",
                    "--selector",
                    "x_total",
                    "--replica-capacity",
                    "0",
                ]),
                "`replica_capacity`",
            ),
            (
                vec![
                    "check-config".into(),
                    "--config".into(),
                    dir.join("missing.yaml").display().to_string(),
                ],
                "missing.yaml",
            ),
        ]
    };
    for (args, needle) in cases {
        let out = flowcast()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr does not name {needle}: {stderr}"
        );
    }
    // Flags beat the environment, which beats the file.
    let file = dir.join("ok.yaml");
    std::fs::write(
        &file,
        "target: http://127.0.0.1:1/metrics\nselector: x_total\nmc_passes: 0\n",
    )
    .expect("write");
    let out = flowcast()
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "the file's mc_passes 0 is invalid"
    );
    let out = flowcast()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("FLOWCAST_MC_PASSES", "10")
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "env overrides the file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = flowcast()
        .args(["check-config", "--mc-passes", "0", "--config"])
        .arg(&file)
        .env("FLOWCAST_MC_PASSES", "10")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "the flag overrides the env");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's first command: the demo serves ready, ordered bands for all three horizons
/// within 20 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_ready_forecasts_within_20_seconds() {
    let started = Instant::now();
    let (child, _, metrics_url) = support::start_demo("60s").await;
    let mut ready_samples = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(2), reqwest::get(&metrics_url)).await
        {
            let samples = read_metrics(&r.text().await.unwrap_or_default());
            let ready = samples
                .iter()
                .filter(|s| s.name == "flowcast_ready" && s.value == 1.0)
                .count();
            if ready >= 2 {
                ready_samples = Some(samples);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let samples = ready_samples.expect("two ready demo series within 20 s");
    for route in ["/api/orders", "/api/search"] {
        for h in HORIZONS {
            let l = [("series", "demo"), ("route", route), ("horizon", h)];
            let lower =
                value(&samples, "flowcast_forecast_lower_requests_per_second", &l).expect("lower");
            let mean = value(&samples, "flowcast_forecast_requests_per_second", &l).expect("mean");
            let upper =
                value(&samples, "flowcast_forecast_upper_requests_per_second", &l).expect("upper");
            assert!(
                0.0 <= lower && lower <= mean && mean <= upper && upper > lower,
                "{route} {h}: {lower} {mean} {upper}"
            );
        }
    }
    drop(child);
}

/// `promtool check metrics` (Prometheus's own linter) finds nothing to report on the
/// demo's `/metrics`. Needs Debian's `prometheus` package (installed by .ci/run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_no_problem_in_the_exposition() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let (child, _, url) = support::start_demo("60s").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (_, _, body) = get(&url).await;
        if body.contains("flowcast_forecast_upper_requests_per_second{")
            && body.contains("flowcast_band_coverage_ratio")
        {
            break body;
        }
        if Instant::now() > deadline {
            // Coverage appears once a step has been judged; forecasts are enough to lint.
            break body;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        body.contains("flowcast_forecast_upper_requests_per_second{"),
        "{body}"
    );
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write as _;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(body.as_bytes()).expect("write");
    }
    let out = check.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics reported:\n{report}"
    );
    drop(child);
}
