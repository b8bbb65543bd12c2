//! `/metrics` under load (issues #6 and #7): a sidecar with N ready series (default 1,000)
//! served over loopback to a bounded open-loop load generator at a fixed request rate;
//! prints p50/p99/max latency, errors and the exposition size.
//!
//! `cargo bench --bench metrics_load -- [RPS] [SECONDS] [SERIES] [--plain] [--inflate]`
//! (defaults 200 10 1000). Requests send `Accept-Encoding: gzip` as Prometheus does;
//! `--plain` leaves it out (the uncompressed path). The generator checks once that the
//! gzip body decodes to the full page and then only reads the compressed bytes, since it
//! shares the two cores with the server; `--inflate` decodes every body as well, as a
//! scraper would on its own machine.

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowcast::config::FileConfig;
use flowcast::forecast::model::Model;
use flowcast::host::clock::system_now;
use flowcast::run::sidecar::Sidecar;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (rps, seconds, series) = (arg(0, 200), arg(1, 10), arg(2, 1000) as usize);
    let flag = |name: &str| std::env::args().any(|a| a == name);
    let load = Load {
        gzip: !flag("--plain"),
        inflate: flag("--inflate"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(rps, seconds, series, load));
}

/// How the generator asks and reads.
#[derive(Clone, Copy)]
struct Load {
    /// Send `Accept-Encoding: gzip`.
    gzip: bool,
    /// Decode every gzip body.
    inflate: bool,
}

/// A GET of `url`, asking for gzip unless the load is plain.
fn request(client: &reqwest::Client, url: &str, load: Load) -> reqwest::RequestBuilder {
    let r = client.get(url);
    if load.gzip {
        r.header("accept-encoding", "gzip")
    } else {
        r
    }
}

/// The body of `response`, decoded if it is gzip.
async fn read_body(response: reqwest::Response) -> Option<Vec<u8>> {
    let gzip = response
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = response.bytes().await.ok()?;
    if !gzip {
        return Some(body.to_vec());
    }
    let mut text = Vec::with_capacity(body.len() * 12);
    flate2::read::MultiGzDecoder::new(&body[..])
        .read_to_end(&mut text)
        .ok()?;
    Some(text)
}

async fn run(rps: u64, seconds: u64, series: usize, load: Load) {
    // The target is never reachable: the series are seeded, so scrapes fail quietly and the
    // ticks still publish every series.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let config = FileConfig {
        target: Some("http://127.0.0.1:9/metrics".into()),
        selector: Some("x_total".into()),
        by: Some(vec!["route".into()]),
        max_series: Some(series.max(1)),
        mc_passes: Some(30),
        ..FileConfig::default()
    }
    .validate()
    .expect("config");
    let mut sidecar =
        Sidecar::new(&config, Arc::new(Model::embedded().expect("model"))).expect("sidecar");
    let now = (system_now() / 60.0).floor() as i64;
    for i in 0..series {
        let key = vec![format!("/route/{i}")];
        for m in now - 240..now {
            sidecar
                .engine
                .record_rate(&key, m, 10.0 + (i % 50) as f64 + (m % 7) as f64);
        }
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(sidecar.run(listener, stop.clone()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // Wait for the first tick to publish every series.
    let started = Instant::now();
    let size = loop {
        let body = client
            .get(&url)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        if body
            .matches("flowcast_forecast_upper_requests_per_second{")
            .count()
            >= 3 * series
        {
            break body.len();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "series not ready within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ready_after = started.elapsed().as_secs_f64();
    let sample = request(&client, &url, load).send().await.expect("get");
    let encoding = sample
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    assert_eq!(
        encoding.is_some(),
        load.gzip,
        "content-encoding {encoding:?}"
    );
    let sent = sample.content_length().unwrap_or(0);
    let page = read_body(sample).await.expect("a body that decodes");
    assert!(
        page.len() + 64 * 1024 > size
            && String::from_utf8_lossy(&page)
                .matches("flowcast_forecast_upper_requests_per_second{")
                .count()
                >= 3 * series,
        "the {} body decodes to the whole page",
        if load.gzip { "gzip" } else { "plain" }
    );
    println!(
        "{series} ready series after {ready_after:.1}s; /metrics is {:.0} kB, {:.0} kB sent ({})",
        page.len() as f64 / 1e3,
        sent as f64 / 1e3,
        if load.gzip { "gzip" } else { "plain" }
    );
    // Open loop: one request every 1/rps s, each on its own task, at most 512 in flight.
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let mut interval = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rps));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rps * seconds;
    let mut handles = Vec::with_capacity(total as usize);
    for _ in 0..total {
        interval.tick().await;
        let permit = Arc::clone(&limit).acquire_owned().await.expect("permit");
        let (client, url) = (client.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = match request(&client, &url, load).send().await {
                Ok(r) if r.status().is_success() => {
                    if load.inflate {
                        read_body(r).await.is_some()
                    } else {
                        r.bytes().await.is_ok()
                    }
                }
                _ => false,
            };
            drop(permit);
            (t.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(handles.len());
    let mut errors = 0;
    for h in handles {
        let (d, ok) = h.await.expect("task");
        latencies.push(d.as_secs_f64() * 1e3);
        errors += usize::from(!ok);
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "{total} requests at {rps}/s for {seconds}s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {errors}",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
