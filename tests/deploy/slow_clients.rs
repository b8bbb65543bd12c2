//! Hostile clients on flowcast's listener (issue #23, point 4), with a real Prometheus
//! scraping the real binary at the same time: idle connections and keep-alive connections
//! that never send a second request time out, and 600 slow connections (slowloris,
//! idle, kept-alive; more than twice the cap of 256) never keep Prometheus's scrape or the
//! probes out.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::prometheus::{exposition, start_prometheus, start_seeded_flowcast, PromApi};
use crate::scratch_dir;
use crate::support::hostile_clients::{self, Kind};
use crate::support::{free_port, read_metrics, value, FakeApp};

/// flowcast's header read timeout (src/serve/server.rs): a connection must send a request's
/// headers within this of opening, or of its last response.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Hostile clients of each kind: 3 × 200 = 600 connections against a cap of 256.
const PER_KIND: usize = 200;
/// How long the hostile clients hold the listener while Prometheus scrapes.
const ATTACK: Duration = Duration::from_secs(20);
/// Prometheus's scrape interval and timeout for flowcast, and the probes' timeout.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Seconds until the server closes this connection (read returns end-of-stream or an
/// error), at most `limit`.
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = started + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// A probe's answer within the timeout: its latency, or why not.
async fn probe(client: &reqwest::Client, url: &str) -> Result<Duration, String> {
    let started = Instant::now();
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(started.elapsed()),
        Ok(r) => Err(format!("{url}: status {}", r.status())),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_beyond_the_cap_never_keep_prometheus_or_the_probes_out() {
    let Some(prometheus_bin) = crate::support::tool("prometheus") else {
        return;
    };
    let dir = scratch_dir("slow-clients");
    let app = FakeApp::start(&exposition(1000.0)).await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let flowcast = start_seeded_flowcast(&dir, &app, &addr.to_string());
    let metrics_url = format!("http://{addr}/metrics");
    // A new connection per request, as the kubelet's probes open (a pooled keep-alive
    // connection, accepted before the slow clients came, would never meet the cap).
    let client = reqwest::Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe(&client, &format!("http://{addr}/healthz"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "flowcast did not answer within 30 s:\n{}",
            flowcast.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Idle connections time out: one that never sends, and one kept alive after its
    //    first answer, are closed by the server within the header timeout (and not before
    //    most of it has passed: the timeout, not something else, closed them).
    let limit = HEADER_TIMEOUT + Duration::from_secs(3);
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let idle_closed = closed_after(&mut idle, limit)
        .await
        .expect("an idle connection is closed within the header timeout");
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("send");
    let mut head = [0u8; 1024];
    let n = kept.read(&mut head).await.expect("the answer");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    let kept_closed = closed_after(&mut kept, limit)
        .await
        .expect("a kept-alive connection is closed within the header timeout");
    eprintln!("idle connection closed after {idle_closed:.1?}, kept-alive after {kept_closed:.1?}");
    for closed in [idle_closed, kept_closed] {
        assert!(closed >= HEADER_TIMEOUT - Duration::from_millis(500));
    }

    // 2. A real Prometheus scrapes flowcast every second with a 1-s timeout.
    let prom_port = free_port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: flowcast\n    static_configs: [{{targets: ['{addr}']}}]\n"
    );
    let prometheus = start_prometheus(&prometheus_bin, &dir, &config, prom_port);
    let api = PromApi::new(prom_port);
    let diagnose = || {
        format!(
            "prometheus log:\n{}\nflowcast log:\n{}",
            prometheus.log_tail(),
            flowcast.log_tail()
        )
    };
    assert!(
        api.wait_for("up{job=\"flowcast\"} == 1", Duration::from_secs(30), |r| r
            .len()
            == 1)
            .await
            .is_some(),
        "Prometheus never scraped flowcast:\n{}",
        diagnose()
    );

    // 3. 600 slow connections, reopened as soon as they are closed, for 20 s; the probes
    //    are polled throughout, each with a 1-s timeout.
    let stop = CancellationToken::new();
    let (tally, clients) = hostile_clients::start(
        addr,
        &[Kind::Slowloris, Kind::Idle, Kind::KeptAlive],
        PER_KIND,
        &stop,
    );
    let attack_started = Instant::now();
    let (mut probes, mut worst, mut failures) = (0, Duration::ZERO, Vec::new());
    while attack_started.elapsed() < ATTACK {
        for path in ["/healthz", "/readyz"] {
            match probe(&client, &format!("http://{addr}{path}")).await {
                Ok(latency) => worst = worst.max(latency),
                Err(e) => failures.push(e),
            }
            probes += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // flowcast's own view, while the clients still hold it.
    let own = match client.get(&metrics_url).send().await {
        Ok(r) => read_metrics(&r.text().await.unwrap_or_default()),
        Err(e) => {
            failures.push(format!("/metrics: {e}"));
            Vec::new()
        }
    };
    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
    let opened = tally.opened.load(Ordering::Relaxed);
    let closed = tally.closed_by_server.load(Ordering::Relaxed);
    eprintln!(
        "{probes} probes, worst {worst:.1?}, {} failed; hostile connections opened {opened}, \
         closed by the server {closed}, connect errors {}",
        failures.len(),
        tally.connect_errors.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "probes failed under slow clients: {failures:?}"
    );

    // 4. Prometheus got every scrape of the attack, each within its timeout.
    let window = format!("{}s", ATTACK.as_secs());
    let at = flowcast::host::clock::system_now();
    let scrapes = api
        .value_at(
            &format!("count_over_time(up{{job=\"flowcast\"}}[{window}])"),
            at,
        )
        .await;
    let lowest = api
        .value_at(
            &format!("min_over_time(up{{job=\"flowcast\"}}[{window}])"),
            at,
        )
        .await;
    let slowest = api
        .value_at(
            &format!("max_over_time(scrape_duration_seconds{{job=\"flowcast\"}}[{window}])"),
            at,
        )
        .await;
    eprintln!(
        "Prometheus over the attack: {scrapes:?} scrapes, min up {lowest:?}, slowest {slowest:?} s"
    );
    assert!(
        scrapes.is_some_and(|n| n >= 15.0),
        "{scrapes:?} scrapes in {window}:\n{}",
        diagnose()
    );
    assert_eq!(
        lowest,
        Some(1.0),
        "a scrape of flowcast failed under slow clients:\n{}",
        diagnose()
    );
    assert!(slowest.is_some_and(|s| s < SCRAPE_TIMEOUT.as_secs_f64()));

    // 5. flowcast shed slow connections to make room, and never held more than its cap.
    let shed = value(&own, "flowcast_http_connections_shed_total", &[]).unwrap_or(0.0);
    let open = value(&own, "flowcast_http_open_connections", &[]).unwrap_or(f64::NAN);
    eprintln!("flowcast: {shed} connections shed, {open} open");
    assert!(shed > 0.0, "the cap was reached, so connections were shed");
    assert!(open <= 256.0, "{open} connections open, over the cap");
    assert!(
        opened > (3 * PER_KIND) as u64 && closed > (3 * PER_KIND) as u64,
        "every slow client was closed and came back at least once ({opened} opened, {closed} closed)"
    );
    drop(prometheus);
    drop(flowcast);
    let _ = std::fs::remove_dir_all(&dir);
}
