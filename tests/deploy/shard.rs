//! `--shard I/N` splits series exactly as Prometheus's `hashmod` relabelling does: a real
//! Prometheus computes `hashmod` over the `by` label values of many targets, and flowcast's
//! `shard::hashmod` must give the same shard for each, for one label and for two (joined
//! with the default `;` separator), including values with separators, quotes and non-ASCII.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::prometheus::start_prometheus;
use crate::support::free_port;
use crate::{scratch_dir, support};

#[tokio::test]
async fn shards_match_a_real_prometheus_hashmod() {
    let Some(prometheus_bin) = support::tool("prometheus") else {
        return;
    };
    let dir = scratch_dir("shard");
    let mut routes: Vec<String> = (0..60).map(|i| format!("/api/v1/item/{i}")).collect();
    routes.extend(["/a;b", "say \"hi\"", "päth/ünïcode", "", "GET;/x"].map(String::from));
    let methods = ["GET", "POST"];
    // One target per (method, route); none is reachable and the scrape interval is long,
    // so Prometheus only relabels them.
    let groups: Vec<Value> = routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            json!({"targets": ["127.0.0.1:1"],
                   "labels": {"method": methods[i % 2], "route": route}})
        })
        .collect();
    // YAML is a superset of JSON, so the configuration is written as JSON.
    let config = json!({
        "global": {"scrape_interval": "1h"},
        "scrape_configs": [{
            "job_name": "shards",
            "static_configs": groups,
            "relabel_configs": [
                {"source_labels": ["method", "route"], "modulus": 4,
                 "target_label": "shard_two", "action": "hashmod"},
                {"source_labels": ["route"], "modulus": 7,
                 "target_label": "shard_one", "action": "hashmod"}
            ]
        }]
    });
    let port = free_port();
    let prometheus = start_prometheus(&prometheus_bin, &dir, &config.to_string(), port);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/api/v1/targets?state=active");
    let deadline = Instant::now() + Duration::from_secs(30);
    let targets = loop {
        let answer: Option<Value> = match client.get(&url).send().await {
            Ok(r) => serde_json::from_str(&r.text().await.unwrap_or_default()).ok(),
            Err(_) => None,
        };
        let active = answer
            .and_then(|a| a["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default();
        if active.len() == routes.len() {
            break active;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus listed {} of {} targets within 30 s:\n{}",
            active.len(),
            routes.len(),
            prometheus.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut checked = 0;
    for t in &targets {
        let labels = &t["labels"];
        let text = |name: &str| labels[name].as_str().unwrap_or_default().to_string();
        let shard = |name: &str| -> u64 {
            text(name)
                .parse()
                .unwrap_or_else(|_| panic!("{name} in {labels}"))
        };
        let (method, route) = (text("method"), text("route"));
        assert_eq!(
            flowcast::forecast::shard::hashmod(&[method.clone(), route.clone()], 4),
            shard("shard_two"),
            "by [method, route] = [{method:?}, {route:?}]"
        );
        assert_eq!(
            flowcast::forecast::shard::hashmod(std::slice::from_ref(&route), 7),
            shard("shard_one"),
            "by [route] = [{route:?}]"
        );
        checked += 1;
    }
    assert_eq!(checked, routes.len());
    // The split is not degenerate: Prometheus put the targets in every one of the 4 shards.
    let mut used: Vec<&str> = targets
        .iter()
        .filter_map(|t| t["labels"]["shard_two"].as_str())
        .collect();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, ["0", "1", "2", "3"]);
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
