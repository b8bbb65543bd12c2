//! A real Prometheus scraping a real flowcast (`flowcast run`, ready at once from a seeded
//! `--state-dir` snapshot) and the fake application, with the deploy rules loaded: every
//! Grafana target is valid PromQL (and the live ones return data), both KEDA triggers'
//! queries return exactly one positive value, the recording rules produce the band, and
//! every rule evaluates without error.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use flowcast::config::FileConfig;

use crate::dashboard::{dashboard, substitute, targets};
use crate::keda::{scaled_object, trigger};
use crate::support::{free_port, read_metrics, value, FakeApp};
use crate::{repo_path, scratch_dir, support};

pub(crate) const SELECTOR: &str = "http_requests_total{code!~\"5..\"}";

/// The fake application's exposition: Prometheus scrapes it as job "api" (for the reactive
/// trigger's `http_requests_total{job="api"}`), and flowcast scrapes it as its target.
pub(crate) fn exposition(ok: f64) -> String {
    format!(
        "# TYPE http_requests_total counter\n\
         http_requests_total{{code=\"200\"}} {ok}\n\
         http_requests_total{{code=\"500\"}} 3\n"
    )
}

/// A snapshot with four hours of history (about 20 req/s) up to now, written as a previous
/// flowcast with this configuration would have (as in restarts.rs); its identity comes
/// from the same validated configuration the sidecar derives it from.
pub(crate) fn seed_snapshot(dir: &Path, target: &str) {
    let config = FileConfig {
        target: Some(target.to_string()),
        selector: Some(SELECTOR.to_string()),
        series_name: Some("api".into()),
        ..FileConfig::default()
    }
    .validate()
    .expect("a valid configuration");
    crate::support::seed_snapshot(dir, &config, &[]);
}

/// A process this test started; killed (by its handle) and reaped when dropped.
pub(crate) struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn(cmd: &mut Command, log: PathBuf) -> Process {
    let out = File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("the process starts");
    Process { child, log }
}

/// Starts `prometheus` on loopback `port` with this configuration (YAML or JSON), its
/// configuration, data and log in `dir`.
pub(crate) fn start_prometheus(bin: &Path, dir: &Path, config: &str, port: u16) -> Process {
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write prometheus.yml");
    spawn(
        Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn"),
        dir.join("prometheus.log"),
    )
}

/// Prometheus's HTTP API on loopback.
pub(crate) struct PromApi {
    base: String,
    client: reqwest::Client,
}

impl PromApi {
    /// The API of a Prometheus listening on loopback `port`.
    pub(crate) fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client"),
        }
    }

    pub(crate) async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        serde_json::from_str(&r.text().await.ok()?).ok()
    }

    /// An instant query: the whole answer (status, data or error).
    async fn query(&self, expr: &str) -> Value {
        self.get("/api/v1/query", &[("query", expr)])
            .await
            .unwrap_or(Value::Null)
    }

    /// The result vector of a successful instant query (empty when it failed).
    async fn vector(&self, expr: &str) -> Vec<Value> {
        let answer = self.query(expr).await;
        if answer["status"] != "success" {
            return Vec::new();
        }
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `expr` until `done` holds for its result vector (at most `limit`).
    pub(crate) async fn wait_for(
        &self,
        expr: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Option<Vec<Value>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let result = self.vector(expr).await;
            if done(&result) {
                return Some(result);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }
}

impl PromApi {
    /// The value of the first series of an instant query at `time` (Unix seconds).
    pub(crate) async fn value_at(&self, expr: &str, time: f64) -> Option<f64> {
        let time = format!("{time:.3}");
        let answer = self
            .get("/api/v1/query", &[("query", expr), ("time", time.as_str())])
            .await?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }

    /// The points of the first series of a range query from `start` to `end` (Unix
    /// seconds) every `step` seconds.
    pub(crate) async fn range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: u32,
    ) -> Vec<(f64, f64)> {
        let (start, end, step) = (format!("{start:.3}"), format!("{end:.3}"), step.to_string());
        let query = [
            ("query", expr),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", step.as_str()),
        ];
        let answer = self
            .get("/api/v1/query_range", &query)
            .await
            .unwrap_or_default();
        answer["data"]["result"][0]["values"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Starts `flowcast run` on `addr`, scraping `app` every second, ready at once from a
/// snapshot seeded in `dir/state`; its log is `dir/flowcast.log`.
pub(crate) fn start_seeded_flowcast(dir: &Path, app: &FakeApp, addr: &str) -> Process {
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    seed_snapshot(&state_dir, &app.url());
    spawn(
        Command::new(env!("CARGO_BIN_EXE_flowcast"))
            .args(["run", "--target", &app.url(), "--selector", SELECTOR])
            .args(["--series-name", "api", "--mc-passes", "10"])
            .args(["--scrape-interval", "1s", "--forecast-interval", "1s"])
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--listen", addr]),
        dir.join("flowcast.log"),
    )
}

/// The sample value of one element of a result vector.
fn sample(element: &Value) -> f64 {
    element["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn one_positive(result: &[Value]) -> bool {
    result.len() == 1 && sample(&result[0]) > 0.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_runs_the_dashboard_keda_queries_and_rules_on_flowcast() {
    let Some(prometheus_bin) = support::tool("prometheus") else {
        return;
    };
    let dir = scratch_dir("prometheus");

    // The application: its request counter grows by 20 req/s.
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

    // flowcast, ready at once from the seeded history.
    let flowcast_addr = format!("127.0.0.1:{}", free_port());
    let flowcast = start_seeded_flowcast(&dir, &app, &flowcast_addr);
    let metrics_url = format!("http://{flowcast_addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready =
            match tokio::time::timeout(Duration::from_secs(2), reqwest::get(&metrics_url)).await {
                Ok(Ok(r)) => {
                    let samples = read_metrics(&r.text().await.unwrap_or_default());
                    value(&samples, "flowcast_ready", &[("series", "api")]) == Some(1.0)
                }
                _ => false,
            };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flowcast was not ready within 30 s (was the seeded snapshot refused?):\n{}",
            flowcast.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Prometheus: scrapes flowcast and the app every second, evaluates the deploy rules.
    let prom_port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: flowcast\n    static_configs: [{{targets: ['{flowcast_addr}']}}]\n\
         \x20 - job_name: api\n    static_configs: [{{targets: ['{app}']}}]\n",
        rules = repo_path("deploy/prometheus/flowcast.rules.yml").display(),
        app = app.addr,
    );
    let prometheus = start_prometheus(&prometheus_bin, &dir, &config, prom_port);
    let api = PromApi {
        base: format!("http://127.0.0.1:{prom_port}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client"),
    };
    let diagnose = || {
        format!(
            "prometheus log:\n{}\nflowcast log:\n{}",
            prometheus.log_tail(),
            flowcast.log_tail()
        )
    };

    // Prometheus has scraped flowcast and the app a few times (a rate needs two samples).
    let scraped = format!(
        "min(count_over_time(up{{instance=~\"{flowcast_addr}|{}\"}}[1m])) >= 3 and min(up) == 1",
        app.addr
    );
    let result = api
        .wait_for(&scraped, Duration::from_secs(30), |r| r.len() == 1)
        .await;
    assert!(result.is_some(), "not scraped 3 times:\n{}", diagnose());

    // The KEDA predictive query has one positive value, and so has the reactive one.
    let so = scaled_object();
    for name in ["forecast-upper-10m", "observed-rate"] {
        let query = trigger(&so, name)["metadata"]["query"]
            .as_str()
            .expect("query")
            .to_string();
        let result = api
            .wait_for(&query, Duration::from_secs(60), one_positive)
            .await;
        assert!(
            result.is_some(),
            "KEDA trigger {name}: {query} did not return exactly one positive value: {}\n{}",
            api.query(&query).await,
            diagnose()
        );
    }

    // Recording rules: the service-level band around a positive mean.
    let band = |metric: &str| format!("{metric}{{series=\"api\",horizon=\"10m\"}}");
    let mean = band("service:flowcast_forecast_requests_per_second:sum");
    let upper = band("service:flowcast_forecast_upper_requests_per_second:normal95");
    let lower = band("service:flowcast_forecast_lower_requests_per_second:normal95");
    for (expr, what) in [
        (mean.clone(), "positive"),
        (upper.clone(), "positive"),
        (
            "service:flowcast_observed_requests_per_second:sum{series=\"api\"}".to_string(),
            "positive",
        ),
        (format!("{upper} - {mean}"), "positive (σ > 0)"),
        (
            format!("{mean} - {lower} + 1e-9"),
            "positive (lower ≤ mean)",
        ),
    ] {
        let result = api
            .wait_for(&expr, Duration::from_secs(30), one_positive)
            .await;
        assert!(
            result.is_some(),
            "recording rules: {expr} is not {what}: {}\n{}",
            api.query(&expr).await,
            diagnose()
        );
    }

    // Every rule has been evaluated without an error.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let answer = api.get("/api/v1/rules", &[]).await.unwrap_or(Value::Null);
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown") {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "rules not evaluated: {answer}\n{}",
            diagnose()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        rules.len(),
        crate::rules::rules().len(),
        "every rule of the file is loaded"
    );
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed: {}",
            r["name"], r["lastError"]
        );
    }

    // Every dashboard target is valid PromQL. Those on gauges flowcast exports from its
    // first tick (no offset into the past, no judged steps, no failures) return data.
    let d = dashboard();
    let values = [
        ("datasource", "prometheus"),
        ("series", "api"),
        ("instance", flowcast_addr.as_str()),
        ("horizon", "15m"),
    ];
    let later = [
        "offset",
        "coverage",
        "error_ratio",
        "anomaly",
        "out_of_band",
        "scrape_failures",
    ];
    let mut with_data = 0;
    let all = targets(&d);
    for (title, expr, _) in &all {
        let promql = substitute(expr, &values, "1m");
        let answer = api.query(&promql).await;
        assert_eq!(
            answer["status"], "success",
            "panel {title:?}: {promql} → {answer}"
        );
        if !later.iter().any(|l| expr.contains(l)) {
            let n = answer["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(
                n > 0,
                "panel {title:?}: {promql} returned no data: {answer}"
            );
            with_data += 1;
        }
    }
    assert!(
        with_data >= 10,
        "only {with_data} of {} targets were checked for data",
        all.len()
    );

    // The service forecaster's query is valid and gives one series, as the source needs.
    let query = crate::kubernetes::service_forecaster_query();
    let result = api
        .wait_for(&query, Duration::from_secs(10), one_positive)
        .await;
    assert!(result.is_some(), "{query}: {}", api.query(&query).await);

    feeder.abort();
    drop(prometheus);
    drop(flowcast);
    let _ = std::fs::remove_dir_all(&dir);
}
