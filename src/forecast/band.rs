//! From the model's raw outputs to a calibrated band (METHOD.md §4), and the online
//! learning that keeps the band calibrated on a service the model never saw.
//!
//! Owns, per series: the homoscedastic term u3 per UTC hour and horizon (learnt from the
//! series' own past forecast errors, starting from the model card's prior), the band
//! multipliers (adaptive conformal: each side's miss rate is steered to 2.5 %), the
//! forecasts still waiting for their targets, and the rolling coverage and error. Works in
//! the model's z-space (`z = ln(1 + v / s)`), where errors are scale-free; converts to req/s
//! only at the end. Pure and synchronous: the caller passes every timestamp.

use crate::forecast::features::{self, HORIZON_STEPS};
use crate::forecast::history::STEP_SECONDS;

/// Nominal two-sided miss rate of the band (a 95 % band).
pub const ALPHA: f64 = 0.05;
/// Weight of the card's prior in the series-wide error mean, in observations: the training
/// data's error level is a poor guess for a service it never saw, so it fades within hours.
const PRIOR_WEIGHT: f64 = 6.0;
/// Forgetting factor of the series-wide error mean per observation (~ a day of steps).
const GLOBAL_DECAY: f64 = 0.995;
/// Weight of the series-wide mean in each hour's estimate, in observations: an hour with
/// few errors of its own leans on the whole series.
const HOUR_SHRINK: f64 = 6.0;
/// Forgetting factor of an hour bucket per observation (~ a week of that hour's steps).
const U3_DECAY: f64 = 0.99;
/// Largest |z error| one observation contributes to u3 (a 20x miss), so that one outage does
/// not widen the band for days.
const U3_ERROR_CAP: f64 = 3.0;
/// Step size of the adaptive-conformal multiplier update, in σ units.
const K_STEP: f64 = 0.05;
/// Bounds of the multipliers.
const K_RANGE: (f64, f64) = (0.25, 8.0);
/// Rolling coverage and error are exponentially weighted over about a day of steps.
const ROLLING_WEIGHT: f64 = 1.0 / 288.0;
/// How many past forecast origins are kept for scoring: 15 minutes of 1-minute ticks.
const PENDING: usize = 16;

/// The levels of the model's quantile output (the card's `quantile_levels`).
pub const QUANTILE_LEVELS: [f64; 5] = [0.025, 0.1, 0.5, 0.9, 0.975];
/// How many quantiles the model gives per horizon.
pub const QUANTILE_COUNT: usize = QUANTILE_LEVELS.len();
const Q_MEDIAN: usize = 2;
const Q_LOW: usize = 0;
const Q_HIGH: usize = QUANTILE_COUNT - 1;
/// z of the outer quantiles (0.025 and 0.975) under a normal distribution.
const Z_OUTER: f64 = 1.96;

/// The model card's calibration prior, per horizon: where every series' calibration
/// starts (the card is read in [`crate::forecast::model`]; the band is what uses it).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CalibrationPrior {
    /// u3² (z-space) by horizon and UTC hour of the target window.
    pub u3_sq_by_hour: Vec<Vec<f64>>,
    /// Multiplier of σ for the upper bound, by horizon.
    pub k_upper: Vec<f64>,
    /// Multiplier of σ for the lower bound, by horizon.
    pub k_lower: Vec<f64>,
    /// The quantile band's multipliers (upper side), by horizon: σ per side is
    /// ((q0.975 − q0.5) / 1.96) ⊕ u1.
    #[serde(default)]
    pub quantile_k_upper: Vec<f64>,
    /// The same for the lower side, with q0.025.
    #[serde(default)]
    pub quantile_k_lower: Vec<f64>,
}

/// Raw outputs of all Monte-Carlo passes for one series, in z-space: what the model hands
/// the band.
#[derive(Debug, Clone, PartialEq)]
pub struct PassOutputs {
    /// Mean of the deterministic (all-ones mask) pass, per horizon.
    pub mean: [f64; HORIZON_STEPS],
    /// Epistemic variance u1²: variance of the Monte-Carlo means, per horizon.
    pub u1_sq: [f64; HORIZON_STEPS],
    /// Heteroscedastic variance u2²: mean predicted variance over the passes, per horizon.
    pub u2_sq: [f64; HORIZON_STEPS],
    /// The deterministic pass's quantiles ([`QUANTILE_LEVELS`]) per horizon, when the
    /// band is the network's own.
    pub quantiles: Option<[[f64; QUANTILE_COUNT]; HORIZON_STEPS]>,
}

/// How the band is made: the shipped combination, or the study's model alone (the
/// ablation of METHOD.md §4–5 and models/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BandMode {
    /// The LSTM alone: u1 + u2 with z = 1.96 ("UN2").
    Un2,
    /// The LSTM alone: u1 + u2 + u3 with z = 1.96 ("UN3").
    Un3,
    /// The network alone: its quantile heads (q0.025, q0.5, q0.975) widened by u1, with
    /// adaptive per-side multipliers (issue #21).
    Calibrated,
    /// The network alone with its Gaussian head: u1 + u2 + u3 with adaptive per-side
    /// multipliers (the band until issue #15, and the ablation of the quantile heads).
    #[serde(rename = "calibrated-gaussian")]
    CalibratedGaussian,
    /// Centred on the online combination of the LSTM and the statistical experts
    /// ([`crate::forecast::combine`]), in the combination's log space: u3 (learnt per hour from the
    /// combination's own errors) with adaptive per-side multipliers (shipped default).
    #[default]
    Combined,
    /// The same centre with the study's whole shape: the LSTM's u1 and u2 (mapped into the
    /// combination's space) + u3, adaptive multipliers. Kept for the ablation.
    #[serde(rename = "combined-un3")]
    CombinedUn3,
}

impl BandMode {
    /// Whether the centre is the combination (else the LSTM's own mean).
    pub fn is_combined(self) -> bool {
        matches!(self, Self::Combined | Self::CombinedUn3)
    }

    /// The name in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Un2 => "un2",
            Self::Un3 => "un3",
            Self::Calibrated => "calibrated",
            Self::CalibratedGaussian => "calibrated-gaussian",
            Self::Combined => "combined",
            Self::CombinedUn3 => "combined-un3",
        }
    }
}

/// A band mode name that is not `un2`, `un3` or `calibrated`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown band mode {0:?} (expected combined, combined-un3, calibrated, calibrated-gaussian, un3 or un2)"
)]
pub struct UnknownBandMode(pub String);

impl std::str::FromStr for BandMode {
    type Err = UnknownBandMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "un2" => Ok(Self::Un2),
            "un3" => Ok(Self::Un3),
            "calibrated" => Ok(Self::Calibrated),
            "calibrated-gaussian" => Ok(Self::CalibratedGaussian),
            "combined" => Ok(Self::Combined),
            "combined-un3" => Ok(Self::CombinedUn3),
            other => Err(UnknownBandMode(other.to_string())),
        }
    }
}

/// One horizon of a forecast, in req/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Point forecast of the step's peak 1-minute rate.
    pub mean: f64,
    /// Lower bound of the band (≥ 0).
    pub lower: f64,
    /// Upper bound of the band.
    pub upper: f64,
    /// √(u1²+u2²+u3²) after calibration, in req/s.
    pub stddev: f64,
    /// u1, u2, u3 in req/s (epistemic, heteroscedastic, homoscedastic).
    pub components: [f64; 3],
}

/// A forecast for the three future steps of one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Unix seconds the forecast was made for (windows start here).
    pub origin: i64,
    /// One interval per horizon (5, 10, 15 minutes).
    pub horizons: [Interval; HORIZON_STEPS],
}

/// A forecast waiting for its targets. Single precision (all but the scale): sixteen of
/// these per series are most of its calibration state, and a target is compared with
/// them to far fewer digits than f32 holds.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Pending {
    origin: i64,
    scale: f64,
    mean_z: [f32; HORIZON_STEPS],
    /// σ below and above the centre (equal but for the quantile band).
    sigma_z: [(f32, f32); HORIZON_STEPS],
    bounds: [(f32, f32); HORIZON_STEPS],
    mean: [f32; HORIZON_STEPS],
}

/// Rolling quality of the band at one horizon.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rolling {
    /// Exponentially weighted share of targets inside the band.
    pub coverage: Option<f64>,
    /// Exponentially weighted mean absolute error over mean observed value.
    pub error_ratio: Option<f64>,
    abs_error: f64,
    observed: f64,
}

/// What the latest observed step says about the forecast made for it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Judgement {
    /// (observed − forecast) / σ, in z-space.
    pub anomaly_score: f64,
    /// Whether the observation fell outside the band.
    pub out_of_band: bool,
}

/// The online calibration state of one series. Serialisable so that `--state-dir`
/// snapshots keep what a series has learnt across restarts; [`Calibrator::check`] vets a
/// restored one.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Calibrator {
    mode: BandMode,
    global_sum: [f64; HORIZON_STEPS],
    global_weight: [f64; HORIZON_STEPS],
    /// Per horizon and UTC hour, the decayed sum of squared errors and its weight (single
    /// precision: 144 numbers a series).
    u3_sum: [[f32; 24]; HORIZON_STEPS],
    u3_weight: [[f32; 24]; HORIZON_STEPS],
    k_upper: [f64; HORIZON_STEPS],
    k_lower: [f64; HORIZON_STEPS],
    pending: [Option<Pending>; PENDING],
    rolling: [Rolling; HORIZON_STEPS],
    last_judged: i64,
}

impl Calibrator {
    /// A calibrator starting from the model card's prior.
    pub fn new(prior: &CalibrationPrior, mode: BandMode) -> Self {
        let global_sum = std::array::from_fn(|h| {
            let hours = prior.u3_sq_by_hour.get(h).map_or(&[][..], Vec::as_slice);
            PRIOR_WEIGHT * hours.iter().sum::<f64>() / hours.len().max(1) as f64
        });
        let pick = |v: &[f64]| -> [f64; HORIZON_STEPS] {
            std::array::from_fn(|h| {
                v.get(h)
                    .copied()
                    .unwrap_or(1.96)
                    .clamp(K_RANGE.0, K_RANGE.1)
            })
        };
        Self {
            mode,
            global_sum,
            global_weight: [PRIOR_WEIGHT; HORIZON_STEPS],
            u3_sum: [[0.0; 24]; HORIZON_STEPS],
            u3_weight: [[0.0; 24]; HORIZON_STEPS],
            k_upper: pick(if mode == BandMode::Calibrated {
                &prior.quantile_k_upper
            } else {
                &prior.k_upper
            }),
            k_lower: pick(if mode == BandMode::Calibrated {
                &prior.quantile_k_lower
            } else {
                &prior.k_lower
            }),
            pending: [None; PENDING],
            rolling: [Rolling::default(); HORIZON_STEPS],
            last_judged: i64::MIN,
        }
    }

    /// u3² for horizon `h` (0-based) of a target window starting at `t`: the hour's own
    /// mean squared error, shrunk towards the series-wide one (which starts at the prior).
    fn u3_sq(&self, h: usize, t: i64) -> f64 {
        let hour = features::hour_of_day(t);
        let global = self.global_sum[h] / self.global_weight[h];
        (f64::from(self.u3_sum[h][hour]) + HOUR_SHRINK * global)
            / (f64::from(self.u3_weight[h][hour]) + HOUR_SHRINK)
    }

    /// Turns the model's outputs at `origin` into a band, and remembers it for scoring.
    pub fn forecast(&mut self, origin: i64, scale: f64, out: &PassOutputs) -> Forecast {
        let mut pending = Pending {
            origin,
            scale,
            mean_z: out.mean.map(|z| z as f32),
            sigma_z: [(0.0, 0.0); HORIZON_STEPS],
            bounds: [(0.0, 0.0); HORIZON_STEPS],
            mean: [0.0; HORIZON_STEPS],
        };
        let quantiles = out.quantiles.filter(|_| self.mode == BandMode::Calibrated);
        let horizons = std::array::from_fn(|h| {
            let target_start = origin + STEP_SECONDS * h as i64;
            let u3_sq = match self.mode {
                BandMode::Un2 => 0.0,
                BandMode::Calibrated if quantiles.is_some() => 0.0,
                BandMode::Un3
                | BandMode::Calibrated
                | BandMode::CalibratedGaussian
                | BandMode::Combined
                | BandMode::CombinedUn3 => self.u3_sq(h, target_start),
            };
            // The centre and σ below and above it: the quantile band is centred on the
            // median, its sides from the outer quantiles, each widened by u1.
            let (mu, sigma_lo, sigma_hi) = match quantiles {
                Some(q) => {
                    let q = q[h];
                    let side = |d: f64| ((d / Z_OUTER).powi(2) + out.u1_sq[h]).sqrt();
                    (
                        q[Q_MEDIAN],
                        side(q[Q_MEDIAN] - q[Q_LOW]),
                        side(q[Q_HIGH] - q[Q_MEDIAN]),
                    )
                }
                None => {
                    let sigma = (out.u1_sq[h] + out.u2_sq[h] + u3_sq).sqrt();
                    (out.mean[h], sigma, sigma)
                }
            };
            let (k_lo, k_hi) = match self.mode {
                BandMode::Calibrated
                | BandMode::CalibratedGaussian
                | BandMode::Combined
                | BandMode::CombinedUn3 => (self.k_lower[h], self.k_upper[h]),
                BandMode::Un2 | BandMode::Un3 => (1.96, 1.96),
            };
            pending.mean_z[h] = mu as f32;
            let mean = features::from_z(mu, scale);
            let lower = features::from_z(mu - k_lo * sigma_lo, scale).min(mean);
            let upper = features::from_z(mu + k_hi * sigma_hi, scale).max(mean);
            let per_z = features::value_per_z(mu, scale);
            let k_mid = 0.5 * (k_lo + k_hi) / 1.96;
            pending.sigma_z[h] = (sigma_lo as f32, sigma_hi as f32);
            pending.bounds[h] = (lower as f32, upper as f32);
            pending.mean[h] = mean as f32;
            Interval {
                mean,
                lower,
                upper,
                stddev: per_z * 0.5 * (sigma_lo + sigma_hi) * k_mid,
                components: [
                    out.u1_sq[h].sqrt() * per_z,
                    out.u2_sq[h].sqrt() * per_z,
                    u3_sq.sqrt() * per_z,
                ],
            }
        });
        let slot = (origin.div_euclid(60)).rem_euclid(PENDING as i64) as usize;
        self.pending[slot] = Some(pending);
        Forecast { origin, horizons }
    }

    /// After the wall clock stepped back past the newest step judged (NTP): the step that
    /// completes at `origin` and later ones are judged again, rather than nothing until
    /// the clock has caught up. Nothing changes otherwise.
    pub fn rewind_to(&mut self, origin: i64) {
        let newest = origin - STEP_SECONDS;
        if self.last_judged > newest {
            self.last_judged = newest - 1;
        }
    }

    /// Scores past forecasts against the step `[start, start + 300)` whose peak 1-minute
    /// rate `observed` is now known, and learns from the forecasts made on the 5-minute grid
    /// (so that the live sidecar, ticking every minute, learns at the same pace as the
    /// backtest). Returns the judgement of the 5-minute-ahead forecast made for this step.
    pub fn observe(&mut self, start: i64, observed: f64) -> Option<Judgement> {
        if !observed.is_finite() || observed < 0.0 || start <= self.last_judged {
            return None;
        }
        self.last_judged = start;
        let mut judgement = None;
        for h in 0..HORIZON_STEPS {
            let origin = start - STEP_SECONDS * h as i64;
            let slot = (origin.div_euclid(60)).rem_euclid(PENDING as i64) as usize;
            let Some(p) = self.pending[slot].filter(|p| p.origin == origin) else {
                continue;
            };
            let (lower, upper) = (f64::from(p.bounds[h].0), f64::from(p.bounds[h].1));
            // As the scorer: a relative tolerance of 1e-6, above f32's rounding.
            let inside = lower * (1.0 - 1e-6) <= observed && observed <= upper * (1.0 + 1e-6);
            let error = features::to_z(observed, p.scale) - f64::from(p.mean_z[h]);
            let (lo, hi) = p.sigma_z[h];
            let sigma = f64::from(if error < 0.0 { lo } else { hi });
            let r = if sigma > 0.0 { error / sigma } else { 0.0 };
            if h == 0 {
                judgement = Some(Judgement {
                    anomaly_score: r,
                    out_of_band: !inside,
                });
            }
            self.update_rolling(h, inside, (observed - f64::from(p.mean[h])).abs(), observed);
            if origin.rem_euclid(STEP_SECONDS) != 0 {
                continue;
            }
            let hour = features::hour_of_day(start);
            let e = error.clamp(-U3_ERROR_CAP, U3_ERROR_CAP);
            self.u3_sum[h][hour] = (U3_DECAY * f64::from(self.u3_sum[h][hour]) + e * e) as f32;
            self.u3_weight[h][hour] = (U3_DECAY * f64::from(self.u3_weight[h][hour]) + 1.0) as f32;
            self.global_sum[h] = GLOBAL_DECAY * self.global_sum[h] + e * e;
            self.global_weight[h] = GLOBAL_DECAY * self.global_weight[h] + 1.0;
            // Adaptive conformal inference: each side's multiplier moves up by
            // K_STEP·(1 − α/2) on a miss and down by K_STEP·α/2 otherwise, so its long-run
            // miss rate is α/2.
            let target = ALPHA / 2.0;
            let miss_hi = if r > self.k_upper[h] { 1.0 } else { 0.0 };
            let miss_lo = if -r > self.k_lower[h] { 1.0 } else { 0.0 };
            self.k_upper[h] =
                (self.k_upper[h] + K_STEP * (miss_hi - target)).clamp(K_RANGE.0, K_RANGE.1);
            self.k_lower[h] =
                (self.k_lower[h] + K_STEP * (miss_lo - target)).clamp(K_RANGE.0, K_RANGE.1);
        }
        judgement
    }

    fn update_rolling(&mut self, h: usize, inside: bool, abs_error: f64, observed: f64) {
        let r = &mut self.rolling[h];
        let w = ROLLING_WEIGHT;
        let hit = if inside { 1.0 } else { 0.0 };
        r.coverage = Some(r.coverage.map_or(hit, |c| (1.0 - w) * c + w * hit));
        let first = r.error_ratio.is_none();
        r.abs_error = if first {
            abs_error
        } else {
            (1.0 - w) * r.abs_error + w * abs_error
        };
        r.observed = if first {
            observed
        } else {
            (1.0 - w) * r.observed + w * observed
        };
        r.error_ratio = Some(if r.observed > 0.0 {
            r.abs_error / r.observed
        } else {
            0.0
        });
    }

    /// Rolling coverage and error per horizon.
    pub fn rolling(&self) -> &[Rolling; HORIZON_STEPS] {
        &self.rolling
    }

    /// The current multipliers (lower, upper) per horizon.
    pub fn multipliers(&self) -> [(f64, f64); HORIZON_STEPS] {
        std::array::from_fn(|h| (self.k_lower[h], self.k_upper[h]))
    }

    /// The band mode this calibrator was built for.
    pub fn mode(&self) -> BandMode {
        self.mode
    }

    /// Checks a calibrator read from outside (a snapshot): every number finite and in the
    /// range this module itself keeps it in. Returns the first problem found.
    pub fn check(&self) -> Result<(), &'static str> {
        let finite_non_negative = |v: f64| v.is_finite() && v >= 0.0;
        for h in 0..HORIZON_STEPS {
            let weight = self.global_weight[h];
            if !(finite_non_negative(self.global_sum[h]) && weight > 0.0 && weight.is_finite()) {
                return Err("series-wide error mean out of range");
            }
            if !self.u3_sum[h]
                .iter()
                .chain(&self.u3_weight[h])
                .all(|&v| finite_non_negative(f64::from(v)))
            {
                return Err("hourly error mean out of range");
            }
            let k_ok = |k: f64| (K_RANGE.0..=K_RANGE.1).contains(&k);
            if !k_ok(self.k_upper[h]) || !k_ok(self.k_lower[h]) {
                return Err("band multiplier out of range");
            }
            let r = &self.rolling[h];
            let unit = |v: Option<f64>| v.is_none_or(|v| (0.0..=1.0).contains(&v));
            if !unit(r.coverage)
                || !r.error_ratio.is_none_or(finite_non_negative)
                || !finite_non_negative(r.abs_error)
                || !finite_non_negative(r.observed)
            {
                return Err("rolling quality out of range");
            }
        }
        for p in self.pending.iter().flatten() {
            // Bounds in req/s may overflow to +inf for an absurd z; NaN never.
            let mut req_s = p
                .mean
                .iter()
                .chain(p.bounds.iter().flat_map(|(a, b)| [a, b]));
            let z_finite = p
                .mean_z
                .iter()
                .chain(p.sigma_z.iter().flat_map(|(a, b)| [a, b]))
                .all(|v| v.is_finite());
            if !(p.scale.is_finite() && p.scale > 0.0 && z_finite) || req_s.any(|v| v.is_nan()) {
                return Err("pending forecast out of range");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prior() -> CalibrationPrior {
        CalibrationPrior {
            u3_sq_by_hour: vec![vec![0.01; 24]; 3],
            k_upper: vec![1.96; 3],
            k_lower: vec![1.96; 3],
            quantile_k_upper: vec![1.0; 3],
            quantile_k_lower: vec![1.0; 3],
        }
    }

    fn outputs(mean: f64, var: f64) -> PassOutputs {
        PassOutputs {
            mean: [mean; 3],
            u1_sq: [var / 2.0; 3],
            u2_sq: [var / 2.0; 3],
            quantiles: None,
        }
    }

    #[test]
    fn bands_are_ordered_non_negative_and_scale_free() {
        let mut a = Calibrator::new(&prior(), BandMode::Calibrated);
        let mut b = a.clone();
        let fa = a.forecast(0, 2.0, &outputs(0.1, 4.0));
        let fb = b.forecast(0, 2000.0, &outputs(0.1, 4.0));
        for (x, y) in fa.horizons.iter().zip(&fb.horizons) {
            assert!(
                0.0 <= x.lower && x.lower <= x.mean && x.mean <= x.upper,
                "{x:?}"
            );
            assert_eq!(x.lower, 0.0, "a wide band is clipped at zero, not negative");
            assert!((y.upper / x.upper - 1000.0).abs() < 1e-6);
            assert!((y.mean / x.mean - 1000.0).abs() < 1e-6);
        }
    }

    #[test]
    fn un2_is_narrower_than_un3() {
        let mut un2 = Calibrator::new(&prior(), BandMode::Un2);
        let mut un3 = Calibrator::new(&prior(), BandMode::Un3);
        let f2 = un2.forecast(0, 1.0, &outputs(1.0, 0.01));
        let f3 = un3.forecast(0, 1.0, &outputs(1.0, 0.01));
        assert!(f2.horizons[0].upper < f3.horizons[0].upper);
        assert_eq!(f2.horizons[0].components[2], 0.0);
    }

    /// Feeds `n` steps where the model claims σ = 0.1 but the truth errs by `spread` in z.
    fn run(cal: &mut Calibrator, n: i64, spread: f64) -> f64 {
        let mut inside = 0;
        let mut total = 0;
        let mut state = 12345u64;
        for i in 0..n {
            let origin = 86_400 + i * STEP_SECONDS;
            let f = cal.forecast(origin, 1.0, &outputs(1.0, 0.01));
            // A deterministic pseudo-normal error.
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((state >> 11) as f64 / (1u64 << 53) as f64).clamp(1e-9, 1.0 - 1e-9);
            let z = 1.0 + spread * (2.0f64.sqrt() * inverse_erf(2.0 * u - 1.0));
            let observed = features::from_z(z, 1.0);
            let hit = f.horizons[0].lower <= observed && observed <= f.horizons[0].upper;
            if i > n / 2 {
                total += 1;
                inside += usize::from(hit);
            }
            cal.observe(origin, observed);
        }
        inside as f64 / total as f64
    }

    fn inverse_erf(x: f64) -> f64 {
        // Winitzki's approximation is ample for a test distribution.
        let a = 0.147;
        let ln = (1.0 - x * x).ln();
        let t = 2.0 / (std::f64::consts::PI * a) + ln / 2.0;
        x.signum() * ((t * t - ln / a).sqrt() - t).sqrt()
    }

    #[test]
    fn calibration_repairs_an_overconfident_model() {
        let mut raw = Calibrator::new(&prior(), BandMode::Un2);
        let mut cal = Calibrator::new(&prior(), BandMode::Calibrated);
        let raw_cov = run(&mut raw, 4000, 0.5);
        let cal_cov = run(&mut cal, 4000, 0.5);
        assert!(raw_cov < 0.6, "the raw band is far too narrow: {raw_cov}");
        assert!(
            (0.92..=0.98).contains(&cal_cov),
            "calibrated coverage {cal_cov}"
        );
    }

    #[test]
    fn calibration_narrows_an_underconfident_band() {
        let mut cal = Calibrator::new(&prior(), BandMode::Calibrated);
        let cov = run(&mut cal, 6000, 0.02);
        assert!((0.92..=0.98).contains(&cov), "calibrated coverage {cov}");
    }

    #[test]
    fn u3_buckets_follow_the_utc_hour_across_midnight() {
        let mut cal = Calibrator::new(&prior(), BandMode::Un3);
        // Large errors only at 23:xx UTC, on several days.
        for day in 1..20 {
            for (hour, observed_z) in [(1, 0.5), (23, 2.0)] {
                for minute in (0..60).step_by(5) {
                    let origin = day * 86_400 + hour * 3600 + minute * 60;
                    cal.forecast(origin, 1.0, &outputs(0.5, 0.0001));
                    cal.observe(origin, features::from_z(observed_z, 1.0));
                }
            }
        }
        assert!(
            cal.u3_sq(0, 23 * 3600) > 1.0,
            "late-evening errors raised u3"
        );
        assert!(
            cal.u3_sq(0, 86_400 * 40 + 23 * 3600 + 300) > 1.0,
            "same hour on another day"
        );
        let calm = cal.u3_sq(0, 3600);
        assert!(calm < 0.2, "calm hour stays calm: {calm}");
        let untouched = cal.u3_sq(0, 12 * 3600);
        assert!(
            untouched > calm && untouched < cal.u3_sq(0, 23 * 3600),
            "an hour without errors of its own leans on the series: {untouched}"
        );
    }

    #[test]
    fn rolling_coverage_and_judgement() {
        let mut cal = Calibrator::new(&prior(), BandMode::Calibrated);
        let f = cal.forecast(600, 10.0, &outputs(0.7, 0.01));
        let j = cal.observe(600, f.horizons[0].upper * 3.0).expect("judged");
        assert!(j.out_of_band && j.anomaly_score > 2.0);
        assert_eq!(cal.rolling()[0].coverage, Some(0.0));
        assert!(cal.observe(600, 1.0).is_none(), "a step is judged once");
        let f = cal.forecast(900, 10.0, &outputs(0.7, 0.01));
        let j = cal.observe(900, f.horizons[0].mean).expect("judged");
        // The pending mean is kept in f32: at the mean, the score is that rounding over σ.
        assert!(!j.out_of_band && j.anomaly_score.abs() < 1e-4);
        assert!(cal.rolling()[0].coverage.expect("some") > 0.0);
    }
}
