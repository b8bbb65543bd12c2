//! The live sources of request rates, polled by the loop in `run::live::run`:
//! scraping the app's metrics endpoint, or querying a Prometheus API (the service
//! forecaster); and the backfill of recent history from Prometheus on start.
//!
//! Owns what one poll does to the engine (record counters, or record minute rates), the
//! app's mean latency for Little's law, and what a poll counts ([`PollCounts`]: drops,
//! resets, refused samples, invalid values). It reports and does not publish: the live
//! loop adds the counts, the poll's duration and its failure reason to the metrics, and
//! logs state changes.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use tracing::debug;

use crate::forecast::combine::HISTORY_WINDOWS;
use crate::forecast::engine::Engine;
use crate::forecast::history::{FUTURE_SKEW_SECONDS, MINUTE_SECONDS, RING_MINUTES, STEP_SECONDS};
use crate::host::clock::UnixClock;
use crate::ingest::exposition;
use crate::ingest::promapi::{Points, PromClient, PromError};
use crate::ingest::scrape::{ScrapeError, ScrapeLimits, Scraper};
use crate::ingest::selector::Selector;

/// Seconds a Prometheus source stays behind the clock, so that the last scrape before a
/// minute boundary has been ingested when that minute's rate is queried.
pub const PROMETHEUS_LAG_SECONDS: i64 = 30;
/// Most minutes one Prometheus poll catches up after failures (older ones stay holes
/// unless a restart backfills them).
const CATCH_UP_MINUTES: i64 = 30;

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Scraping the app failed.
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    /// The Prometheus API failed.
    #[error(transparent)]
    Prometheus(#[from] PromError),
}

impl SourceError {
    /// A short bounded label for `flowcast_scrape_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Scrape(e) => e.reason(),
            Self::Prometheus(e) => e.reason(),
        }
    }
}

/// A live source.
pub enum LiveSource {
    /// The app's metrics endpoint.
    Scrape(ScrapeSource),
    /// A PromQL query.
    Prometheus(PromSource),
}

/// What one poll (or a backfill) counted beside the rates it recorded. The live loop adds
/// it to `flowcast_series_dropped_total`, `flowcast_source_resets_total`,
/// `flowcast_samples_refused_total{reason}` and (`invalid_value`)
/// `flowcast_scrape_failures_total{reason}`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PollCounts {
    /// Samples of series the cap refused.
    pub series_dropped: u64,
    /// Counter resets seen.
    pub counter_resets: u64,
    /// Samples (or points, or windows) refused as `[future, too_old]`.
    pub refused: [u64; 2],
    /// Whether a scrape carried values that are not counters (NaN, negative): counted as a
    /// failure with reason `invalid_value`, though the rest of the scrape is kept.
    pub invalid_values: bool,
}

impl PollCounts {
    /// The `reason` labels of [`PollCounts::refused`], in order.
    pub const REFUSED_REASONS: [&'static str; 2] = ["future", "too_old"];

    fn add_refused(&mut self, refused: [u64; 2]) {
        self.refused[0] += refused[0];
        self.refused[1] += refused[1];
    }
}

/// What a poll did: its result, how long it took, and what it counted (even when it
/// failed part way).
#[derive(Debug)]
pub struct PollReport {
    /// Whether it succeeded.
    pub result: Result<(), SourceError>,
    /// Wall time of the poll.
    pub seconds: f64,
    /// What it counted.
    pub counts: PollCounts,
}

/// What the live loop polls: one call records whatever arrived into the engine. The loop
/// counts failures by [`SourceError::reason`], backs off and opens its circuit breaker.
pub trait RateSource {
    /// Polls once and records what arrived, counting into `counts`; `clock` gives the
    /// time of the poll.
    fn poll(
        &mut self,
        engine: &mut Engine,
        counts: &mut PollCounts,
        clock: &UnixClock,
    ) -> impl std::future::Future<Output = Result<(), SourceError>> + Send;
}

/// Polls `source` once, timed, with its counts.
pub async fn poll_once(
    source: &mut impl RateSource,
    engine: &mut Engine,
    clock: &UnixClock,
) -> PollReport {
    let started = Instant::now();
    let mut counts = PollCounts::default();
    let result = source.poll(engine, &mut counts, clock).await;
    PollReport {
        result,
        seconds: started.elapsed().as_secs_f64(),
        counts,
    }
}

impl RateSource for LiveSource {
    /// Polls the configured source.
    async fn poll(
        &mut self,
        engine: &mut Engine,
        counts: &mut PollCounts,
        clock: &UnixClock,
    ) -> Result<(), SourceError> {
        match self {
            LiveSource::Scrape(s) => s
                .poll(engine, counts, clock)
                .await
                .map_err(SourceError::from),
            LiveSource::Prometheus(p) => p
                .poll(engine, counts, clock.now())
                .await
                .map_err(SourceError::from),
        }
    }
}

/// Scrapes the app and tracks its counters (and, optionally, its latency histogram).
pub struct ScrapeSource {
    scraper: Scraper,
    selector: Selector,
    by: Vec<String>,
    latency: Option<Latency>,
    limits: ScrapeLimits,
}

impl ScrapeSource {
    /// A source selecting `selector` and keeping `by` labels; with `latency_histogram`,
    /// the histogram's `_sum`/`_count` under the same label matchers give the mean latency.
    pub fn new(
        scraper: Scraper,
        selector: Selector,
        by: Vec<String>,
        latency_histogram: Option<&str>,
    ) -> Self {
        let latency = latency_histogram.map(|h| Latency {
            sum: selector.with_metric_name(&format!("{h}_sum")),
            count: selector.with_metric_name(&format!("{h}_count")),
            last: HashMap::new(),
        });
        Self {
            scraper,
            selector,
            by,
            latency,
            limits: ScrapeLimits::DEFAULT,
        }
    }

    /// The same, with these per-scrape limits.
    pub fn with_limits(mut self, limits: ScrapeLimits) -> Self {
        self.limits = limits;
        self
    }

    fn key(&self, labels: &exposition::Labels<'_>) -> Vec<String> {
        self.by
            .iter()
            .map(|l| labels.get(l).map(|v| v.into_owned()).unwrap_or_default())
            .collect()
    }

    /// Scrapes once; the samples are stamped with `clock`'s time when the body arrived.
    async fn poll(
        &mut self,
        engine: &mut Engine,
        counts: &mut PollCounts,
        clock: &UnixClock,
    ) -> Result<(), ScrapeError> {
        let result = self.scraper.fetch().await;
        let t = clock.now();
        let outcome = result.and_then(|body| {
            let mut matched: Vec<(u64, Vec<String>, f64)> = Vec::new();
            let mut latency_totals: HashMap<Vec<String>, (f64, f64)> = HashMap::new();
            let mut refused = [0u64; 2];
            let (mut samples, mut over_limit) = (0usize, None);
            exposition::parse(&body.bytes, body.format, |sample| {
                if over_limit.is_some() {
                    return;
                }
                samples += 1;
                over_limit = self.limits.check(samples, &sample);
                if over_limit.is_some() {
                    return;
                }
                // A sample's own timestamp is not used (the scrape's time is), but one in
                // the future or before the ring's start cannot be trusted.
                let keep = RING_MINUTES as i64 * MINUTE_SECONDS;
                if let Some(r) = sample
                    .timestamp_ms
                    .and_then(|ms| refusal(ms.div_euclid(1000), t, keep))
                {
                    if self.selector.matches(&sample.name, &sample.labels) {
                        refused[r] += 1;
                    }
                    return;
                }
                if self.selector.matches(&sample.name, &sample.labels) {
                    let mut h = DefaultHasher::new();
                    sample.name.hash(&mut h);
                    for (k, v) in sample.labels.iter() {
                        k.hash(&mut h);
                        v.hash(&mut h);
                    }
                    matched.push((h.finish(), self.key(&sample.labels), sample.value));
                } else if let Some(l) = &self.latency {
                    let is_sum = l.sum.matches(&sample.name, &sample.labels);
                    if is_sum || l.count.matches(&sample.name, &sample.labels) {
                        let totals = latency_totals.entry(self.key(&sample.labels)).or_default();
                        if is_sum {
                            totals.0 += sample.value;
                        } else {
                            totals.1 += sample.value;
                        }
                    }
                }
            })?;
            if let Some(e) = over_limit {
                return Err(e);
            }
            counts.add_refused(refused);
            Ok((matched, latency_totals))
        });
        match outcome {
            Ok((matched, latency_totals)) => {
                let stats =
                    engine.observe(t, matched.iter().map(|(h, k, v)| (*h, k.as_slice(), *v)));
                counts.series_dropped += stats.dropped as u64;
                counts.counter_resets += stats.resets as u64;
                counts.invalid_values |= stats.invalid > 0;
                if let Some(l) = &mut self.latency {
                    for (key, latency) in l.update(latency_totals) {
                        engine.set_latency(&key, latency);
                    }
                }
                debug!(matched = stats.matched, "scrape recorded");
                Ok(())
            }
            Err(e) => {
                engine.mark_gap();
                Err(e)
            }
        }
    }
}

/// Mean latency per series from a histogram's `_sum` and `_count` counters: the increase
/// of the sum over the increase of the count between two scrapes, smoothed.
struct Latency {
    sum: Selector,
    count: Selector,
    last: HashMap<Vec<String>, (f64, f64, Option<f64>)>,
}

impl Latency {
    /// Weight of the newest interval in the smoothed mean (about a minute at 15 s scrapes).
    const WEIGHT: f64 = 0.25;

    fn update(&mut self, totals: HashMap<Vec<String>, (f64, f64)>) -> Vec<(Vec<String>, f64)> {
        let mut out = Vec::new();
        for (key, (sum, count)) in totals {
            if !(sum.is_finite() && count.is_finite()) {
                continue;
            }
            let entry = self.last.entry(key.clone()).or_insert((sum, count, None));
            let (d_sum, d_count) = (sum - entry.0, count - entry.1);
            let mut mean = entry.2;
            // A decrease is a reset (or a child vanished): skip the interval.
            if d_count > 0.0 && d_sum >= 0.0 {
                let latest = d_sum / d_count;
                mean = Some(mean.map_or(latest, |m| m + Self::WEIGHT * (latest - m)));
            }
            *entry = (sum, count, mean);
            if let Some(m) = mean {
                out.push((key, m));
            }
        }
        if self.last.len() > 100_000 {
            self.last.clear(); // bounded memory under hostile label churn
        }
        out
    }
}

/// Queries a Prometheus API for the rates of the minutes that completed since the last
/// poll.
pub struct PromSource {
    client: PromClient,
    query: String,
    last_minute: Option<i64>,
}

impl PromSource {
    /// A source of `query` (requests per second) through `client`.
    pub fn new(client: PromClient, query: String) -> Self {
        Self {
            client,
            query,
            last_minute: None,
        }
    }

    /// Queries the minutes that completed by `now` (Unix seconds) since the last poll.
    async fn poll(
        &mut self,
        engine: &mut Engine,
        counts: &mut PollCounts,
        now: f64,
    ) -> Result<(), PromError> {
        // The rate evaluated at the end of minute m is minute m's rate.
        let end = query_end(now);
        let newest = end / MINUTE_SECONDS - 1;
        let first = match self.last_minute {
            Some(m) if m == newest => return Ok(()),
            Some(m) if m < newest => (m + 1).max(newest - CATCH_UP_MINUTES),
            // None, or the clock stepped back (NTP): from the current minute, rather than
            // nothing until the clock has caught up with the last poll.
            _ => newest,
        };
        let points = if first == newest {
            self.client.query(&self.query, end).await?
        } else {
            let start = (first + 1) * MINUTE_SECONDS;
            self.client
                .query_range(&self.query, start, end, MINUTE_SECONDS)
                .await?
        };
        let recorded = record(engine, counts, &points, false, now);
        debug!(recorded, "prometheus poll recorded");
        self.last_minute = Some(newest);
        Ok(())
    }
}

/// Whether a point at `t` is `future` (index 0) or `too_old` (1) at `now`, when it is
/// older than `keep` seconds.
fn refusal(t: i64, now: f64, keep: i64) -> Option<usize> {
    if t as f64 > now + FUTURE_SKEW_SECONDS as f64 {
        Some(0)
    } else if (t as f64) < now - keep as f64 {
        Some(1)
    } else {
        None
    }
}

/// Records `(end of minute, rate)` points as minute rates. With `holes_only`, minutes the
/// ring already holds (from a restored snapshot) are kept. Points dated in the future or
/// before the ring's start at `now` are refused and counted. Returns the minutes recorded.
fn record(
    engine: &mut Engine,
    counts: &mut PollCounts,
    points: &Points,
    holes_only: bool,
    now: f64,
) -> usize {
    let mut recorded = 0;
    let mut dropped = 0u64;
    let mut refused = [0u64; 2];
    for (key, series) in points {
        for &(t, rate) in series {
            if let Some(r) = refusal(t, now, RING_MINUTES as i64 * MINUTE_SECONDS) {
                refused[r] += 1;
                continue;
            }
            let minute = t.div_euclid(MINUTE_SECONDS) - 1;
            match engine.record_minute(key, minute, rate, holes_only) {
                Some(true) => recorded += 1,
                Some(false) => {}
                None => dropped += 1,
            }
        }
    }
    counts.series_dropped += dropped;
    counts.add_refused(refused);
    recorded
}

/// The end (Unix seconds, on the minute) of the newest minute a Prometheus source may read
/// at `now`: [`PROMETHEUS_LAG_SECONDS`] behind, so its last scrape has been ingested.
fn query_end(now: f64) -> i64 {
    ((now as i64 - PROMETHEUS_LAG_SECONDS).div_euclid(MINUTE_SECONDS)) * MINUTE_SECONDS
}

/// What a backfill brought.
#[derive(Debug)]
pub struct Backfilled {
    /// Minute rates recorded (the last [`RING_MINUTES`]).
    pub minutes: usize,
    /// 5-minute windows recorded in the combination's week of steps.
    pub windows: usize,
    /// Why the week of 5-minute windows could not be read, if it could not: the minutes
    /// are kept, and the day-ago and week-ago experts wait for their own history.
    pub windows_error: Option<PromError>,
}

/// The PromQL of each 5-minute window's peak 1-minute rate, evaluated at the window's
/// end: the user's rate query as a subquery at a 1-minute resolution.
pub fn window_peak_query(query: &str) -> String {
    format!("max_over_time(({query})[5m:1m])")
}

/// Fills the holes of the last [`RING_MINUTES`] before `now` (Unix seconds) from `query`
/// (requests per second) with one range query at a 1-minute step, then the week of
/// 5-minute windows the combination keeps ([`HISTORY_WINDOWS`]) with one range query of
/// each window's peak at a 5-minute step: 2,020 points a series, within Prometheus's
/// 11,000. Windows come oldest first, as the combination learns them.
pub async fn backfill(
    engine: &mut Engine,
    client: &PromClient,
    query: &str,
    counts: &mut PollCounts,
    now: f64,
) -> Result<Backfilled, PromError> {
    let end = query_end(now);
    let start = end - (RING_MINUTES as i64 - 1) * MINUTE_SECONDS;
    let points = client
        .query_range(query, start, end, MINUTE_SECONDS)
        .await?;
    let minutes = record(engine, counts, &points, true, now);
    let windows_end = end.div_euclid(STEP_SECONDS) * STEP_SECONDS;
    let windows_start = windows_end - (HISTORY_WINDOWS as i64 - 1) * STEP_SECONDS;
    let peaks = client
        .query_range(
            &window_peak_query(query),
            windows_start,
            windows_end,
            STEP_SECONDS,
        )
        .await;
    let (windows, windows_error) = match peaks {
        Ok(peaks) => {
            let mut windows = 0;
            let mut refused = [0u64; 2];
            for (key, series) in &peaks {
                for &(t, peak) in series {
                    if let Some(r) = refusal(t, now, HISTORY_WINDOWS as i64 * STEP_SECONDS) {
                        refused[r] += 1;
                        continue;
                    }
                    // The peak evaluated at a window's end is that window's.
                    if engine.record_step(key, t - STEP_SECONDS, peak) {
                        windows += 1;
                    }
                }
            }
            counts.add_refused(refused);
            (windows, None)
        }
        Err(e) => (0, Some(e)),
    };
    Ok(Backfilled {
        minutes,
        windows,
        windows_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each limit refuses the first sample over it, with Prometheus's name; 0 turns it off.
    #[test]
    fn scrape_limits_name_the_limit_broken() {
        let limits = ScrapeLimits {
            sample_limit: 3,
            label_limit: 3,
            label_name_length_limit: 4,
            label_value_length_limit: 5,
        };
        let broken = |text: &str, limits: ScrapeLimits| {
            let mut n = 0;
            let mut first = None;
            exposition::parse(text.as_bytes(), exposition::Format::Text004, |sample| {
                n += 1;
                first = first.take().or_else(|| limits.check(n, &sample));
            })
            .expect("parses");
            first.map(|e| e.reason())
        };
        for (text, want) in [
            ("a 1\nb 1\nc 1\n", None),
            ("a 1\nb 1\nc 1\nd 1\n", Some("sample_limit")),
            ("a{x=\"1\",y=\"2\"} 1\n", None),
            ("a{x=\"1\",y=\"2\",z=\"3\"} 1\n", Some("label_limit")),
            ("a{abcde=\"1\"} 1\n", Some("label_name_length_limit")),
            ("a{x=\"123456\"} 1\n", Some("label_value_length_limit")),
            ("abcdef 1\n", Some("label_value_length_limit")),
        ] {
            assert_eq!(broken(text, limits), want, "{text:?}");
        }
        let off = ScrapeLimits {
            sample_limit: 0,
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
        };
        assert_eq!(
            broken(
                "a{abcde=\"123456\",y=\"2\",z=\"3\"} 1\nb 1\nc 1\nd 1\n",
                off
            ),
            None
        );
    }

    /// A Prometheus point dated past the clock (or before the ring's start) is refused and
    /// counted, and never moves the ring: the minutes after it are still recorded.
    #[test]
    fn points_from_the_future_or_too_old_are_refused_and_counted() {
        let mut engine = crate::forecast::engine::test_engine(4, 1, 4);
        let mut counts = PollCounts::default();
        let now = 1_700_000_000.0;
        let end = query_end(now);
        let points: Points = [(
            Vec::new(),
            vec![
                (end - 6 * 3600, 1.0), // before the ring
                (end - 120, 2.0),
                (end + 10 * 86_400, 9.0), // ten days ahead
                (end - 60, 3.0),
            ],
        )]
        .into_iter()
        .collect();
        assert_eq!(record(&mut engine, &mut counts, &points, false, now), 2);
        let ring = &engine.series_set().series()[0].ring;
        assert_eq!(ring.newest_minute(), Some((end - 60) / 60 - 1));
        assert_eq!(counts.refused, [1, 1], "one future, one too old");
        // The next minute still lands.
        let next: Points = [(Vec::new(), vec![(end, 4.0)])].into_iter().collect();
        assert_eq!(
            record(&mut engine, &mut counts, &next, false, now + 60.0),
            1
        );
    }
}
