//! Test support: a scripted fake app on loopback, an HTTP getter and a reader of `/metrics`
//! text that reads it the way Prometheus does (with flowcast's own parser).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flowcast::ingest::exposition::{self, Format};
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

// Used by the slow-clients test (tests/deploy) and bench only.
#[allow(dead_code)]
pub mod hostile_clients;

/// A fake application whose `/metrics` body is whatever the test last set.
#[derive(Clone)]
pub struct FakeApp {
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
}

impl FakeApp {
    pub async fn start(initial: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake app");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(initial.to_string()));
        let served = Arc::clone(&body);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let served = Arc::clone(&served);
                let service = hyper::service::service_fn(move |_req| {
                    let text = served.lock().expect("lock").clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { addr, body }
    }

    pub fn set(&self, text: String) {
        *self.body.lock().expect("lock") = text;
    }

    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }
}

/// GET over loopback with a timeout: (status, content type, body).
pub async fn get(url: &str) -> (u16, String, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let r = client.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, r.text().await.expect("body"))
}

/// One sample of a scraped `/metrics` page.
#[derive(Debug, Clone)]
pub struct Scraped {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses `/metrics` text as Prometheus would read it (text format 0.0.4).
pub fn read_metrics(text: &str) -> Vec<Scraped> {
    let mut out = Vec::new();
    exposition::parse(text.as_bytes(), Format::Text004, |s| {
        out.push(Scraped {
            name: s.name.to_string(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: s.value,
        })
    })
    .expect("flowcast's /metrics parses as text 0.0.4");
    out
}

/// The value of `name` with exactly these labels.
pub fn value(samples: &[Scraped], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// The path of an external tool, or `None` (with a note) when it is not installed. With
/// `FLOWCAST_REQUIRE_TOOLS=1` (set by .ci/run) a missing tool fails the test instead.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("FLOWCAST_REQUIRE_TOOLS").is_none(),
            "{name} is required (FLOWCAST_REQUIRE_TOOLS is set) but not on PATH"
        );
        eprintln!("note: {name} is not installed; skipping (apt-get install prometheus)");
    }
    found
}

/// `python3` with numpy and pandas (what `../shared/eval`'s scripts need), or `None` with a
/// note when it is missing or cannot import them. With `FLOWCAST_REQUIRE_TOOLS=1` that is
/// a failure instead (.ci/run installs them).
pub fn python() -> Option<std::path::PathBuf> {
    let python = tool("python3")?;
    let imports = std::process::Command::new(&python)
        .args(["-c", "import numpy, pandas"])
        .output();
    match imports {
        Ok(out) if out.status.success() => Some(python),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("FLOWCAST_REQUIRE_TOOLS").is_none(),
                "python3 with numpy and pandas is required (FLOWCAST_REQUIRE_TOOLS is set): {why}"
            );
            eprintln!("note: python3 cannot import numpy and pandas; skipping (pip install numpy pandas): {why}");
            None
        }
    }
}

/// `../shared` beside the repository (the evaluation scripts and the development data), or
/// `None` with a note; with `FLOWCAST_REQUIRE_TOOLS=1` a missing one is a failure.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.join("eval/scaling.py").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("FLOWCAST_REQUIRE_TOOLS").is_none(),
        "{} is required (FLOWCAST_REQUIRE_TOOLS is set) but holds no eval/scaling.py",
        dir.display()
    );
    eprintln!("note: {} is missing; skipping", dir.display());
    None
}

/// Writes a `--state-dir` snapshot holding four hours of history (about 20 req/s) up to now
/// for the series `key`, as a previous sidecar with this model and `config` would have, so
/// a sidecar started on `dir` is ready at once.
pub fn seed_snapshot(
    dir: &std::path::Path,
    config: &flowcast::config::Config,
    key: &[String],
) -> flowcast::forecast::state::Snapshot {
    seed_snapshot_keys(dir, config, &[key.to_vec()])
}

/// [`seed_snapshot`] for several series.
pub fn seed_snapshot_keys(
    dir: &std::path::Path,
    config: &flowcast::config::Config,
    keys: &[Vec<String>],
) -> flowcast::forecast::state::Snapshot {
    use flowcast::forecast::engine::{Engine, EngineSettings};
    use flowcast::host::clock::system_now;
    let model = Arc::new(flowcast::forecast::model::Model::embedded().expect("model"));
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes: 10,
            seed: 0,
            band: config.band,
            experts: config.experts,
            limits: flowcast::forecast::history::SeriesLimits {
                max_series: keys.len().max(10),
                max_children: keys.len().max(100),
                max_gap_seconds: 120.0,
                shard: None,
                stale_after_seconds: None,
            },
        },
    );
    let now_minute = (system_now() / 60.0).floor() as i64;
    for key in keys {
        for m in now_minute - 240..now_minute {
            engine.record_rate(key, m, 20.0 + (m % 30) as f64 / 6.0);
        }
    }
    let identity = config.state_identity();
    let snapshot = engine.snapshot(identity, system_now() - 30.0);
    flowcast::forecast::state::write(dir, &snapshot, None).expect("seed snapshot written");
    snapshot
}

/// Kills (by PID, via the handle) the child a test started, whatever the outcome.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Sends SIGTERM to a child this test started.
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Waits at most `limit` for a child to exit; its status, or `None` if it did not.
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts `flowcast demo` for `duration` on an ephemeral loopback port and returns it with the page and
/// `/metrics` URLs read from its banner. Its stdout keeps being drained so the demo never
/// writes into a closed pipe.
pub async fn start_demo(duration: &str) -> (ChildGuard, String, String) {
    let mut child = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
            .args(["demo", "--listen", "127.0.0.1:0", "--duration", duration])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("demo starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let (mut page, mut metrics) = (None, None);
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let url = line.split_whitespace().last().unwrap_or_default();
            if line.trim_start().starts_with("web page:") {
                page = Some(url.to_string());
            } else if line.trim_start().starts_with("metrics:") {
                metrics = Some(url.to_string());
            }
            if let (Some(p), Some(m)) = (&page, &metrics) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send((p.clone(), m.clone()));
                }
            }
        }
    });
    let (page, metrics) = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the demo prints its banner within 20 s")
        .expect("the demo prints its page and metrics URLs");
    assert!(
        page.starts_with("http://127.0.0.1:") && metrics.starts_with("http://127.0.0.1:"),
        "demo not on loopback: {page} {metrics}"
    );
    (child, page, metrics)
}
