//! The forecasting engine: record, prepare, infer, band, judge. One synchronous,
//! deterministic core for `run`, `demo` and `backtest`.
//!
//! [`Engine`] owns the history and the calibration of every series and turns an origin
//! into a [`TickReport`]. It has no clock (every timestamp is an argument), no async and no
//! I/O: the live loop (`run::live`) and the drivers call it. Snapshots of what it learnt
//! go through [`crate::forecast::state`].

use std::sync::Arc;

use crate::forecast::band::{BandMode, Calibrator, Forecast, Judgement, PassOutputs};
use crate::forecast::combine::{Combined, Combiner, ExpertSet};
use crate::forecast::features::{self, NotReady, HORIZON_STEPS, WINDOW_STEPS};
use crate::forecast::history::{
    MinuteRing, SeriesLimits, SeriesSet, FUTURE_SKEW_SECONDS, MINUTE_SECONDS, STEP_SECONDS,
};
use crate::forecast::model::{Model, ModelError};
use crate::forecast::state;
use crate::forecast::tick::{SeriesReport, TickReport};

/// Settings of the core.
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    /// Monte-Carlo passes per forecast.
    pub mc_passes: usize,
    /// Seed of the dropout masks; each tick's stream is derived from it and the origin.
    pub seed: u64,
    /// How the band is made (the combination, or the LSTM alone for the ablation).
    pub band: BandMode,
    /// The experts combined with [`BandMode::Combined`].
    pub experts: ExpertSet,
    /// Series caps and the longest usable scrape gap.
    pub limits: SeriesLimits,
}

/// One series as seen at a tick's origin: everything the tick needs from the history.
#[derive(Debug, Clone)]
struct SeriesView {
    index: usize,
    key: Vec<String>,
    steps: [Option<f64>; WINDOW_STEPS],
    history_seconds: f64,
    input: Result<features::ModelInput, NotReady>,
}

/// The inputs of one tick, read from the history at its origin; the model has not run yet.
///
/// Preparing reads only data that ended by the origin, and finishing (scoring past
/// forecasts, forming bands) reads only what was captured here, so a driver may prepare
/// several origins before running the model once for all of them (the backtest does).
#[derive(Debug)]
pub struct Prepared {
    origin: i64,
    views: Vec<SeriesView>,
    seed: u64,
}

impl Prepared {
    /// Model inputs of the ready series (borrowed: at 10,000 series a copy is 10 MB), with
    /// their mask seeds.
    pub fn inputs(&self) -> (Vec<&features::ModelInput>, Vec<u64>) {
        self.views
            .iter()
            .filter_map(|v| {
                v.input
                    .as_ref()
                    .ok()
                    .map(|i| (i, series_seed(self.seed, v.index)))
            })
            .unzip()
    }

    /// Number of ready series.
    pub fn ready_count(&self) -> usize {
        self.views.iter().filter(|v| v.input.is_ok()).count()
    }
}

/// Why a snapshot was not restored (nothing of it is, then).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    /// The engine has seen data already; restoring would mix two histories.
    #[error("the engine already holds series")]
    NotEmpty,
    /// One entry is out of range, so the file cannot be trusted.
    #[error("series {index} ({key:?}): {problem}")]
    BadEntry {
        /// Position of the entry in the snapshot.
        index: usize,
        /// Its key.
        key: Vec<String>,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Two entries have the same key: the file was not written by one engine.
    #[error("series {index} ({key:?}) repeats an earlier key")]
    DuplicateKey {
        /// Position of the second entry.
        index: usize,
        /// The key.
        key: Vec<String>,
    },
    /// An entry (or the snapshot) is dated after the clock allows.
    #[error("series {index} ({key:?}): dated {seconds} s in the future")]
    Future {
        /// Position of the entry.
        index: usize,
        /// Its key.
        key: Vec<String>,
        /// How far past the clock.
        seconds: i64,
    },
}

impl RestoreError {
    /// The `reason` label of `flowcast_state_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotEmpty | Self::BadEntry { .. } => "corrupt",
            Self::DuplicateKey { .. } => "duplicate_key",
            Self::Future { .. } => "future_timestamp",
        }
    }
}

/// What the engine has learnt about one series, beside its minute history.
#[derive(Debug, Clone)]
struct Learnt {
    /// The band's online calibration.
    calibrator: Calibrator,
    /// How the forecast for the latest step fared.
    judgement: Option<Judgement>,
    /// The last positive window scale: the unit of an all-zero window.
    zero_scale: f64,
    /// The app's mean request latency in seconds, when known.
    latency: Option<f64>,
    /// The online combination: a week of steps, the experts' losses.
    combiner: Combiner,
}

impl Learnt {
    /// The band at `origin` from the model's outputs: around the LSTM's own mean (the
    /// ablation's modes), or around the combination of the LSTM and the experts in the
    /// combination's log space. u1 and u2 are always reported as the LSTM gave them (req/s
    /// at its mean), whether or not they widen the band.
    fn forecast(
        &mut self,
        settings: &EngineSettings,
        origin: i64,
        input: &features::ModelInput,
        out: &PassOutputs,
    ) -> (Forecast, Option<Combined>) {
        let s = input.scale;
        let lstm: [f64; HORIZON_STEPS] = std::array::from_fn(|h| features::from_z(out.mean[h], s));
        let combined = settings
            .band
            .is_combined()
            .then(|| self.combiner.combine(origin, lstm, s, settings.experts))
            .flatten();
        let Some(c) = combined else {
            return (self.calibrator.forecast(origin, s, out), None);
        };
        // The study's shape maps the LSTM's σ from its space (scale s) into the
        // combination's (scale S) at the LSTM's mean: dζ/dz = (s + m) / (S + m).
        let study = settings.band == BandMode::CombinedUn3;
        let mapped = |u_sq: f64, h: usize| {
            let f = (s + lstm[h]) / (c.scale + lstm[h]);
            if study {
                u_sq * f * f
            } else {
                0.0
            }
        };
        let centred = PassOutputs {
            mean: c.centre,
            u1_sq: std::array::from_fn(|h| mapped(out.u1_sq[h], h)),
            u2_sq: std::array::from_fn(|h| mapped(out.u2_sq[h], h)),
            quantiles: None,
        };
        let mut forecast = self.calibrator.forecast(origin, c.scale, &centred);
        for (h, interval) in forecast.horizons.iter_mut().enumerate() {
            let per_z = features::value_per_z(out.mean[h], s);
            interval.components[0] = out.u1_sq[h].sqrt() * per_z;
            interval.components[1] = out.u2_sq[h].sqrt() * per_z;
        }
        (forecast, Some(c))
    }
}

/// The synchronous core shared by every driver.
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    settings: EngineSettings,
    set: SeriesSet,
    /// Per series, in the set's order.
    learnt: Vec<Learnt>,
}

impl Engine {
    /// A core with no history.
    pub fn new(model: Arc<Model>, settings: EngineSettings) -> Self {
        Self {
            set: SeriesSet::new(settings.limits),
            model,
            settings,
            learnt: Vec::new(),
        }
    }

    /// A fresh [`Learnt`] for every series the set admitted since the last call.
    fn learn_new_series(&mut self) {
        let prior = &self.model.card().calibration_prior;
        while self.learnt.len() < self.set.series().len() {
            self.learnt.push(Learnt {
                calibrator: Calibrator::new(prior, self.settings.band),
                judgement: None,
                zero_scale: features::ZERO_SCALE_FALLBACK,
                latency: None,
                combiner: Combiner::default(),
            });
        }
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The series set (history).
    pub fn series_set(&self) -> &SeriesSet {
        &self.set
    }

    /// Records a scrape (see [`SeriesSet::observe`]).
    pub fn observe<'k>(
        &mut self,
        t: f64,
        samples: impl IntoIterator<Item = (u64, &'k [String], f64)>,
    ) -> crate::forecast::history::ObserveStats {
        self.set.observe(t, samples)
    }

    /// Forgets the last scrape time after a failed scrape.
    pub fn mark_gap(&mut self) {
        self.set.mark_gap();
    }

    /// Records a complete minute rate directly (backtest, demo seeding). Returns `false`
    /// when the series cap refuses the series or the ring refuses the minute.
    pub fn record_rate(&mut self, key: &[String], minute: i64, rate: f64) -> bool {
        match self.set.series_index(key) {
            Some(i) => {
                let series = &mut self.set.series_mut()[i];
                series.touch(((minute + 1) * MINUTE_SECONDS) as f64);
                series.ring.record(minute, rate)
            }
            None => false,
        }
    }

    /// Records a rate read from a rate source (Prometheus): like
    /// [`Engine::record_rate`], but with `holes_only` a minute already held is kept.
    /// Returns `None` when the series cap refuses the series, else whether it was recorded.
    pub fn record_minute(
        &mut self,
        key: &[String],
        minute: i64,
        rate: f64,
        holes_only: bool,
    ) -> Option<bool> {
        let i = self.set.series_index(key)?;
        let series = &mut self.set.series_mut()[i];
        series.touch(((minute + 1) * MINUTE_SECONDS) as f64);
        let ring = &mut series.ring;
        if holes_only && ring.get(minute).is_some() {
            return Some(false);
        }
        Some(ring.record(minute, rate))
    }

    /// Sets the app's mean latency (seconds) of the series with this key, if it exists.
    pub fn set_latency(&mut self, key: &[String], seconds: f64) {
        if let Some(i) = self.set.find(key) {
            self.learn_new_series();
            self.learnt[i].latency = (seconds.is_finite() && seconds >= 0.0).then_some(seconds);
        }
    }

    /// Records the value (req/s, the peak 1-minute rate) of the 5-minute window starting at
    /// `start` in the combination's week of steps, for history older than the minute ring
    /// (a backfill's earlier days). Windows must come oldest first; returns `false` when
    /// the series cap refuses the series.
    pub fn record_step(&mut self, key: &[String], start: i64, value: f64) -> bool {
        let Some(i) = self.set.series_index(key) else {
            return false;
        };
        self.set.series_mut()[i].touch((start + STEP_SECONDS) as f64);
        self.learn_new_series();
        self.learnt[i].combiner.observe(start, value);
        true
    }

    /// Evicts the series with no sample for the limits' `stale_after_seconds` before `now`
    /// (unix seconds), with everything learnt about them, and returns their keys. Call it
    /// between ticks, never between a [`Engine::prepare`] and its [`Engine::finish`].
    pub fn evict_stale(&mut self, now: i64) -> Vec<Vec<String>> {
        self.learn_new_series();
        let removed = self.set.evict_stale(now as f64);
        if removed.is_empty() {
            return Vec::new();
        }
        // `removed` is in index order: drop the same entries of the per-series state.
        let mut gone = removed.iter().map(|(index, _)| *index).peekable();
        let mut index = 0;
        self.learnt.retain(|_| {
            let drop = gone.next_if_eq(&index).is_some();
            index += 1;
            !drop
        });
        removed.into_iter().map(|(_, key)| key).collect()
    }

    /// Reads the history at `origin` (unix seconds, rounded down to a minute): completes
    /// the minutes that ended by then and featurises every series.
    pub fn prepare(&mut self, origin: i64) -> Prepared {
        let origin = origin.div_euclid(MINUTE_SECONDS) * MINUTE_SECONDS;
        self.set.flush_until(origin as f64);
        self.learn_new_series();
        let views = self
            .set
            .series()
            .iter()
            .zip(self.learnt.iter_mut())
            .enumerate()
            .map(|(index, (series, learnt))| {
                let mut steps = [None; WINDOW_STEPS];
                series.ring.step_values(origin, &mut steps);
                let seasonal = learnt.combiner.seasonal(origin);
                let input = features::model_input(&steps, origin, learnt.zero_scale, &seasonal);
                if let Ok(i) = &input {
                    learnt.zero_scale = i.scale;
                }
                SeriesView {
                    index,
                    key: series.key.clone(),
                    steps,
                    history_seconds: (series.ring.present_minutes() as i64 * MINUTE_SECONDS) as f64,
                    input,
                }
            })
            .collect();
        Prepared {
            origin,
            views,
            seed: tick_seed(self.settings.seed, origin),
        }
    }

    /// Scores the forecasts whose targets completed by the tick's origin, then turns the
    /// model's outputs (one per ready series, in order) into bands.
    pub fn finish(&mut self, prepared: Prepared, outputs: &[PassOutputs]) -> TickReport {
        self.learn_new_series();
        let origin = prepared.origin;
        let settings = self.settings;
        let mut outputs = outputs.iter();
        let mut reports = Vec::with_capacity(prepared.views.len());
        for view in prepared.views {
            let learnt = &mut self.learnt[view.index];
            // A wall clock stepped back leaves windows learnt "after" this origin: learning
            // resumes from here instead of waiting for the clock to catch up.
            learnt.combiner.rewind_to(origin);
            learnt.calibrator.rewind_to(origin);
            // The combination learns every window on the grid that completed since it last
            // looked (after a restart, all of the window), oldest first.
            for (k, v) in view.steps.iter().enumerate() {
                if let Some(v) = v {
                    let start = origin - STEP_SECONDS * (WINDOW_STEPS - k) as i64;
                    learnt.combiner.observe(start, *v);
                }
            }
            // Score every step that completed since the last tick, oldest first (a source
            // whose data arrive late completes steps behind the newest position).
            for k in (WINDOW_STEPS - 3)..WINDOW_STEPS {
                if let Some(v) = view.steps[k] {
                    let start = origin - STEP_SECONDS * (WINDOW_STEPS - k) as i64;
                    if let Some(j) = learnt.calibrator.observe(start, v) {
                        learnt.judgement = Some(j);
                    }
                }
            }
            let (forecast, combined) = match (
                &view.input,
                view.input.is_ok().then(|| outputs.next()).flatten(),
            ) {
                (Ok(input), Some(out)) => {
                    let (forecast, combined) = learnt.forecast(&settings, origin, input, out);
                    (Some(forecast), combined)
                }
                _ => (None, None),
            };
            let rolling = learnt.calibrator.rolling();
            reports.push(SeriesReport {
                key: view.key,
                ready: forecast.is_some(),
                not_ready_reason: match view.input {
                    Ok(_) if forecast.is_some() => None,
                    Ok(_) => Some("no_model_output"),
                    Err(NotReady::TooFewSteps) => Some("too_few_steps"),
                    Err(NotReady::Stale) => Some("stale"),
                },
                history_seconds: view.history_seconds,
                step_history_seconds: (learnt.combiner.history().present() as i64 * STEP_SECONDS)
                    as f64,
                observed: view.steps[WINDOW_STEPS - 3..]
                    .iter()
                    .rev()
                    .flatten()
                    .next()
                    .copied(),
                anomaly_score: learnt.judgement.map(|j| j.anomaly_score),
                out_of_band: learnt.judgement.map(|j| j.out_of_band),
                band_coverage: std::array::from_fn(|h| rolling[h].coverage),
                error_ratio: std::array::from_fn(|h| rolling[h].error_ratio),
                experts: combined.map(|_| learnt.combiner.skill(settings.experts)),
                weights: combined.map(|c| c.weights),
                expert_forecasts: combined.map(|c| c.forecasts),
                forecast,
                recent_steps: view.steps.to_vec(),
                mean_latency_seconds: learnt.latency,
            });
        }
        TickReport {
            origin,
            series: reports,
            evicted: Vec::new(),
        }
    }

    /// How many series have learnt state (it must follow the set), for tests.
    #[cfg(test)]
    pub(crate) fn learnt_len(&self) -> usize {
        self.learnt.len()
    }

    /// Everything learnt so far, for a `--state-dir` snapshot (see [`crate::forecast::state`]).
    pub fn snapshot(&self, config: String, saved_at: f64) -> state::Snapshot {
        let series = self
            .set
            .series()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (newest_minute, rates) = s.ring.to_parts();
                let learnt = self.learnt.get(i);
                state::SeriesState {
                    key: s.key.clone(),
                    newest_minute,
                    rates,
                    zero_scale: learnt.map_or(features::ZERO_SCALE_FALLBACK, |l| l.zero_scale),
                    calibrator: learnt.map(|l| l.calibrator.clone()),
                    judgement: learnt.and_then(|l| l.judgement),
                    combiner: learnt.map(|l| l.combiner.clone()),
                }
            })
            .collect();
        state::Snapshot {
            model: self.model.fingerprint(),
            config,
            saved_at,
            series,
            migrated_from: None,
        }
    }

    /// Restores a snapshot into an engine that has seen no data yet. Every series is
    /// checked first; one bad entry refuses the whole snapshot (it was written by this
    /// code, so a bad entry means the file cannot be trusted). A calibrator learnt for
    /// another band mode is not used (the series starts its calibration again from the
    /// prior). Returns the series restored (at most `max_series`). `key_len` is the number
    /// of `by` labels.
    pub fn restore(
        &mut self,
        snapshot: state::Snapshot,
        key_len: usize,
        now: i64,
    ) -> Result<usize, RestoreError> {
        if !self.set.series().is_empty() {
            return Err(RestoreError::NotEmpty);
        }
        let latest = now.saturating_add(FUTURE_SKEW_SECONDS);
        let snapshot_saved_at = snapshot.saved_at.min(now as f64);
        let mut keys = std::collections::HashSet::with_capacity(snapshot.series.len());
        let mut checked = Vec::with_capacity(snapshot.series.len());
        for (n, s) in snapshot.series.into_iter().enumerate() {
            let bad = |problem: &'static str| RestoreError::BadEntry {
                index: n,
                key: s.key.clone(),
                problem,
            };
            if s.key.len() != key_len {
                return Err(bad("key does not match the `by` labels"));
            }
            if !keys.insert(s.key.clone()) {
                return Err(RestoreError::DuplicateKey {
                    index: n,
                    key: s.key,
                });
            }
            let newest = [
                s.newest_minute
                    .map(|m| m.saturating_add(1).saturating_mul(MINUTE_SECONDS)),
                s.combiner.as_ref().and_then(Combiner::last_window),
            ];
            if let Some(end) = newest.into_iter().flatten().max().filter(|&t| t > latest) {
                return Err(RestoreError::Future {
                    index: n,
                    key: s.key,
                    seconds: end - now,
                });
            }
            let ring = MinuteRing::from_parts(s.newest_minute, s.rates.clone()).map_err(&bad)?;
            if !(s.zero_scale.is_finite() && s.zero_scale > 0.0) {
                return Err(bad("zero scale out of range"));
            }
            if let Some(c) = &s.calibrator {
                c.check().map_err(&bad)?;
            }
            if let Some(c) = &s.combiner {
                c.check().map_err(&bad)?;
            }
            if s.judgement.is_some_and(|j| !j.anomaly_score.is_finite()) {
                return Err(bad("anomaly score not finite"));
            }
            checked.push((ring, s));
        }
        let prior = &self.model.card().calibration_prior;
        let band = self.settings.band;
        let mut restored = 0;
        for (ring, s) in checked {
            let Some(i) = self.set.series_index(&s.key) else {
                break;
            };
            let series = &mut self.set.series_mut()[i];
            // Seen when its newest minute ended, or (no rate yet) when it was saved.
            series.touch(
                ring.newest_minute()
                    .map_or(snapshot_saved_at, |m| ((m + 1) * MINUTE_SECONDS) as f64),
            );
            series.ring = ring;
            self.learnt.push(Learnt {
                calibrator: s
                    .calibrator
                    .filter(|c| c.mode() == band)
                    .unwrap_or_else(|| Calibrator::new(prior, band)),
                judgement: s.judgement,
                zero_scale: s.zero_scale,
                latency: None,
                combiner: s.combiner.unwrap_or_default(),
            });
            debug_assert_eq!(self.learnt.len(), i + 1);
            restored += 1;
        }
        Ok(restored)
    }

    /// A whole tick on the calling thread.
    pub fn tick(&mut self, origin: i64) -> Result<TickReport, ModelError> {
        let prepared = self.prepare(origin);
        let (inputs, seeds) = prepared.inputs();
        let outputs = self
            .model
            .predict(&inputs, &seeds, self.settings.mc_passes)?;
        Ok(self.finish(prepared, &outputs))
    }
}

/// The mask seed of series `index` within a tick.
fn series_seed(tick_seed: u64, index: usize) -> u64 {
    tick_seed_mix(tick_seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

fn tick_seed_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of one tick's masks: a stable mix of the configured seed and the origin, so a
/// backtest is reproducible and truncating its input changes no earlier forecast.
pub fn tick_seed(seed: u64, origin: i64) -> u64 {
    tick_seed_mix(seed ^ (origin as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The settings of [`test_engine`], for tests that change one of them.
#[cfg(test)]
pub(crate) fn test_settings(mc_passes: usize, seed: u64, max_series: usize) -> EngineSettings {
    EngineSettings {
        mc_passes,
        seed,
        band: BandMode::default(),
        experts: ExpertSet::ALL,
        limits: SeriesLimits {
            max_series,
            max_children: 100,
            max_gap_seconds: 120.0,
            shard: None,
            stale_after_seconds: None,
        },
    }
}

/// An engine on the embedded model with these settings, for tests.
#[cfg(test)]
pub(crate) fn test_engine_with(settings: EngineSettings) -> Engine {
    let model = Arc::new(Model::embedded().expect("embedded model loads"));
    Engine::new(model, settings)
}

/// An engine on the embedded model with the shipped band (the combination), for tests:
/// `max_series` series, a 2-minute gap limit.
#[cfg(test)]
pub(crate) fn test_engine(mc_passes: usize, seed: u64, max_series: usize) -> Engine {
    test_engine_with(test_settings(mc_passes, seed, max_series))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::state::{self, Snapshot};

    fn engine() -> Engine {
        test_engine(8, 7, 10)
    }

    fn feed(e: &mut Engine, from: i64, to: i64) {
        for m in from..to {
            let wave = ((m % 97) as f64 / 97.0 * std::f64::consts::TAU).sin();
            e.record_rate(&["a".to_string()], m, 50.0 + 20.0 * wave);
            e.record_rate(&["b".to_string()], m, 3.0 + (m % 7) as f64);
        }
    }

    fn encoded(s: &Snapshot) -> Vec<u8> {
        state::encode(s)
    }

    /// After the wall clock steps back an hour, the combination and the calibration go on
    /// learning the windows that complete on the stepped clock (before, they learnt
    /// nothing until it had caught up with their newest window, an hour later).
    #[test]
    fn learning_resumes_at_once_after_the_clock_steps_back() {
        let start = 28_000_000; // unix minutes, on the 5-minute grid
        let mut e = engine();
        feed(&mut e, start, start + 240);
        e.tick((start + 240) * 60).expect("tick");
        let last = |e: &Engine| {
            let snap = e.snapshot("id".into(), 0.0);
            let s = &snap.series[0];
            (
                s.combiner.as_ref().and_then(Combiner::last_window),
                s.calibrator
                    .as_ref()
                    .map(|c| format!("{:?}", c.rolling()[0])),
            )
        };
        assert_eq!(last(&e).0, Some((start + 235) / 5));
        // Back an hour: the ring already holds these minutes; new rates overwrite them.
        let back = start + 180;
        feed(&mut e, back, back + 1);
        e.tick((back + 1) * 60).expect("tick after the step");
        let (_, judged_before) = last(&e);
        // A tick a minute, as the sidecar does; windows are learnt at those on the grid.
        for m in back + 1..back + 10 {
            feed(&mut e, m, m + 1);
            e.tick((m + 1) * 60).expect("tick");
        }
        let (window, judged_after) = last(&e);
        assert_eq!(
            window,
            Some((back + 5) / 5),
            "the window that completed at back + 10, on the stepped clock"
        );
        assert_ne!(
            judged_after, judged_before,
            "the calibration judged the new steps"
        );
    }

    /// A restored engine is the same engine: its next forecasts are bit-for-bit those of
    /// the engine that was snapshotted, calibration included.
    #[test]
    fn a_restored_engine_forecasts_exactly_like_the_original() {
        let start = 28_000_000; // unix minutes
        let mut a = engine();
        feed(&mut a, start, start + 240);
        for k in 0..6 {
            // Several ticks on the 5-minute grid, so calibrators learn and hold pending
            // forecasts.
            feed(&mut a, start + 240 + 5 * k, start + 245 + 5 * k);
            a.tick((start + 245 + 5 * k) * 60).expect("tick");
        }
        let snap = a.snapshot("id".into(), 0.0);
        assert_eq!(snap.series.len(), 2);
        assert!(snap.series.iter().all(|s| s.calibrator.is_some()));
        let bytes = encoded(&snap);
        let back = state::decode(&bytes, std::path::Path::new("mem")).expect("decodes");

        let mut b = engine();
        assert_eq!(b.restore(back, 1, i64::MAX / 2), Ok(2));
        let next = start + 300;
        feed(&mut a, start + 270, next);
        feed(&mut b, start + 270, next);
        let ra = a.tick(next * 60).expect("tick a");
        let rb = b.tick(next * 60).expect("tick b");
        assert!(ra.series.iter().all(|s| s.forecast.is_some()));
        assert_eq!(format!("{:?}", ra.series), format!("{:?}", rb.series));
        assert_eq!(
            encoded(&a.snapshot("id".into(), 0.0)),
            encoded(&b.snapshot("id".into(), 0.0))
        );
    }

    #[test]
    fn a_snapshot_with_a_bad_entry_is_refused_whole() {
        let start = 28_000_000;
        let mut a = engine();
        feed(&mut a, start, start + 240);
        a.tick((start + 240) * 60).expect("tick");
        let good = a.snapshot("id".into(), 0.0);

        let mut wrong_key = good.clone();
        wrong_key.series[1].key.push("extra".into());
        let mut negative = good.clone();
        negative.series[0].rates[5] = -1.0;
        let mut short = good.clone();
        short.series[0].rates.pop();
        let mut scale = good.clone();
        scale.series[1].zero_scale = f64::NAN;
        for (bad, why) in [
            (wrong_key, "key"),
            (negative, "negative"),
            (short, "length"),
            (scale, "zero scale"),
        ] {
            let mut b = engine();
            let e = b.restore(bad, 1, i64::MAX / 2).expect_err(why).to_string();
            assert!(e.contains(why), "{why}: {e}");
            assert!(
                b.series_set().series().is_empty(),
                "{why}: nothing restored"
            );
        }
        // A repeated key, and data dated after the clock, are refused with their reason.
        let mut twice = good.clone();
        twice.series[1].key = twice.series[0].key.clone();
        let e = engine().restore(twice, 1, i64::MAX / 2).expect_err("twice");
        assert_eq!(e.reason(), "duplicate_key", "{e}");
        let newest = (start + 240) * 60;
        let e = engine()
            .restore(good.clone(), 1, newest - 3600)
            .expect_err("an hour ahead of the clock");
        assert_eq!(
            (e.reason(), e.to_string().contains("3600 s in the future")),
            ("future_timestamp", true),
            "{e}"
        );
        assert_eq!(
            engine().restore(good.clone(), 1, newest - 300),
            Ok(2),
            "within the skew"
        );
        // Restoring into an engine that already has data would mix two histories.
        let mut c = engine();
        feed(&mut c, start, start + 1);
        assert!(c.restore(good, 1, i64::MAX / 2).is_err());
    }
}
