//! Assembles a running sidecar from a validated [`Config`]: model, metrics, engine,
//! scraper, HTTP server, and the order in which they start and stop.
//!
//! Owns start-up (fail fast: a bad model is an error before anything is served) and
//! shutdown (cancel → stop scraping → drain the server). The listener is bound by the
//! caller, so tests and the demo can use `127.0.0.1:0`.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{Failure, RunArgs};
use crate::config::{Config, Source};
use crate::forecast::engine::{Engine, EngineSettings};
use crate::forecast::history::SeriesLimits;
use crate::forecast::model::{Model, ModelError};
use crate::forecast::state::{self, StateError};
use crate::host::clock::UnixClock;
use crate::ingest::promapi::{PromClient, PromError};
use crate::ingest::scrape::{HttpAuth, ScrapeError, Scraper};
use crate::ingest::source::{self, LiveSource, PromSource, ScrapeSource};
use crate::run::live::{self, LoopSettings, StateSettings};
use crate::serve::metrics::{Metrics, MetricsError};
use crate::serve::server::{self, ServerLimits};
use crate::serve::shared::Shared;

/// Errors that stop the sidecar from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The model could not be loaded or does not match its card.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The scrape client could not be built.
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    /// The Prometheus client could not be built.
    #[error(transparent)]
    Prometheus(#[from] PromError),
    /// The web config (`--web.config.file`) is invalid or unreadable.
    #[error(transparent)]
    WebConfig(#[from] crate::serve::webconfig::WebConfigError),
}

/// A sidecar ready to run: everything built, nothing started.
pub struct Sidecar {
    /// The core (history, calibration, model).
    pub engine: Engine,
    /// State shared with the HTTP server.
    pub shared: Arc<Shared>,
    source: LiveSource,
    backfill: Option<(PromClient, String)>,
    loop_settings: LoopSettings,
    shutdown_grace: std::time::Duration,
}

impl Sidecar {
    /// Builds the sidecar for `config` with an already loaded model.
    pub fn new(config: &Config, model: Arc<Model>) -> Result<Self, StartError> {
        Self::with_clock(config, model, UnixClock::System)
    }

    /// [`Sidecar::new`] on this wall clock (the restore at start reads it too); tests step
    /// it.
    pub fn with_clock(
        config: &Config,
        model: Arc<Model>,
        clock: UnixClock,
    ) -> Result<Self, StartError> {
        let metrics = Metrics::new(&config.metric_prefix, &config.by)?;
        let limits = SeriesLimits {
            max_series: config.max_series,
            max_children: (config.max_series * 1000).clamp(10_000, 1_000_000),
            // A scrape gap longer than 4 intervals (or 2 minutes) is a hole, not a rate.
            max_gap_seconds: (config.scrape_interval.as_secs_f64() * 4.0).max(120.0),
            shard: config.shard,
            stale_after_seconds: Some(config.series_stale_after.as_secs_f64()),
        };
        let mut engine = Engine::new(
            model,
            EngineSettings {
                mc_passes: config.mc_passes,
                seed: config.seed,
                band: config.band,
                experts: config.experts,
                limits,
            },
        );
        let prom_client = |url: &url::Url, auth: &HttpAuth| {
            PromClient::new(
                url.clone(),
                config.scrape_timeout,
                config.max_body_bytes,
                auth.clone(),
                config.by.clone(),
                config.max_series,
            )
            .map(|c| c.with_shard(config.shard))
        };
        let source = match &config.source {
            Source::Scrape {
                target,
                selector,
                auth,
            } => LiveSource::Scrape(
                ScrapeSource::new(
                    Scraper::new(
                        target.clone(),
                        config.scrape_timeout,
                        config.max_body_bytes,
                        auth.clone(),
                    )?,
                    selector.clone(),
                    config.by.clone(),
                    config.capacity.latency_histogram.as_deref(),
                )
                .with_limits(config.scrape_limits),
            ),
            Source::Prometheus(p) => LiveSource::Prometheus(PromSource::new(
                prom_client(&p.url, &p.auth)?,
                p.query.clone(),
            )),
        };
        let backfill = match &config.backfill {
            Some(b) => Some((prom_client(&b.url, &b.auth)?, b.query.clone())),
            None => None,
        };
        let mut shared = Shared::new(metrics, config.series_name.clone(), config.by.clone())
            .with_capacity(config.capacity.clone())
            .with_endpoint_auth(config.listen_auth.clone());
        if let Some(path) = &config.web_config_file {
            let gauge = shared.metrics.web_config_reload_ok.clone();
            gauge.set(1);
            let watch = crate::serve::webconfig::WebConfigWatch::start(path, move |ok| {
                gauge.set(i64::from(ok));
            })?;
            shared = shared.with_web_config(watch);
        }
        let shared = Arc::new(shared);
        let mut state = config.state_dir.as_ref().map(|dir| StateSettings {
            dir: dir.clone(),
            interval: config.snapshot_interval,
            identity: config.state_identity(),
            restored_at: None,
        });
        if let Some(settings) = &mut state {
            settings.restored_at =
                restore(&mut engine, settings, config.by.len(), &shared, clock.now());
        }
        Ok(Self {
            engine,
            shared,
            source,
            backfill,
            loop_settings: LoopSettings {
                scrape_interval: config.scrape_interval,
                forecast_interval: config.forecast_interval,
                state,
                clock,
            },
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// Serves on `listener` and runs the pipeline until `shutdown` is cancelled.
    ///
    /// Shutdown, all within the configured grace counted from the signal: the listener
    /// closes (new connections are refused), the pipeline stops (a tick in flight is
    /// abandoned; a scrape in flight ends first), `/readyz` turns 503, the state is
    /// snapshotted, and responses in flight are sent in full while the grace lasts.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let grace = self.shutdown_grace;
        let server = tokio::spawn(server::serve(
            listener,
            Arc::clone(&self.shared),
            ServerLimits {
                drain: grace,
                ..ServerLimits::default()
            },
            shutdown.clone(),
        ));
        let shared = Arc::clone(&self.shared);
        let state = self.loop_settings.state.clone();
        let mut engine = self.engine;
        if let Some((client, query)) = &self.backfill {
            let started = std::time::Instant::now();
            let now = self.loop_settings.clock.now();
            let mut counts = source::PollCounts::default();
            let fill = source::backfill(&mut engine, client, query, &mut counts, now);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                result = fill => match result {
                    Ok(filled) => {
                        shared.metrics.backfilled_seconds.inc_by(filled.minutes as u64 * 60);
                        info!(minutes = filled.minutes, windows = filled.windows, took = ?started.elapsed(), "history backfilled from Prometheus");
                        if let Some(e) = filled.windows_error {
                            shared.metrics.backfill_failures.with_label_values(&[e.reason()]).inc();
                            warn!(reason = e.reason(), error = %e, "backfill of the week of 5-minute windows failed; the minutes are kept");
                        }
                    }
                    Err(e) => {
                        shared.metrics.backfill_failures.with_label_values(&[e.reason()]).inc();
                        warn!(reason = e.reason(), error = %e, "backfill failed; starting with what is held");
                    }
                }
            }
            shared.metrics.record_counts(&counts);
        }
        let clock = self.loop_settings.clock;
        let pipeline = live::run(
            engine,
            self.source,
            self.loop_settings,
            Arc::clone(&shared),
            shutdown.clone(),
        );
        tokio::pin!(pipeline);
        let stopped = tokio::select! {
            _ = shutdown.cancelled() => None,
            engine = &mut pipeline => Some(engine),
        };
        // The grace runs from the signal: a scrape or a snapshot the pipeline is in the
        // middle of (it notices the signal only between them) spends it too.
        let deadline = tokio::time::Instant::now() + grace;
        shared
            .ready
            .store(false, std::sync::atomic::Ordering::Release);
        let engine = match stopped {
            Some(engine) => Some(engine),
            None => tokio::time::timeout_at(deadline, pipeline).await.ok(),
        };
        match (&state, &engine) {
            (Some(settings), Some(engine)) => {
                let mut health = live::StateHealth::default();
                let save = live::save_state(engine, settings, &shared, &clock, &mut health);
                match tokio::time::timeout_at(deadline, save).await {
                    Ok(true) => info!(dir = %settings.dir.display(), "state saved"),
                    Ok(false) => {}
                    Err(_) => warn!("the shutdown snapshot did not finish within the grace"),
                }
            }
            (Some(_), None) => warn!("the pipeline did not stop within the grace; no snapshot"),
            (None, _) => {}
        }
        info!("pipeline stopped, draining the server");
        if tokio::time::timeout_at(deadline, server).await.is_err() {
            warn!("the server did not drain within the grace");
        }
    }
}

/// Restores the snapshot in `settings.dir` into an empty engine; any problem is logged and
/// counted and the sidecar starts empty (SPEC.md: never fatal). Returns the restored
/// snapshot's time.
fn restore(
    engine: &mut Engine,
    settings: &StateSettings,
    key_len: usize,
    shared: &Shared,
    now: f64,
) -> Option<f64> {
    if let Err(e) = std::fs::create_dir_all(&settings.dir) {
        shared
            .metrics
            .state_failures
            .with_label_values(&["io"])
            .inc();
        warn!(dir = %settings.dir.display(), error = %e, "cannot create the state directory");
        return None;
    }
    let snapshot = match state::read(
        &settings.dir,
        engine.model().fingerprint(),
        &settings.identity,
    ) {
        Ok(s) => s,
        Err(StateError::Missing(path)) => {
            info!(path = %path.display(), "no state snapshot yet; starting empty");
            return None;
        }
        Err(e) => {
            shared
                .metrics
                .state_failures
                .with_label_values(&[e.reason()])
                .inc();
            warn!(error = %e, "ignoring the state snapshot; starting empty");
            return None;
        }
    };
    let age = now - snapshot.saved_at;
    let saved_at = snapshot.saved_at;
    match engine.restore(snapshot, key_len, now as i64) {
        Ok(n) => {
            shared.metrics.restored_series.set(n as i64);
            shared.metrics.last_snapshot.set(saved_at);
            info!(series = n, age_seconds = age.round(), "state restored");
            Some(saved_at)
        }
        Err(reason) => {
            shared
                .metrics
                .state_failures
                .with_label_values(&[reason.reason()])
                .inc();
            warn!(%reason, "ignoring the state snapshot; starting empty");
            None
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `flowcast check-config`: validates the configuration and loads the model; exit 0 or 2.
pub fn check_config(args: &RunArgs) -> Result<(), Failure> {
    let config = args.to_config().map_err(Failure::usage)?;
    let model = Model::load(&config.model).map_err(Failure::usage)?;
    println!(
        "config ok: {}, model {} inputs checked",
        config.source.describe(),
        model.card().inputs.len()
    );
    Ok(())
}

/// `flowcast run`: the sidecar, until SIGTERM or SIGINT. A bad configuration or model is a
/// usage error (exit 2) before anything is bound; a failure to listen is exit 1.
pub fn run_command(args: &RunArgs) -> Result<(), Failure> {
    let config = args.to_config().map_err(Failure::usage)?;
    let model = Arc::new(Model::load(&config.model).map_err(Failure::usage)?);
    let rt = runtime().map_err(Failure::runtime)?;
    let result = rt.block_on(async move {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            Failure::runtime(anyhow::anyhow!("cannot listen on {}: {e}", config.listen))
        })?;
        let sidecar = Sidecar::new(&config, model).map_err(Failure::runtime)?;
        let shard = config
            .shard
            .map_or_else(|| "all".to_string(), |s| s.to_string());
        info!(listen = %config.listen, source = %config.source.describe(), %shard, "flowcast started");
        sidecar.run(listener, shutdown_on_signal(None)).await;
        Ok(())
    });
    // A tick abandoned on the signal may still be inferring on a blocking thread;
    // dropping the runtime would wait for it, past the shutdown grace.
    rt.shutdown_background();
    result
}

/// The runtime of `run` and `demo`: two workers, and few blocking threads (inference and
/// publishing run there one tick at a time).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
}

/// A token cancelled on SIGTERM/SIGINT, or after `limit`.
pub fn shutdown_on_signal(limit: Option<std::time::Duration>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        match limit {
            Some(d) => {
                tokio::select! {
                    _ = termination_signal() => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => termination_signal().await,
        }
        info!("shutting down");
        t.cancel();
    });
    token
}
