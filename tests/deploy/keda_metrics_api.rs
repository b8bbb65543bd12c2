//! The valueLocations of `deploy/keda/scaledobject-metrics-api.yaml` against a live
//! flowcast's `/api/v1/forecast`, read with the Rust port of GJSON (by GJSON's author) as
//! KEDA's metrics-api scaler reads them, and those of
//! `deploy/keda/scaledobject-metrics-api-prometheus.yaml` (`format: prometheus`) against
//! the same flowcast's `/metrics`, read as KEDA's `getValueFromPrometheusResponse` does:
//! a number when the series is ready (the exposition's own 10m upper bound), nothing at all
//! when it is not, so KEDA errors and its fallback takes over instead of scaling on a
//! made-up value.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::keda::{metrics_api_scaled_object, trigger};
use crate::prometheus::{exposition, seed_snapshot, spawn, SELECTOR};
use crate::scratch_dir;
use crate::support::{free_port, FakeApp};

/// The predictive trigger's valueLocation, as documented.
pub const PREDICTIVE_LOCATION: &str =
    r#"series.#(labels.series=="api").forecast.#(horizon=="10m").upper"#;
/// The reactive trigger's valueLocation.
pub const REACTIVE_LOCATION: &str = r#"series.#(labels.series=="api").observed"#;

/// The predictive trigger's valueLocation in `format: prometheus`: a metric selector.
pub const PREDICTIVE_SELECTOR: &str =
    r#"flowcast_forecast_upper_requests_per_second{series="api",horizon="10m"}"#;
/// The reactive trigger's.
pub const REACTIVE_SELECTOR: &str = r#"flowcast_observed_requests_per_second{series="api"}"#;

/// A metric selector as KEDA reads it for `format: prometheus`: a metric name and
/// `label="value"` matchers (KEDA compares names and values only).
pub fn parse_selector(selector: &str) -> Result<(String, Vec<(String, String)>), String> {
    let re = regex::Regex::new(r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$"#).expect("regex");
    let matcher =
        regex::Regex::new(r#"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"\\]*)"\s*$"#).expect("regex");
    let c = re
        .captures(selector.trim())
        .ok_or_else(|| format!("{selector:?} is not a metric selector"))?;
    let mut matchers = Vec::new();
    if let Some(body) = c.get(2).filter(|b| !b.as_str().trim().is_empty()) {
        for part in body.as_str().split(',').filter(|p| !p.trim().is_empty()) {
            let m = matcher
                .captures(part)
                .ok_or_else(|| format!("{part:?} in {selector:?} is not label=\"value\""))?;
            matchers.push((m[1].to_string(), m[2].to_string()));
        }
    }
    Ok((c[1].to_string(), matchers))
}

/// What KEDA's metrics-api scaler does with a Prometheus exposition (`format: prometheus`):
/// the family of the selector's name, then the FIRST sample, in the text's order, whose
/// labels include every matcher; its value if it is a gauge, counter or untyped sample.
pub fn keda_prometheus_value(body: &str, selector: &str) -> Result<f64, String> {
    let (name, matchers) = parse_selector(selector)?;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("prometheus format parsing error: {e}"))?;
    let mut family = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .peekable();
    if family.peek().is_none() {
        return Err(format!("metric '{name}' not found"));
    }
    for sample in family {
        if matchers
            .iter()
            .all(|(k, v)| sample.labels.get(k) == Some(v.as_str()))
        {
            match sample.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => return Ok(v),
                _ => {}
            }
        }
    }
    Err(format!("value {selector} not found"))
}

/// The value of the one exposition line of `name` that carries every `label="value"`,
/// read as text (independent of any parser).
fn line_value(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = body.lines().filter(|l| {
        l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want))
    });
    let line = found.next()?;
    assert!(
        found.next().is_none(),
        "two lines of {name} with {labels:?}"
    );
    line.rsplit(' ').next()?.parse().ok()
}

/// What KEDA's metrics-api scaler does with a JSON body: a number, or a string that parses
/// as a quantity (not needed here), else an error.
fn keda_value(body: &str, location: &str) -> Result<f64, String> {
    let v = gjson::get(body, location);
    match v.kind() {
        gjson::Kind::Number => Ok(v.f64()),
        _ => Err(format!(
            "valueLocation {location:?} must point to a numeric value or a string parseable as a Quantity, got {}",
            if v.exists() { v.json() } else { "Null" }
        )),
    }
}

/// Polls `url` (bounded) until `done` holds for its JSON, and returns the body.
async fn wait_json(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await {
            last = r.text().await.unwrap_or_default();
            if serde_json::from_str::<Value>(&last).is_ok_and(|v| done(&v)) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} not within 30 s; last body:\n{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_api_value_locations_read_the_live_forecast() {
    let so = metrics_api_scaled_object();
    let location = |name: &str| {
        trigger(&so, name)["metadata"]["valueLocation"]
            .as_str()
            .expect("valueLocation")
            .to_string()
    };
    let (predictive, reactive) = (location("forecast-upper-10m"), location("observed-peak"));
    assert_eq!(predictive, PREDICTIVE_LOCATION);
    assert_eq!(reactive, REACTIVE_LOCATION);

    let dir = scratch_dir("metrics-api");
    let app = FakeApp::start(&exposition(1000.0)).await;
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 1..400 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                app.set(exposition(1000.0 + 5.0 * i as f64));
            }
        })
    };
    let run = |name: &str, state: Option<&std::path::Path>| {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.args(["run", "--target", &app.url(), "--selector", SELECTOR])
            .args(["--series-name", "api", "--mc-passes", "10"])
            .args(["--scrape-interval", "1s", "--forecast-interval", "1s"])
            .args(["--listen", &addr]);
        if let Some(state) = state {
            cmd.arg("--state-dir").arg(state);
        }
        let process = spawn(&mut cmd, dir.join(format!("{name}.log")));
        (process, format!("http://{addr}/api/v1/forecast"))
    };
    // A fresh flowcast: series "api" is known but has too little history to forecast.
    let (_fresh, fresh_url) = run("fresh", None);
    // One seeded with four hours of history: ready at once.
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    seed_snapshot(&state, &app.url());
    let (_seeded, seeded_url) = run("seeded", Some(&state));

    let not_ready = wait_json(&fresh_url, "the not-ready series in the JSON", |v| {
        v["series"][0]["labels"]["series"] == "api" && v["series"][0]["ready"] == false
    })
    .await;
    let v = gjson::get(&not_ready, &predictive);
    assert!(
        !v.exists(),
        "a not-ready series must give KEDA no value, got {:?} from\n{not_ready}",
        v.json()
    );
    assert!(keda_value(&not_ready, &predictive).is_err());
    assert!(
        !not_ready.contains("NaN") && !not_ready.contains("\"upper\""),
        "no number stands in for the forecast:\n{not_ready}"
    );

    let ready = wait_json(&seeded_url, "the ready series", |v| {
        v["series"][0]["ready"] == true && v["series"][0]["observed"].is_number()
    })
    .await;
    let doc: Value = serde_json::from_str(&ready).expect("JSON");
    let upper_10m = doc["series"][0]["forecast"]
        .as_array()
        .expect("forecasts")
        .iter()
        .find(|f| f["horizon"] == "10m")
        .and_then(|f| f["upper"].as_f64())
        .expect("the 10m upper bound");
    let read = keda_value(&ready, &predictive).expect("KEDA reads a number");
    assert_eq!(read, upper_10m, "the 10m upper bound, not another number");
    assert!(read > 0.0);
    let observed = keda_value(&ready, &reactive).expect("KEDA reads the observed peak");
    assert_eq!(Some(observed), doc["series"][0]["observed"].as_f64());
    // The same path does not pick another series or horizon by accident.
    let other = PREDICTIVE_LOCATION.replace("\"api\"", "\"web\"");
    assert!(!gjson::get(&ready, &other).exists());

    // The same two flowcasts through /metrics, as `format: prometheus` reads them.
    let so = crate::keda::metrics_api_prometheus_scaled_object();
    for (name, want) in [
        ("forecast-upper-10m", PREDICTIVE_SELECTOR),
        ("observed-peak", REACTIVE_SELECTOR),
    ] {
        assert_eq!(trigger(&so, name)["metadata"]["valueLocation"], want);
    }
    let metrics = |url: &str| url.replace("/api/v1/forecast", "/metrics");
    let body = |url: String| async move {
        reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body")
    };
    let not_ready = body(metrics(&fresh_url)).await;
    assert!(not_ready.contains("flowcast_ready{"), "{not_ready}");
    let e = keda_prometheus_value(&not_ready, PREDICTIVE_SELECTOR)
        .expect_err("a not-ready series must match nothing");
    assert!(e.contains("not found"), "{e}");
    let ready = body(metrics(&seeded_url)).await;
    let read = keda_prometheus_value(&ready, PREDICTIVE_SELECTOR).expect("KEDA reads a number");
    let line = line_value(
        &ready,
        "flowcast_forecast_upper_requests_per_second",
        &["series=\"api\"", "horizon=\"10m\""],
    )
    .expect("the 10m upper bound line");
    assert_eq!(read, line, "the 10m upper bound, not another sample");
    assert!(read.is_finite() && read > 0.0);
    // The first match by design: a selector without the horizon picks whichever horizon
    // comes first in the text, which is why the shipped one names it.
    let loose = keda_prometheus_value(
        &ready,
        "flowcast_forecast_upper_requests_per_second{series=\"api\"}",
    )
    .expect("first sample");
    let first_line = ready
        .lines()
        .find(|l| {
            l.starts_with("flowcast_forecast_upper_requests_per_second{")
                && l.contains("series=\"api\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(
        Some(loose),
        first_line,
        "the first matching sample in the text"
    );
    let observed = keda_prometheus_value(&ready, REACTIVE_SELECTOR).expect("observed");
    assert!(observed.is_finite() && observed > 0.0);
    assert!(
        keda_prometheus_value(&ready, &PREDICTIVE_SELECTOR.replace("\"api\"", "\"web\"")).is_err()
    );
    feeder.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
