//! Every metric flowcast exports: the only place that names metrics and writes help text
//! and units.
//!
//! Owns an explicit `prometheus::Registry` (never the global one) for the process's own
//! counters and histograms, and the per-series gauge families, which live in a
//! `SeriesTable` ([`crate::serve::gauge_table`] holds that machinery and the `/metrics`
//! encoding). Per-series gauges carry `series`, then the configured `by` labels, then
//! `horizon` or `component` where they apply. When a series is not ready its forecast
//! gauges are removed, never set to 0 or NaN (SPEC.md). It must not compute anything: the
//! live loop hands it finished numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::forecast::band::{Forecast, Judgement};
use crate::forecast::combine::{Skill, EXPERTS};
use crate::forecast::features::HORIZON_STEPS;
use crate::ingest::source::{PollCounts, PollReport};
use crate::serve::gauge_table::{to_openmetrics, GaugeFamily, SeriesTable};
pub use crate::serve::gauge_table::{
    Exposition, ExpositionFormat, SeriesText, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE,
};

/// Label values of the `horizon` label, in horizon order.
pub const HORIZONS: [&str; HORIZON_STEPS] = ["5m", "10m", "15m"];
/// Label values of the `component` label: u1, u2, u3.
pub const COMPONENTS: [&str; 3] = ["epistemic", "heteroscedastic", "homoscedastic"];
/// Label names flowcast uses itself, which `by` labels may not take.
pub const RESERVED_LABELS: [&str; 6] = ["series", "horizon", "component", "reason", "le", "expert"];
/// Buckets of every duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Errors building the registry (only a programming error or a bad prefix can cause one).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The extra labels of per-series families: none, `horizon`, or `horizon` and `component`.
type Extras = &'static [(&'static str, &'static [&'static str])];
const NO_EXTRAS: Extras = &[];
const BY_HORIZON: Extras = &[("horizon", &HORIZONS)];
const BY_COMPONENT: Extras = &[("horizon", &HORIZONS), ("component", &COMPONENTS)];
const BY_EXPERT: Extras = &[("expert", &EXPERTS)];

/// The per-series gauges.
#[derive(Clone)]
pub(crate) struct SeriesGauges {
    mean: GaugeFamily,
    lower: GaugeFamily,
    pub(crate) upper: GaugeFamily,
    stddev: GaugeFamily,
    uncertainty: GaugeFamily,
    observed: GaugeFamily,
    anomaly: GaugeFamily,
    out_of_band: GaugeFamily,
    pub(crate) ready: GaugeFamily,
    pub(crate) history: GaugeFamily,
    pub(crate) step_history: GaugeFamily,
    coverage: GaugeFamily,
    error: GaugeFamily,
    concurrency: GaugeFamily,
    replicas: GaugeFamily,
    expert_weight: GaugeFamily,
    expert_skill: GaugeFamily,
}

impl SeriesGauges {
    /// Adds every per-series family to `table`, named `<prefix>_...`, with `series` and
    /// `by` as the series labels.
    fn new(table: &mut SeriesTable, prefix: &str, by: &[String]) -> Result<Self, MetricsError> {
        let mut series_labels: Vec<&str> = vec!["series"];
        series_labels.extend(by.iter().map(String::as_str));
        let mut gauge = |n: &str, help: &str, extras: Extras| {
            table.add_family(format!("{prefix}_{n}"), help, &series_labels, extras)
        };
        Ok(Self {
            mean: gauge(
                "forecast_requests_per_second",
                "Forecast of the peak 1-minute request rate in the 5-minute step ending `horizon` from now (mean of the band).",
                BY_HORIZON,
            )?,
            lower: gauge(
                "forecast_lower_requests_per_second",
                "Lower bound of the calibrated 95% forecast band (never below 0).",
                BY_HORIZON,
            )?,
            upper: gauge(
                "forecast_upper_requests_per_second",
                "Upper bound of the calibrated 95% forecast band; the autoscaling signal.",
                BY_HORIZON,
            )?,
            stddev: gauge(
                "forecast_stddev_requests_per_second",
                "Calibrated standard deviation sqrt(u1^2+u2^2+u3^2) of the forecast, for aggregating bands: sum(mean) +- 1.96*sqrt(sum(stddev^2)).",
                BY_HORIZON,
            )?,
            uncertainty: gauge(
                "uncertainty_requests_per_second",
                "Uncertainty components of the forecast before calibration: epistemic (u1, Monte-Carlo dropout), heteroscedastic (u2, predicted noise), homoscedastic (u3, learnt per time of day).",
                BY_COMPONENT,
            )?,
            observed: gauge(
                "observed_requests_per_second",
                "Peak 1-minute request rate of the latest complete 5-minute step.",
                NO_EXTRAS,
            )?,
            anomaly: gauge(
                "anomaly_score",
                "(observed - forecast made for the latest step) / its standard deviation, in the model's log scale.",
                NO_EXTRAS,
            )?,
            out_of_band: gauge(
                "out_of_band",
                "1 when the latest observed step fell outside the band forecast for it 5 minutes earlier.",
                NO_EXTRAS,
            )?,
            ready: gauge(
                "ready",
                "1 when the series has enough recent history and its forecasts are exported, else 0.",
                NO_EXTRAS,
            )?,
            history: gauge(
                "history_seconds",
                "Seconds of 1-minute rates the series currently holds.",
                NO_EXTRAS,
            )?,
            step_history: gauge(
                "step_history_seconds",
                "Seconds of 5-minute step history the combination holds (up to a week: the day-ago and week-ago experts read it; a backfill fills it at start).",
                NO_EXTRAS,
            )?,
            coverage: gauge(
                "band_coverage_ratio",
                "Share of recent steps that fell inside the band forecast for them (exponentially weighted over about a day).",
                BY_HORIZON,
            )?,
            concurrency: gauge(
                "forecast_concurrency_upper",
                "Little's law on the upper bound: requests in flight = upper rate x the app's mean latency (from its histogram's _sum/_count rates). Needs --latency-histogram.",
                BY_HORIZON,
            )?,
            replicas: gauge(
                "recommended_replicas",
                "ceil(upper rate x (1 + headroom) / per-replica capacity), at least 1. Needs --replica-capacity.",
                BY_HORIZON,
            )?,
            expert_weight: gauge(
                "expert_weight",
                "Weight of each expert in the online combination that centres the band (lstm, persistence, holt, day_ago, week_ago, mean_1h, mean_3h, mean_1d), averaged over the horizons; the weights sum to 1.",
                BY_EXPERT,
            )?,
            expert_skill: gauge(
                "expert_skill_ratio",
                "1 - the expert's recent mean squared log error over persistence's, averaged over the horizons: 0 is as good as persistence, 1 is perfect, below 0 is worse.",
                BY_EXPERT,
            )?,
            error: gauge(
                "forecast_error_ratio",
                "Mean absolute forecast error over the mean observed rate (exponentially weighted over about a day).",
                BY_HORIZON,
            )?,
        })
    }
}

/// Registers the process's own metrics in one registry, named `<prefix>_...`.
struct Own<'r> {
    registry: &'r Registry,
    prefix: &'r str,
}

impl Own<'_> {
    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(format!("{}_{name}", self.prefix), help)
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> Result<C, MetricsError> {
        self.registry.register(Box::new(collector.clone()))?;
        Ok(collector)
    }

    fn histogram(&self, name: &str, help: &str) -> Result<Histogram, MetricsError> {
        let opts = HistogramOpts::from(self.opts(name, help)).buckets(DURATION_BUCKETS.to_vec());
        self.register(Histogram::with_opts(opts)?)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.register(IntCounter::with_opts(self.opts(name, help))?)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
    ) -> Result<IntCounterVec, MetricsError> {
        self.register(IntCounterVec::new(self.opts(name, help), &[label])?)
    }

    fn int_gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.register(IntGauge::with_opts(self.opts(name, help))?)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<prometheus::Gauge, MetricsError> {
        self.register(prometheus::Gauge::with_opts(self.opts(name, help))?)
    }
}

/// All metrics. The per-series gauges live in one table (a row per series, outside the
/// registry) whose text is encoded straight into a gzip member once per change and
/// cached, so that a `/metrics` request with thousands of series shares those bytes
/// instead of encoding or copying them; only the process's own counters and histograms
/// (in the registry) are encoded per request.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub(crate) table: SeriesTable,
    pub(crate) series: SeriesGauges,
    /// Duration of scrapes of the target, successful or not.
    pub scrape_duration: Histogram,
    /// Failed scrapes by reason.
    pub scrape_failures: IntCounterVec,
    /// Scrapes attempted.
    pub scrapes: IntCounter,
    /// Samples (or series) refused by the series cap.
    pub series_dropped: IntCounter,
    /// Series evicted after `series_stale_after` without a sample.
    pub series_evicted: IntCounter,
    /// Whether the last reload of `--web.config.file` succeeded (1 before any change).
    pub web_config_reload_ok: IntGauge,
    /// Samples and points refused for their timestamps, by reason (`future`, `too_old`).
    pub samples_refused: IntCounterVec,
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
    /// Connections open on the listener (at most the connection cap).
    pub http_open_connections: IntGauge,
    /// Connections closed to make room at the cap (idle or slow clients).
    pub http_connections_shed: IntCounter,
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
    /// Adds one poll of the source: the poll itself, its duration, what it counted, and
    /// its failure reason when it failed.
    pub fn record_poll(&self, poll: &PollReport) {
        self.scrapes.inc();
        self.scrape_duration.observe(poll.seconds);
        self.record_counts(&poll.counts);
        if let Err(e) = &poll.result {
            self.scrape_failures.with_label_values(&[e.reason()]).inc();
        }
    }

    /// Adds what a poll or a backfill counted: drops, resets, refused samples, and a
    /// scrape's invalid values (`flowcast_scrape_failures_total{reason="invalid_value"}`).
    pub fn record_counts(&self, counts: &PollCounts) {
        self.series_dropped.inc_by(counts.series_dropped);
        self.counter_resets.inc_by(counts.counter_resets);
        for (n, reason) in counts.refused.into_iter().zip(PollCounts::REFUSED_REASONS) {
            if n > 0 {
                self.samples_refused.with_label_values(&[reason]).inc_by(n);
            }
        }
        if counts.invalid_values {
            self.scrape_failures
                .with_label_values(&["invalid_value"])
                .inc();
        }
    }

    /// Builds and registers every metric, named `<prefix>_...`, with `by` as the extra
    /// series labels.
    pub fn new(prefix: &str, by: &[String]) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let mut table = SeriesTable::default();
        let series = SeriesGauges::new(&mut table, prefix, by)?;
        let own = Own {
            registry: &registry,
            prefix,
        };
        let build_info = own.register(IntGaugeVec::new(
            own.opts("build_info", "Build information; the value is always 1."),
            &["version"],
        )?)?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let http_duration = own.register(HistogramVec::new(
            HistogramOpts::from(own.opts(
                "http_request_duration_seconds",
                "Time to answer HTTP requests, by path.",
            ))
            .buckets(DURATION_BUCKETS.to_vec()),
            &["path"],
        )?)?;
        Ok(Self {
            scrape_duration: own.histogram(
                "scrape_duration_seconds",
                "Duration of scrapes of the target.",
            )?,
            inference_duration: own.histogram(
                "inference_duration_seconds",
                "Duration of one batched model run (all ready series, all Monte-Carlo passes).",
            )?,
            tick_duration: own.histogram(
                "tick_duration_seconds",
                "Duration of one forecast tick (features, inference, band, publishing).",
            )?,
            scrape_failures: own.counter_vec(
                "scrape_failures_total",
                "Failed polls of the source (scrapes of the target or Prometheus queries), by reason.",
                "reason",
            )?,
            tick_failures: own.counter_vec(
                "tick_failures_total",
                "Forecast ticks that failed, by reason.",
                "reason",
            )?,
            state_failures: own.counter_vec(
                "state_failures_total",
                "Snapshot writes that failed (reason write_missing, write_not_a_directory, write_permission, write_no_space, write_io) and snapshots ignored at start (corrupt, version, foreign, io).",
                "reason",
            )?,
            restored_series: own.int_gauge(
                "state_restored_series",
                "Series restored from the --state-dir snapshot at start.",
            )?,
            last_snapshot: own.gauge(
                "state_last_snapshot_timestamp_seconds",
                "Unix time at which the last --state-dir snapshot was written.",
            )?,
            circuit_state: own.int_gauge(
                "source_circuit_state",
                "Circuit breaker of the source: 0 closed (polling), 1 half-open (probing), 2 open (paused after repeated failures).",
            )?,
            consecutive_failures: own.int_gauge(
                "source_consecutive_failures",
                "Consecutive failed polls of the source; polls back off exponentially with jitter.",
            )?,
            backfilled_seconds: own.counter(
                "backfilled_history_seconds_total",
                "Seconds of per-series history filled from Prometheus at start (--backfill-url).",
            )?,
            backfill_failures: own.counter_vec(
                "backfill_failures_total",
                "Backfills from Prometheus that failed, by reason.",
                "reason",
            )?,
            scrapes: own.counter(
                "scrapes_total",
                "Polls of the source attempted (scrapes of the target, or Prometheus queries).",
            )?,
            series_dropped: own.counter(
                "series_dropped_total",
                "Samples whose series was refused because --max-series was reached.",
            )?,
            web_config_reload_ok: own.int_gauge(
                "web_config_last_reload_successful",
                "Whether the last reload of --web.config.file succeeded (an invalid file keeps the last good one).",
            )?,
            series_evicted: own.counter(
                "series_evicted_total",
                "Series evicted after series_stale_after without a sample, with their gauges and state.",
            )?,
            samples_refused: own.counter_vec(
                "samples_refused_total",
                "Samples, Prometheus points and backfilled windows refused for their timestamp (future: more than 5m past the clock; too_old: before the history kept), by reason.",
                "reason",
            )?,
            counter_resets: own.counter(
                "source_resets_total",
                "Resets seen in the selected counters (a value went down).",
            )?,
            mc_passes: own.int_gauge("mc_passes", "Monte-Carlo dropout passes per forecast.")?,
            series_count: own.int_gauge("series", "Series currently held.")?,
            last_tick: own.gauge(
                "last_successful_tick_timestamp_seconds",
                "Unix time at which the last forecast tick completed.",
            )?,
            http_open_connections: own.int_gauge(
                "http_open_connections",
                "Connections open on the listener (at most its cap of 256).",
            )?,
            http_connections_shed: own.counter(
                "http_connections_shed_total",
                "Connections closed to make room at the cap: the oldest with no response in flight (idle, slow to send its headers, or slow to read).",
            )?,
            build_info,
            http_duration,
            registry,
            table,
            series,
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

    /// Removes every gauge of a series (it was evicted).
    pub fn remove_series(&self, series: &[&str]) {
        self.table.remove_series(series);
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

    /// Publishes the experts' weights and skill (averaged over the horizons), or removes
    /// them when the band is not the combination's.
    pub fn publish_experts(&self, series: &[&str], experts: Option<&Skill>) {
        let s = &self.series;
        for (i, name) in EXPERTS.iter().enumerate() {
            let labels = with(series, &[name]);
            let mean = |v: &[Option<f64>]| {
                let known: Vec<f64> = v.iter().flatten().copied().collect();
                (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
            };
            let weight = experts.and_then(|e| mean(&e.weight[i].map(Some)));
            let skill = experts.and_then(|e| mean(&e.skill[i]));
            set_or_remove(&s.expert_weight, &labels, weight);
            set_or_remove(&s.expert_skill, &labels, skill);
        }
    }

    /// Publishes a series' status gauges; absent values remove their gauge.
    pub fn publish_status(&self, series: &[&str], status: &SeriesStatus) {
        let s = &self.series;
        s.ready.set(series, if status.ready { 1.0 } else { 0.0 });
        s.history.set(series, status.history_seconds);
        s.step_history.set(series, status.step_history_seconds);
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

    /// Re-encodes the per-series gauges if they changed since the last encoding (see
    /// `gauge_table::SeriesTable::refresh`). The live loop calls it after publishing a tick, so
    /// requests find it ready.
    pub fn refresh_series(&self) -> SeriesText {
        self.table.refresh()
    }

    /// The process's own metrics (the registry), encoded for one request in `format`.
    fn encode_own(&self, format: ExpositionFormat) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure would be a malformed family,
        // which this module never registers.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        match format {
            ExpositionFormat::Text => buf,
            ExpositionFormat::OpenMetrics => to_openmetrics(&buf),
        }
    }

    /// The `/metrics` body in `format`, gzipped or not, as chunks to send in order (see
    /// `gauge_table::SeriesTable::exposition`).
    pub fn exposition(&self, format: ExpositionFormat, gzip: bool) -> Exposition {
        self.table.exposition(self.encode_own(format), format, gzip)
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

/// The status of one series at one tick.
#[derive(Debug, Clone, Default)]
pub struct SeriesStatus {
    /// Whether forecasts are exported.
    pub ready: bool,
    /// Seconds of history held.
    pub history_seconds: f64,
    /// Seconds of 5-minute step history the combination holds.
    pub step_history_seconds: f64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::exposition::{self, Format};
    use crate::ingest::scrape::ScrapeError;
    use crate::ingest::source::SourceError;
    use bytes::Bytes;

    /// A poll's report lands in the self-metrics: the poll, what it counted, and its
    /// failure reason.
    #[test]
    fn a_poll_report_is_counted() {
        let m = Metrics::new("flowcast", &[]).expect("metrics");
        let counts = PollCounts {
            series_dropped: 3,
            counter_resets: 2,
            refused: [1, 4],
            invalid_values: true,
        };
        m.record_poll(&PollReport {
            result: Ok(()),
            seconds: 0.25,
            counts,
        });
        m.record_poll(&PollReport {
            result: Err(SourceError::Scrape(ScrapeError::Timeout(
                std::time::Duration::from_secs(1),
            ))),
            seconds: 1.0,
            counts: PollCounts::default(),
        });
        let text = String::from_utf8(m.encode_text()).expect("utf-8");
        for line in [
            "flowcast_scrapes_total 2\n",
            "flowcast_series_dropped_total 3\n",
            "flowcast_source_resets_total 2\n",
            "flowcast_samples_refused_total{reason=\"future\"} 1\n",
            "flowcast_samples_refused_total{reason=\"too_old\"} 4\n",
            "flowcast_scrape_failures_total{reason=\"invalid_value\"} 1\n",
            "flowcast_scrape_failures_total{reason=\"timeout\"} 1\n",
            "flowcast_scrape_duration_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

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
