//! A real Prometheus scrapes flowcast over https with basic auth (issue #17): flowcast's
//! listener runs with an exporter-toolkit web config (the test CA's server certificate,
//! one bcrypt user), and Prometheus trusts the CA through `tls_config.ca_file`. The job
//! with the right password is up; the job with a wrong one, and the job that speaks plain
//! HTTP to the TLS port, are down.

use std::process::Command;
use std::time::Duration;

use crate::prometheus::{exposition, spawn, start_prometheus, PromApi, SELECTOR};
use crate::support::{free_port, FakeApp};
use crate::{repo_path, scratch_dir, support};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_flowcast_over_https_with_basic_auth() {
    let Some(prometheus_bin) = support::tool("prometheus") else {
        return;
    };
    let dir = scratch_dir("https");
    let fixture = |name: &str| repo_path(&format!("tests/fixtures/tls/{name}"));
    let hash = bcrypt::hash("s3cret", 6).expect("bcrypt");
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n",
            fixture("server.pem").display(),
            fixture("server.key").display()
        ),
    )
    .expect("web config");
    let app = FakeApp::start(&exposition(1000.0)).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let flowcast = spawn(
        Command::new(env!("CARGO_BIN_EXE_flowcast"))
            .args(["run", "--target", &app.url(), "--selector", SELECTOR])
            .args(["--mc-passes", "4", "--listen", &addr])
            .arg("--web.config.file")
            .arg(&web),
        dir.join("flowcast.log"),
    );
    let port = free_port();
    let job = |name: &str, extra: &str| {
        format!("  - job_name: {name}\n    static_configs: [{{targets: ['{addr}']}}]\n{extra}")
    };
    let ca = fixture("ca.pem");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}{}",
        job(
            "https",
            &format!(
                "    scheme: https\n    tls_config: {{ca_file: {}}}\n    basic_auth: {{username: prometheus, password: s3cret}}\n",
                ca.display()
            )
        ),
        job(
            "wrong_password",
            &format!(
                "    scheme: https\n    tls_config: {{ca_file: {}}}\n    basic_auth: {{username: prometheus, password: wrong}}\n",
                ca.display()
            )
        ),
        job("plain_http", ""),
    );
    let prometheus = start_prometheus(&prometheus_bin, &dir, &config, port);
    let api = PromApi::new(port);
    let up = api
        .wait_for(
            "up{job=\"https\"} == 1 and on() count(up{job=~\"wrong_password|plain_http\"} == 0) == 2",
            Duration::from_secs(40),
            |r| r.len() == 1,
        )
        .await;
    assert!(
        up.is_some(),
        "prometheus did not scrape flowcast over https (or the wrong jobs were up):\nprometheus:\n{}\nflowcast:\n{}",
        prometheus.log_tail(),
        flowcast.log_tail()
    );
    // What Prometheus stored came from flowcast's own /metrics.
    let scraped = api
        .wait_for(
            "flowcast_scrapes_total{job=\"https\"}",
            Duration::from_secs(10),
            |r| r.len() == 1,
        )
        .await;
    assert!(scraped.is_some(), "no flowcast metric in Prometheus");
}
