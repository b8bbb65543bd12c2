//! The state the HTTP server reads: [`Shared`], the reports of the latest tick, the track
//! record of past bands built from them, and the capacity signals derived from them.
//!
//! The live loop writes (publishes a [`TickReport`] to the gauges and to the readers); the
//! server only reads. It knows nothing of the engine or the model, so the server reaches
//! neither. Locks are held only to swap or clone an `Arc`.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::forecast::band::{Forecast, Judgement};
use crate::forecast::features::HORIZON_STEPS;
pub use crate::forecast::tick::{SeriesReport, TickReport};
use crate::serve::metrics::{Metrics, SeriesStatus};
use crate::serve::track::TrackBook;

/// Capacity signals (METHOD.md §6).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Capacity {
    /// Latency histogram name (without `_sum`/`_count`).
    pub latency_histogram: Option<String>,
    /// Requests per second per replica.
    pub replica_capacity: Option<f64>,
    /// Share of capacity kept free.
    pub replica_headroom: f64,
}

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
    pub endpoint_auth: crate::ingest::scrape::HttpAuth,
    /// The endpoint's token or password file, held in memory and refreshed off the
    /// runtime ([`crate::host::secrets`]).
    pub endpoint_secret: Option<Arc<crate::host::secrets::SecretFile>>,
    /// The exporter-toolkit web config (TLS, basic-auth users), when one is given.
    pub web: Option<Arc<crate::serve::webconfig::WebConfigWatch>>,
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
            endpoint_auth: crate::ingest::scrape::HttpAuth::default(),
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
    pub fn with_endpoint_auth(mut self, auth: crate::ingest::scrape::HttpAuth) -> Self {
        self.endpoint_secret = auth
            .credential()
            .map(|c| crate::host::secrets::SecretFile::watch(c.file()));
        self.endpoint_auth = auth;
        self
    }

    /// The same, serving with this web config (TLS and basic-auth users).
    pub fn with_web_config(mut self, web: Arc<crate::serve::webconfig::WebConfigWatch>) -> Self {
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

#[cfg(test)]
mod staleness_tests {
    //! The engine's ticks, published: the gauges follow the band mode and readiness.
    use super::*;
    use crate::forecast::band::BandMode;
    use crate::forecast::engine::{test_engine, test_engine_with, test_settings};
    use crate::forecast::history::MINUTE_SECONDS;

    /// With the combined band each series exports its experts' weights (summing to 1) and
    /// skill; with the LSTM alone there are none.
    #[test]
    fn expert_gauges_follow_the_band_mode() {
        let text_after_ticks = |band: BandMode| {
            let mut settings = test_settings(4, 1, 1);
            settings.band = band;
            let mut engine = test_engine_with(settings);
            let shared = Shared::new(
                Metrics::new("flowcast", &[]).expect("metrics"),
                "api".into(),
                Vec::new(),
            );
            let first = 28_000_000_i64;
            for m in first..first + 240 {
                engine.record_rate(&[], m, 30.0 + (m % 11) as f64);
            }
            for k in 0..30 {
                let minute = first + 240 + 5 * k;
                for m in minute - 5..minute {
                    engine.record_rate(&[], m, 30.0 + (m % 11) as f64);
                }
                shared.publish(engine.tick(minute * MINUTE_SECONDS).expect("tick"));
            }
            String::from_utf8(shared.metrics.encode_text()).expect("utf-8")
        };
        let text = text_after_ticks(BandMode::Combined);
        let weights: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("flowcast_expert_weight{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(weights.len(), 8, "{text}");
        let total: f64 = weights.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "weights sum to {total}");
        assert!(
            text.contains("flowcast_expert_skill_ratio{expert=\"persistence\",series=\"api\"} 0\n")
        );
        let alone = text_after_ticks(BandMode::Calibrated);
        assert!(!alone.contains("flowcast_expert_weight{"), "{alone}");
    }

    /// When data stop arriving, forecasts stay up while the newest steps still hold data,
    /// then the series turns not ready and its forecast gauges disappear: never stale
    /// numbers forever, never NaN.
    #[test]
    fn forecasts_stop_when_the_history_goes_stale() {
        let mut engine = test_engine(4, 1, 2);
        let metrics = Metrics::new("flowcast", &[]).expect("metrics");
        let shared = Shared::new(metrics, "api".into(), Vec::new());
        let last = 28_000_000_i64; // the last minute with data
        for m in last - 239..=last {
            engine.record_rate(&[], m, 40.0 + (m % 9) as f64);
        }
        let mut ready_until = None;
        for minutes_after in 1..=40 {
            let origin = (last + 1 + minutes_after) * MINUTE_SECONDS;
            let report = engine.tick(origin).expect("tick");
            let ready = report.series[0].forecast.is_some();
            let reason = report.series[0].not_ready_reason;
            shared.publish(report);
            let text = String::from_utf8(shared.metrics.encode_text()).expect("utf-8");
            assert!(!text.contains("NaN"), "no NaN at +{minutes_after} min");
            let has_forecast = text.contains("flowcast_forecast_upper_requests_per_second{");
            assert_eq!(
                ready, has_forecast,
                "gauges follow readiness at +{minutes_after}"
            );
            if ready {
                ready_until = Some(minutes_after);
            } else {
                assert_eq!(reason, Some("stale"), "+{minutes_after} min");
                assert!(text.contains("flowcast_ready{series=\"api\"} 0"));
            }
        }
        let until = ready_until.expect("forecasts stayed up after the data stopped");
        // The newest 3 five-minute steps (15 minutes) must hold data.
        assert!(
            (10..=15).contains(&until),
            "ready for {until} min after the last data"
        );
    }
}

#[cfg(test)]
mod eviction_tests {
    //! Eviction end to end: the engine's state, the published gauges, the snapshot.
    use super::*;
    use crate::forecast::engine::{test_engine_with, test_settings, Engine};
    use crate::forecast::history::ObserveStats;

    /// An engine like `test_engine` that evicts series after an hour without a sample.
    fn evicting_engine(max_series: usize) -> Engine {
        let mut settings = test_settings(4, 1, max_series);
        settings.limits.stale_after_seconds = Some(3600.0);
        test_engine_with(settings)
    }

    fn key(route: &str) -> Vec<String> {
        vec![route.to_string()]
    }

    /// A scrape at `t` of counters with these keys and value.
    fn scrape(e: &mut Engine, t: f64, keys: &[Vec<String>], value: f64) -> ObserveStats {
        e.observe(
            t,
            keys.iter()
                .enumerate()
                .map(|(i, k)| (i as u64 + 1, k.as_slice(), value)),
        )
    }

    fn ticked(e: &mut Engine, shared: &Shared, origin: i64) -> TickReport {
        let evicted = e.evict_stale(origin);
        let mut report = e.tick(origin).expect("tick");
        report.evicted = evicted;
        shared.publish(report.clone());
        report
    }

    /// A burst of 50,000 junk series fills the cap; an hour without a sample evicts them
    /// (state, gauges, snapshot entries), and the real series that came later are admitted
    /// and forecast. A restart from the snapshot does not bring the junk back.
    #[test]
    fn junk_series_are_evicted_and_real_ones_take_their_place() {
        let mut e = evicting_engine(100);
        let shared = Shared::new(
            Metrics::new("flowcast", &["route".to_string()]).expect("metrics"),
            "api".into(),
            vec!["route".into()],
        );
        let t0 = 1_700_000_040.0; // a minute boundary
        let junk: Vec<Vec<String>> = (0..50_000).map(|i| key(&format!("/junk/{i}"))).collect();
        let stats = scrape(&mut e, t0, &junk, 1.0);
        assert_eq!(
            (e.series_set().series().len(), stats.dropped),
            (100, 49_900)
        );
        ticked(&mut e, &shared, t0 as i64 + 60);
        let text = || String::from_utf8(shared.metrics.encode_text()).expect("utf-8");
        assert!(
            text().contains("route=\"/junk/0\""),
            "junk gauges published"
        );

        // The real routes come every 15 s from then on; while the junk holds the cap they
        // are dropped.
        let real = [key("/a"), key("/b")];
        let mut t = t0 + 15.0;
        let mut counter = 0.0;
        let mut scrape_real = |e: &mut Engine, until: f64| {
            while t <= until {
                counter += 30.0 + (t / 60.0).sin() * 10.0;
                scrape(e, t, &real, counter);
                t += 15.0;
            }
        };
        scrape_real(&mut e, t0 + 3600.0);
        assert!(
            e.series_set().find(&real[0]).is_none(),
            "the cap refused /a"
        );
        let report = ticked(&mut e, &shared, t0 as i64 + 3600 + 60);
        assert_eq!(report.evicted.len(), 100, "every junk series went");
        assert!(report.series.is_empty());
        assert!(!text().contains("/junk/"), "their gauges went");
        assert!(text().contains("flowcast_series_evicted_total 100"));

        // Four hours of the real routes: admitted, then forecast.
        let end = t0 + 3600.0 + 4.0 * 3600.0;
        scrape_real(&mut e, end);
        let origin = ((end as i64) / 300 + 1) * 300;
        let report = ticked(&mut e, &shared, origin);
        let keys: Vec<&Vec<String>> = report.series.iter().map(|s| &s.key).collect();
        assert_eq!(keys, [&real[0], &real[1]]);
        assert!(
            report.series.iter().all(|s| s.forecast.is_some()),
            "both forecast"
        );
        assert_eq!(e.learnt_len(), 2, "the learnt state follows the set");

        let snapshot = e.snapshot("cfg".into(), end);
        let mut restarted = evicting_engine(100);
        assert_eq!(
            restarted.restore(snapshot, 1, origin),
            Ok(2),
            "no junk in the snapshot"
        );
        assert!(
            restarted.evict_stale(origin).is_empty(),
            "restored series are fresh"
        );
        let again = restarted.tick(origin + 300).expect("tick");
        assert!(again.series.iter().all(|s| s.forecast.is_some()));
    }
}
