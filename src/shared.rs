//! The state the HTTP server reads: [`Shared`], the reports of the latest tick, the track
//! record of past bands built from them, and the capacity signals derived from them.
//!
//! The live loop writes (publishes a [`TickReport`] to the gauges and to the readers); the
//! server only reads. It knows nothing of the engine or the model, so the server reaches
//! neither. Locks are held only to swap or clone an `Arc`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::band::{Forecast, Judgement};
use crate::config::Capacity;
use crate::features::HORIZON_STEPS;
use crate::metrics::{Metrics, SeriesStatus};
pub use crate::tick::{SeriesReport, TickReport};
use crate::track::TrackBook;

/// State shared between the pipeline and the HTTP server. The pipeline writes; the server
/// reads. Locks are held only to swap or clone an `Arc`.
pub struct Shared {
    /// Every exported metric.
    pub metrics: Metrics,
    /// The latest tick, for `/api/v1/forecast` and the web page.
    pub latest: Mutex<Arc<TickReport>>,
    /// The `series` label value.
    pub series_name: String,
    /// Names of the `by` labels.
    pub by: Vec<String>,
    /// True once the model is loaded and the pipeline runs; false while draining.
    pub ready: AtomicBool,
    /// Capacity-signal settings.
    pub capacity: Capacity,
    /// Credentials required on flowcast's own endpoints (none by default).
    pub endpoint_auth: crate::scrape::HttpAuth,
    /// The endpoint's token or password file, held in memory and refreshed off the
    /// runtime ([`crate::secrets`]).
    pub endpoint_secret: Option<Arc<crate::secrets::SecretFile>>,
    /// The exporter-toolkit web config (TLS, basic-auth users), when one is given.
    pub web: Option<Arc<crate::webconfig::WebConfigWatch>>,
    /// The bands forecast for past steps, for the web page (fed by [`Shared::publish`]).
    track: Mutex<TrackBook>,
}

impl Shared {
    /// Shared state with no tick yet.
    pub fn new(metrics: Metrics, series_name: String, by: Vec<String>) -> Self {
        Self {
            metrics,
            latest: Mutex::new(Arc::new(TickReport::default())),
            series_name,
            by,
            ready: AtomicBool::new(false),
            capacity: Capacity::default(),
            endpoint_auth: crate::scrape::HttpAuth::default(),
            endpoint_secret: None,
            web: None,
            track: Mutex::new(TrackBook::default()),
        }
    }

    /// The track record, locked: hold it only to copy what is needed.
    pub fn track(&self) -> MutexGuard<'_, TrackBook> {
        match self.track.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The same, requiring these credentials on every endpoint but the probes.
    pub fn with_endpoint_auth(mut self, auth: crate::scrape::HttpAuth) -> Self {
        self.endpoint_secret = match (&auth.bearer_token_file, &auth.basic) {
            (Some(path), _) | (None, Some((_, path))) => {
                Some(crate::secrets::SecretFile::watch(path))
            }
            (None, None) => None,
        };
        self.endpoint_auth = auth;
        self
    }

    /// The same, serving with this web config (TLS and basic-auth users).
    pub fn with_web_config(mut self, web: Arc<crate::webconfig::WebConfigWatch>) -> Self {
        self.web = Some(web);
        self
    }

    /// The same, with capacity signals.
    pub fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// The latest tick.
    pub fn latest(&self) -> Arc<TickReport> {
        match self.latest.lock() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set_latest(&self, report: Arc<TickReport>) {
        match self.latest.lock() {
            Ok(mut g) => *g = report,
            Err(poisoned) => *poisoned.into_inner() = report,
        }
    }

    /// Publishes a tick to the gauges and to the readers.
    pub fn publish(&self, report: TickReport) {
        for key in &report.evicted {
            let mut labels: Vec<&str> = vec![self.series_name.as_str()];
            labels.extend(key.iter().map(String::as_str));
            self.metrics.remove_series(&labels);
        }
        self.metrics
            .series_evicted
            .inc_by(report.evicted.len() as u64);
        for s in &report.series {
            let mut labels: Vec<&str> = vec![self.series_name.as_str()];
            labels.extend(s.key.iter().map(String::as_str));
            let status = SeriesStatus {
                ready: s.forecast.is_some(),
                history_seconds: s.history_seconds,
                step_history_seconds: s.step_history_seconds,
                observed: s.observed,
                judgement: s.anomaly_score.zip(s.out_of_band).map(|(a, o)| Judgement {
                    anomaly_score: a,
                    out_of_band: o,
                }),
                coverage: s.band_coverage,
                error_ratio: s.error_ratio,
            };
            self.metrics.publish_status(&labels, &status);
            self.metrics.publish_experts(&labels, s.experts.as_ref());
            match &s.forecast {
                Some(f) => {
                    self.metrics.publish_forecast(&labels, f);
                    let (concurrency, replicas) =
                        capacity_signals(f, s.mean_latency_seconds, &self.capacity);
                    self.metrics
                        .publish_capacity(&labels, concurrency, replicas);
                }
                None => self.metrics.clear_forecast(&labels),
            }
        }
        self.metrics.series_count.set(report.series.len() as i64);
        self.metrics.refresh_series();
        self.track().record(&report);
        self.set_latest(Arc::new(report));
    }
}

/// METHOD.md §6 on the upper bound of each horizon: requests in flight by Little's law
/// (`L = λ·W`, upper rate × mean latency) and replicas `⌈upper·(1 + headroom) / capacity⌉`
/// (at least 1). `None` where the input is not configured or not known yet.
pub fn capacity_signals(
    forecast: &Forecast,
    mean_latency_seconds: Option<f64>,
    capacity: &Capacity,
) -> ([Option<f64>; HORIZON_STEPS], [Option<f64>; HORIZON_STEPS]) {
    let upper = |h: usize| forecast.horizons[h].upper;
    let concurrency = std::array::from_fn(|h| {
        capacity
            .latency_histogram
            .as_ref()
            .and(mean_latency_seconds)
            .map(|w| upper(h) * w)
    });
    let replicas = std::array::from_fn(|h| {
        capacity.replica_capacity.map(|c| {
            (upper(h) * (1.0 + capacity.replica_headroom) / c)
                .ceil()
                .max(1.0)
        })
    });
    (concurrency, replicas)
}
