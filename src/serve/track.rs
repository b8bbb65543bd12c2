//! The track record the web page draws: for each series it can draw, the last 24 hours of
//! observed 5-minute steps and the band forecast for each of them 5, 10 and 15 minutes
//! earlier (the page shows the last 3 or the last 24 hours of it).
//!
//! Owns a fixed ring per series (291 steps of `f32`: 288 past steps and the 3 forecast
//! ahead, 8 kB), fed from the ticks on the 5-minute grid (the origins the calibration learns
//! from too) and read by the page. Only the first [`TRACKED_SERIES`] series of a tick (the
//! ones the page draws) are held, so the book stays under 1 MB whatever the series count;
//! memory does not grow with uptime; a series that leaves the tick report leaves the book.
//! Never touches the engine: it only reads [`TickReport`]s. Pure and synchronous.

use std::collections::HashMap;

use crate::forecast::features::{HORIZON_STEPS, WINDOW_STEPS};
use crate::forecast::history::STEP_SECONDS;
use crate::forecast::tick::TickReport;

/// Past steps kept (24 hours).
pub const TRACK_STEPS: usize = 288;
/// Past steps of the page's short view (3 hours, the model's window).
pub const SHORT_VIEW_STEPS: usize = WINDOW_STEPS;
/// Series held: the first of each tick's report, as many as the page draws.
pub const TRACKED_SERIES: usize = 100;
/// Slots per series: the past steps and the steps forecast ahead.
const SLOTS: usize = TRACK_STEPS + HORIZON_STEPS;

/// One step: what happened and the bands forecast for it (lower, upper per horizon);
/// NaN where unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    observed: f32,
    bands: [[f32; 2]; HORIZON_STEPS],
}

const EMPTY: Slot = Slot {
    observed: f32::NAN,
    bands: [[f32::NAN; 2]; HORIZON_STEPS],
};

/// One step of a track record, for drawing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackStep {
    /// Start of the step (unix seconds).
    pub start: i64,
    /// Its peak 1-minute rate (req/s), when known.
    pub observed: Option<f64>,
    /// Per horizon (5, 10, 15 min), the band (lower, upper, req/s) forecast for it.
    pub bands: [Option<(f64, f64)>; HORIZON_STEPS],
}

impl TrackStep {
    /// Whether the step fell outside the band forecast `h` steps earlier (`None` when
    /// either is unknown); the same tolerance as the calibration's judgement.
    pub fn outside(&self, h: usize) -> Option<bool> {
        let (v, (l, u)) = (self.observed?, self.bands[h]?);
        // Stored as f32: allow its rounding.
        let tol = 1e-6 * v.abs().max(u.abs());
        Some(v < l - tol || v > u + tol)
    }
}

/// The ring of one series.
#[derive(Debug, Clone)]
pub struct TrackRecord {
    /// Step index (start / 300) of the newest slot; `None` before the first grid tick.
    newest: Option<i64>,
    slots: Box<[Slot]>,
}

impl Default for TrackRecord {
    fn default() -> Self {
        Self {
            newest: None,
            slots: vec![EMPTY; SLOTS].into_boxed_slice(),
        }
    }
}

impl TrackRecord {
    fn slot_mut(&mut self, step: i64) -> Option<&mut Slot> {
        let newest = match self.newest {
            Some(n) if step <= n => n,
            _ => {
                // Advance: clear the slots that the new steps reuse.
                let from = self.newest.map_or(step - SLOTS as i64 + 1, |n| {
                    (n + 1).max(step - SLOTS as i64 + 1)
                });
                for s in from..=step {
                    self.slots[s.rem_euclid(SLOTS as i64) as usize] = EMPTY;
                }
                self.newest = Some(step);
                step
            }
        };
        (step > newest - SLOTS as i64)
            .then(|| &mut self.slots[step.rem_euclid(SLOTS as i64) as usize])
    }

    /// Records the tick of one series at grid origin `origin`: the band of each horizon
    /// for the step it forecasts, and the step values that ended by the origin.
    fn record(
        &mut self,
        origin: i64,
        recent_steps: &[Option<f64>],
        bands: Option<[(f64, f64); HORIZON_STEPS]>,
    ) {
        let first = origin / STEP_SECONDS;
        // Every grid tick moves the ring on, with or without a forecast.
        let _ = self.slot_mut(first + HORIZON_STEPS as i64 - 1);
        if let Some(bands) = bands {
            for (h, (lower, upper)) in bands.into_iter().enumerate() {
                if let Some(slot) = self.slot_mut(first + h as i64) {
                    slot.bands[h] = [lower as f32, upper as f32];
                }
            }
        }
        let n = recent_steps.len() as i64;
        for (k, v) in recent_steps.iter().enumerate() {
            if let Some(slot) = self.slot_mut(first - n + k as i64) {
                slot.observed = v.map_or(f32::NAN, |v| v as f32);
            }
        }
    }

    /// The steps held, oldest first: the past steps up to `until` (a step start, exclusive)
    /// and the forecast ones after it.
    pub fn steps(&self) -> Vec<TrackStep> {
        let Some(newest) = self.newest else {
            return Vec::new();
        };
        let opt = |v: f32| (!v.is_nan()).then_some(f64::from(v));
        (newest - SLOTS as i64 + 1..=newest)
            .map(|step| {
                let s = &self.slots[step.rem_euclid(SLOTS as i64) as usize];
                TrackStep {
                    start: step * STEP_SECONDS,
                    observed: opt(s.observed),
                    bands: std::array::from_fn(|h| {
                        let [l, u] = s.bands[h];
                        opt(l).zip(opt(u))
                    }),
                }
            })
            .collect()
    }

    /// Heap and inline bytes of this record.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(&*self.slots)
    }
}

/// Coverage of the steps held: per horizon, (inside, judged).
pub fn coverage(steps: &[TrackStep]) -> [(usize, usize); HORIZON_STEPS] {
    std::array::from_fn(|h| {
        steps
            .iter()
            .fold((0, 0), |(inside, n), s| match s.outside(h) {
                Some(out) => (inside + usize::from(!out), n + 1),
                None => (inside, n),
            })
    })
}

/// The track records of every series, keyed by the `by` label values.
#[derive(Debug, Default)]
pub struct TrackBook {
    records: HashMap<Vec<String>, TrackRecord>,
}

impl TrackBook {
    /// Feeds one tick: ticks off the 5-minute grid change nothing (their steps are not the
    /// grid's); series no longer reported are dropped.
    pub fn record(&mut self, report: &TickReport) {
        for key in &report.evicted {
            self.records.remove(key);
        }
        if report.origin.rem_euclid(STEP_SECONDS) != 0 {
            return;
        }
        let tracked = &report.series[..report.series.len().min(TRACKED_SERIES)];
        for s in tracked {
            let bands = s
                .forecast
                .as_ref()
                .map(|f| std::array::from_fn(|h| (f.horizons[h].lower, f.horizons[h].upper)));
            let record = match self.records.get_mut(&s.key) {
                Some(r) => r,
                None => self.records.entry(s.key.clone()).or_default(),
            };
            record.record(report.origin, &s.recent_steps, bands);
        }
        if self.records.len() > tracked.len() {
            let keep: std::collections::HashSet<&Vec<String>> =
                tracked.iter().map(|s| &s.key).collect();
            self.records.retain(|k, _| keep.contains(k));
        }
    }

    /// The record of one series.
    pub fn get(&self, key: &[String]) -> Option<&TrackRecord> {
        self.records.get(key)
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes held per series on average: the records, their keys and the map's slots.
    pub fn bytes_per_series(&self) -> f64 {
        if self.records.is_empty() {
            return 0.0;
        }
        let entry = std::mem::size_of::<(Vec<String>, TrackRecord)>();
        let records: usize = self
            .records
            .iter()
            .map(|(k, r)| {
                r.bytes() - std::mem::size_of::<TrackRecord>()
                    + k.capacity() * std::mem::size_of::<String>()
                    + k.iter().map(String::capacity).sum::<usize>()
            })
            .sum();
        // hashbrown: one entry and one control byte per bucket.
        let table = self.records.capacity() * (entry + 1);
        (records + table) as f64 / self.records.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::band::{Forecast, Interval};
    use crate::forecast::tick::SeriesReport;

    fn report(origin: i64, key: &str, level: f64, with_forecast: bool) -> TickReport {
        let interval = |m: f64| Interval {
            mean: m,
            lower: m - 1.0,
            upper: m + 1.0,
            stddev: 0.5,
            components: [0.0; 3],
        };
        let steps: Vec<Option<f64>> = (0..WINDOW_STEPS).map(|k| Some(level + k as f64)).collect();
        TickReport {
            origin,
            evicted: Vec::new(),
            series: vec![SeriesReport {
                key: vec![key.to_string()],
                ready: with_forecast,
                not_ready_reason: None,
                history_seconds: 0.0,
                step_history_seconds: 0.0,
                experts: None,
                weights: None,
                expert_forecasts: None,
                observed: steps[WINDOW_STEPS - 1],
                anomaly_score: None,
                out_of_band: None,
                band_coverage: [None; 3],
                error_ratio: [None; 3],
                forecast: with_forecast.then(|| Forecast {
                    origin,
                    horizons: [
                        interval(level),
                        interval(level + 10.0),
                        interval(level + 20.0),
                    ],
                }),
                recent_steps: steps,
                mean_latency_seconds: None,
            }],
        }
    }

    /// Each horizon's band lands on the step it forecast, 5, 10 and 15 minutes after the
    /// origin; observed values land on the steps before it; ticks off the grid are ignored.
    #[test]
    fn bands_land_on_the_steps_they_forecast() {
        let mut book = TrackBook::default();
        let g = 1_700_000_100; // on the 300-s grid
        book.record(&report(g, "a", 100.0, true));
        book.record(&report(g + 60, "a", 900.0, true)); // off the grid: ignored
        let steps = book.get(&["a".to_string()]).expect("a").steps();
        assert_eq!(steps.len(), SLOTS);
        let at = |t: i64| steps.iter().find(|s| s.start == t).expect("step");
        assert_eq!(at(g).bands[0], Some((99.0, 101.0)));
        assert_eq!(at(g + 300).bands[1], Some((109.0, 111.0)));
        assert_eq!(at(g + 600).bands[2], Some((119.0, 121.0)));
        assert_eq!(at(g + 600).bands[0], None);
        assert_eq!(at(g - 300).observed, Some(135.0), "the newest past step");
        assert_eq!(at(g - 36 * 300).observed, Some(100.0), "the oldest");
        assert_eq!(at(g).observed, None);
        // 5 minutes later the step at g is observed: 135 is outside its band [99, 101].
        book.record(&report(g + 300, "a", 101.0, true));
        let steps = book.get(&["a".to_string()]).expect("a").steps();
        let s = steps.iter().find(|s| s.start == g).expect("step g");
        assert_eq!(s.observed, Some(136.0));
        assert_eq!(s.outside(0), Some(true));
        assert_eq!(s.outside(1), None);
        let c = coverage(&steps);
        assert_eq!(c[0], (0, 1));
    }

    /// After three hours the oldest steps are gone, the ring never grows, and a series that
    /// leaves the report leaves the book.
    #[test]
    fn the_ring_is_bounded_and_follows_the_series() {
        let mut book = TrackBook::default();
        let g = 1_700_000_100;
        let n = 400;
        for k in 0..n {
            book.record(&report(g + 300 * k, "a", k as f64, k % 2 == 0));
        }
        let last = n - 1;
        let steps = book.get(&["a".to_string()]).expect("a").steps();
        assert_eq!(steps.len(), SLOTS);
        assert_eq!(steps[0].start, g + 300 * (last - TRACK_STEPS as i64));
        assert_eq!(steps[SLOTS - 1].start, g + 300 * (last + 2));
        // The last tick had no forecast: the steps it would have forecast hold only older
        // bands.
        assert_eq!(steps[SLOTS - 1].bands, [None; 3]);
        assert!(steps[SLOTS - 2].bands[2].is_some(), "from the tick before");
        book.record(&report(g + 300 * n, "b", 1.0, true));
        assert_eq!(book.len(), 1);
        assert!(book.get(&["a".to_string()]).is_none());
    }

    /// The bytes of 10,000 series (printed for BENCHMARKS.md): only the 100 the page draws
    /// are held, about 8 kB each, whatever the uptime.
    #[test]
    fn ten_thousand_series_stay_cheap() {
        let mut book = TrackBook::default();
        let g = 1_700_000_100;
        let mut tick = TickReport {
            origin: g,
            series: Vec::new(),
            evicted: Vec::new(),
        };
        let one = report(g, "x", 10.0, true).series.remove(0);
        for i in 0..10_000 {
            tick.series.push(SeriesReport {
                key: vec![format!("/route/{i}")],
                ..one.clone()
            });
        }
        book.record(&tick);
        let first = book.bytes_per_series();
        for k in 1..50 {
            tick.origin = g + 300 * k;
            book.record(&tick);
        }
        let per_series = book.bytes_per_series();
        assert_eq!(book.len(), TRACKED_SERIES, "only the series the page draws");
        let total = per_series * book.len() as f64;
        eprintln!(
            "track record: {per_series:.0} bytes per series, {total:.0} bytes at 10,000 series"
        );
        assert_eq!(first, per_series, "no growth with uptime");
        assert!(total < 1_000_000.0, "{total} bytes");
        assert_eq!(
            std::mem::size_of::<Slot>() * SLOTS,
            291 * 28,
            "7 f32 per step, 291 steps"
        );
        // The first series of the report are the ones held.
        assert!(book.get(&["/route/0".to_string()]).is_some());
        assert!(book.get(&["/route/100".to_string()]).is_none());
    }
}
