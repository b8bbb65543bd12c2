//! Authentication and TLS to the target: an https fake app (certificate signed by a test CA
//! in tests/fixtures/tls) that demands credentials. The sidecar trusts the CA only when
//! told to, sends basic auth or a bearer token read from files, and picks up a rotated
//! token without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowcast::config::FileConfig;
use flowcast::forecast::model::Model;
use flowcast::run::sidecar::Sidecar;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{read_metrics, value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// The test server's TLS: the fixture certificate, with `client_ca` demanding a client
/// certificate signed by it.
fn tls_acceptor(client_ca: Option<&str>) -> tokio_rustls::TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).expect("key");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocols");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(fixture(ca)).expect("client CA") {
                roots.add(cert.expect("cert")).expect("root");
            }
            let verifier =
                tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An https app that answers 200 with a growing counter when the Authorization header
/// equals `expected`, else 401. With `client_ca`, the TLS handshake also demands a client
/// certificate signed by that CA (mutual TLS).
async fn https_app(expected: Arc<Mutex<String>>, client_ca: Option<&str>) -> String {
    let acceptor = tls_acceptor(client_ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "https://127.0.0.1:{}/metrics",
        listener.local_addr().expect("addr").port()
    );
    let counter = Arc::new(Mutex::new(100.0_f64));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, expected, counter) = (
                acceptor.clone(),
                Arc::clone(&expected),
                Arc::clone(&counter),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let ok = auth == *expected.lock().expect("lock");
                    let c = {
                        let mut c = counter.lock().expect("lock");
                        *c += 10.0;
                        *c
                    };
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(if ok {
                            format!("# TYPE app_requests_total counter\napp_requests_total {c}\n")
                        } else {
                            "unauthorised".to_string()
                        })));
                        if !ok {
                            *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    url
}

async fn run_sidecar(config: FileConfig) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = format!("http://{}/metrics", listener.local_addr().expect("addr"));
    let config = FileConfig {
        selector: Some("app_requests_total".into()),
        scrape_interval: Some("1s".into()),
        forecast_interval: Some("1s".into()),
        mc_passes: Some(5),
        ..config
    }
    .validate()
    .expect("config");
    let sidecar =
        Sidecar::new(&config, Arc::new(Model::embedded().expect("model"))).expect("sidecar");
    let token = CancellationToken::new();
    tokio::spawn(sidecar.run(listener, token.clone()));
    (metrics, token)
}

/// Waits (bounded) until the scrape counters satisfy `done(ok, failures by reason)`.
async fn wait_scrapes(metrics: &str, what: &str, done: impl Fn(f64, &dyn Fn(&str) -> f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(metrics).await {
            let s = read_metrics(&r.text().await.unwrap_or_default());
            let total = value(&s, "flowcast_scrapes_total", &[]).unwrap_or(0.0);
            let failed = |reason: &str| {
                value(&s, "flowcast_scrape_failures_total", &[("reason", reason)]).unwrap_or(0.0)
            };
            let all_failed: f64 = s
                .iter()
                .filter(|x| x.name == "flowcast_scrape_failures_total")
                .map(|x| x.value)
                .sum();
            if done(total - all_failed, &failed) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_need_the_ca_and_credentials_from_files() {
    let dir = std::env::temp_dir().join(format!("flowcast-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let password = dir.join("password");
    std::fs::write(&password, "hunter2\n").expect("password");
    // "flow:hunter2" in base64.
    let basic = Arc::new(Mutex::new("Basic ZmxvdzpodW50ZXIy".to_string()));
    let url = https_app(Arc::clone(&basic), None).await;

    // Without the CA the certificate is not trusted: every scrape fails to connect.
    let (m, stop) = run_sidecar(FileConfig {
        target: Some(url.clone()),
        target_basic_auth_user: Some("flow".into()),
        target_basic_auth_password_file: Some(password.clone()),
        ..FileConfig::default()
    })
    .await;
    wait_scrapes(&m, "untrusted", |ok, failed| {
        ok == 0.0 && failed("connect") >= 2.0
    })
    .await;
    stop.cancel();

    // With the CA and the right password: scrapes succeed.
    let (m, stop) = run_sidecar(FileConfig {
        target: Some(url.clone()),
        target_ca_file: Some(fixture("ca.pem")),
        target_basic_auth_user: Some("flow".into()),
        target_basic_auth_password_file: Some(password.clone()),
        ..FileConfig::default()
    })
    .await;
    wait_scrapes(&m, "trusted", |ok, _| ok >= 2.0).await;
    stop.cancel();

    // A bearer token is re-read on every scrape: rotating the file fixes a 401.
    let token = dir.join("token");
    std::fs::write(&token, "t1").expect("token");
    *basic.lock().expect("lock") = "Bearer t1".into();
    let (m, stop) = run_sidecar(FileConfig {
        target: Some(url),
        target_ca_file: Some(fixture("ca.pem")),
        target_bearer_token_file: Some(token.clone()),
        ..FileConfig::default()
    })
    .await;
    wait_scrapes(&m, "token t1", |ok, _| ok >= 1.0).await;
    *basic.lock().expect("lock") = "Bearer t2".into(); // the server rotated
    wait_scrapes(&m, "401 after rotation", |_, failed| {
        failed("http_4xx") >= 1.0
    })
    .await;
    std::fs::write(&token, "t2\n").expect("rotate the file");
    let seen_ok = Arc::new(Mutex::new(None::<f64>));
    wait_scrapes(&m, "token t2", |ok, failed| {
        // Successes resume once the file holds the new token.
        let mut s = seen_ok.lock().expect("lock");
        let first = *s.get_or_insert(ok);
        let _ = failed;
        ok >= first + 2.0
    })
    .await;
    stop.cancel();

    // Mutual TLS: without a client certificate the handshake fails; with one signed by the
    // app's client CA (read from files) scrapes succeed.
    let mtls = https_app(
        Arc::new(Mutex::new("Bearer t2".into())),
        Some("client-ca.pem"),
    )
    .await;
    let base = FileConfig {
        target: Some(mtls),
        target_ca_file: Some(fixture("ca.pem")),
        target_bearer_token_file: Some(token.clone()),
        ..FileConfig::default()
    };
    let (m, stop) = run_sidecar(base.clone()).await;
    wait_scrapes(&m, "no client certificate", |ok, failed| {
        ok == 0.0 && failed("connect") + failed("body") >= 2.0
    })
    .await;
    stop.cancel();
    let (m, stop) = run_sidecar(FileConfig {
        target_client_cert_file: Some(fixture("client.pem")),
        target_client_key_file: Some(fixture("client.key")),
        ..base
    })
    .await;
    wait_scrapes(&m, "client certificate", |ok, _| ok >= 2.0).await;
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that answers every request with a 302 to `location` (over TLS with `tls`), or
/// 200 with a counter on `/metrics-final`. Returns its base URL.
async fn redirector(tls: bool, location: Arc<Mutex<String>>) -> String {
    let acceptor = tls.then(|| tls_acceptor(None));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!(
        "{}://127.0.0.1:{}",
        if tls { "https" } else { "http" },
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, location) = (acceptor.clone(), Arc::clone(&location));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let mut r = Response::new(Full::new(Bytes::from(
                        "# TYPE app_requests_total counter\napp_requests_total 1\n",
                    )));
                    if req.uri().path() != "/metrics-final" {
                        *r.status_mut() = hyper::StatusCode::FOUND;
                        let to = location.lock().expect("lock").clone();
                        r.headers_mut()
                            .insert("location", to.parse().expect("location header"));
                    }
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    base
}

/// Redirects as in Prometheus: followed by default, handed back with
/// `follow_redirects: false` (the scrape fails with reason="redirect"), and never from
/// https down to http.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_unless_off_and_never_downgrade() {
    use flowcast::ingest::scrape::{HttpAuth, HttpFetcher, ScrapeError};
    let plain_to = Arc::new(Mutex::new(String::new()));
    let plain = redirector(false, Arc::clone(&plain_to)).await;
    *plain_to.lock().expect("lock") = format!("{plain}/metrics-final");
    let fetch = |auth: HttpAuth, url: String| async move {
        let http = HttpFetcher::new(Duration::from_secs(5), 1 << 20, auth).expect("client");
        http.get(url.parse().expect("url"), "text/plain").await
    };
    let followed = fetch(HttpAuth::default(), format!("{plain}/metrics"))
        .await
        .expect("followed");
    assert_eq!(followed.status, 200);
    let off = HttpAuth {
        follow_redirects: false,
        ..HttpAuth::default()
    };
    let kept = fetch(off, format!("{plain}/metrics"))
        .await
        .expect("answered");
    assert_eq!(kept.status, 302, "not followed");
    assert_eq!(ScrapeError::Status(kept.status).reason(), "redirect");

    // https redirecting to http: refused even though following is on.
    let tls_to = Arc::new(Mutex::new(format!("{plain}/metrics-final")));
    let secure = redirector(true, tls_to).await;
    let trusted = HttpAuth {
        ca_file: Some(fixture("ca.pem")),
        ..HttpAuth::default()
    };
    let Err(err) = fetch(trusted.clone(), format!("{secure}/metrics")).await else {
        panic!("a redirect from https to http was followed");
    };
    assert_eq!(err.reason(), "redirect", "{err}");
    assert!(err.to_string().contains("https to http"), "{err}");

    // The live sidecar counts it under that reason.
    let (m, stop) = run_sidecar(FileConfig {
        target: Some(format!("{plain}/metrics")),
        follow_redirects: Some(false),
        ..FileConfig::default()
    })
    .await;
    wait_scrapes(&m, "redirect not followed", |ok, failed| {
        ok == 0.0 && failed("redirect") >= 1.0
    })
    .await;
    stop.cancel();
}

/// flowcast's own listener with an exporter-toolkit web config: a real TLS handshake with
/// the test CA's certificate, bcrypt basic auth on every endpoint but the probes, a clean
/// 400 for plain HTTP on the TLS port, and a changed password taking effect on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_tls_and_basic_auth_from_a_web_config() {
    use base64::Engine as _;
    let dir = std::env::temp_dir().join(format!("flowcast-web-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let web = dir.join("web.yml");
    let write = |password: &str| {
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        // Relative paths are relative to the web config's directory.
        std::fs::copy(fixture("server.pem"), dir.join("server.pem")).expect("cert");
        std::fs::copy(fixture("server.key"), dir.join("server.key")).expect("key");
        std::fs::write(
            &web,
            format!("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  flow: {hash}\n"),
        )
        .expect("web config");
    };
    write("first-pass");
    let app =
        crate::support::FakeApp::start("# TYPE app_requests_total counter\napp_requests_total 1\n")
            .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config = FileConfig {
        target: Some(app.url()),
        selector: Some("app_requests_total".into()),
        mc_passes: Some(4),
        web_config_file: Some(web.clone()),
        ..FileConfig::default()
    }
    .validate()
    .expect("config");
    let sidecar =
        Sidecar::new(&config, Arc::new(Model::embedded().expect("model"))).expect("sidecar");
    let stop = CancellationToken::new();
    tokio::spawn(sidecar.run(listener, stop.clone()));

    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixture("ca.pem")).expect("ca"))
        .expect("ca pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let base = format!("https://127.0.0.1:{port}");
    let basic = |pair: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let status = |path: &'static str, auth: Option<String>| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut r = client.get(format!("{base}{path}"));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            r.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }
    };
    assert_eq!(status("/healthz", None).await, 200, "probes stay open");
    assert_eq!(status("/metrics", None).await, 401);
    assert_eq!(status("/metrics", Some(basic("flow:wrong"))).await, 401);
    assert_eq!(
        status("/metrics", Some(basic("flow:"))).await,
        401,
        "an empty password"
    );
    assert_eq!(
        status("/metrics", Some(basic("flow:first-pass"))).await,
        200
    );
    assert_eq!(
        status("/", Some(basic("flow:first-pass"))).await,
        200,
        "the web page too"
    );

    // A client that does not trust the CA fails the handshake.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(untrusting
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());

    // Plain HTTP to the TLS port gets a clean 400 that says why.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("an answer");
    assert_eq!(plain.status().as_u16(), 400);
    assert!(plain
        .text()
        .await
        .unwrap_or_default()
        .contains("HTTPS server"));

    // A new password takes effect on reload (within seconds), the old one stops working.
    write("second-pass");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("/metrics", Some(basic("flow:second-pass"))).await != 200 {
        assert!(Instant::now() < deadline, "the web config was not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status("/metrics", Some(basic("flow:first-pass"))).await,
        401
    );

    // An invalid change is refused and counted; the last good configuration stays.
    std::fs::write(&web, "basic_auth_users:\n  flow: not-a-hash\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = client
            .get(format!("{base}/metrics"))
            .header("authorization", basic("flow:second-pass"))
            .send()
            .await
            .expect("the last good config still serves")
            .text()
            .await
            .unwrap_or_default();
        let samples = read_metrics(&body);
        if value(&samples, "flowcast_web_config_last_reload_successful", &[]) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the invalid web config was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
