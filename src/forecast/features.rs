//! The feature contract between the history and the model (models/README.md).
//!
//! Owns: the window and horizon sizes, readiness of a window, the scale-free
//! normalisation `z = ln(1 + v / s)` with `s` the window's mean step value, its inverse,
//! and the cyclic time features. It must not know about tract, metrics or the clock: the
//! origin is an argument. The training script (`models/training/train.py`) implements the
//! same contract, and `models/golden.json` pins the two together.

/// Number of past 5-minute steps the model reads (3 hours).
pub const WINDOW_STEPS: usize = 36;
/// Number of future 5-minute steps it forecasts (15 minutes).
pub const HORIZON_STEPS: usize = 3;
/// Encoder features per step: z, present, sin/cos time of day, sin/cos day of week.
pub const ENCODER_FEATURES: usize = 6;
/// Decoder features per future step: sin/cos time of day, sin/cos day of week.
pub const DECODER_FEATURES: usize = 4;
/// A window needs at least this many present steps to be forecast.
pub const MIN_PRESENT_STEPS: usize = 18;
/// ... and at least one present step among the newest this many.
pub const RECENT_STEPS: usize = 3;
/// Scale used when every present step is zero (no level to normalise by), in req/s.
pub const ZERO_SCALE_FALLBACK: f64 = 1.0;
/// Largest |z| handed to `exp`, so that no input can overflow to infinity.
const Z_LIMIT: f64 = 30.0;

const DAY_SECONDS: i64 = 86_400;
const STEP_SECONDS: i64 = crate::forecast::history::STEP_SECONDS;

/// One series' model input at one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    /// Normalisation scale `s` (req/s): the mean of the present step values.
    pub scale: f64,
    /// Encoder input, `WINDOW_STEPS x ENCODER_FEATURES`, row-major.
    pub x: [[f32; ENCODER_FEATURES]; WINDOW_STEPS],
    /// Decoder input, `HORIZON_STEPS x DECODER_FEATURES`, row-major.
    pub xf: [[f32; DECODER_FEATURES]; HORIZON_STEPS],
}

/// Why a window cannot be forecast yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Fewer than [`MIN_PRESENT_STEPS`] steps hold data.
    TooFewSteps,
    /// None of the newest [`RECENT_STEPS`] steps holds data (the series went quiet).
    Stale,
}

/// Builds the model input for the window of `steps` (oldest first, `None` = hole) that
/// ends at `origin` (unix seconds). `zero_scale` is the scale used when every present step
/// is zero: the training contract uses [`ZERO_SCALE_FALLBACK`]; the live engine passes the
/// series' last positive scale, so a quiet spell keeps the series' own units.
pub fn model_input(
    steps: &[Option<f64>; WINDOW_STEPS],
    origin: i64,
    zero_scale: f64,
) -> Result<ModelInput, NotReady> {
    let present: Vec<f64> = steps.iter().flatten().copied().collect();
    if present.len() < MIN_PRESENT_STEPS {
        return Err(NotReady::TooFewSteps);
    }
    if steps[WINDOW_STEPS - RECENT_STEPS..]
        .iter()
        .all(Option::is_none)
    {
        return Err(NotReady::Stale);
    }
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    let scale = if mean > 0.0 { mean } else { zero_scale };
    let first_z = steps
        .iter()
        .flatten()
        .next()
        .map_or(0.0, |&v| to_z(v, scale));
    let mut x = [[0.0f32; ENCODER_FEATURES]; WINDOW_STEPS];
    let mut last_z = first_z;
    for (k, (row, step)) in x.iter_mut().zip(steps).enumerate() {
        let present = match step {
            Some(v) => {
                last_z = to_z(*v, scale);
                1.0
            }
            None => 0.0,
        };
        let start = origin - STEP_SECONDS * (WINDOW_STEPS - k) as i64;
        let [a, b, c, d] = time_features(start);
        *row = [last_z as f32, present, a, b, c, d];
    }
    let mut xf = [[0.0f32; DECODER_FEATURES]; HORIZON_STEPS];
    for (j, row) in xf.iter_mut().enumerate() {
        *row = time_features(origin + STEP_SECONDS * j as i64);
    }
    Ok(ModelInput { scale, x, xf })
}

/// The normalised value of a step value `v` (req/s) under scale `s`.
pub fn to_z(v: f64, scale: f64) -> f64 {
    (v / scale).ln_1p()
}

/// The step value (req/s) of a normalised value; never negative.
pub fn from_z(z: f64, scale: f64) -> f64 {
    (scale * z.clamp(-Z_LIMIT, Z_LIMIT).exp_m1()).max(0.0)
}

/// d(value)/dz at `z`: converts a z-space standard deviation into req/s (delta method).
pub fn value_per_z(z: f64, scale: f64) -> f64 {
    scale * z.clamp(-Z_LIMIT, Z_LIMIT).exp()
}

/// sin/cos of the time of day and of the day of week (Monday = 0) of unix second `t`.
pub fn time_features(t: i64) -> [f32; DECODER_FEATURES] {
    use std::f64::consts::TAU;
    let tod = t.rem_euclid(DAY_SECONDS) as f64 / DAY_SECONDS as f64;
    let dow = (t.div_euclid(DAY_SECONDS) + 3).rem_euclid(7) as f64 / 7.0;
    [
        (TAU * tod).sin() as f32,
        (TAU * tod).cos() as f32,
        (TAU * dow).sin() as f32,
        (TAU * dow).cos() as f32,
    ]
}

/// UTC hour of day (0..24) of unix second `t`: the time-of-day bucket of the calibration.
pub fn hour_of_day(t: i64) -> usize {
    (t.rem_euclid(DAY_SECONDS) / 3600) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(v: f64) -> [Option<f64>; WINDOW_STEPS] {
        [Some(v); WINDOW_STEPS]
    }

    #[test]
    fn readiness_needs_enough_and_recent_steps() {
        let mut s = full(1.0);
        for v in s.iter_mut().take(WINDOW_STEPS - MIN_PRESENT_STEPS + 1) {
            *v = None;
        }
        assert_eq!(
            model_input(&s, 0, ZERO_SCALE_FALLBACK),
            Err(NotReady::TooFewSteps)
        );
        let mut s = full(1.0);
        for v in s.iter_mut().skip(WINDOW_STEPS - RECENT_STEPS) {
            *v = None;
        }
        assert_eq!(
            model_input(&s, 0, ZERO_SCALE_FALLBACK),
            Err(NotReady::Stale)
        );
        s[WINDOW_STEPS - 1] = Some(2.0);
        assert!(model_input(&s, 0, ZERO_SCALE_FALLBACK).is_ok());
    }

    #[test]
    fn normalisation_is_scale_free() {
        let mut a = full(0.0);
        for (k, v) in a.iter_mut().enumerate() {
            *v = if k % 7 == 3 {
                None
            } else {
                Some(1.0 + k as f64)
            };
        }
        let b = a.map(|v| v.map(|v| v * 1000.0));
        let (ia, ib) = (
            model_input(&a, 3600, ZERO_SCALE_FALLBACK).expect("ready"),
            model_input(&b, 3600, ZERO_SCALE_FALLBACK).expect("ready"),
        );
        assert!((ib.scale / ia.scale - 1000.0).abs() < 1e-9);
        assert_eq!(ia.x, ib.x);
        assert!((from_z(0.7, ib.scale) / from_z(0.7, ia.scale) - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn holes_are_forward_filled_and_flagged() {
        let mut s = full(2.0);
        s[0] = None;
        s[10] = None;
        s[9] = Some(6.0);
        let i = model_input(&s, 0, ZERO_SCALE_FALLBACK).expect("ready");
        assert_eq!(i.x[0][1], 0.0);
        assert_eq!(
            i.x[0][0], i.x[1][0],
            "a leading hole takes the first present z"
        );
        assert_eq!(i.x[10][0], i.x[9][0]);
        assert_eq!(i.x[10][1], 0.0);
        assert_eq!(i.x[11][1], 1.0);
    }

    #[test]
    fn all_zero_windows_use_the_fallback_scale() {
        let i = model_input(&full(0.0), 0, ZERO_SCALE_FALLBACK).expect("ready");
        assert_eq!(i.scale, ZERO_SCALE_FALLBACK);
        assert!(i.x.iter().all(|r| r[0] == 0.0));
        assert_eq!(from_z(-5.0, 3.0), 0.0, "never negative");
        assert!(from_z(1e9, 3.0).is_finite(), "never infinite");
    }

    #[test]
    fn time_features_follow_the_utc_clock() {
        // 1970-01-05 00:00 UTC was a Monday.
        let monday = 4 * DAY_SECONDS;
        assert_eq!(time_features(monday), [0.0, 1.0, 0.0, 1.0]);
        let f = time_features(monday + DAY_SECONDS / 4);
        assert!((f[0] - 1.0).abs() < 1e-6 && f[1].abs() < 1e-6);
        assert_eq!(hour_of_day(monday + 3600 * 23 + 59), 23);
        assert_eq!(hour_of_day(-1), 23, "before the epoch still wraps");
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Golden {
        feature_cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        series: String,
        origin: i64,
        steps: Vec<Option<f64>>,
        ready: bool,
        scale: f64,
        x: Vec<Vec<f64>>,
        xf: Vec<Vec<f64>>,
    }

    /// The training script's features of real windows (holes, all zeros, NAB's offset grid,
    /// 1-minute data) equal ours: the two sides of the contract agree.
    #[test]
    fn features_match_the_training_script() {
        let golden: Golden =
            serde_json::from_str(include_str!("../../models/golden.json")).expect("golden parses");
        assert!(golden.feature_cases.len() >= 4);
        for case in &golden.feature_cases {
            let steps: [Option<f64>; WINDOW_STEPS] =
                case.steps.clone().try_into().expect("36 steps");
            let Ok(input) = model_input(&steps, case.origin, ZERO_SCALE_FALLBACK) else {
                assert!(
                    !case.ready,
                    "{}: the script found this window ready",
                    case.series
                );
                continue;
            };
            assert!(
                case.ready,
                "{}: the script found this window not ready",
                case.series
            );
            assert!(
                (input.scale - case.scale).abs() <= 1e-9 * case.scale.abs().max(1.0),
                "{}",
                case.series
            );
            for (row, want) in input.x.iter().zip(&case.x) {
                for (got, want) in row.iter().zip(want) {
                    assert!(
                        (f64::from(*got) - want).abs() < 1e-5,
                        "{}: x {got} vs {want}",
                        case.series
                    );
                }
            }
            for (row, want) in input.xf.iter().zip(&case.xf) {
                for (got, want) in row.iter().zip(want) {
                    assert!(
                        (f64::from(*got) - want).abs() < 1e-5,
                        "{}: xf {got} vs {want}",
                        case.series
                    );
                }
            }
        }
    }
}
