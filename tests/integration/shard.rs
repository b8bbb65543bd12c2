//! `--shard I/N` run the way a platform team would: two `flowcast run` replicas with
//! `--shard 0/2` and `--shard 1/2` scrape the same target, and between them they forecast
//! every series exactly once, each the series Prometheus's `hashmod` gives its shard.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, read_metrics, ChildGuard, FakeApp};

const ROUTES: usize = 24;

fn exposition(step: u64) -> String {
    let mut text = String::from("# TYPE app_requests_total counter\n");
    for r in 0..ROUTES {
        text.push_str(&format!(
            "app_requests_total{{route=\"/r{r}\"}} {}\n",
            100 * step + r as u64
        ));
    }
    text
}

/// The routes this replica exports `flowcast_ready` for.
async fn routes_of(metrics: &str) -> BTreeSet<String> {
    match tokio::time::timeout(Duration::from_secs(2), reqwest::get(metrics)).await {
        Ok(Ok(r)) => read_metrics(&r.text().await.unwrap_or_default())
            .into_iter()
            .filter(|s| s.name == "flowcast_ready")
            .filter_map(|s| s.labels.get("route").cloned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_the_series_between_them() {
    let app = FakeApp::start(&exposition(0)).await;
    let feeder = {
        let app = app.clone();
        tokio::spawn(async move {
            for step in 1..200 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                app.set(exposition(step));
            }
        })
    };
    let replicas: Vec<(ChildGuard, String)> = (0..2)
        .map(|index| {
            let port = free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_flowcast"))
                .args([
                    "run",
                    "--target",
                    &app.url(),
                    "--selector",
                    "app_requests_total",
                ])
                .args(["--by", "route", "--shard", &format!("{index}/2")])
                .args(["--scrape-interval", "1s", "--max-series", "20"])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("flowcast starts");
            (
                ChildGuard(child),
                format!("http://127.0.0.1:{port}/metrics"),
            )
        })
        .collect();

    let all: BTreeSet<String> = (0..ROUTES).map(|r| format!("/r{r}")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (a, b) = loop {
        let a = routes_of(&replicas[0].1).await;
        let b = routes_of(&replicas[1].1).await;
        if a.union(&b).count() == ROUTES {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "the two shards did not cover all {ROUTES} routes within 20 s: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    feeder.abort();
    assert!(a.is_disjoint(&b), "a route forecast twice: {a:?} {b:?}");
    assert_eq!(a.union(&b).cloned().collect::<BTreeSet<_>>(), all);
    for (index, routes) in [(0u64, &a), (1, &b)] {
        assert!(!routes.is_empty(), "shard {index} got nothing");
        for r in routes.iter() {
            assert_eq!(
                flowcast::forecast::shard::hashmod(std::slice::from_ref(r), 2),
                index,
                "{r} in shard {index}"
            );
        }
    }
}
