//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/` and `/api/v1/forecast`.
//!
//! Owns the accept loop, its connection cap, request limits, content negotiation (format
//! and gzip) and the drain on shutdown. Takes a bound listener and a cancellation token
//! from outside (tests bind `127.0.0.1:0`). Handlers only read [`Shared`]: encoding the
//! registry and cloning the latest report never wait for a scrape or an inference.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::serve::metrics::{Exposition, ExpositionFormat, HORIZONS};
use crate::serve::shared::{Shared, TickReport};

/// Limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Most connections open at once. At the cap a new one sheds the connection quiet
    /// longest with no response in flight, or waits while every one is answering.
    pub max_connections: usize,
    /// Time allowed to read a request's headers.
    pub header_read_timeout: Duration,
    /// Time allowed for in-flight requests to finish after shutdown.
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(5),
        }
    }
}

/// Serves until `shutdown` is cancelled, then stops accepting (the listener is closed, so
/// new connections are refused) and drains: responses in flight are sent in full, idle
/// keep-alive connections are closed, for at most `limits.drain`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(std::sync::Mutex::new(OpenConnections::default()));
    let hold = crate::host::faults::metrics_hold();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the cap: the connection quiet longest with no response in flight
                // (idle, trickling its headers, or between requests) makes room, so slow
                // clients cannot keep Prometheus's scrape or the probes in the backlog. With
                // every connection mid-response, this one waits for the first to finish.
                if lock(&open).shed_oldest_idle() {
                    shared.metrics.http_connections_shed.inc();
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let (id, activity, close) = lock(&open).open();
        shared
            .metrics
            .http_open_connections
            .set(permits_in_use(&permits, limits.max_connections));
        let tls = shared.web.as_ref().and_then(|w| w.current().tls.clone());
        let shared = Arc::clone(&shared);
        let (open_for_task, shared_for_task) = (Arc::clone(&open), Arc::clone(&shared));
        let permits_for_task = Arc::clone(&permits);
        let service = hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            // Counted from the request's headers until its body is sent (or dropped).
            let busy = InFlight::start(&activity);
            async move {
                // The probes answer without credentials: decided here, once per request.
                let probe = is_probe(req.uri().path());
                let web_ok = if probe {
                    None
                } else {
                    web_credentials(&shared, &req).await
                };
                let mut response = route(&shared, req, hold, probe, web_ok);
                response.body_mut().in_flight = Some(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let (watcher, builder) = (graceful.watcher(), builder.clone());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let connection = async {
                match tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Some(config) => match tls_handshake(stream, config, handshake_timeout).await {
                        Some(stream) => {
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        None => Ok(()),
                    },
                }
            };
            let served = tokio::select! {
                served = connection => served,
                // Shed to make room for a new connection: dropping it closes the socket.
                _ = close.cancelled() => Ok(()),
            };
            if let Err(e) = served {
                debug!(error = %e, peer = %peer, "connection ended with an error");
            }
            lock(&open_for_task).close(id);
            drop(permit);
            shared_for_task
                .metrics
                .http_open_connections
                .set(permits_in_use(&permits_for_task, limits.max_connections));
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("in-flight requests did not finish within the drain time");
    }
}

/// The open connections, each with its activity and the token that closes it, so that a
/// new connection at the cap can shed the one that has waited longest without a request.
struct OpenConnections {
    next_id: u64,
    open: VecDeque<OpenConnection>,
    epoch: Instant,
}

impl Default for OpenConnections {
    fn default() -> Self {
        Self {
            next_id: 0,
            open: VecDeque::new(),
            epoch: Instant::now(),
        }
    }
}

struct OpenConnection {
    id: u64,
    activity: Arc<Activity>,
    close: CancellationToken,
}

/// What a connection is doing, updated by its requests.
#[derive(Debug)]
struct Activity {
    /// Responses being produced or sent.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `epoch` of its opening, or of its last request's headers or
    /// body end, whichever was last.
    last_active_ms: std::sync::atomic::AtomicU64,
    /// The registry's start.
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Release);
    }
}

impl OpenConnections {
    /// Registers a new connection: its id, its activity and its close token.
    fn open(&mut self) -> (u64, Arc<Activity>, CancellationToken) {
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity {
            in_flight: Default::default(),
            last_active_ms: Default::default(),
            epoch: self.epoch,
        });
        activity.touch();
        let close = CancellationToken::new();
        self.open.push_back(OpenConnection {
            id,
            activity: Arc::clone(&activity),
            close: close.clone(),
        });
        (id, activity, close)
    }

    /// Forgets a connection that ended.
    fn close(&mut self, id: u64) {
        if let Some(i) = self.open.iter().position(|c| c.id == id) {
            self.open.remove(i);
        }
    }

    /// Closes the connection with no response in flight that has been quiet longest: a
    /// client trickling its headers or sending nothing is quiet since it opened, a
    /// keep-alive one since its last response, so a scraper that asks often keeps its
    /// connection and a slow client loses its own first. False when every open connection
    /// is answering a request.
    fn shed_oldest_idle(&mut self) -> bool {
        let victim = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, c)| c.activity.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.activity.last_active_ms.load(Ordering::Acquire))
            .map(|(i, _)| i);
        match victim.and_then(|i| self.open.remove(i)) {
            Some(c) => {
                c.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// The registry's lock; a panic while holding it cannot leave it inconsistent (every
/// change is one push or remove), so a poisoned lock is used as it is.
fn lock(open: &std::sync::Mutex<OpenConnections>) -> std::sync::MutexGuard<'_, OpenConnections> {
    open.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections holding a permit.
fn permits_in_use(permits: &Semaphore, max: usize) -> i64 {
    max.saturating_sub(permits.available_permits()) as i64
}

/// One response in flight on a connection, from its request's headers until its body has
/// been sent or dropped: while any is, [`OpenConnections::shed_oldest_idle`] leaves the
/// connection alone.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TLS handshake of a new connection (within `timeout`). A client that speaks plain
/// HTTP to the TLS port gets a 400 in plain text saying so, as Go's servers (and so the
/// exporters) answer, and the connection is closed.
async fn tls_handshake(
    mut stream: tokio::net::TcpStream,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt as _;
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        // 0x16: a TLS handshake record.
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => {
            let _ = stream
                .write_all(
                    b"HTTP/1.0 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
                      connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
                )
                .await;
            let _ = stream.shutdown().await;
            return None;
        }
        _ => return None,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            None
        }
    }
}

/// Whether `path` is a probe (`/healthz`, `/readyz`): probes need no credentials.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The verdict of the web config's basic-auth users on a (non-probe) request: `None` when
/// it has none. A credential not verified before is checked with bcrypt on a blocking
/// thread, never on the runtime.
async fn web_credentials(shared: &Arc<Shared>, req: &Request<Incoming>) -> Option<bool> {
    use crate::serve::webconfig::Credentials;
    let web = shared.web.as_ref()?;
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match web.credentials(header) {
        Credentials::NotConfigured => None,
        Credentials::Known(ok) => Some(ok),
        Credentials::Verify(pending) => {
            let web = Arc::clone(web);
            Some(
                tokio::task::spawn_blocking(move || web.verify(pending))
                    .await
                    .unwrap_or(false),
            )
        }
    }
}

/// Whether the scraper prefers OpenMetrics: it lists `application/openmetrics-text` with a
/// quality above that of `text/plain` (Prometheus does by default).
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    let Some(accept) = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let quality = |media: &str| {
        accept
            .split(',')
            .filter(|part| part.trim_start().starts_with(media))
            .map(|part| {
                part.split(';')
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0)
            })
            .fold(0.0f32, f32::max)
    };
    let om = quality("application/openmetrics-text");
    om > 0.0 && om >= quality("text/plain")
}

/// Whether the client accepts a gzip body: `gzip` (or `x-gzip`) listed with a quality
/// above 0, or `*` above 0 without `gzip` refused (RFC 9110 §12.5.3). Prometheus sends
/// `Accept-Encoding: gzip`.
fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    let mut star = false;
    for value in headers.get_all(hyper::header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for part in value.split(',') {
            let mut params = part.split(';');
            let coding = params.next().unwrap_or("").trim();
            let quality = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                return quality > 0.0;
            }
            if coding == "*" {
                star = quality > 0.0;
            }
        }
    }
    star
}

/// Whether a request may see a non-probe endpoint: with no credentials configured, yes;
/// else when it carries the listener's token or password, or a user of the web config.
fn allowed(shared: &Shared, req: &Request<Incoming>, web_ok: Option<bool>) -> bool {
    let auth = &shared.endpoint_auth;
    let listen_configured = auth.credential().is_some();
    match (listen_configured, web_ok) {
        (false, None) => true,
        (false, Some(ok)) => ok,
        (true, web) => web == Some(true) || authorised(shared, req),
    }
}

/// Whether the request carries the credentials configured for flowcast's endpoints
/// (always true when none are). The secret comes from memory, refreshed off the runtime
/// ([`crate::host::secrets`]), so rotation needs no restart and no request reads a file; an
/// unreadable file refuses everything rather than opening up.
fn authorised(shared: &Shared, req: &Request<Incoming>) -> bool {
    use crate::ingest::scrape::Credential;
    let Some(credential) = shared.endpoint_auth.credential() else {
        return true;
    };
    let Some(secret) = shared.endpoint_secret.as_ref().and_then(|s| s.get()) else {
        return false;
    };
    let expected = match credential {
        Credential::Basic { user, .. } => {
            use base64::Engine as _;
            let pair = format!("{user}:{secret}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
        Credential::Bearer { .. } => format!("Bearer {secret}"),
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    constant_time_eq(given, expected.as_bytes())
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(
    shared: &Shared,
    req: Request<Incoming>,
    hold: Option<Duration>,
    probe: bool,
    web_ok: Option<bool>,
) -> Response<Chunks> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let response = if req.method() != Method::GET && req.method() != Method::HEAD {
        text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n")
    } else if !probe && !allowed(shared, &req, web_ok) {
        let mut r = text(StatusCode::UNAUTHORIZED, "unauthorised\n");
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"flowcast\", Basic realm=\"flowcast\""),
        );
        r
    } else {
        match path.as_str() {
            "/metrics" => {
                let format = if wants_openmetrics(&req) {
                    ExpositionFormat::OpenMetrics
                } else {
                    ExpositionFormat::Text
                };
                metrics_response(
                    shared
                        .metrics
                        .exposition(format, accepts_gzip(req.headers())),
                    hold,
                )
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if shared.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/api/v1/forecast" => {
                let body = forecast_json(shared, &shared.latest()).to_string();
                with_type(Response::new(Chunks::from(body)), "application/json")
            }
            "/" => with_type(
                Response::new(Chunks::from(crate::serve::page::render(
                    shared,
                    &shared.latest(),
                    crate::serve::page::View::from_query(req.uri().query()),
                ))),
                "text/html; charset=utf-8",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    };
    let label = match path.as_str() {
        "/metrics" | "/healthz" | "/readyz" | "/api/v1/forecast" | "/" => path.as_str(),
        _ => "other",
    };
    shared
        .metrics
        .http_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The `/metrics` response: the exposition's chunks as they are, with the headers that
/// say how it was negotiated.
fn metrics_response(exposition: Exposition, hold: Option<Duration>) -> Response<Chunks> {
    let mut r = Response::new(Chunks::new(exposition.chunks, hold));
    let headers = r.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(exposition.content_type),
    );
    // The body depends on both, so a cache must not hand one client's answer to another.
    headers.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if exposition.gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Chunks> {
    let mut r = with_type(
        Response::new(Chunks::from(Bytes::from_static(body.as_bytes()))),
        "text/plain; charset=utf-8",
    );
    *r.status_mut() = status;
    r
}

fn with_type(mut r: Response<Chunks>, content_type: &'static str) -> Response<Chunks> {
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A response body sent as a few shared chunks of known total length: the cached
/// per-series text goes to the socket as it is, without being copied into one buffer per
/// request.
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
    /// Test hook ([`crate::host::faults::metrics_hold`]): wait this long before the last chunk.
    hold: Option<Duration>,
    sleeping: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Marks the connection busy until this body is sent or dropped.
    in_flight: Option<InFlight>,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>, hold: Option<Duration>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        Self {
            remaining: chunks.iter().map(|c| c.len() as u64).sum(),
            chunks,
            hold,
            sleeping: None,
            in_flight: None,
        }
    }
}

impl<T: Into<Bytes>> From<T> for Chunks {
    fn from(body: T) -> Self {
        Self::new(vec![body.into()], None)
    }
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.chunks.len() == 1 {
            if let Some(hold) = this.hold.take() {
                this.sleeping = Some(Box::pin(tokio::time::sleep(hold)));
            }
            if let Some(sleeping) = this.sleeping.as_mut() {
                if sleeping.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleeping = None;
            }
        }
        Poll::Ready(this.chunks.pop_front().map(|chunk| {
            this.remaining -= chunk.len() as u64;
            Ok(Frame::data(chunk))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The `/api/v1/forecast` document: the same numbers as the gauges.
pub fn forecast_json(shared: &Shared, report: &TickReport) -> serde_json::Value {
    let series: Vec<_> = report
        .series
        .iter()
        .map(|s| {
            let mut labels = serde_json::Map::new();
            labels.insert("series".into(), json!(shared.series_name));
            for (name, value) in shared.by.iter().zip(&s.key) {
                labels.insert(name.clone(), json!(value));
            }
            let forecast: Vec<_> = s
                .forecast
                .iter()
                .flat_map(|f| f.horizons.iter().enumerate())
                .map(|(h, i)| {
                    json!({
                        "horizon": HORIZONS[h],
                        "mean": i.mean, "lower": i.lower, "upper": i.upper, "stddev": i.stddev,
                        "uncertainty": {"epistemic": i.components[0], "heteroscedastic": i.components[1], "homoscedastic": i.components[2]},
                    })
                })
                .collect();
            json!({
                "labels": labels,
                "ready": s.forecast.is_some(),
                "not_ready_reason": s.not_ready_reason,
                "history_seconds": s.history_seconds,
                "observed": s.observed,
                "anomaly_score": s.anomaly_score,
                "out_of_band": s.out_of_band,
                "band_coverage": s.band_coverage,
                "forecast": forecast,
            })
        })
        .collect();
    json!({"origin": report.origin, "series": series})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::band::{Forecast, Interval};
    use crate::serve::metrics::{Metrics, SeriesStatus};
    use std::io::Read as _;

    #[test]
    fn the_cap_sheds_the_connection_quiet_longest_never_one_answering() {
        let mut open = OpenConnections::default();
        let conns: Vec<_> = (0..4).map(|_| open.open()).collect();
        let closed = |i: usize| conns[i].2.is_cancelled();
        let at = |i: usize, ms: u64| conns[i].1.last_active_ms.store(ms, Ordering::Release);
        // 0 is answering a request; 1 answered one at 900 ms (a scraper between scrapes);
        // 2 and 3 opened at 100 and 50 ms and never sent a whole request.
        let busy = InFlight::start(&conns[0].1);
        for (i, ms) in [(0, 0), (1, 900), (2, 100), (3, 50)] {
            at(i, ms);
        }
        assert!(open.shed_oldest_idle());
        assert!(closed(3), "the quietest goes first");
        assert!(!closed(0) && !closed(1) && !closed(2));
        assert!(open.shed_oldest_idle());
        assert!(closed(2));
        assert!(open.shed_oldest_idle());
        assert!(closed(1));
        assert!(!open.shed_oldest_idle());
        assert!(
            !closed(0),
            "a response in flight is never cut, however long it takes"
        );
        drop(busy);
        assert!(open.shed_oldest_idle());
        assert!(closed(0));
        // A connection that ended is forgotten.
        let (id, _, close) = open.open();
        open.close(id);
        assert!(!open.shed_oldest_idle());
        assert!(!close.is_cancelled());
    }

    #[test]
    fn gzip_is_negotiated_from_accept_encoding() {
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["gzip"], true),
            (&["GZIP"], true),
            (&["deflate, gzip;q=0.5"], true),
            (&["x-gzip"], true),
            (&["identity"], false),
            (&["gzip;q=0"], false),
            (&["gzip; q=0.0, identity"], false),
            (&["*"], true),
            (&["*;q=0"], false),
            (&["*, gzip;q=0"], false),
            (&["br", "gzip"], true),
        ];
        for (values, expected) in cases {
            let mut headers = hyper::HeaderMap::new();
            for v in *values {
                headers.append(
                    hyper::header::ACCEPT_ENCODING,
                    HeaderValue::from_str(v).expect("header"),
                );
            }
            assert_eq!(accepts_gzip(&headers), *expected, "{values:?}");
        }
    }

    fn forecast() -> Forecast {
        let interval = |m: f64| Interval {
            mean: m,
            lower: m - 1.0,
            upper: m + 1.0,
            stddev: 0.5,
            components: [0.1, 0.2, 0.3],
        };
        Forecast {
            origin: 0,
            horizons: [interval(10.0), interval(11.0), interval(12.0)],
        }
    }

    /// A server on loopback whose shared state holds `series` ready series.
    async fn start(series: usize) -> (String, CancellationToken) {
        let metrics = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        for i in 0..series {
            let route = format!("/r/{i}");
            let labels = ["api", route.as_str()];
            metrics.publish_forecast(&labels, &forecast());
            metrics.publish_status(
                &labels,
                &SeriesStatus {
                    ready: true,
                    history_seconds: 14_400.0,
                    observed: Some(9.5),
                    ..SeriesStatus::default()
                },
            );
        }
        metrics.refresh_series();
        let shared = Arc::new(Shared::new(metrics, "api".into(), vec!["route".into()]));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/metrics", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            shared,
            ServerLimits::default(),
            stop.clone(),
        ));
        (url, stop)
    }

    async fn fetch(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        // reqwest is built without its gzip feature: the body arrives as sent.
        let client = reqwest::Client::new();
        let mut request = client.get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send().await.expect("response")
    }

    fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    fn gunzip(body: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(body)
            .read_to_string(&mut text)
            .expect("a valid gzip stream");
        text
    }

    /// Without the request-duration histogram, which the first request itself changes.
    fn without_http_histogram(text: &str) -> String {
        text.lines()
            .filter(|l| !l.contains("flowcast_http_request_duration_seconds"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_are_gzipped_for_clients_that_accept_it_and_plain_for_the_rest() {
        let (url, stop) = start(50).await;

        let plain = fetch(&url, &[]).await;
        assert_eq!(plain.status(), 200);
        assert_eq!(header(&plain, "content-encoding"), None);
        assert_eq!(header(&plain, "vary"), Some("Accept, Accept-Encoding"));
        assert_eq!(
            header(&plain, "content-type"),
            Some(crate::serve::metrics::TEXT_CONTENT_TYPE)
        );
        let plain = plain.text().await.expect("body");
        assert!(plain.contains("flowcast_forecast_upper_requests_per_second{horizon=\"15m\",route=\"/r/49\",series=\"api\"} 13\n"));

        let zipped = fetch(&url, &[("accept-encoding", "gzip")]).await;
        assert_eq!(zipped.status(), 200);
        assert_eq!(header(&zipped, "content-encoding"), Some("gzip"));
        assert_eq!(header(&zipped, "vary"), Some("Accept, Accept-Encoding"));
        assert_eq!(
            header(&zipped, "content-type"),
            Some(crate::serve::metrics::TEXT_CONTENT_TYPE)
        );
        let length: usize = header(&zipped, "content-length")
            .and_then(|l| l.parse().ok())
            .expect("a content length");
        let body = zipped.bytes().await.expect("body");
        assert_eq!(body.len(), length);
        assert!(
            body.len() * 5 < plain.len(),
            "{} vs {}",
            body.len(),
            plain.len()
        );
        let unzipped = gunzip(&body);
        assert_eq!(
            without_http_histogram(&unzipped),
            without_http_histogram(&plain)
        );

        // Refused gzip, or only other codings: plain text.
        for refuse in ["gzip;q=0", "identity", "br"] {
            let r = fetch(&url, &[("accept-encoding", refuse)]).await;
            assert_eq!(header(&r, "content-encoding"), None, "{refuse}");
            let text = r.text().await.expect("body");
            assert!(text.starts_with("# HELP"), "{refuse}");
        }

        // OpenMetrics, gzipped: decodes to a page ending in `# EOF` that a strict
        // OpenMetrics parser reads.
        let om = fetch(
            &url,
            &[
                ("accept", "application/openmetrics-text;version=1.0.0"),
                ("accept-encoding", "gzip"),
            ],
        )
        .await;
        assert_eq!(header(&om, "content-encoding"), Some("gzip"));
        assert_eq!(
            header(&om, "content-type"),
            Some(crate::serve::metrics::OPENMETRICS_CONTENT_TYPE)
        );
        let om = gunzip(&om.bytes().await.expect("body"));
        assert!(om.ends_with("\n# EOF\n"), "{om}");
        let mut n = 0;
        crate::ingest::exposition::parse(
            om.as_bytes(),
            crate::ingest::exposition::Format::OpenMetrics,
            |_| n += 1,
        )
        .expect("OpenMetrics parses");
        assert!(n > 50 * 20, "{n} samples");
        stop.cancel();
    }
}
