//! Every metric flowcast exports: the only place that names metrics and writes help text.
//!
//! Owns an explicit `prometheus::Registry` (never the global one) and the gauge and counter
//! families in it. Per-series gauges carry `series`, then the configured `by` labels, then
//! `horizon` or `component` where they apply. When a series is not ready its forecast
//! gauges are removed, never set to 0 or NaN (SPEC.md). It must not compute anything: the
//! pipeline hands it finished numbers.

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::band::{Forecast, Judgement};
use crate::features::HORIZON_STEPS;

/// Label values of the `horizon` label, in horizon order.
pub const HORIZONS: [&str; HORIZON_STEPS] = ["5m", "10m", "15m"];
/// Label values of the `component` label: u1, u2, u3.
pub const COMPONENTS: [&str; 3] = ["epistemic", "heteroscedastic", "homoscedastic"];
/// Label names flowcast uses itself, which `by` labels may not take.
pub const RESERVED_LABELS: [&str; 5] = ["series", "horizon", "component", "reason", "le"];
/// Content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors building the registry (only a programming error or a bad prefix can cause one).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The per-series gauges.
#[derive(Clone)]
struct SeriesGauges {
    mean: GaugeFamily,
    lower: GaugeFamily,
    upper: GaugeFamily,
    stddev: GaugeFamily,
    uncertainty: GaugeFamily,
    observed: GaugeFamily,
    anomaly: GaugeFamily,
    out_of_band: GaugeFamily,
    ready: GaugeFamily,
    history: GaugeFamily,
    coverage: GaugeFamily,
    error: GaugeFamily,
    concurrency: GaugeFamily,
    replicas: GaugeFamily,
}

/// All metrics. The per-series gauges live in one table (a row per series, outside the
/// registry) whose text is encoded straight into a gzip member once per change and
/// cached, so that a `/metrics` request with thousands of series shares those bytes
/// instead of encoding or copying them; only the process's own counters and histograms
/// (in the registry) are encoded per request.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// The per-series families, sorted by name (the order a registry would gather them).
    series_families: Arc<Vec<GaugeFamily>>,
    series_cache: Arc<SeriesCache>,
    series: SeriesGauges,
    /// Duration of scrapes of the target, successful or not.
    pub scrape_duration: Histogram,
    /// Failed scrapes by reason.
    pub scrape_failures: IntCounterVec,
    /// Scrapes attempted.
    pub scrapes: IntCounter,
    /// Samples (or series) refused by the series cap.
    pub series_dropped: IntCounter,
    /// Counter resets seen.
    pub counter_resets: IntCounter,
    /// Duration of one batched inference run (all series, all passes).
    pub inference_duration: Histogram,
    /// Duration of one whole forecast tick.
    pub tick_duration: Histogram,
    /// Monte-Carlo passes per forecast.
    pub mc_passes: IntGauge,
    /// Series currently held.
    pub series_count: IntGauge,
    /// Unix time of the last tick that completed.
    pub last_tick: prometheus::Gauge,
    /// Failed ticks by reason.
    pub tick_failures: IntCounterVec,
    /// Build information (always 1).
    pub build_info: IntGaugeVec,
    /// Time from a request to the /metrics answer, by endpoint.
    pub http_duration: HistogramVec,
    /// Snapshot writes that failed and snapshot reads that were ignored, by reason.
    pub state_failures: IntCounterVec,
    /// Unix time of the last snapshot written.
    pub last_snapshot: prometheus::Gauge,
    /// Series restored from the snapshot at start.
    pub restored_series: IntGauge,
    /// The source's circuit breaker: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGauge,
    /// Consecutive failed polls of the source.
    pub consecutive_failures: IntGauge,
    /// Seconds of history backfilled from Prometheus at start.
    pub backfilled_seconds: IntCounter,
    /// Failed backfills by reason.
    pub backfill_failures: IntCounterVec,
}

impl Metrics {
    /// Builds and registers every metric, named `<prefix>_...`, with `by` as the extra
    /// series labels.
    pub fn new(prefix: &str, by: &[String]) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let series_families = std::cell::RefCell::new(Vec::new());
        let series_cache = Arc::new(SeriesCache::default());
        let name = |n: &str| format!("{prefix}_{n}");
        let mut series_labels: Vec<&str> = vec!["series"];
        series_labels.extend(by.iter().map(String::as_str));
        let horizon_labels: &[(&str, &'static [&'static str])] = &[("horizon", &HORIZONS)];
        let component_labels: &[(&str, &'static [&'static str])] =
            &[("horizon", &HORIZONS), ("component", &COMPONENTS)];
        let gauge = |n: &str,
                     help: &str,
                     extras: &[(&str, &'static [&'static str])]|
         -> Result<GaugeFamily, MetricsError> {
            let g = GaugeFamily::new(
                name(n),
                help,
                &series_labels,
                extras,
                Arc::clone(&series_cache),
            )?;
            series_families.borrow_mut().push(g.clone());
            Ok(g)
        };
        let series = SeriesGauges {
            mean: gauge(
                "forecast_requests_per_second",
                "Forecast of the peak 1-minute request rate in the 5-minute step ending `horizon` from now (mean of the band).",
                horizon_labels,
            )?,
            lower: gauge(
                "forecast_lower_requests_per_second",
                "Lower bound of the calibrated 95% forecast band (never below 0).",
                horizon_labels,
            )?,
            upper: gauge(
                "forecast_upper_requests_per_second",
                "Upper bound of the calibrated 95% forecast band; the autoscaling signal.",
                horizon_labels,
            )?,
            stddev: gauge(
                "forecast_stddev_requests_per_second",
                "Calibrated standard deviation sqrt(u1^2+u2^2+u3^2) of the forecast, for aggregating bands: sum(mean) +- 1.96*sqrt(sum(stddev^2)).",
                horizon_labels,
            )?,
            uncertainty: gauge(
                "uncertainty_requests_per_second",
                "Uncertainty components of the forecast before calibration: epistemic (u1, Monte-Carlo dropout), heteroscedastic (u2, predicted noise), homoscedastic (u3, learnt per time of day).",
                component_labels,
            )?,
            observed: gauge(
                "observed_requests_per_second",
                "Peak 1-minute request rate of the latest complete 5-minute step.",
                &[],
            )?,
            anomaly: gauge(
                "anomaly_score",
                "(observed - forecast made for the latest step) / its standard deviation, in the model's log scale.",
                &[],
            )?,
            out_of_band: gauge(
                "out_of_band",
                "1 when the latest observed step fell outside the band forecast for it 5 minutes earlier.",
                &[],
            )?,
            ready: gauge(
                "ready",
                "1 when the series has enough recent history and its forecasts are exported, else 0.",
                &[],
            )?,
            history: gauge(
                "history_seconds",
                "Seconds of 1-minute rates the series currently holds.",
                &[],
            )?,
            coverage: gauge(
                "band_coverage_ratio",
                "Share of recent steps that fell inside the band forecast for them (exponentially weighted over about a day).",
                horizon_labels,
            )?,
            concurrency: gauge(
                "forecast_concurrency_upper",
                "Little's law on the upper bound: requests in flight = upper rate x the app's mean latency (from its histogram's _sum/_count rates). Needs --latency-histogram.",
                horizon_labels,
            )?,
            replicas: gauge(
                "recommended_replicas",
                "ceil(upper rate x (1 + headroom) / per-replica capacity), at least 1. Needs --replica-capacity.",
                horizon_labels,
            )?,
            error: gauge(
                "forecast_error_ratio",
                "Mean absolute forecast error over the mean observed rate (exponentially weighted over about a day).",
                horizon_labels,
            )?,
        };
        let histogram =
            |n: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, MetricsError> {
                let h = Histogram::with_opts(HistogramOpts::new(name(n), help).buckets(buckets))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let fast = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let scrape_duration = histogram(
            "scrape_duration_seconds",
            "Duration of scrapes of the target.",
            fast.clone(),
        )?;
        let inference_duration = histogram(
            "inference_duration_seconds",
            "Duration of one batched model run (all ready series, all Monte-Carlo passes).",
            fast.clone(),
        )?;
        let tick_duration = histogram(
            "tick_duration_seconds",
            "Duration of one forecast tick (features, inference, band, publishing).",
            fast.clone(),
        )?;
        let counter_vec =
            |n: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name(n), help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter = |n: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::with_opts(Opts::new(name(n), help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let int_gauge = |n: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::with_opts(Opts::new(name(n), help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let scrape_failures = counter_vec(
            "scrape_failures_total",
            "Failed polls of the source (scrapes of the target or Prometheus queries), by reason.",
            &["reason"],
        )?;
        let tick_failures = counter_vec(
            "tick_failures_total",
            "Forecast ticks that failed, by reason.",
            &["reason"],
        )?;
        let state_failures = counter_vec(
            "state_failures_total",
            "Snapshot writes that failed (reason=write) and snapshots ignored at start (corrupt, version, foreign, io).",
            &["reason"],
        )?;
        let restored_series = int_gauge(
            "state_restored_series",
            "Series restored from the --state-dir snapshot at start.",
        )?;
        let last_snapshot = prometheus::Gauge::with_opts(Opts::new(
            name("state_last_snapshot_timestamp_seconds"),
            "Unix time at which the last --state-dir snapshot was written.",
        ))?;
        registry.register(Box::new(last_snapshot.clone()))?;
        let circuit_state = int_gauge(
            "source_circuit_state",
            "Circuit breaker of the source: 0 closed (polling), 1 half-open (probing), 2 open (paused after repeated failures).",
        )?;
        let consecutive_failures = int_gauge(
            "source_consecutive_failures",
            "Consecutive failed polls of the source; polls back off exponentially with jitter.",
        )?;
        let backfilled_seconds = counter(
            "backfilled_history_seconds_total",
            "Seconds of per-series history filled from Prometheus at start (--backfill-url).",
        )?;
        let backfill_failures = counter_vec(
            "backfill_failures_total",
            "Backfills from Prometheus that failed, by reason.",
            &["reason"],
        )?;
        let scrapes = counter(
            "scrapes_total",
            "Polls of the source attempted (scrapes of the target, or Prometheus queries).",
        )?;
        let series_dropped = counter(
            "series_dropped_total",
            "Samples whose series was refused because --max-series was reached.",
        )?;
        let counter_resets = counter(
            "source_resets_total",
            "Resets seen in the selected counters (a value went down).",
        )?;
        let mc_passes = int_gauge("mc_passes", "Monte-Carlo dropout passes per forecast.")?;
        let series_count = int_gauge("series", "Series currently held.")?;
        let last_tick = prometheus::Gauge::with_opts(Opts::new(
            name("last_successful_tick_timestamp_seconds"),
            "Unix time at which the last forecast tick completed.",
        ))?;
        registry.register(Box::new(last_tick.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                name("build_info"),
                "Build information; the value is always 1.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                name("http_request_duration_seconds"),
                "Time to answer HTTP requests, by path.",
            )
            .buckets(fast),
            &["path"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        Ok(Self {
            registry,
            series_families: {
                let mut families = series_families.into_inner();
                families.sort_by(|a, b| a.inner.name.cmp(&b.inner.name));
                Arc::new(families)
            },
            series_cache,
            series,
            scrape_duration,
            scrape_failures,
            scrapes,
            series_dropped,
            counter_resets,
            inference_duration,
            tick_duration,
            mc_passes,
            series_count,
            last_tick,
            tick_failures,
            build_info,
            state_failures,
            last_snapshot,
            restored_series,
            backfilled_seconds,
            circuit_state,
            consecutive_failures,
            backfill_failures,
            http_duration,
        })
    }

    /// Publishes a ready series' forecast.
    pub fn publish_forecast(&self, series: &[&str], forecast: &Forecast) {
        let s = &self.series;
        for (h, interval) in forecast.horizons.iter().enumerate() {
            let labels = with(series, &[HORIZONS[h]]);
            s.mean.set(&labels, interval.mean);
            s.lower.set(&labels, interval.lower);
            s.upper.set(&labels, interval.upper);
            s.stddev.set(&labels, interval.stddev);
            for (c, value) in interval.components.iter().enumerate() {
                s.uncertainty
                    .set(&with(series, &[HORIZONS[h], COMPONENTS[c]]), *value);
            }
        }
    }

    /// Publishes the capacity signals per horizon; `None` removes a gauge.
    pub fn publish_capacity(
        &self,
        series: &[&str],
        concurrency: [Option<f64>; HORIZON_STEPS],
        replicas: [Option<f64>; HORIZON_STEPS],
    ) {
        for (h, horizon) in HORIZONS.iter().enumerate() {
            let labels = with(series, &[horizon]);
            set_or_remove(&self.series.concurrency, &labels, concurrency[h]);
            set_or_remove(&self.series.replicas, &labels, replicas[h]);
        }
    }

    /// Removes a series' forecast gauges (it is not ready): they are absent, not zero.
    pub fn clear_forecast(&self, series: &[&str]) {
        let s = &self.series;
        for h in HORIZONS {
            let labels = with(series, &[h]);
            for g in [
                &s.mean,
                &s.lower,
                &s.upper,
                &s.stddev,
                &s.concurrency,
                &s.replicas,
            ] {
                g.remove(&labels);
            }
            for c in COMPONENTS {
                s.uncertainty.remove(&with(series, &[h, c]));
            }
        }
    }

    /// Publishes a series' status gauges; absent values remove their gauge.
    pub fn publish_status(&self, series: &[&str], status: &SeriesStatus) {
        let s = &self.series;
        s.ready.set(series, if status.ready { 1.0 } else { 0.0 });
        s.history.set(series, status.history_seconds);
        set_or_remove(&s.observed, series, status.observed);
        set_or_remove(
            &s.anomaly,
            series,
            status.judgement.map(|j| j.anomaly_score),
        );
        set_or_remove(
            &s.out_of_band,
            series,
            status
                .judgement
                .map(|j| if j.out_of_band { 1.0 } else { 0.0 }),
        );
        for (h, horizon) in HORIZONS.iter().enumerate() {
            let labels = with(series, &[horizon]);
            set_or_remove(&s.coverage, &labels, status.coverage[h]);
            set_or_remove(&s.error, &labels, status.error_ratio[h]);
        }
    }

    /// The registry, for the HTTP server.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Re-encodes the per-series gauges if they changed since the last encoding, straight
    /// into one gzip member. The pipeline calls it after publishing a tick, so requests
    /// find it ready.
    pub fn refresh_series(&self) -> SeriesText {
        let cache = &self.series_cache;
        let _encoding = lock(&cache.encoding);
        self.encode_series_if_dirty();
        lock(&cache.encoded).clone()
    }

    /// The cached per-series text for a request, as the last [`Metrics::refresh_series`]
    /// left it: a request never encodes (at 10,000 series about half a second on a
    /// runtime worker), nor waits for an encoding.
    fn series_for_request(&self) -> SeriesText {
        lock(&self.series_cache.encoded).clone()
    }

    /// The encoding itself; the caller holds `series_cache.encoding`. The previous text
    /// is served until the new one replaces it. The text goes through a 64 KiB buffer into
    /// the compressor and is never held whole: at 10,000 series it is 26 MB, its gzip
    /// member 2.3 MB.
    fn encode_series_if_dirty(&self) {
        let cache = &self.series_cache;
        if !cache.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let capacity = lock(&cache.encoded).gzip.len() + 4096;
        // Once per change, so the default level: smaller bodies for every scrape.
        let encoder = GzEncoder::new(Vec::with_capacity(capacity), Compression::default());
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, encoder);
        // Writing into a Vec cannot fail.
        for family in self.series_families.iter() {
            let _ = family.encode_text(&mut out);
        }
        let gzip = out
            .into_inner()
            .ok()
            .and_then(|encoder| encoder.finish().ok())
            .unwrap_or_default();
        *lock(&cache.encoded) = SeriesText {
            gzip: Bytes::from(gzip),
            text: None,
        };
    }

    fn encode_own(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure would be a malformed family,
        // which this module never registers.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }

    /// The `/metrics` body in `format`, as chunks to send in order: the process's own
    /// metrics (encoded for this request), the cached per-series text, and `# EOF` for
    /// OpenMetrics. With `gzip` every chunk is a gzip member: the per-series one is
    /// compressed once per change, only the small own part per request, and the members'
    /// concatenation is one valid gzip stream (RFC 1952 §2.2) whose decoding is exactly
    /// the uncompressed body.
    pub fn exposition(&self, format: ExpositionFormat, gzip: bool) -> Exposition {
        let series = self.series_for_request();
        let own = match format {
            ExpositionFormat::Text => self.encode_own(),
            ExpositionFormat::OpenMetrics => to_openmetrics(&self.encode_own()),
        };
        let mut chunks = Vec::with_capacity(3);
        if gzip {
            // Per request: the fastest level; the part is about 10 kB.
            chunks.push(gzip_member(&own, Compression::fast()));
            chunks.push(series.gzip);
        } else {
            chunks.push(Bytes::from(own));
            chunks.push(self.plain_series(series));
        }
        if format == ExpositionFormat::OpenMetrics {
            chunks.push(if gzip {
                openmetrics_eof_gzip()
            } else {
                Bytes::from_static(OPENMETRICS_EOF)
            });
        }
        Exposition {
            chunks,
            content_type: match format {
                ExpositionFormat::Text => TEXT_CONTENT_TYPE,
                ExpositionFormat::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            },
            gzip,
        }
    }

    /// The per-series text uncompressed, for clients that do not take gzip: inflated
    /// from the gzip member on the first such request after a change and kept until the
    /// next one, so a sidecar scraped only with gzip (Prometheus) never holds it.
    fn plain_series(&self, series: SeriesText) -> Bytes {
        if let Some(text) = series.text {
            return text;
        }
        let cache = &self.series_cache;
        let _inflating = lock(&cache.inflating);
        let is_current = |current: &SeriesText| current.gzip.as_ptr() == series.gzip.as_ptr();
        // Another request may have inflated it while this one waited.
        if let Some(text) = Some(lock(&cache.encoded))
            .filter(|current| is_current(current))
            .and_then(|current| current.text.clone())
        {
            return text;
        }
        let text = inflate(&series.gzip);
        let mut current = lock(&cache.encoded);
        if is_current(&current) {
            current.text = Some(text.clone());
        }
        text
    }

    /// Encodes every metric in the Prometheus text format (refreshing the per-series
    /// text first).
    pub fn encode_text(&self) -> Vec<u8> {
        self.refresh_series();
        self.exposition(ExpositionFormat::Text, false).concat()
    }

    /// Every metric in OpenMetrics 1.0 text, for scrapers that ask for it (refreshing the
    /// per-series text first). The per-series families are all gauges, which read the
    /// same in both formats.
    pub fn encode_openmetrics(&self) -> Vec<u8> {
        self.refresh_series();
        self.exposition(ExpositionFormat::OpenMetrics, false)
            .concat()
    }
}

/// The text format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

/// A `/metrics` body in chunks whose concatenation is the body; the chunks share the
/// cached bytes instead of copying them.
#[derive(Debug, Clone)]
pub struct Exposition {
    /// The body's parts, in order.
    pub chunks: Vec<Bytes>,
    /// The `Content-Type` of the (decoded) body.
    pub content_type: &'static str,
    /// Whether every chunk is a gzip member (`Content-Encoding: gzip`).
    pub gzip: bool,
}

impl Exposition {
    /// The whole body in one buffer (tests and benches; the server sends the chunks).
    pub fn concat(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// The cached per-series part of the exposition, made once per change.
#[derive(Debug, Clone)]
pub struct SeriesText {
    /// Prometheus text 0.0.4 (the same bytes in OpenMetrics: the families are gauges) as
    /// one gzip member.
    pub gzip: Bytes,
    /// The same text uncompressed, once a client without gzip asked for it.
    pub text: Option<Bytes>,
}

impl Default for SeriesText {
    fn default() -> Self {
        Self {
            gzip: gzip_member(b"", Compression::default()),
            text: None,
        }
    }
}

/// State shared by the per-series families: their values, their cached text and whether a
/// gauge changed since.
#[derive(Default)]
struct SeriesCache {
    dirty: AtomicBool,
    /// Held while encoding, so one caller encodes at a time.
    encoding: Mutex<()>,
    /// Held only to read or replace the text.
    encoded: Mutex<SeriesText>,
    /// Held while inflating the text for clients without gzip, so one request does it.
    inflating: Mutex<()>,
    /// Every per-series gauge's value.
    rows: Mutex<SeriesRows>,
}

/// Locks `mutex`; a panic while it was held cannot leave the data half-updated (every
/// update is one assignment or one map operation).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const OPENMETRICS_EOF: &[u8] = b"# EOF\n";

/// `# EOF` as a gzip member, compressed once.
fn openmetrics_eof_gzip() -> Bytes {
    static EOF: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    EOF.get_or_init(|| gzip_member(OPENMETRICS_EOF, Compression::default()))
        .clone()
}

/// The data of one gzip member (empty if it is not one, which `gzip_member` never makes).
fn inflate(member: &[u8]) -> Bytes {
    use std::io::Read as _;
    // The trailer's ISIZE is the length mod 2^32: a capacity hint, so the buffer is not
    // grown (and copied) by doubling.
    let size = member
        .len()
        .checked_sub(4)
        .and_then(|at| member.get(at..))
        .and_then(|tail| <[u8; 4]>::try_from(tail).ok())
        .map_or(0, |tail| u32::from_le_bytes(tail) as usize);
    let mut text = Vec::with_capacity(size);
    if flate2::read::GzDecoder::new(member)
        .read_to_end(&mut text)
        .is_err()
    {
        text.clear();
    }
    Bytes::from(text)
}

/// `data` as one complete gzip member.
fn gzip_member(data: &[u8], level: Compression) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 8 + 64), level);
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Rewrites Prometheus text 0.0.4 from this registry as OpenMetrics 1.0: a counter's
/// family name (in `# HELP`/`# TYPE`) drops its `_total` suffix, which stays on the
/// samples. Everything else (gauges, histograms, escaping, `NaN`/`+Inf`) is written the
/// same way in both formats. The caller appends `# EOF`.
fn to_openmetrics(text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let family = match name.strip_suffix("_total") {
                    Some(base) if counters.contains(name) => base,
                    _ => name,
                };
                out.push_str(prefix);
                out.push_str(family);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.into_bytes()
}

/// The status of one series at one tick.
#[derive(Debug, Clone, Default)]
pub struct SeriesStatus {
    /// Whether forecasts are exported.
    pub ready: bool,
    /// Seconds of history held.
    pub history_seconds: f64,
    /// Latest complete step's value.
    pub observed: Option<f64>,
    /// How the forecast for the latest step fared.
    pub judgement: Option<Judgement>,
    /// Rolling band coverage by horizon.
    pub coverage: [Option<f64>; HORIZON_STEPS],
    /// Rolling error ratio by horizon.
    pub error_ratio: [Option<f64>; HORIZON_STEPS],
}

fn with<'a>(series: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    series.iter().chain(extra).copied().collect()
}

fn set_or_remove(g: &GaugeFamily, labels: &[&str], value: Option<f64>) {
    match value.filter(|v| v.is_finite()) {
        Some(v) => g.set(labels, v),
        None => g.remove(labels),
    }
}

/// One gauge family of the per-series table, used for every per-series gauge instead of
/// `GaugeVec`. `GaugeVec` (prometheus 0.14, `vec.rs` `hash_label_values`) keys its
/// children by a hash of the label values concatenated with no separator and does not
/// compare the values on a hit, so `("/r/1", "15m")` and `("/r/11", "5m")` share one
/// gauge: one series' forecast would be exported under the other's labels and the
/// other's would vanish. Here a sample is found by the series' whole tuple of label values
/// and the slot of its `horizon` and `component`.
///
/// A family is a range of slots in [`SeriesRows`]: one per value, one per horizon, or one
/// per horizon and component. It encodes its own text (the bytes the prometheus crate's
/// `TextEncoder` writes for a gathered gauge family) straight from the rows.
#[derive(Clone)]
struct GaugeFamily {
    inner: Arc<GaugeFamilyInner>,
}

struct GaugeFamilyInner {
    name: String,
    /// `# HELP` and `# TYPE` lines.
    header: String,
    /// Label names in the order callers pass values: the series labels, then `horizon`
    /// and `component` where the family has them.
    label_names: Vec<String>,
    /// How many of `label_names` are series labels.
    series_labels: usize,
    /// Values of the extra labels (`horizon`, then `component`).
    extras: Vec<&'static [&'static str]>,
    /// The family's first slot in a row; it has the product of the extras' lengths.
    first_slot: usize,
    /// The labels in name order, the order of the text and of the samples (sorted by
    /// their values in this order, as a registry gathers).
    order: Vec<LabelSource>,
    /// Per label in name order, the text before its value: `{name="` or `,name="`.
    label_prefixes: Vec<String>,
    cache: Arc<SeriesCache>,
}

impl GaugeFamilyInner {
    /// The value of the label at `source` of a sample: its series' label values and its
    /// slot within the family.
    fn label<'a>(&self, source: LabelSource, series: &'a [Box<str>], k: usize) -> &'a str {
        match source {
            LabelSource::Series(i) => &series[i],
            LabelSource::Extra(e) => {
                // Slots run over the last extra fastest.
                let stride: usize = self.extras[e + 1..].iter().map(|v| v.len()).product();
                let values = self.extras[e];
                values[(k / stride) % values.len()]
            }
        }
    }
}

/// Where a label's value comes from.
#[derive(Clone, Copy)]
enum LabelSource {
    /// The series' label values, at this position.
    Series(usize),
    /// An extra label (`extras[i]`), by the sample's slot.
    Extra(usize),
}

/// The values of every per-series gauge, one row per series: at 10,000 series 320,000
/// samples, held as 10,000 label tuples and rows of numbers rather than a label tuple per
/// sample.
#[derive(Default)]
struct SeriesRows {
    /// Slots per row: every family's, reserved as the families are made.
    slots: usize,
    rows: BTreeMap<Box<[Box<str>]>, Row>,
    /// The key of the series last set or removed: publishing sets a series' gauges one
    /// after another, so its key is allocated once, not once per gauge.
    last: Box<[Box<str>]>,
}

impl SeriesRows {
    /// Makes `last` the key of `series`.
    fn point_at(&mut self, series: &[&str]) {
        let same = self.last.len() == series.len()
            && self.last.iter().zip(series).all(|(a, b)| **a == **b);
        if !same {
            self.last = series.iter().map(|v| Box::from(*v)).collect();
        }
    }
}

/// One series' gauge values; a slot without its `present` bit is absent.
struct Row {
    values: Box<[f64]>,
    present: u64,
}

impl GaugeFamily {
    fn new(
        name: String,
        help: &str,
        series_labels: &[&str],
        extras: &[(&str, &'static [&'static str])],
        cache: Arc<SeriesCache>,
    ) -> Result<Self, prometheus::Error> {
        let label_names: Vec<String> = series_labels
            .iter()
            .copied()
            .chain(extras.iter().map(|(name, _)| *name))
            .map(str::to_string)
            .collect();
        // Validates the metric and label names as the registry did.
        prometheus::core::Desc::new(
            name.clone(),
            help.to_string(),
            label_names.clone(),
            HashMap::new(),
        )?;
        let mut by_name: Vec<usize> = (0..label_names.len()).collect();
        by_name.sort_by(|&a, &b| label_names[a].cmp(&label_names[b]));
        let order = by_name
            .iter()
            .map(|&i| match i.checked_sub(series_labels.len()) {
                None => LabelSource::Series(i),
                Some(e) => LabelSource::Extra(e),
            })
            .collect();
        let label_prefixes = by_name
            .iter()
            .enumerate()
            .map(|(j, &i)| format!("{}{}=\"", if j == 0 { '{' } else { ',' }, label_names[i]))
            .collect();
        let mut header = String::new();
        if !help.is_empty() {
            header = format!("# HELP {name} {}\n", escape(help, false));
        }
        header.push_str(&format!("# TYPE {name} gauge\n"));
        let extras: Vec<&'static [&'static str]> = extras.iter().map(|(_, v)| *v).collect();
        let slots: usize = extras.iter().map(|v| v.len()).product();
        let first_slot = {
            let mut rows = lock(&cache.rows);
            let first = rows.slots;
            rows.slots += slots;
            if rows.slots > 64 {
                return Err(prometheus::Error::Msg(
                    "more than 64 per-series gauge slots".into(),
                ));
            }
            first
        };
        Ok(Self {
            inner: Arc::new(GaugeFamilyInner {
                name,
                header,
                label_names,
                series_labels: series_labels.len(),
                extras,
                first_slot,
                order,
                label_prefixes,
                cache,
            }),
        })
    }

    /// Slots of this family in a row.
    fn slots(&self) -> usize {
        self.inner.extras.iter().map(|v| v.len()).product()
    }

    /// The slot of a sample with these label values (in the family's label order), or
    /// `None` for a wrong number of values or an extra label value it does not have
    /// (programming errors, ignored).
    fn slot(&self, labels: &[&str]) -> Option<usize> {
        let inner = &self.inner;
        if labels.len() != inner.label_names.len() {
            return None;
        }
        let mut slot = 0;
        for (values, given) in inner.extras.iter().zip(&labels[inner.series_labels..]) {
            slot = slot * values.len() + values.iter().position(|v| v == given)?;
        }
        Some(inner.first_slot + slot)
    }

    /// Sets the gauge with these label values (in the family's label order).
    fn set(&self, labels: &[&str], value: f64) {
        let Some(slot) = self.slot(labels) else {
            return;
        };
        let mut table = lock(&self.inner.cache.rows);
        table.point_at(&labels[..self.inner.series_labels]);
        let SeriesRows { slots, rows, last } = &mut *table;
        if !rows.contains_key(&last[..]) {
            rows.insert(
                last.clone(),
                Row {
                    values: vec![0.0; *slots].into_boxed_slice(),
                    present: 0,
                },
            );
        }
        let Some(row) = rows.get_mut(&last[..]) else {
            return;
        };
        let bit = 1u64 << slot;
        let changed = row.present & bit == 0 || row.values[slot].to_bits() != value.to_bits();
        row.values[slot] = value;
        row.present |= bit;
        if changed {
            self.inner.cache.dirty.store(true, Ordering::Release);
        }
    }

    /// Removes the gauge with these label values, if present; a series whose last gauge
    /// goes is forgotten.
    fn remove(&self, labels: &[&str]) {
        let Some(slot) = self.slot(labels) else {
            return;
        };
        let mut table = lock(&self.inner.cache.rows);
        table.point_at(&labels[..self.inner.series_labels]);
        let SeriesRows { rows, last, .. } = &mut *table;
        let Some(row) = rows.get_mut(&last[..]) else {
            return;
        };
        let bit = 1u64 << slot;
        if row.present & bit == 0 {
            return;
        }
        row.present &= !bit;
        if row.present == 0 {
            rows.remove(&last[..]);
        }
        self.inner.cache.dirty.store(true, Ordering::Release);
    }

    /// Writes the family in the Prometheus text format 0.0.4, byte for byte what the
    /// prometheus crate's `TextEncoder` writes for it after a registry's `gather` (nothing
    /// when the family is empty). Many small writes: give it a buffered writer.
    fn encode_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let inner = &self.inner;
        let table = lock(&inner.cache.rows);
        let mut samples: Vec<(&[Box<str>], usize, f64)> = Vec::new();
        for (series, row) in &table.rows {
            for k in 0..self.slots() {
                let slot = inner.first_slot + k;
                if row.present & (1u64 << slot) != 0 {
                    samples.push((series, k, row.values[slot]));
                }
            }
        }
        if samples.is_empty() {
            return Ok(());
        }
        let label = |source, series, k| inner.label(source, series, k);
        samples.sort_by(|a, b| {
            inner
                .order
                .iter()
                .map(|&source| label(source, a.0, a.1).cmp(label(source, b.0, b.1)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        out.write_all(inner.header.as_bytes())?;
        for (series, k, value) in samples {
            out.write_all(inner.name.as_bytes())?;
            for (prefix, &source) in inner.label_prefixes.iter().zip(&inner.order) {
                out.write_all(prefix.as_bytes())?;
                out.write_all(escape(label(source, series, k), true).as_bytes())?;
                out.write_all(b"\"")?;
            }
            if !inner.order.is_empty() {
                out.write_all(b"}")?;
            }
            // `f64`'s `Display`, as the crate's `value.to_string()`.
            writeln!(out, " {value}")?;
        }
        Ok(())
    }
}

/// Escapes `\\` and newlines (and `"` in label values) as the text format requires.
fn escape(text: &str, quote: bool) -> std::borrow::Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !text.contains(special) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if quote => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    std::borrow::Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::{self, Format};

    fn samples(bytes: &[u8], format: Format) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        exposition::parse(bytes, format, |s| out.push((s.name.to_string(), s.value)))
            .expect("parses");
        out
    }

    /// Label values whose concatenations coincide stay separate gauges: ("/r/1", "15m")
    /// and ("/r/11", "5m") collided in `GaugeVec` and shared one gauge.
    #[test]
    fn label_tuples_with_equal_concatenations_are_distinct_gauges() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        let a = ["api", "/r/1"];
        let b = ["api", "/r/11"];
        m.series.upper.set(&with(&a, &["15m"]), 1.0);
        m.series.upper.set(&with(&b, &["5m"]), 2.0);
        m.series.upper.set(&with(&a, &["5m"]), 3.0);
        let got: Vec<(String, f64)> = samples(&m.encode_text(), Format::Text004);
        let upper: Vec<_> = got
            .iter()
            .filter(|(n, _)| n == "flowcast_forecast_upper_requests_per_second")
            .collect();
        assert_eq!(upper.len(), 3, "{got:?}");
        let text = String::from_utf8(m.encode_text()).expect("utf-8");
        assert!(
            text.contains("{horizon=\"15m\",route=\"/r/1\",series=\"api\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("{horizon=\"5m\",route=\"/r/11\",series=\"api\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("{horizon=\"5m\",route=\"/r/1\",series=\"api\"} 3\n"),
            "{text}"
        );
        m.series.upper.remove(&with(&b, &["5m"]));
        let text = String::from_utf8(m.encode_text()).expect("utf-8");
        assert!(text.contains("route=\"/r/1\",series=\"api\"} 1\n"));
        assert!(!text.contains("/r/11"));
    }

    fn gunzip(chunks: &[Bytes]) -> Vec<u8> {
        use std::io::Read as _;
        let body = chunks.concat();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("the concatenated members are one valid gzip stream");
        out
    }

    /// The gzip body (members for the own part, the cached series text and `# EOF`)
    /// decodes to exactly the plain body, in both formats; the series member is compressed
    /// once per change and shared by every request until then.
    #[test]
    fn gzip_exposition_decodes_to_exactly_the_plain_one_and_is_compressed_once() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        m.scrapes.inc_by(7);
        for i in 0..200 {
            let route = format!("/r/{i}");
            m.series.upper.set(&["api", &route, "5m"], i as f64 + 0.5);
            m.series.ready.set(&["api", &route], 1.0);
        }
        m.refresh_series();
        for format in [ExpositionFormat::Text, ExpositionFormat::OpenMetrics] {
            let plain = m.exposition(format, false);
            let zipped = m.exposition(format, true);
            assert!(!plain.gzip && zipped.gzip);
            assert_eq!(plain.content_type, zipped.content_type);
            assert_eq!(gunzip(&zipped.chunks), plain.concat(), "{format:?}");
        }
        let first = m.exposition(ExpositionFormat::Text, true);
        let again = m.exposition(ExpositionFormat::Text, true);
        assert_eq!(
            first.chunks[1].as_ptr(),
            again.chunks[1].as_ptr(),
            "the series member is shared, not compressed again"
        );
        m.series.upper.set(&["api", "/r/0", "5m"], 99.0);
        let stale = m.exposition(ExpositionFormat::Text, true);
        assert_eq!(stale.chunks[1], first.chunks[1], "requests never encode");
        m.refresh_series();
        let changed = m.exposition(ExpositionFormat::Text, true);
        assert_ne!(first.chunks[1], changed.chunks[1]);
        let text = String::from_utf8(gunzip(&changed.chunks)).expect("utf-8");
        assert!(text.contains("{horizon=\"5m\",route=\"/r/0\",series=\"api\"} 99\n"));
    }

    /// The direct encoding of the per-series families is byte for byte what the
    /// prometheus crate wrote for the same gauges through a registry and `TextEncoder`
    /// (here its own `GaugeVec`, fed the same values): family order, sample order (label
    /// values in label-name order, with `by` labels that sort before and after the
    /// others), escaping, number formatting, empty families left out.
    #[test]
    fn series_text_is_byte_identical_to_the_prometheus_encoder() {
        let by = ["zone".to_string(), "app".to_string()];
        let m = Metrics::new("flowcast", &by).expect("metrics");
        let registry = Registry::new();
        let reference: Vec<prometheus::GaugeVec> = m
            .series_families
            .iter()
            .map(|family| {
                let inner = &family.inner;
                let help = inner
                    .header
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("# HELP {} ", inner.name)))
                    .expect("help");
                let names: Vec<&str> = inner.label_names.iter().map(String::as_str).collect();
                let vec = prometheus::GaugeVec::new(Opts::new(inner.name.clone(), help), &names)
                    .expect("gauge vec");
                registry.register(Box::new(vec.clone())).expect("register");
                vec
            })
            .collect();
        let zones = [
            "eu",
            "us-\"east\"",
            "a\\b",
            "line\nbreak",
            "ünï",
            "/r/1",
            "/r/11",
            "",
        ];
        let values = [
            0.1,
            1.0,
            2.5,
            -0.0,
            1e21,
            1.5e-7,
            123_456_789.125,
            1.0 / 3.0,
        ];
        let mut samples = 0;
        for (f, family) in m.series_families.iter().enumerate() {
            if f % 5 == 4 {
                continue; // some families stay empty
            }
            let extra: Vec<Vec<&str>> = match family.inner.label_names.len() - 3 {
                0 => vec![vec![]],
                1 => HORIZONS.iter().map(|h| vec![*h]).collect(),
                _ => HORIZONS
                    .iter()
                    .flat_map(|h| COMPONENTS.iter().map(move |c| vec![*h, *c]))
                    .collect(),
            };
            for (z, zone) in zones.iter().enumerate() {
                for app in ["web", "api"] {
                    for (e, extra) in extra.iter().enumerate() {
                        let labels = with(&["requests", zone, app], extra);
                        let value = values[(f + z + e) % values.len()] * (z + 1) as f64;
                        family.set(&labels, value);
                        reference[f].with_label_values(&labels).set(value);
                        samples += 1;
                        if (f + z + e) % 7 == 0 {
                            family.remove(&labels);
                            reference[f].remove_label_values(&labels).expect("remove");
                            samples -= 1;
                        }
                    }
                }
            }
        }
        let mut expected = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut expected)
            .expect("encodes");
        let got = m.plain_series(m.refresh_series());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
        // No two label tuples shared a GaugeVec child (its hash collision), so the
        // reference holds every sample.
        let lines = got
            .split(|b| *b == b'\n')
            .filter(|l| l.first().is_some_and(|b| *b != b'#'))
            .count();
        assert_eq!(lines, samples);
        assert!(samples > 300, "{samples}");
    }

    /// Only the gzip member is made per change; the plain text is inflated for the first
    /// client without gzip, shared by the next ones, and dropped at the next change.
    #[test]
    fn plain_series_text_is_made_on_demand_and_kept_until_a_change() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        m.series.ready.set(&["api", "/a"], 1.0);
        assert!(
            m.refresh_series().text.is_none(),
            "not made for gzip clients"
        );
        let first = m.exposition(ExpositionFormat::Text, false);
        let again = m.exposition(ExpositionFormat::OpenMetrics, false);
        assert_eq!(first.chunks[1].as_ptr(), again.chunks[1].as_ptr(), "shared");
        assert_eq!(
            &first.chunks[1][..],
            b"# HELP flowcast_ready 1 when the series has enough recent history and its forecasts are exported, else 0.\n\
              # TYPE flowcast_ready gauge\n\
              flowcast_ready{route=\"/a\",series=\"api\"} 1\n"
        );
        assert!(m.refresh_series().text.is_some(), "kept");
        m.series.ready.set(&["api", "/a"], 0.0);
        assert!(m.refresh_series().text.is_none(), "dropped at the change");
        let text = m.encode_text();
        assert!(String::from_utf8_lossy(&text).ends_with("series=\"api\"} 0\n"));
    }

    /// A series is one row for all its gauges, forgotten with its last gauge.
    #[test]
    fn a_series_is_one_row_forgotten_with_its_last_gauge() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        let forecast = Forecast {
            origin: 0,
            horizons: std::array::from_fn(|_| crate::band::Interval {
                mean: 2.0,
                lower: 1.0,
                upper: 3.0,
                stddev: 0.5,
                components: [0.1, 0.2, 0.3],
            }),
        };
        for route in ["/a", "/b"] {
            m.publish_forecast(&["api", route], &forecast);
            m.publish_status(
                &["api", route],
                &SeriesStatus {
                    ready: true,
                    ..SeriesStatus::default()
                },
            );
        }
        let rows = |m: &Metrics| -> Vec<String> {
            lock(&m.series_cache.rows)
                .rows
                .keys()
                .map(|k| k.join("/"))
                .collect()
        };
        assert_eq!(rows(&m), ["api//a", "api//b"]);
        m.clear_forecast(&["api", "/b"]);
        assert_eq!(rows(&m), ["api//a", "api//b"], "/b is still ready=1");
        m.series.ready.remove(&["api", "/b"]);
        m.series.history.remove(&["api", "/b"]);
        assert_eq!(rows(&m), ["api//a"]);
        let text = String::from_utf8(m.encode_text()).expect("utf-8");
        assert!(text.contains("route=\"/a\"") && !text.contains("route=\"/b\""));
        // Wrong label counts and unknown horizons are ignored.
        m.series.upper.set(&["api", "/c"], 1.0);
        m.series.upper.set(&["api", "/c", "20m"], 1.0);
        assert_eq!(rows(&m), ["api//a"]);
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let m = Metrics::new("flowcast", &["route".to_string()]).expect("metrics");
        m.scrapes.inc_by(3);
        m.scrape_failures.with_label_values(&["timeout"]).inc();
        m.scrape_duration.observe(0.02);
        let text = m.encode_text();
        let om = m.encode_openmetrics();
        let om_text = String::from_utf8(om.clone()).expect("utf-8");
        assert!(om_text.ends_with("# EOF\n"));
        assert!(om_text.contains("# TYPE flowcast_scrapes counter\n"));
        assert!(om_text.contains("\nflowcast_scrapes_total 3\n"));
        assert!(om_text.contains("# TYPE flowcast_scrape_failures counter\n"));
        assert!(om_text.contains("# TYPE flowcast_mc_passes gauge\n"));
        assert!(!om_text.contains("# TYPE flowcast_scrapes_total"));
        // Same samples, read by a strict OpenMetrics parser.
        assert_eq!(
            samples(&text, Format::Text004),
            samples(&om, Format::OpenMetrics)
        );
    }
}
