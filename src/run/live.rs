//! The live loop: scrape on one interval, forecast on another, snapshot on a third, until
//! shutdown.
//!
//! Owns the engine while it runs (one owner, no locks around history), the source's
//! back-off and circuit breaker, the forecast tick (inference and publishing on
//! `spawn_blocking`, never on a runtime worker) and `--state-dir` snapshots. Time comes
//! from tokio (intervals) and an injected [`UnixClock`], so tests can pause it. No lock is
//! held across an `.await`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::forecast::engine::Engine;
use crate::forecast::model::ModelError;
use crate::forecast::state::{self, StateError};
use crate::host::clock::UnixClock;
use crate::ingest::backoff::{Backoff, Breaker};
use crate::ingest::source::{poll_once, RateSource, SourceError};
use crate::serve::metrics::HORIZONS;
use crate::serve::shared::Shared;

/// Settings of the live loop.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Scrape period.
    pub scrape_interval: Duration,
    /// Forecast period.
    pub forecast_interval: Duration,
    /// Where and how often to snapshot, if at all.
    pub state: Option<StateSettings>,
    /// Where Unix time comes from.
    pub clock: UnixClock,
}

/// Settings of `--state-dir` snapshots.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// The directory.
    pub dir: std::path::PathBuf,
    /// Snapshot period.
    pub interval: Duration,
    /// [`state::identity`] of this configuration.
    pub identity: String,
    /// When the snapshot restored at start was taken, if one was: the first write is due
    /// an interval after it.
    pub restored_at: Option<f64>,
}

/// Whether the last snapshot write failed, and why: each change of it is logged once, so
/// a state volume that stays full or missing does not log every interval.
#[derive(Debug, Default)]
pub struct StateHealth {
    failing: Option<&'static str>,
}

impl StateHealth {
    /// The reason of the failure now in force, if any.
    pub fn failing(&self) -> Option<&'static str> {
        self.failing
    }
}

/// Writes a snapshot of `engine` on a blocking thread; failures are counted by reason
/// (`StateError::write_reason`) and logged once per change of `health`, never fatal: the
/// previous snapshot stays in place, and the next interval tries again.
pub async fn save_state(
    engine: &Engine,
    settings: &StateSettings,
    shared: &Shared,
    clock: &UnixClock,
    health: &mut StateHealth,
) -> bool {
    let snapshot = engine.snapshot(settings.identity.clone(), clock.now());
    let dir = settings.dir.clone();
    let series = snapshot.series.len();
    let started = Instant::now();
    let written = tokio::task::spawn_blocking(move || {
        if crate::host::faults::snapshot_no_space() {
            return Err(StateError::Io {
                path: dir,
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        state::write(&dir, &snapshot, crate::host::faults::snapshot_pause())
    })
    .await;
    let failure = match written {
        Ok(Ok(bytes)) => {
            shared.metrics.last_snapshot.set(clock.now());
            debug!(series, bytes, took = ?started.elapsed(), "state snapshot written");
            if let Some(was) = health.failing.take() {
                info!(after = was, "state snapshots are written again");
            }
            return true;
        }
        Ok(Err(e)) => (e.write_reason(), e.to_string()),
        Err(e) => ("write_io", format!("the snapshot task failed: {e}")),
    };
    let (reason, error) = failure;
    shared
        .metrics
        .state_failures
        .with_label_values(&[reason])
        .inc();
    if health.failing != Some(reason) {
        warn!(
            reason,
            error,
            "state snapshot failed; the previous one is kept, and every interval tries again (logged once until this changes)"
        );
        health.failing = Some(reason);
    }
    false
}

/// The live loop: scrape and forecast until `shutdown` is cancelled; returns the engine so
/// the caller can snapshot it.
pub async fn run(
    mut engine: Engine,
    mut source: impl RateSource,
    settings: LoopSettings,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Engine {
    let mut state_health = StateHealth::default();
    let mut scrape_tick = tokio::time::interval(settings.scrape_interval);
    scrape_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut forecast_tick = tokio::time::interval(settings.forecast_interval);
    forecast_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let snapshot_period = settings
        .state
        .as_ref()
        .map_or(Duration::from_secs(3600), |s| s.interval);
    // The first snapshot is due an interval after the one on disk (the restored one), not
    // an interval after this start: a sidecar killed again and again sooner than an
    // interval (an OOM loop) would otherwise never write, and lose everything since the
    // snapshot it keeps restoring.
    let age = settings
        .state
        .as_ref()
        .and_then(|s| s.restored_at)
        .filter(|at| at.is_finite())
        .map_or(0.0, |at| {
            (settings.clock.now() - at).clamp(0.0, snapshot_period.as_secs_f64())
        });
    let mut snapshot_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + snapshot_period - Duration::from_secs_f64(age),
        snapshot_period,
    );
    snapshot_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    shared
        .metrics
        .mc_passes
        .set(engine.settings().mc_passes as i64);
    shared.ready.store(true, Ordering::Release);
    let mut last_outcome: Option<&'static str> = None;
    let mut backoff = Backoff::new(settings.scrape_interval, engine.settings().seed ^ 0x5EED);
    let mut released = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = scrape_tick.tick() => {
                if !backoff.may_poll(tokio::time::Instant::now()) {
                    continue;
                }
                let poll = poll_once(&mut source, &mut engine, &settings.clock).await;
                shared.metrics.record_poll(&poll);
                let outcome = poll.result;
                let was = backoff.state();
                backoff.record(outcome.is_ok(), tokio::time::Instant::now());
                shared.metrics.circuit_state.set(backoff.state().gauge());
                shared.metrics.consecutive_failures.set(i64::from(backoff.failures()));
                if backoff.state() != was {
                    match backoff.state() {
                        Breaker::Open => warn!(failures = backoff.failures(), "source circuit open: pausing polls"),
                        Breaker::Closed => info!("source circuit closed"),
                        Breaker::HalfOpen => {}
                    }
                }
                let label = outcome.as_ref().err().map_or("ok", SourceError::reason);
                if last_outcome != Some(label) {
                    match &outcome {
                        Ok(()) => info!("source poll succeeded"),
                        Err(e) => warn!(reason = e.reason(), error = %e, "source poll failed"),
                    }
                    last_outcome = Some(label);
                }
            }
            _ = forecast_tick.tick() => {
                let origin = settings.clock.now().floor() as i64;
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    result = forecast_once(&mut engine, origin, &shared, &settings.clock) => match result {
                        Ok(forecast) => {
                            if forecast > 0 && !released {
                                // Start-up is over once the model has run: what only it
                                // used (model loading above all) leaves memory.
                                released = true;
                                release_startup_pages().await;
                            }
                        }
                        Err(e) => {
                            shared.metrics.tick_failures.with_label_values(&[e.reason()]).inc();
                            warn!(reason = e.reason(), error = %e, "forecast tick failed");
                        }
                    }
                }
            }
            _ = snapshot_tick.tick(), if settings.state.is_some() => {
                if let Some(state) = &settings.state {
                    save_state(&engine, state, &shared, &settings.clock, &mut state_health).await;
                }
            }
        }
    }
    engine
}

/// Gives the start-up code's pages back to the system ([`crate::host::pages`]), on a blocking
/// thread; a failure only costs memory, so it is logged and the sidecar goes on.
async fn release_startup_pages() {
    match tokio::task::spawn_blocking(crate::host::pages::release_startup_pages).await {
        Ok(Ok(released)) => info!(%released, "start-up code pages released"),
        Ok(Err(e)) => warn!(error = %e, "could not release the start-up code pages"),
        Err(e) => warn!(error = %e, "the page release task failed"),
    }
}

/// Why a forecast tick failed.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    /// The model failed (its own reason: `run`, `output`, `non_finite`, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The blocking task that ran the model panicked or was cancelled.
    #[error("the inference task failed: {0}")]
    InferenceTask(tokio::task::JoinError),
    /// The blocking task that published the tick panicked or was cancelled: the model had
    /// done its part.
    #[error("the publishing task failed: {0}")]
    Publish(tokio::task::JoinError),
}

impl TickError {
    /// A short bounded label for `flowcast_tick_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Model(e) => e.reason(),
            Self::InferenceTask(_) => "inference_task",
            Self::Publish(_) => "publish",
        }
    }
}

/// Runs one forecast tick: prepare on this task, infer and publish on blocking threads
/// (publishing encodes and compresses the whole series page: 0.5 s at 10,000 series, which
/// must not hold a runtime worker). Returns how many series it forecast.
pub async fn forecast_once(
    engine: &mut Engine,
    origin: i64,
    shared: &Arc<Shared>,
    clock: &UnixClock,
) -> Result<usize, TickError> {
    let started = Instant::now();
    let evicted = engine.evict_stale(origin);
    if !evicted.is_empty() {
        debug!(origin, evicted = evicted.len(), "series evicted");
    }
    let prepared = engine.prepare(origin);
    let (prepared, outputs) = if prepared.ready_count() == 0 {
        (prepared, Vec::new())
    } else {
        let model = Arc::clone(engine.model());
        let passes = engine.settings().mc_passes;
        let infer_started = Instant::now();
        debug!(
            origin,
            series = prepared.ready_count(),
            passes,
            "inference started"
        );
        // The prepared views travel to the blocking thread and back, so that the model
        // reads their inputs in place.
        let (prepared, outputs) = tokio::task::spawn_blocking(move || {
            let outputs = {
                let (inputs, seeds) = prepared.inputs();
                model.predict(&inputs, &seeds, passes)
            };
            (prepared, outputs)
        })
        .await
        .map_err(TickError::InferenceTask)?;
        shared
            .metrics
            .inference_duration
            .observe(infer_started.elapsed().as_secs_f64());
        (prepared, outputs?)
    };
    let mut report = engine.finish(prepared, &outputs);
    report.evicted = evicted;
    let forecast = report
        .series
        .iter()
        .filter(|s| s.forecast.is_some())
        .count();
    debug!(
        origin = report.origin,
        ready = forecast,
        horizons = HORIZONS.len(),
        "forecast tick"
    );
    let publisher = Arc::clone(shared);
    tokio::task::spawn_blocking(move || publisher.publish(report))
        .await
        .map_err(TickError::Publish)?;
    shared
        .metrics
        .tick_duration
        .observe(started.elapsed().as_secs_f64());
    shared.metrics.last_tick.set(clock.now());
    Ok(forecast)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::history::MINUTE_SECONDS;
    use crate::ingest::source::PollCounts;
    use crate::serve::metrics::Metrics;

    /// A source that records one rate for the minute that just ended at every poll, and
    /// fails while `failing` says so; it counts its polls.
    struct Scripted {
        polls: Arc<std::sync::Mutex<Vec<f64>>>,
        failing: std::ops::Range<f64>,
    }

    impl RateSource for Scripted {
        async fn poll(
            &mut self,
            engine: &mut Engine,
            _counts: &mut PollCounts,
            clock: &UnixClock,
        ) -> Result<(), SourceError> {
            let now = clock.now();
            self.polls.lock().expect("polls").push(now);
            if self.failing.contains(&now) {
                return Err(SourceError::Scrape(
                    crate::ingest::scrape::ScrapeError::Timeout(Duration::from_secs(12)),
                ));
            }
            let minute = (now as i64).div_euclid(MINUTE_SECONDS) - 1;
            engine.record_rate(&[], minute, 40.0 + (minute % 7) as f64);
            Ok(())
        }
    }

    /// The loop's three clocks run on tokio time: over 30 paused minutes it polls every
    /// 15 s, forecasts at origins read from the injected clock, snapshots every 10 minutes
    /// stamped with that clock, and backs off while the source fails, all without waiting.
    #[tokio::test(start_paused = true)]
    async fn the_loop_keeps_its_intervals_on_the_injected_clock() {
        let start = 1_700_000_000.0_f64; // 22:13:20 UTC
        let mut engine = crate::forecast::engine::test_engine(4, 1, 1);
        let first_minute = (start as i64).div_euclid(MINUTE_SECONDS);
        for m in first_minute - 240..first_minute {
            engine.record_rate(&[], m, 40.0);
        }
        let dir = std::env::temp_dir().join(format!("flowcast-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        let settings = LoopSettings {
            scrape_interval: Duration::from_secs(15),
            forecast_interval: Duration::from_secs(60),
            state: Some(StateSettings {
                dir: dir.clone(),
                interval: Duration::from_secs(600),
                identity: "test".into(),
                restored_at: None,
            }),
            clock: UnixClock::tokio_from(start),
        };
        let shared = Arc::new(Shared::new(
            Metrics::new("flowcast", &[]).expect("metrics"),
            "api".into(),
            Vec::new(),
        ));
        let shutdown = CancellationToken::new();
        // Down from minute 12 to minute 18.
        let polls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source = Scripted {
            polls: Arc::clone(&polls),
            failing: start + 720.0..start + 1080.0,
        };
        let fingerprint = engine.model().fingerprint();
        let task = tokio::spawn(run(
            engine,
            source,
            settings,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(30 * 60 + 5)).await;
        shutdown.cancel();
        let engine = task.await.expect("the loop ends");

        let m = &shared.metrics;
        let last_tick = m.last_tick.get();
        assert_eq!(last_tick, start + 1800.0, "the last tick, at minute 30");
        assert_eq!(shared.latest().origin, (start as i64 + 1800) / 60 * 60);
        assert!(shared.latest().series[0].forecast.is_some(), "forecasting");
        let snapshot = state::read(&dir, fingerprint, "test").expect("a periodic snapshot");
        assert_eq!(snapshot.saved_at, start + 1800.0, "the third, at minute 30");
        assert_eq!(m.last_snapshot.get(), start + 1800.0);
        // 15 s polls while up; far fewer while down (back-off, then the breaker); the
        // breaker closes again once the source is back.
        let polls = polls.lock().expect("polls").clone();
        let at = |from: f64, to: f64| {
            polls
                .iter()
                .filter(|&&t| t >= start + from && t < start + to)
                .count()
        };
        assert_eq!(at(0.0, 720.0), 48, "every 15 s while up: {polls:?}");
        assert!(at(720.0, 1080.0) <= 10, "backed off while down: {polls:?}");
        assert!(
            at(1440.0, 1800.0) >= 23,
            "regular again once back: {polls:?}"
        );
        assert_eq!(m.consecutive_failures.get(), 0);
        // The ring holds 4 hours: the minutes of the outage are its only holes.
        let present = engine.series_set().series()[0].ring.present_minutes();
        assert!((230..240).contains(&present), "{present} minutes held");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A failed publish or inference task is counted under its own reason, never as a
    /// model run failure: the model may have done its part.
    #[tokio::test]
    async fn task_failures_are_not_counted_as_model_failures() {
        let failed = || async {
            tokio::task::spawn_blocking(|| panic!("scripted"))
                .await
                .expect_err("the task panicked")
        };
        let publish = TickError::Publish(failed().await);
        let inference = TickError::InferenceTask(failed().await);
        let model = TickError::from(ModelError::NonFinite);
        assert_eq!(publish.reason(), "publish");
        assert_eq!(inference.reason(), "inference_task");
        assert_eq!(model.reason(), "non_finite");
        assert!(publish.to_string().contains("publishing task failed"));
    }
}
