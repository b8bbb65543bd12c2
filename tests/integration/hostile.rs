//! Hostile or broken targets never hurt the sidecar (issue #6): a scripted raw-TCP app on
//! loopback answers each scrape the way the test says (garbage, huge bodies, error
//! statuses, stalls, truncation, invalid UTF-8, bad values, hostile labels, 50,000
//! series). After each misbehaviour the sidecar must still answer /metrics quickly, count
//! the failure by reason, and keep the history it held (the seeded series stays ready).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowcast::config::FileConfig;
use flowcast::forecast::model::Model;
use flowcast::host::clock::system_now;
use flowcast::ingest::exposition::{self, Format};
use flowcast::run::sidecar::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{read_metrics, value, Scraped};

/// What the app does on the next scrapes.
#[derive(Clone)]
enum Mode {
    /// A valid exposition with the counter at this value.
    Normal,
    /// Status line, content type and body, sent whole.
    Raw(u16, &'static str, Vec<u8>),
    /// Headers promising more bytes than are sent before the connection closes.
    Truncated,
    /// Never answers.
    Stall,
    /// Closes the connection right after reading the request.
    Reset,
    /// A body of this many bytes of valid-looking comments.
    Huge(usize),
}

#[derive(Clone)]
struct App {
    url: String,
    mode: Arc<Mutex<Mode>>,
    counter: Arc<Mutex<f64>>,
}

impl App {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
        let app = Self {
            url,
            mode: Arc::new(Mutex::new(Mode::Normal)),
            counter: Arc::new(Mutex::new(1000.0)),
        };
        let a = app.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let a = a.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let mode = a.mode.lock().expect("lock").clone();
                    let head = |status: u16, ct: &str, len: usize| {
                        format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: {ct}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                        )
                    };
                    match mode {
                        Mode::Normal => {
                            let c = {
                                let mut c = a.counter.lock().expect("lock");
                                *c += 50.0;
                                *c
                            };
                            let body = format!(
                                "# TYPE app_requests_total counter\napp_requests_total{{code=\"200\"}} {c}\n"
                            );
                            let _ = stream
                                .write_all(
                                    head(200, "text/plain; version=0.0.4", body.len()).as_bytes(),
                                )
                                .await;
                            let _ = stream.write_all(body.as_bytes()).await;
                        }
                        Mode::Raw(status, ct, body) => {
                            let _ = stream
                                .write_all(head(status, ct, body.len()).as_bytes())
                                .await;
                            let _ = stream.write_all(&body).await;
                        }
                        Mode::Truncated => {
                            let _ = stream
                                .write_all(head(200, "text/plain", 10_000).as_bytes())
                                .await;
                            let _ = stream
                                .write_all(b"# TYPE app_requests_total counter\napp_req")
                                .await;
                        }
                        Mode::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
                        Mode::Reset => {}
                        Mode::Huge(n) => {
                            let _ = stream
                                .write_all(head(200, "text/plain", n).as_bytes())
                                .await;
                            let chunk = vec![b'#'; 1 << 16];
                            let mut sent = 0;
                            while sent < n {
                                let k = chunk.len().min(n - sent);
                                if stream.write_all(&chunk[..k]).await.is_err() {
                                    break; // the sidecar stopped reading at its cap
                                }
                                sent += k;
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        app
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().expect("lock") = m;
    }
}

async fn scrape(url: &str) -> (Duration, Vec<Scraped>, String) {
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        reqwest::get(url)
            .await
            .expect("get")
            .text()
            .await
            .expect("body")
    })
    .await
    .expect("/metrics answers within 5 s");
    (started.elapsed(), read_metrics(&body), body)
}

fn failures(s: &[Scraped], reason: &str) -> f64 {
    value(s, "flowcast_scrape_failures_total", &[("reason", reason)]).unwrap_or(0.0)
}

/// Waits (bounded) until `done` holds on /metrics; /metrics must answer fast every time.
async fn until(url: &str, what: &str, done: impl Fn(&[Scraped]) -> bool) -> Vec<Scraped> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (took, samples, _) = scrape(url).await;
        assert!(
            took < Duration::from_secs(1),
            "{what}: /metrics took {took:?}"
        );
        if done(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_are_counted_and_never_hurt_the_sidecar() {
    let app = App::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let config = FileConfig {
        target: Some(app.url.clone()),
        selector: Some("app_requests_total".into()),
        series_name: Some("api".into()),
        scrape_interval: Some("1s".into()),
        scrape_timeout: Some("500ms".into()),
        forecast_interval: Some("1s".into()),
        mc_passes: Some(10),
        by: Some(vec!["code".into()]),
        max_series: Some(5),
        // Room for the 50,000-series body (1.7 MB), not for the 64 MiB one.
        max_body_bytes: Some(4 << 20),
        // Room for the 10 kB hostile label value below (the default is 1024 bytes).
        label_value_length_limit: Some(16_384),
        ..FileConfig::default()
    }
    .validate()
    .expect("config");
    let mut sidecar =
        Sidecar::new(&config, Arc::new(Model::embedded().expect("model"))).expect("sidecar");
    let now_minute = (system_now() / 60.0).floor() as i64;
    for m in now_minute - 240..now_minute {
        sidecar.engine.record_rate(&["200".to_string()], m, 50.0);
    }
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sidecar.run(listener, shutdown.clone()));
    let api = [("series", "api"), ("code", "200")];
    let ready = |s: &[Scraped]| value(s, "flowcast_ready", &api) == Some(1.0);
    let history = |s: &[Scraped]| value(s, "flowcast_history_seconds", &api);
    let before = until(&metrics, "ready at start", |s| ready(s)).await;
    let held = history(&before).expect("history");

    // A `by` label value with a quote, a backslash, a newline and 10 kB: it becomes a
    // series of its own, so it reaches flowcast's output.
    let evil = format!("a\"b\\c\nd{}", "x".repeat(10_000));
    let mut hostile_labels = String::from("# TYPE app_requests_total counter\n");
    hostile_labels.push_str(&format!(
        "app_requests_total{{code=\"a\\\"b\\\\c\\nd{}\"}} 5\n",
        "x".repeat(10_000)
    ));
    let many_series: String = (0..50_000)
        .map(|i| format!("app_requests_total{{code=\"{i}\"}} {i}\n"))
        .collect();
    let cases: Vec<(&str, Mode)> = vec![
        ("parse", Mode::Raw(200, "text/plain", b"\x00\x01garbage{{{ 1 2 3\n".to_vec())),
        ("body_too_large", Mode::Huge(64 << 20)),
        ("http_5xx", Mode::Raw(503, "text/plain", b"down".to_vec())),
        ("http_4xx", Mode::Raw(404, "text/plain", b"no".to_vec())),
        ("timeout", Mode::Stall),
        ("body", Mode::Truncated),
        (
            "parse",
            Mode::Raw(200, "text/plain", b"app_requests_total{code=\"\xff\xfe\"} 1\n".to_vec()),
        ),
        (
            "invalid_value",
            Mode::Raw(200, "text/plain", b"app_requests_total{code=\"200\"} NaN\napp_requests_total{code=\"201\"} -5\napp_requests_total{code=\"202\"} +Inf\n".to_vec()),
        ),
        (
            "parse",
            Mode::Raw(200, "text/plain", b"app_requests_total{code=\"1\",code=\"2\"} 1\n".to_vec()),
        ),
        (
            "parse",
            Mode::Raw(200, "application/openmetrics-text; version=1.0.0", b"app_requests_total 1\n".to_vec()),
        ),
        // Prometheus's per-scrape limits: one sample over any of them fails the scrape.
        (
            "label_value_length_limit",
            Mode::Raw(200, "text/plain", format!("app_requests_total{{code=\"{}\"}} 1\n", "v".repeat(16_385)).into_bytes()),
        ),
        (
            "label_name_length_limit",
            Mode::Raw(200, "text/plain", format!("app_requests_total{{{}=\"1\"}} 1\n", "n".repeat(129)).into_bytes()),
        ),
        (
            "label_limit",
            Mode::Raw(200, "text/plain", format!("other_total{{{}}} 1\n", (0..64).map(|i| format!("l{i}=\"x\"")).collect::<Vec<_>>().join(",")).into_bytes()),
        ),
    ];
    for (reason, mode) in cases {
        let seen = failures(&scrape(&metrics).await.1, reason);
        app.set(mode);
        until(&metrics, reason, |s| failures(s, reason) > seen).await;
        app.set(Mode::Normal);
        // Back to normal: polls resume (the breaker closes) and the history is intact.
        let s = until(&metrics, reason, |s| {
            value(s, "flowcast_source_consecutive_failures", &[]) == Some(0.0)
        })
        .await;
        assert!(ready(&s), "{reason}: still ready");
        assert!(
            history(&s).expect("history") >= held - 120.0,
            "{reason}: history kept"
        );
    }

    // Samples stamped far in the future (or before the ring's start) are refused and
    // counted; they never move the ring, so the history held stays.
    let refused = |s: &[Scraped], reason: &str| {
        value(s, "flowcast_samples_refused_total", &[("reason", reason)]).unwrap_or(0.0)
    };
    app.set(Mode::Raw(
        200,
        "text/plain",
        b"app_requests_total{code=\"200\"} 1e9 4102444800000\napp_requests_total{code=\"201\"} 1e9 1000\n"
            .to_vec(),
    ));
    until(&metrics, "future and old samples refused", |s| {
        refused(s, "future") >= 1.0 && refused(s, "too_old") >= 1.0
    })
    .await;
    app.set(Mode::Normal);
    let s = until(&metrics, "ready after the stamped samples", |s| ready(s)).await;
    assert!(
        history(&s).expect("history") >= held - 120.0,
        "history kept"
    );

    // A reset connection is a failure of its own kind.
    let now = scrape(&metrics).await.1;
    let seen = failures(&now, "connect") + failures(&now, "body");
    app.set(Mode::Reset);
    until(&metrics, "reset", |s| {
        failures(s, "connect") + failures(s, "body") > seen
    })
    .await;

    // Hostile label values (quotes, backslashes, newlines, 10 kB) are data, not syntax:
    // the sidecar's own exposition stays valid and reads back the exact value.
    app.set(Mode::Raw(200, "text/plain", hostile_labels.into_bytes()));
    let evil_series = [("series", "api"), ("code", evil.as_str())];
    until(&metrics, "the hostile series is exported", |s| {
        value(s, "flowcast_ready", &evil_series) == Some(0.0)
    })
    .await;
    let (_, _, body) = scrape(&metrics).await;
    exposition::parse(body.as_bytes(), Format::Text004, |_| {}).expect("own /metrics valid");
    app.set(Mode::Normal);

    // 50,000 series over the cap of 5: the cap holds, the rest are counted as dropped, and
    // the process stays responsive (`until` asserts every /metrics answer is fast).
    let dropped = |s: &[Scraped]| value(s, "flowcast_series_dropped_total", &[]).unwrap_or(0.0);
    let before = dropped(&scrape(&metrics).await.1);
    app.set(Mode::Raw(
        200,
        "text/plain",
        format!("# TYPE app_requests_total counter\n{many_series}").into_bytes(),
    ));
    until(&metrics, "the cap holds and the rest are dropped", |s| {
        dropped(s) >= before + 45_000.0 && value(s, "flowcast_series", &[]) == Some(5.0)
    })
    .await;

    // A reset of the counter and a clock that jumps back are resets, never negative rates.
    app.set(Mode::Normal);
    *app.counter.lock().expect("lock") = 3.0;
    until(&metrics, "reset counted", |s| {
        value(s, "flowcast_source_resets_total", &[]).unwrap_or(0.0) >= 1.0
    })
    .await;
    let s = until(&metrics, "recovered", |s| ready(s)).await;
    assert!(value(
        &s,
        "flowcast_observed_requests_per_second",
        &[("series", "api")]
    )
    .is_none_or(|v| v >= 0.0));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops in time")
        .expect("no panic");
}
