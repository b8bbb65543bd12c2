//! The online combination (METHOD.md §4b, issue #15): cheap statistical experts beside the
//! LSTM, weighted per series and per horizon by their recent loss on targets already
//! observed, so the centre of the band follows whichever forecaster has been right lately.
//!
//! Owns, per series: a week of 5-minute step values (the day-ago and week-ago experts
//! read it), a slow level that sets the scale of the combination's log space, the Holt
//! state, each expert's exponentially weighted loss per horizon, and the expert forecasts
//! still waiting for their targets. Everything is learnt from windows on the 5-minute grid
//! and from forecasts made at grid origins, in the order the windows complete, so it is
//! causal: a forecast at origin `o` reads only windows that ended by `o`.
//!
//! The experts are combined in ζ = ln(1 + v / S), with S twice the slow level: a log space
//! in which an error means the same on a quiet and a busy service, and whose scale does not
//! move with the last three hours (the model's window mean does, and a band built on it
//! costs about twice the replica-hours: models/README.md). Pure and synchronous: every
//! timestamp is an argument. The band around the centre is [`crate::forecast::band`]'s.

use half::bf16;
use serde::{Deserialize, Serialize};

use crate::forecast::features::{Seasonal, HORIZON_STEPS};
use crate::forecast::history::STEP_SECONDS;

/// The experts, by the name their gauges carry, in index order.
pub const EXPERTS: [&str; EXPERT_COUNT] = [
    "lstm",
    "persistence",
    "holt",
    "day_ago",
    "week_ago",
    "mean_1h",
    "mean_3h",
    "mean_1d",
];
/// Number of experts.
pub const EXPERT_COUNT: usize = 8;
const LSTM: usize = 0;
const PERSISTENCE: usize = 1;
const HOLT: usize = 2;
const DAY_AGO: usize = 3;
const WEEK_AGO: usize = 4;
/// The level experts and the windows each averages.
const MEANS: [(usize, i64); 3] = [(5, 12), (6, 36), (7, DAY_WINDOWS)];

/// 5-minute windows in a day and in a week.
const DAY_WINDOWS: i64 = 86_400 / STEP_SECONDS;
const WEEK_WINDOWS: i64 = 7 * DAY_WINDOWS;
/// Windows of step history kept: a week back from the furthest horizon.
pub const HISTORY_WINDOWS: usize = WEEK_WINDOWS as usize + HORIZON_STEPS;
/// Weight of the newest window in the slow level (about a week of windows).
const LEVEL_RATE: f64 = 1.0 / WEEK_WINDOWS as f64;
/// S = this × the slow level.
const SCALE_PER_LEVEL: f64 = 2.0;
/// Forgetting factor of the experts' losses per observed target (about 50 targets).
const LOSS_DECAY: f32 = 0.98;
/// Targets every available expert needs before the weights follow the losses (an hour);
/// until then the available experts weigh the same.
const MIN_OBSERVATIONS: f32 = 12.0;
/// Smallest mean loss, so that a perfect run does not take all the weight forever.
const LOSS_FLOOR: f64 = 1e-10;
/// Prometheus `double_exponential_smoothing` factors, as the Holt baseline.
const HOLT_SMOOTHING: f64 = 0.5;
const HOLT_TREND: f64 = 0.1;
/// Grid origins whose expert forecasts wait for their targets: three horizons and one
/// window of lateness (data whose steps end after the 5-minute grid).
const PENDING: usize = HORIZON_STEPS + 1;

/// Which experts take part (the ablation turns some off). Bit `i` is [`EXPERTS`]`[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertSet(u8);

impl Default for ExpertSet {
    fn default() -> Self {
        Self::ALL
    }
}

impl ExpertSet {
    /// Every expert (the default).
    pub const ALL: ExpertSet = ExpertSet(u8::MAX);

    /// Whether expert `i` takes part.
    pub fn contains(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    /// The names of the experts that take part, in index order.
    pub fn names(self) -> Vec<&'static str> {
        (0..EXPERT_COUNT)
            .filter(|&i| self.contains(i))
            .map(|i| EXPERTS[i])
            .collect()
    }

    /// Whether the LSTM takes part.
    pub fn has_lstm(self) -> bool {
        self.contains(LSTM)
    }
}

/// A name in an expert list that is not one of [`EXPERTS`], or an empty list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpertListError {
    /// Not an expert.
    #[error("unknown expert {0:?} (expected some of {list})", list = EXPERTS.join(", "))]
    Unknown(String),
    /// No expert at all.
    #[error("the expert list is empty")]
    Empty,
}

impl std::str::FromStr for ExpertSet {
    type Err = ExpertListError;

    /// A comma-separated list of expert names, e.g. `persistence,holt,day_ago`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bits = 0u8;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let i = EXPERTS
                .iter()
                .position(|e| *e == name)
                .ok_or_else(|| ExpertListError::Unknown(name.to_string()))?;
            bits |= 1 << i;
        }
        if bits == 0 {
            return Err(ExpertListError::Empty);
        }
        Ok(Self(bits))
    }
}

/// A week of 5-minute step values by window index (`start / 300`), as bf16: three
/// significant digits are far finer than any forecast error, and a week costs 4 KiB a
/// series instead of 8. Advancing the newest window clears the slots it passes, so a gap
/// stays a hole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepHistory {
    /// bf16 bits; NaN is a hole.
    values: Box<[u16]>,
    newest: Option<i64>,
    /// How many slots hold a value (kept as they change, not counted per tick).
    present: u32,
}

impl Default for StepHistory {
    fn default() -> Self {
        Self {
            values: vec![bf16::NAN.to_bits(); HISTORY_WINDOWS].into_boxed_slice(),
            newest: None,
            present: 0,
        }
    }
}

impl StepHistory {
    fn slot(window: i64) -> usize {
        window.rem_euclid(HISTORY_WINDOWS as i64) as usize
    }

    /// Records the value of `window`; an older window than the history holds, or a value
    /// that is not a finite non-negative number, changes nothing.
    fn record(&mut self, window: i64, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            return;
        }
        match self.newest {
            Some(newest) if window <= newest - HISTORY_WINDOWS as i64 => return,
            Some(newest) if window > newest => {
                let first = (newest + 1).max(window - HISTORY_WINDOWS as i64 + 1);
                for w in first..window {
                    self.set_slot(w, bf16::NAN);
                }
                self.newest = Some(window);
            }
            Some(_) => {}
            None => self.newest = Some(window),
        }
        self.set_slot(window, bf16::from_f64(value));
    }

    fn set_slot(&mut self, window: i64, value: bf16) {
        let slot = &mut self.values[Self::slot(window)];
        let was = bf16::from_bits(*slot).is_finite();
        *slot = value.to_bits();
        match (was, value.is_finite()) {
            (false, true) => self.present += 1,
            (true, false) => self.present -= 1,
            _ => {}
        }
    }

    /// The value of `window`, or `None` for a hole or a window outside the history.
    pub fn get(&self, window: i64) -> Option<f64> {
        let newest = self.newest?;
        if window > newest || window <= newest - HISTORY_WINDOWS as i64 {
            return None;
        }
        let v = bf16::from_bits(self.values[Self::slot(window)]).to_f64();
        v.is_finite().then_some(v)
    }

    /// Mean of the values present in the `n` windows ending at `last`.
    fn mean(&self, last: i64, n: i64) -> Option<f64> {
        let (sum, count) = (last - n + 1..=last)
            .filter_map(|w| self.get(w))
            .fold((0.0, 0u32), |(s, c), v| (s + v, c + 1));
        (count > 0).then(|| sum / f64::from(count))
    }

    /// Number of windows that hold a value.
    pub fn present(&self) -> usize {
        self.present as usize
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.values.len() != HISTORY_WINDOWS {
            return Err("step history has the wrong length");
        }
        let bad = |&b: &u16| {
            let v = bf16::from_bits(b);
            v.is_infinite() || v < bf16::ZERO
        };
        if self.values.iter().any(bad) {
            return Err("step history holds a negative or infinite value");
        }
        let counted = self
            .values
            .iter()
            .filter(|&&b| bf16::from_bits(b).is_finite())
            .count();
        if counted != self.present as usize || (self.newest.is_none() && counted > 0) {
            return Err("step history's count of windows is wrong");
        }
        if self
            .newest
            .is_some_and(|w| w < 0 || w.checked_add(HISTORY_WINDOWS as i64).is_none())
        {
            return Err("step history's newest window is out of range");
        }
        Ok(())
    }
}

/// Prometheus's `double_exponential_smoothing` run over the observed windows (holes are
/// skipped): the level starts at the first value, the trend at the second minus the first.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Holt {
    first: Option<f64>,
    level: Option<f64>,
    trend: f64,
}

impl Holt {
    fn observe(&mut self, v: f64) {
        match (self.first, self.level) {
            (None, _) => self.first = Some(v),
            (Some(first), None) => {
                let trend = v - first;
                let level = HOLT_SMOOTHING * v + (1.0 - HOLT_SMOOTHING) * (first + trend);
                self.trend = HOLT_TREND * (level - first) + (1.0 - HOLT_TREND) * trend;
                self.level = Some(level);
            }
            (Some(_), Some(level)) => {
                let next = HOLT_SMOOTHING * v + (1.0 - HOLT_SMOOTHING) * (level + self.trend);
                self.trend = HOLT_TREND * (next - level) + (1.0 - HOLT_TREND) * self.trend;
                self.level = Some(next);
            }
        }
    }

    /// The forecast `ahead` windows after the last observed one, never below 0.
    fn forecast(&self, ahead: i64) -> Option<f64> {
        self.level
            .map(|level| (level + ahead as f64 * self.trend).max(0.0))
    }
}

/// The experts' forecasts made at one grid origin, in ζ, waiting for their targets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Pending {
    /// Window index of the origin (`origin / 300`).
    origin: i64,
    /// S at that origin.
    scale: f64,
    /// ζ per expert and horizon; NaN where the expert had no forecast.
    zeta: [[f32; HORIZON_STEPS]; EXPERT_COUNT],
}

/// One combined forecast, before the band: the centre in ζ and what made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combined {
    /// The space's scale S (req/s): ζ = ln(1 + v / S).
    pub scale: f64,
    /// The centre ζ per horizon.
    pub centre: [f64; HORIZON_STEPS],
    /// Each expert's weight per horizon (0 where it had no forecast).
    pub weights: [[f64; HORIZON_STEPS]; EXPERT_COUNT],
    /// Each expert's forecast per horizon (req/s; `None` where it had none), whether or
    /// not it takes part: the evidence of what each would have done.
    pub forecasts: [[Option<f64>; HORIZON_STEPS]; EXPERT_COUNT],
}

/// What the experts have been worth lately, per expert and horizon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skill {
    /// The weight the expert would get now (equal weights until each has 12 targets).
    pub weight: [[f64; HORIZON_STEPS]; EXPERT_COUNT],
    /// 1 − its mean squared ζ-error over persistence's: 0 is as good as persistence, 1 is
    /// perfect, below 0 worse; `None` before it has been scored.
    pub skill: [[Option<f64>; HORIZON_STEPS]; EXPERT_COUNT],
}

/// The online combination state of one series; serialisable for `--state-dir` snapshots,
/// vetted by [`Combiner::check`] when read back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Combiner {
    history: StepHistory,
    level: Option<f64>,
    holt: Holt,
    /// Exponentially weighted sums of each expert's squared ζ-errors and of their count
    /// (single precision: 192 bytes a series saved, weights to 7 digits).
    loss: [[f32; HORIZON_STEPS]; EXPERT_COUNT],
    count: [[f32; HORIZON_STEPS]; EXPERT_COUNT],
    pending: [Option<Pending>; PENDING],
    /// The newest window observed.
    last_window: Option<i64>,
}

impl Combiner {
    /// The step history (a week of 5-minute windows).
    pub fn history(&self) -> &StepHistory {
        &self.history
    }

    /// The newest window observed, as a window index (`start / 300`).
    pub fn last_window(&self) -> Option<i64> {
        self.last_window
    }

    /// After the wall clock stepped back past what was learnt (NTP): windows that complete
    /// after `origin` are learnt again as they complete, rather than nothing until the
    /// clock has caught up with the last window learnt. Nothing changes otherwise.
    pub fn rewind_to(&mut self, origin: i64) {
        let newest_complete = (origin - STEP_SECONDS).div_euclid(STEP_SECONDS);
        if self.last_window.is_some_and(|last| last > newest_complete) {
            self.last_window = Some(newest_complete - 1);
        }
    }

    /// Learns the value `v` (req/s) of the 5-minute window starting at `start` (a multiple
    /// of 300): scores the expert forecasts made for it, then moves the level, Holt and the
    /// history on. Windows must come oldest first; a window not newer than the last one
    /// observed, or not on the grid, is ignored. Returns whether it was learnt.
    pub fn observe(&mut self, start: i64, v: f64) -> bool {
        if start.rem_euclid(STEP_SECONDS) != 0 || !(v.is_finite() && v >= 0.0) {
            return false;
        }
        let window = start.div_euclid(STEP_SECONDS);
        if self.last_window.is_some_and(|last| window <= last) {
            return false;
        }
        for h in 0..HORIZON_STEPS {
            let origin = window - h as i64;
            let Some(p) = self.pending[Self::pending_slot(origin)].filter(|p| p.origin == origin)
            else {
                continue;
            };
            let target = (v / p.scale).ln_1p();
            for i in 0..EXPERT_COUNT {
                self.loss[i][h] *= LOSS_DECAY;
                self.count[i][h] *= LOSS_DECAY;
                let z = f64::from(p.zeta[i][h]);
                if z.is_finite() {
                    self.loss[i][h] += ((target - z) * (target - z)) as f32;
                    self.count[i][h] += 1.0;
                }
            }
        }
        self.history.record(window, v);
        self.level = Some(match self.level {
            None => v,
            Some(level) => level + LEVEL_RATE * (v - level),
        });
        self.holt.observe(v);
        self.last_window = Some(window);
        true
    }

    fn pending_slot(origin: i64) -> usize {
        origin.rem_euclid(PENDING as i64) as usize
    }

    /// The scale S of the combination's space: twice the slow level, or twice the model's
    /// window mean before any window has been observed (and the window mean if that is
    /// not positive either).
    fn scale(&self, window_scale: f64) -> f64 {
        let s = SCALE_PER_LEVEL * self.level.unwrap_or(window_scale);
        if s > 0.0 && s.is_finite() {
            s
        } else {
            window_scale
        }
    }

    /// The network's seasonal context at `origin` (features.rs): the grid windows a day
    /// and a week before each target and before the last window, and the last day's mean.
    pub fn seasonal(&self, origin: i64) -> Seasonal {
        let first_target = origin.div_euclid(STEP_SECONDS);
        let base = first_target - 1;
        Seasonal {
            day_target: std::array::from_fn(|h| {
                self.history.get(first_target + h as i64 - DAY_WINDOWS)
            }),
            day_base: self.history.get(base - DAY_WINDOWS),
            week_target: std::array::from_fn(|h| {
                self.history.get(first_target + h as i64 - WEEK_WINDOWS)
            }),
            week_base: self.history.get(base - WEEK_WINDOWS),
            day_mean: self.history.mean(base, DAY_WINDOWS),
        }
    }

    /// Every expert's forecast (req/s) for the windows starting at `origin`, `origin` +
    /// 300 and `origin` + 600; `None` where it has none. `lstm` is the model's mean.
    fn expert_forecasts(
        &self,
        origin: i64,
        lstm: [f64; HORIZON_STEPS],
    ) -> [[Option<f64>; HORIZON_STEPS]; EXPERT_COUNT] {
        let mut out = [[None; HORIZON_STEPS]; EXPERT_COUNT];
        let first_target = origin.div_euclid(STEP_SECONDS);
        for h in 0..HORIZON_STEPS {
            out[LSTM][h] = Some(lstm[h]).filter(|v| v.is_finite());
            let target = first_target + h as i64;
            out[DAY_AGO][h] = self.history.get(target - DAY_WINDOWS);
            out[WEEK_AGO][h] = self.history.get(target - WEEK_WINDOWS);
        }
        let Some(last) = self.last_window else {
            return out;
        };
        out[PERSISTENCE] = [self.history.get(last); HORIZON_STEPS];
        out[HOLT] = std::array::from_fn(|h| self.holt.forecast(first_target + h as i64 - last));
        for (i, n) in MEANS {
            out[i] = [self.history.mean(last, n); HORIZON_STEPS];
        }
        out
    }

    /// The weights of the experts in `zeta` (NaN = no forecast) for horizon `h`: each
    /// available expert's inverse mean loss, normalised; equal weights while any of them
    /// has fewer than [`MIN_OBSERVATIONS`] targets scored.
    fn weights(&self, available: [bool; EXPERT_COUNT], h: usize) -> [f64; EXPERT_COUNT] {
        let trusted = (0..EXPERT_COUNT)
            .filter(|&i| available[i])
            .all(|i| self.count[i][h] >= MIN_OBSERVATIONS);
        let mut w = [0.0; EXPERT_COUNT];
        for i in (0..EXPERT_COUNT).filter(|&i| available[i]) {
            w[i] = if trusted {
                1.0 / f64::from(self.loss[i][h] / self.count[i][h]).max(LOSS_FLOOR)
            } else {
                1.0
            };
        }
        let total: f64 = w.iter().sum();
        if total > 0.0 && total.is_finite() {
            w.iter_mut().for_each(|x| *x /= total);
        }
        w
    }

    /// Combines the experts for a forecast at `origin` (unix seconds): the LSTM's mean
    /// (req/s) and the statistical experts, in ζ with the current scale. `window_scale`
    /// is the model's window mean (the scale before any window is observed). At an origin
    /// on the 5-minute grid the experts' forecasts are kept, to be scored when their
    /// targets arrive. `None` when no expert has a forecast.
    pub fn combine(
        &mut self,
        origin: i64,
        lstm: [f64; HORIZON_STEPS],
        window_scale: f64,
        experts: ExpertSet,
    ) -> Option<Combined> {
        let scale = self.scale(window_scale);
        let forecasts = self.expert_forecasts(origin, lstm);
        let zeta: [[f32; HORIZON_STEPS]; EXPERT_COUNT] = forecasts.map(|by_horizon| {
            by_horizon.map(|v| v.map_or(f32::NAN, |v| (v.max(0.0) / scale).ln_1p() as f32))
        });
        if origin.rem_euclid(STEP_SECONDS) == 0 {
            let o = origin.div_euclid(STEP_SECONDS);
            self.pending[Self::pending_slot(o)] = Some(Pending {
                origin: o,
                scale,
                zeta,
            });
        }
        let mut combined = Combined {
            scale,
            centre: [0.0; HORIZON_STEPS],
            weights: [[0.0; HORIZON_STEPS]; EXPERT_COUNT],
            forecasts,
        };
        for h in 0..HORIZON_STEPS {
            let available = std::array::from_fn(|i| experts.contains(i) && zeta[i][h].is_finite());
            if !available.contains(&true) {
                return None;
            }
            let w = self.weights(available, h);
            combined.centre[h] = (0..EXPERT_COUNT)
                .filter(|&i| available[i])
                .map(|i| w[i] * f64::from(zeta[i][h]))
                .sum();
            for (weights, w) in combined.weights.iter_mut().zip(w) {
                weights[h] = w;
            }
        }
        Some(combined)
    }

    /// Each expert's current weight (as if every expert scored so far had a forecast) and
    /// skill against persistence, per horizon.
    pub fn skill(&self, experts: ExpertSet) -> Skill {
        let mse = |i: usize, h: usize| {
            (self.count[i][h] > 0.0).then(|| f64::from(self.loss[i][h] / self.count[i][h]))
        };
        Skill {
            weight: std::array::from_fn(|i| {
                std::array::from_fn(|h| {
                    let scored =
                        std::array::from_fn(|j| experts.contains(j) && self.count[j][h] > 0.0);
                    self.weights(scored, h)[i]
                })
            }),
            skill: std::array::from_fn(|i| {
                std::array::from_fn(|h| match (mse(i, h), mse(PERSISTENCE, h)) {
                    (Some(e), Some(p)) if p > 0.0 && experts.contains(i) => Some(1.0 - e / p),
                    _ => None,
                })
            }),
        }
    }

    /// Checks a combiner read from outside (a snapshot): every number finite and in range.
    pub fn check(&self) -> Result<(), &'static str> {
        self.history.check()?;
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !self.level.is_none_or(ok) {
            return Err("level out of range");
        }
        let holt_ok = self.holt.first.is_none_or(f64::is_finite)
            && self.holt.level.is_none_or(f64::is_finite)
            && self.holt.trend.is_finite();
        if !holt_ok {
            return Err("Holt state not finite");
        }
        if !self
            .loss
            .iter()
            .chain(&self.count)
            .flatten()
            .all(|&v| ok(f64::from(v)))
        {
            return Err("expert losses out of range");
        }
        let pending_ok = self.pending.iter().flatten().all(|p| {
            p.scale.is_finite()
                && p.scale > 0.0
                && p.zeta.iter().flatten().all(|z| z.is_nan() || z.is_finite())
        });
        if !pending_ok {
            return Err("pending expert forecasts out of range");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    /// Feeds `n` windows of `value(window)` from window index `from`.
    fn feed(c: &mut Combiner, from: i64, n: i64, value: impl Fn(i64) -> f64) {
        for w in from..from + n {
            c.observe(w * STEP_SECONDS, value(w));
        }
    }

    #[test]
    fn expert_lists_parse_and_refuse_unknown_names() {
        let set: ExpertSet = "persistence, holt,day_ago".parse().expect("valid");
        assert_eq!(set.names(), ["persistence", "holt", "day_ago"]);
        assert!(!set.has_lstm());
        assert!(ExpertSet::ALL.has_lstm());
        assert_eq!(ExpertSet::ALL.names().len(), EXPERT_COUNT);
        assert_eq!(
            "lstm,arima".parse::<ExpertSet>(),
            Err(ExpertListError::Unknown("arima".into()))
        );
        assert_eq!(" , ".parse::<ExpertSet>(), Err(ExpertListError::Empty));
    }

    /// The history keeps a week, leaves gaps as holes and refuses what it cannot hold.
    #[test]
    fn the_step_history_keeps_a_week_and_its_holes() {
        let mut h = StepHistory::default();
        h.record(100, 12.5);
        h.record(103, 7.0);
        assert_eq!(h.get(100), Some(12.5));
        assert_eq!(h.get(101), None, "a gap is a hole");
        assert_eq!(h.get(103), Some(7.0));
        h.record(103 + HISTORY_WINDOWS as i64, 1.0);
        assert_eq!(h.get(103), None, "older than a week");
        h.record(50, 3.0);
        assert_eq!(h.get(50), None, "too old to record");
        h.record(104 + HISTORY_WINDOWS as i64, f64::NAN);
        assert_eq!(h.present(), 1);
        // bf16 keeps three significant digits.
        h.record(110 + HISTORY_WINDOWS as i64, 123_456.0);
        let v = h.get(110 + HISTORY_WINDOWS as i64).expect("held");
        assert!((v / 123_456.0 - 1.0).abs() < 4e-3, "{v}");
    }

    /// Holt follows Prometheus's recursion: on a straight line it extrapolates the line.
    #[test]
    fn holt_extrapolates_a_line() {
        let mut holt = Holt::default();
        for k in 0..50 {
            holt.observe(10.0 + 2.0 * k as f64);
        }
        let f = holt.forecast(3).expect("forecast");
        assert!((f - (10.0 + 2.0 * 52.0)).abs() < 1e-6, "{f}");
        assert_eq!(Holt::default().forecast(1), None);
    }

    /// On a daily pattern the day-ago expert is right and gets the weight; the centre
    /// follows it once every expert has been scored an hour.
    #[test]
    fn the_weights_follow_the_expert_that_has_been_right() {
        let day = DAY / STEP_SECONDS;
        let pattern =
            |w: i64| 100.0 + 80.0 * ((w % day) as f64 / day as f64 * std::f64::consts::TAU).sin();
        let mut c = Combiner::default();
        feed(&mut c, 0, day, pattern);
        // Origins on the grid, observing each window as it completes.
        let lstm_far_off = [1.0; HORIZON_STEPS];
        for w in day..day + 2 * 36 {
            c.observe((w - 1) * STEP_SECONDS, pattern(w - 1));
            let combined = c
                .combine(w * STEP_SECONDS, lstm_far_off, 100.0, ExpertSet::ALL)
                .expect("experts");
            assert!(combined.weights.iter().flatten().all(|x| x.is_finite()));
        }
        let skill = c.skill(ExpertSet::ALL);
        for h in 0..HORIZON_STEPS {
            let best = (0..EXPERT_COUNT)
                .max_by(|&a, &b| skill.weight[a][h].total_cmp(&skill.weight[b][h]))
                .expect("experts");
            assert_eq!(EXPERTS[best], "day_ago", "horizon {h}: {:?}", skill.weight);
            assert!(skill.weight[LSTM][h] < 0.01, "the LSTM was far off");
            assert!(skill.skill[DAY_AGO][h].expect("scored") > 0.9);
            assert_eq!(skill.skill[PERSISTENCE][h], Some(0.0));
        }
        // The centre is now near the day-ago value.
        let o = (day + 2 * 36) * STEP_SECONDS;
        let combined = c
            .combine(o, lstm_far_off, 100.0, ExpertSet::ALL)
            .expect("experts");
        let want = pattern(day + 2 * 36);
        let got = combined.scale * combined.centre[0].exp_m1();
        assert!((got / want - 1.0).abs() < 0.02, "{got} vs {want}");
    }

    /// A forecast reads only windows observed before it: observing a later window changes
    /// nothing that was already combined, and windows out of order or off the grid are
    /// ignored.
    #[test]
    fn the_combination_is_causal() {
        let mut a = Combiner::default();
        feed(&mut a, 0, 400, |w| 50.0 + (w % 17) as f64);
        let before = a
            .clone()
            .combine(400 * STEP_SECONDS, [60.0; 3], 50.0, ExpertSet::ALL);
        let mut b = a.clone();
        b.observe(7, 1.0);
        b.observe(399 * STEP_SECONDS, 1e9);
        let again = b.combine(400 * STEP_SECONDS, [60.0; 3], 50.0, ExpertSet::ALL);
        assert_eq!(before, again);
        assert_eq!(b.last_window(), Some(399));
    }

    /// Without the LSTM in the set it has no weight, and the other experts share it all.
    #[test]
    fn an_expert_left_out_has_no_weight() {
        let mut c = Combiner::default();
        feed(&mut c, 0, 300, |w| 20.0 + (w % 5) as f64);
        let set: ExpertSet = "persistence,holt,mean_1h".parse().expect("valid");
        let combined = c
            .combine(300 * STEP_SECONDS, [1e6; 3], 20.0, set)
            .expect("experts");
        for h in 0..HORIZON_STEPS {
            assert_eq!(combined.weights[LSTM][h], 0.0);
            let total: f64 = (0..EXPERT_COUNT).map(|i| combined.weights[i][h]).sum();
            assert!((total - 1.0).abs() < 1e-12);
            assert!(
                combined.centre[h] < 1.0,
                "the huge LSTM value is not in the centre"
            );
        }
    }

    #[test]
    fn a_restored_combiner_is_checked() {
        let mut c = Combiner::default();
        feed(&mut c, 0, 50, |w| w as f64);
        assert_eq!(c.check(), Ok(()));
        let mut bad = c.clone();
        bad.level = Some(f64::NAN);
        assert!(bad.check().is_err());
        let mut bad = c.clone();
        bad.loss[3][1] = -1.0;
        assert!(bad.check().is_err());
        let mut bad = c;
        bad.history.values[5] = bf16::NEG_INFINITY.to_bits();
        assert!(bad.check().is_err());
    }
}
