//! Clients that hold a listener's connections without finishing requests (issue #23,
//! point 4), for the slow-clients test and bench:
//!
//! - **slowloris**: sends a request's headers one byte at a time and never ends them;
//! - **idle**: connects and sends nothing;
//! - **kept-alive**: sends one whole request, reads the answer, then never sends another.
//!
//! Each client reopens its connection as soon as the server closes it (after a short
//! pause, so that the load is a fixed number of connections rather than a connect storm),
//! until stopped. Every loop is bounded by the stop token.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How a hostile client misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Slowloris,
    Idle,
    KeptAlive,
}

/// What the clients saw, shared by all of them.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections opened.
    pub opened: AtomicU64,
    /// Connections the server closed (read returned end-of-stream or an error).
    pub closed_by_server: AtomicU64,
    /// Connects that failed.
    pub connect_errors: AtomicU64,
}

/// Starts `n` clients of each kind in `kinds` against `addr`; they run until `stop`.
pub fn start(
    addr: SocketAddr,
    kinds: &[Kind],
    n: usize,
    stop: &CancellationToken,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for &kind in kinds {
        for i in 0..n {
            let (tally, stop) = (Arc::clone(&tally), stop.clone());
            tasks.push(tokio::spawn(async move {
                // Spread the first connects over a second.
                let offset = Duration::from_millis((i as u64 * 1000) / n.max(1) as u64);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(offset) => {}
                }
                while !stop.is_cancelled() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = one_connection(addr, kind, &tally) => {}
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }));
        }
    }
    (tally, tasks)
}

/// One connection of `kind`, until the server closes it.
async fn one_connection(addr: SocketAddr, kind: Kind, tally: &Tally) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        tally.connect_errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tally.opened.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 4096];
    match kind {
        Kind::Slowloris => {
            // Headers that never end: one byte every 200 ms, forever.
            let head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ";
            for &byte in head.iter().chain(std::iter::repeat(&b'a')) {
                if stream.write_all(&[byte]).await.is_err() {
                    break;
                }
                // A closed connection shows on the next read (without blocking on it).
                match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
        }
        Kind::Idle => {
            // Nothing sent; wait for the server to give up.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        Kind::KeptAlive => {
            if stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .is_ok()
            {
                // The answer, then silence until the server closes the connection.
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
    }
    tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
}
