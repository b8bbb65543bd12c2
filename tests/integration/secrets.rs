//! Secrets never leak and flowcast's own endpoints can require credentials: the real
//! binary runs with a password in the target URL, a bearer token file for the target and
//! one for its own endpoints, at debug log level against a target that refuses it; none
//! of the secrets may appear in its logs or its /metrics, and every endpoint but the probes,
//! the web page included, needs the token.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{get, FakeApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_and_metrics_and_endpoints_need_the_token() {
    // The fake app answers its body to anyone; flowcast's scrapes still fail to parse it,
    // so errors are logged while the secrets are in use.
    let app = FakeApp::start("not an exposition {{{\n").await;
    let dir = std::env::temp_dir().join(format!("flowcast-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (target_token, listen_token) = (dir.join("target-token"), dir.join("listen-token"));
    std::fs::write(&target_token, "TOKENSECRET-1").expect("write");
    std::fs::write(&listen_token, "LISTENSECRET-2\n").expect("write");
    let log = dir.join("log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let target = app.url().replace("http://", "http://scraper:URLSECRET-3@");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .args(["run", "--target", &target, "--selector", "x_total"])
        .args([
            "--scrape-interval",
            "1s",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--target-bearer-token-file")
        .arg(&target_token)
        .arg("--listen-bearer-token-file")
        .arg(&listen_token)
        .env("FLOWCAST_LOG", "debug")
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("err")).expect("log"))
        .spawn()
        .expect("starts");
    let base = format!("http://127.0.0.1:{port}");
    // Probes stay open; everything else wants the token.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "listening within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    assert_eq!(get(&format!("{base}/metrics")).await.0, 401);
    assert_eq!(get(&format!("{base}/api/v1/forecast")).await.0, 401);
    assert_eq!(get(&format!("{base}/")).await.0, 401, "the web page too");
    let client = reqwest::Client::new();
    let wrong = client
        .get(format!("{base}/metrics"))
        .bearer_auth("LISTENSECRET-")
        .send()
        .await
        .expect("request");
    assert_eq!(
        wrong.status().as_u16(),
        401,
        "a prefix of the token is not the token"
    );
    // The web page works behind the token: it is one self-contained document, so the
    // authorised request is all a browser (or the proxy that adds the token) makes.
    let page = client
        .get(format!("{base}/"))
        .bearer_auth("LISTENSECRET-2")
        .send()
        .await
        .expect("request");
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.expect("body");
    assert!(page.contains("<h1>flowcast</h1>"), "{page}");
    assert!(
        !page.contains(" src=") && !page.contains("<link") && !page.contains("<script"),
        "the page loads nothing else: {page}"
    );
    // Let a few scrapes fail and be logged.
    let mut body = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let parse_failures = |body: &str| {
        crate::support::value(
            &crate::support::read_metrics(body),
            "flowcast_scrape_failures_total",
            &[("reason", "parse")],
        )
        .unwrap_or(0.0)
    };
    while parse_failures(&body) < 3.0 {
        assert!(
            Instant::now() < deadline,
            "three failed scrapes within 15 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = client
            .get(format!("{base}/metrics"))
            .bearer_auth("LISTENSECRET-2")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
        body = r.text().await.expect("body");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    assert!(
        logs.contains("source poll failed"),
        "the failures were logged:\n{logs}"
    );
    for secret in ["URLSECRET", "TOKENSECRET", "LISTENSECRET"] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
        assert!(!body.contains(secret), "{secret} leaked into /metrics");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
