//! SIGTERM on the real binary with a `/metrics` response in flight (issue #6): the
//! response is sent in full, new connections are refused from the signal on, idle
//! keep-alive connections are closed, and the process exits 0 within the grace; neither a
//! response held past the grace nor a long inference in flight keeps the process alive.
//!
//! The server's test hook `FLOWCAST_FAULT_METRICS_HOLD_MS` (built only with the
//! `fault-injection` feature, which the tests enable) holds every `/metrics` response
//! before its last chunk (the per-series text), so "in flight" is a state the test
//! creates, not a race it hopes to win.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowcast::host::faults::METRICS_HOLD_ENV;

use crate::support::{
    free_port, read_metrics, seed_snapshot_keys, sigterm, value, wait_exit, ChildGuard,
};

const SELECTOR: &str = "app_requests_total";
/// Never answers: the series are ready from the snapshot alone.
const TARGET: &str = "http://127.0.0.1:1/metrics";

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcast-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// A sidecar to start: how many series its seeded state holds (one, or `/r0`, `/r1`, …
/// by `route`) and its Monte-Carlo passes.
struct Setup {
    series: usize,
    mc_passes: usize,
    /// Pipe the live loop's debug log to the test (stderr), to see a tick start.
    debug_log: bool,
}

const ONE_SERIES: Setup = Setup {
    series: 1,
    mc_passes: 10,
    debug_log: false,
};

/// Starts `flowcast run` on a seeded state directory, so its series are ready at once.
fn start(dir: &Path, port: u16, grace: &str, hold_ms: u64, setup: Setup) -> ChildGuard {
    let by: Vec<String> = if setup.series > 1 {
        vec!["route".into()]
    } else {
        Vec::new()
    };
    let config = flowcast::config::FileConfig {
        target: Some(TARGET.into()),
        selector: Some(SELECTOR.into()),
        by: Some(by.clone()),
        ..flowcast::config::FileConfig::default()
    }
    .validate()
    .expect("config");
    let keys: Vec<Vec<String>> = if setup.series > 1 {
        (0..setup.series).map(|i| vec![format!("/r{i}")]).collect()
    } else {
        vec![Vec::new()]
    };
    seed_snapshot_keys(dir, &config, &keys);
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    command.args(["run", "--target", TARGET, "--selector", SELECTOR]);
    for label in &by {
        command.args(["--by", label]);
    }
    let child = command
        .args(["--forecast-interval", "1s"])
        .args(["--mc-passes", &setup.mc_passes.to_string()])
        .args(["--max-series", &setup.series.max(100).to_string()])
        .args(["--shutdown-grace", grace])
        .arg("--state-dir")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(METRICS_HOLD_ENV, hold_ms.to_string())
        .env("FLOWCAST_LOG", "info,flowcast::run::live=debug")
        .stdout(Stdio::null())
        .stderr(if setup.debug_log {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("flowcast starts");
    ChildGuard(child)
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(stream)
}

/// An HTTP/1.1 request for `path` on `stream`.
fn send(stream: &mut TcpStream, path: &str, close: bool) {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n"
    )
    .expect("request sent");
}

/// Reads until the end of the response head; returns the head and any body bytes read.
fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    for _ in 0..10_000 {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let n = stream.read(&mut chunk).expect("response head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no end of the response head");
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length")
}

/// A whole `Connection: close` GET; `None` while the server does not answer.
fn get(port: u16, path: &str) -> Option<(String, Vec<u8>)> {
    let mut stream = connect(port).ok()?;
    send(&mut stream, path, true);
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&buf[..end]).into_owned(),
        buf[end + 4..].to_vec(),
    ))
}

fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((_, body)) = get(port, "/api/v1/forecast") {
            if String::from_utf8_lossy(&body).contains("\"ready\":true") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "series not ready within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_drains_the_response_in_flight_refuses_new_connections_and_exits_0() {
    let dir = tempdir("drain");
    let port = free_port();
    let hold = Duration::from_millis(2500);
    let mut sidecar = start(&dir, port, "5s", hold.as_millis() as u64, ONE_SERIES);
    wait_until_ready(port);

    // An idle keep-alive connection, which must not hold the shutdown up.
    let mut idle = connect(port).expect("connect");
    send(&mut idle, "/healthz", false);
    let (head, _) = read_head(&mut idle);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A /metrics response half sent: head and the own metrics arrive, the per-series text
    // is held back by the hook.
    let mut scrape = connect(port).expect("connect");
    let requested = Instant::now();
    send(&mut scrape, "/metrics", true);
    let (head, mut body) = read_head(&mut scrape);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = content_length(&head);
    let mut chunk = vec![0u8; 64 * 1024];
    while body.is_empty() {
        let n = scrape.read(&mut chunk).expect("first body bytes");
        assert!(n > 0, "closed before any body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert!(body.len() < length, "the response is still in flight");

    sigterm(&sidecar.0);
    let signalled = Instant::now();

    // New connections are refused while the response is still being drained.
    let mut refused = false;
    for _ in 0..100 {
        match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(refused, "a new connection was accepted after SIGTERM");
    assert!(
        requested.elapsed() < hold,
        "the refusal was seen while the response was held (test too slow to say)"
    );

    // The idle keep-alive connection is closed by the server (end of stream, not the
    // read timeout).
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest)
        .expect("the idle connection is closed by the server");

    // The response in flight completes: all of its bytes, then the end of the stream.
    scrape.read_to_end(&mut body).expect("the rest of the body");
    assert!(
        requested.elapsed() >= hold,
        "the body ended after the hold, not before"
    );
    assert_eq!(body.len(), length, "the whole body arrived");
    let samples = read_metrics(&String::from_utf8(body).expect("utf-8"));
    assert!(
        value(
            &samples,
            "flowcast_forecast_upper_requests_per_second",
            &[("series", "requests"), ("horizon", "15m")],
        )
        .is_some(),
        "the held per-series part arrived"
    );
    assert_eq!(
        value(&samples, "flowcast_ready", &[("series", "requests")]),
        Some(1.0)
    );

    let status = wait_exit(&mut sidecar.0, Duration::from_secs(10)).expect("exits");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "exit {took:?} after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that never gets its response done cannot keep the process past the grace:
/// the drain gives up at the deadline and the exit is still 0.
#[test]
fn a_response_held_past_the_grace_is_abandoned_and_the_exit_is_still_0() {
    let dir = tempdir("abandon");
    let port = free_port();
    let mut sidecar = start(&dir, port, "1s", 30_000, ONE_SERIES);
    wait_until_ready(port);
    let mut scrape = connect(port).expect("connect");
    send(&mut scrape, "/metrics", true);
    let (head, _) = read_head(&mut scrape);
    let length = content_length(&head);
    sigterm(&sidecar.0);
    let signalled = Instant::now();
    let status = wait_exit(&mut sidecar.0, Duration::from_secs(10)).expect("exits");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "exit {took:?} after SIGTERM with a 1 s grace"
    );
    let mut body = Vec::new();
    let _ = scrape.read_to_end(&mut body);
    assert!(
        body.len() < length,
        "the held response was cut at the grace"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while the first tick's inference runs on a blocking thread (1,000 series x 1,000
/// passes: about 6 s on the development machine): the tick is abandoned and the process
/// exits 0 within the grace instead of waiting for the inference to end.
#[test]
fn a_tick_in_flight_does_not_hold_the_exit_past_the_grace() {
    let dir = tempdir("tick");
    let port = free_port();
    let mut sidecar = start(
        &dir,
        port,
        "2s",
        0,
        Setup {
            series: 1000,
            mc_passes: 1000,
            debug_log: true,
        },
    );
    // The log says when the first tick's inference starts (after the snapshot is restored).
    let stderr = sidecar.0.stderr.take().expect("stderr piped");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("inference started") {
                let _ = started_tx.send(());
            }
        }
    });
    // Listening, and the first tick (which starts at once) has not published yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let forecast = loop {
        if let Some((_, body)) = get(port, "/api/v1/forecast") {
            break String::from_utf8_lossy(&body).into_owned();
        }
        assert!(Instant::now() < deadline, "not listening within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !forecast.contains("\"ready\":true"),
        "the first tick finished already; the test needs it in flight: {forecast}"
    );
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the first tick's inference started within 30 s");
    let (_, body) = get(port, "/api/v1/forecast").expect("still serving");
    assert!(
        !String::from_utf8_lossy(&body).contains("\"ready\":true"),
        "the first tick finished before SIGTERM; the test needs it in flight"
    );
    sigterm(&sidecar.0);
    let signalled = Instant::now();
    let status = wait_exit(&mut sidecar.0, Duration::from_secs(30)).expect("exits");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(2),
        "exit {took:?} after SIGTERM with a 2 s grace"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
