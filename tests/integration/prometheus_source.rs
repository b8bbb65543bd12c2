//! The Prometheus source and backfill against a scripted Prometheus API on loopback (a
//! fake, because the test needs four hours of history and scripted faults): a backfilled
//! sidecar forecasts at once, the bearer token is read from its file, and every kind of
//! bad answer is counted by reason while the sidecar keeps serving.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::{read_metrics, value, Scraped};

type Script = Arc<Mutex<Box<dyn FnMut(&str, &HashMap<String, String>) -> (u16, String) + Send>>>;

/// A fake Prometheus API: answers come from `script(path, query params)`; requests are
/// logged as (path, params, Authorization header).
#[derive(Clone)]
pub(crate) struct FakeProm {
    pub(crate) url: String,
    pub(crate) log: Arc<Mutex<Vec<Logged>>>,
}

/// One request: path, query parameters, Authorization header.
pub(crate) type Logged = (String, HashMap<String, String>, Option<String>);

impl FakeProm {
    pub(crate) async fn start(
        script: impl FnMut(&str, &HashMap<String, String>) -> (u16, String) + Send + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let script: Script = Arc::new(Mutex::new(Box::new(script)));
        let log: Arc<Mutex<Vec<_>>> = Arc::default();
        let (s, l) = (Arc::clone(&script), Arc::clone(&log));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, l) = (Arc::clone(&s), Arc::clone(&l));
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let params: HashMap<String, String> =
                        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                            .into_owned()
                            .collect();
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let path = req.uri().path().to_string();
                    let (status, body) = (s.lock().expect("lock"))(&path, &params);
                    l.lock().expect("lock").push((path, params, auth));
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().expect("ct"));
                        Ok::<_, Infallible>(r)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { url, log }
    }
}

/// A `query_range` answer: one series per route with a rate at every step.
fn matrix(params: &HashMap<String, String>, routes: &[&str]) -> String {
    let start: i64 = params
        .get("start")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end: i64 = params.get("end").and_then(|s| s.parse().ok()).unwrap_or(0);
    let series: Vec<String> = routes
        .iter()
        .map(|route| {
            let values: Vec<String> = (start..=end)
                .step_by(60)
                .map(|t| format!("[{t},\"{}\"]", 30.0 + ((t / 60) % 17) as f64))
                .collect();
            format!(
                "{{\"metric\":{{\"route\":\"{route}\"}},\"values\":[{}]}}",
                values.join(",")
            )
        })
        .collect();
    format!(
        "{{\"status\":\"success\",\"data\":{{\"resultType\":\"matrix\",\"result\":[{}]}}}}",
        series.join(",")
    )
}

pub(crate) fn vector(params: &HashMap<String, String>, routes: &[&str]) -> String {
    let t: i64 = params.get("time").and_then(|s| s.parse().ok()).unwrap_or(0);
    let series: Vec<String> = routes
        .iter()
        .map(|r| format!("{{\"metric\":{{\"route\":\"{r}\"}},\"value\":[{t},\"42\"]}}"))
        .collect();
    format!(
        "{{\"status\":\"success\",\"data\":{{\"resultType\":\"vector\",\"result\":[{}]}}}}",
        series.join(",")
    )
}

struct Child(std::process::Child, String);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Child {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .arg("run")
        .args(args)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mc-passes",
            "10",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("flowcast starts");
    Child(child, format!("http://127.0.0.1:{port}/metrics"))
}

async fn wait_for(url: &str, limit: Duration, done: impl Fn(&[Scraped]) -> bool) -> Vec<Scraped> {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), reqwest::get(url)).await {
            last = read_metrics(&r.text().await.unwrap_or_default());
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "condition not met within {limit:?}; last /metrics had {} samples",
        last.len()
    );
}

fn ready(samples: &[Scraped], route: &str) -> bool {
    value(
        samples,
        "flowcast_ready",
        &[("series", "api"), ("route", route)],
    ) == Some(1.0)
        && value(
            samples,
            "flowcast_forecast_upper_requests_per_second",
            &[("series", "api"), ("route", route), ("horizon", "15m")],
        )
        .is_some()
}

/// `--source prometheus`: a backfill of 4 hours of minutes and a week of 5-minute windows
/// makes both routes ready within seconds with the combination's whole history, the live
/// source then queries `/api/v1/query`, and every call carries the bearer token read from
/// its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_prometheus_source_forecasts_at_once() {
    let prom = FakeProm::start(|path, params| match path {
        "/prom/api/v1/query_range" => (200, matrix(params, &["/a", "/b"])),
        "/prom/api/v1/query" => (200, vector(params, &["/a", "/b"])),
        _ => (404, "not found".into()),
    })
    .await;
    let dir = std::env::temp_dir().join(format!("flowcast-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let base = format!("{}/prom/", prom.url);
    let started = Instant::now();
    let child = start(&[
        "--source",
        "prometheus",
        "--prometheus-url",
        &base,
        "--query",
        "sum by (route) (rate(http_requests_total{job=\"api\"}[1m]))",
        "--by",
        "route",
        "--series-name",
        "api",
        "--scrape-interval",
        "1s",
        "--forecast-interval",
        "1s",
        "--prometheus-bearer-token-file",
        token.to_str().expect("utf-8 path"),
    ]);
    let samples = wait_for(&child.1, Duration::from_secs(15), |s| {
        ready(s, "/a") && ready(s, "/b")
    })
    .await;
    eprintln!("ready after {:?}", started.elapsed());
    assert!(
        value(&samples, "flowcast_backfilled_history_seconds_total", &[]).unwrap_or(0.0)
            >= 2.0 * 200.0 * 60.0,
        "both routes backfilled"
    );
    let log = prom.log.lock().expect("lock").clone();
    let range = log
        .iter()
        .find(|(p, _, _)| p.ends_with("query_range"))
        .expect("a backfill query");
    assert_eq!(range.1["step"], "60");
    assert_eq!(
        range.1["query"],
        "sum by (route) (rate(http_requests_total{job=\"api\"}[1m]))"
    );
    let span: i64 = range.1["end"].parse::<i64>().expect("end")
        - range.1["start"].parse::<i64>().expect("start");
    assert!(
        span >= 3 * 3600,
        "backfills at least the model's 3-hour window: {span}"
    );
    // The week of 5-minute windows the combination keeps: one more range query, of each
    // window's peak minute rate, at a 5-minute step.
    let week = log
        .iter()
        .find(|(p, q, _)| p.ends_with("query_range") && q["step"] == "300")
        .expect("a backfill of the week");
    assert_eq!(
        week.1["query"],
        "max_over_time((sum by (route) (rate(http_requests_total{job=\"api\"}[1m])))[5m:1m])"
    );
    let week_span: i64 =
        week.1["end"].parse::<i64>().expect("end") - week.1["start"].parse::<i64>().expect("start");
    assert!(week_span >= 7 * 86_400, "a week: {week_span}");
    for route in ["/a", "/b"] {
        let held = value(
            &samples,
            "flowcast_step_history_seconds",
            &[("series", "api"), ("route", route)],
        )
        .expect("step history gauge");
        assert!(
            held >= 7.0 * 86_400.0,
            "{route}: {held} s of 5-minute windows"
        );
    }
    assert!(log
        .iter()
        .all(|(_, _, auth)| auth.as_deref() == Some("Bearer s3cret")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each bad answer is counted by reason; the sidecar keeps serving /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prometheus_answers_are_counted_by_reason() {
    let cases: [(&str, u16, &str); 6] = [
        (
            "bad_query",
            400,
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#,
        ),
        ("http_5xx", 503, "service unavailable"),
        ("malformed", 200, "{\"status\":\"success\",\"data\":"),
        (
            "partial",
            200,
            r#"{"status":"success","warnings":["partial response: store down"],"data":{"resultType":"vector","result":[]}}"#,
        ),
        (
            "too_many_series",
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"route":"/a"},"value":[1,"1"]},{"metric":{"route":"/b"},"value":[1,"1"]}]}}"#,
        ),
        (
            "malformed",
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#,
        ),
    ];
    for (reason, status, body) in cases {
        let body = body.to_string();
        let prom = FakeProm::start(move |_, _| (status, body.clone())).await;
        let child = start(&[
            "--source",
            "prometheus",
            "--prometheus-url",
            &prom.url,
            "--query",
            "sum by (route) (rate(x[1m]))",
            "--by",
            "route",
            "--max-series",
            "1",
            "--series-name",
            "api",
            "--scrape-interval",
            "1s",
        ]);
        let samples = wait_for(&child.1, Duration::from_secs(15), |s| {
            value(s, "flowcast_backfill_failures_total", &[("reason", reason)]).is_some()
        })
        .await;
        assert_eq!(
            value(
                &samples,
                "flowcast_backfill_failures_total",
                &[("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
        wait_for(&child.1, Duration::from_secs(15), |s| {
            value(s, "flowcast_scrape_failures_total", &[("reason", reason)]).unwrap_or(0.0) >= 1.0
        })
        .await;
    }
}
