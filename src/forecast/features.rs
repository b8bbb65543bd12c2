//! The feature contract between the history and the model (models/README.md).
//!
//! Owns: the window and horizon sizes, readiness of a window, the scale-free
//! normalisation `z = ln(1 + v / s)` with `s` the recent level (the mean of the newest
//! present steps: the reference the network corrects, so that untrained it is
//! persistence), its inverse, the cyclic time features and the seasonal context (the
//! windows a day and a week before each target, their change since the window before the
//! origin, the last day's mean). Contract version 2 (issue #21). It must not know about tract, metrics or the clock: the
//! origin is an argument. The training script (`models/training/train.py`) implements the
//! same contract, and `models/golden.json` pins the two together.

/// Number of past 5-minute steps the model reads (3 hours).
pub const WINDOW_STEPS: usize = 36;
/// Number of future 5-minute steps it forecasts (15 minutes).
pub const HORIZON_STEPS: usize = 3;
/// Encoder features per step: z, present, sin/cos time of day, sin/cos day of week.
pub const ENCODER_FEATURES: usize = 6;
/// Decoder features per future step: sin/cos time of day, sin/cos day of week, the
/// reference level, the day-ago level, change and presence, the same a week ago, the
/// last day's mean and its presence, and the log scale (models/README.md).
pub const DECODER_FEATURES: usize = 14;
/// Their names, as the model card lists them.
pub const DECODER_FEATURE_NAMES: [&str; DECODER_FEATURES] = [
    "sin_tod",
    "cos_tod",
    "sin_dow",
    "cos_dow",
    "reference",
    "day_level",
    "day_change",
    "day_present",
    "week_level",
    "week_change",
    "week_present",
    "slow_level",
    "slow_present",
    "log_scale",
];
/// The encoder's feature names, as the model card lists them.
pub const ENCODER_FEATURE_NAMES: [&str; ENCODER_FEATURES] =
    ["z", "present", "sin_tod", "cos_tod", "sin_dow", "cos_dow"];
/// `log_scale = ln(1 + s) / LOG_SCALE_DIVISOR`.
const LOG_SCALE_DIVISOR: f64 = 10.0;
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

/// The seasonal context of one origin, read from the series' week of steps: `None` where
/// the history has no value (a new series, a hole).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Seasonal {
    /// The windows one day before each target window.
    pub day_target: [Option<f64>; HORIZON_STEPS],
    /// The window one day before the last window before the origin.
    pub day_base: Option<f64>,
    /// The windows one week before each target window.
    pub week_target: [Option<f64>; HORIZON_STEPS],
    /// The window one week before the last window before the origin.
    pub week_base: Option<f64>,
    /// The mean of the present windows of the day before the origin.
    pub day_mean: Option<f64>,
}

/// One series' model input at one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInput {
    /// Normalisation scale `s` (req/s): the mean of the newest present steps, else the
    /// mean of all present steps, else the zero-scale fallback.
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
/// ends at `origin` (unix seconds), with its seasonal context. `zero_scale` is the scale
/// used when every present step is zero: the training contract uses
/// [`ZERO_SCALE_FALLBACK`]; the live engine passes the series' last positive scale, so a
/// quiet spell keeps the series' own units.
pub fn model_input(
    steps: &[Option<f64>; WINDOW_STEPS],
    origin: i64,
    zero_scale: f64,
    seasonal: &Seasonal,
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
    let recent: Vec<f64> = steps[WINDOW_STEPS - RECENT_STEPS..]
        .iter()
        .flatten()
        .copied()
        .collect();
    let reference = recent.iter().sum::<f64>() / recent.len() as f64;
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    let scale = if reference > 0.0 {
        reference
    } else if mean > 0.0 {
        mean
    } else {
        zero_scale
    };
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
    let z = |v: f64| to_z(v, scale);
    let pair = |target: Option<f64>, base: Option<f64>| match (target, base) {
        (Some(t), Some(b)) => [z(t), z(t) - z(b), 1.0],
        _ => [0.0; 3],
    };
    let slow = seasonal.day_mean.map_or([0.0, 0.0], |m| [z(m), 1.0]);
    let log_scale = scale.ln_1p() / LOG_SCALE_DIVISOR;
    let mut xf = [[0.0f32; DECODER_FEATURES]; HORIZON_STEPS];
    for (j, row) in xf.iter_mut().enumerate() {
        let day = pair(seasonal.day_target[j], seasonal.day_base);
        let week = pair(seasonal.week_target[j], seasonal.week_base);
        let [a, b, c, d] = time_features(origin + STEP_SECONDS * j as i64);
        let values = [
            z(reference),
            day[0],
            day[1],
            day[2],
            week[0],
            week[1],
            week[2],
            slow[0],
            slow[1],
            log_scale,
        ];
        row[..4].copy_from_slice(&[a, b, c, d]);
        for (out, v) in row[4..].iter_mut().zip(values) {
            *out = v as f32;
        }
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
pub fn time_features(t: i64) -> [f32; 4] {
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
            model_input(&s, 0, ZERO_SCALE_FALLBACK, &Seasonal::default()),
            Err(NotReady::TooFewSteps)
        );
        let mut s = full(1.0);
        for v in s.iter_mut().skip(WINDOW_STEPS - RECENT_STEPS) {
            *v = None;
        }
        assert_eq!(
            model_input(&s, 0, ZERO_SCALE_FALLBACK, &Seasonal::default()),
            Err(NotReady::Stale)
        );
        s[WINDOW_STEPS - 1] = Some(2.0);
        assert!(model_input(&s, 0, ZERO_SCALE_FALLBACK, &Seasonal::default()).is_ok());
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
            model_input(&a, 3600, ZERO_SCALE_FALLBACK, &Seasonal::default()).expect("ready"),
            model_input(&b, 3600, ZERO_SCALE_FALLBACK, &Seasonal::default()).expect("ready"),
        );
        assert!((ib.scale / ia.scale - 1000.0).abs() < 1e-9);
        assert_eq!(ia.x, ib.x);
        // Only log_scale (the last decoder input) knows the level.
        for (ra, rb) in ia.xf.iter().zip(&ib.xf) {
            assert_eq!(ra[..DECODER_FEATURES - 1], rb[..DECODER_FEATURES - 1]);
            assert!(rb[DECODER_FEATURES - 1] > ra[DECODER_FEATURES - 1]);
        }
        assert!((from_z(0.7, ib.scale) / from_z(0.7, ia.scale) - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn holes_are_forward_filled_and_flagged() {
        let mut s = full(2.0);
        s[0] = None;
        s[10] = None;
        s[9] = Some(6.0);
        let i = model_input(&s, 0, ZERO_SCALE_FALLBACK, &Seasonal::default()).expect("ready");
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
        let i =
            model_input(&full(0.0), 0, ZERO_SCALE_FALLBACK, &Seasonal::default()).expect("ready");
        assert_eq!(i.scale, ZERO_SCALE_FALLBACK);
        assert!(i.x.iter().all(|r| r[0] == 0.0));
        assert_eq!(from_z(-5.0, 3.0), 0.0, "never negative");
        assert!(from_z(1e9, 3.0).is_finite(), "never infinite");
    }

    #[test]
    fn the_reference_is_the_recent_level_and_the_seasons_are_masked() {
        let mut s = full(10.0);
        s[WINDOW_STEPS - 1] = Some(20.0);
        s[WINDOW_STEPS - 2] = None;
        let none = model_input(&s, 0, ZERO_SCALE_FALLBACK, &Seasonal::default()).expect("ready");
        assert_eq!(none.scale, 15.0, "mean of the newest present steps");
        let f = none.xf[0];
        assert!(
            (f64::from(f[4]) - 2f64.ln()).abs() < 1e-6,
            "z of the reference"
        );
        assert_eq!(
            &f[5..13],
            &[0.0; 8],
            "absent context is zero and flagged absent"
        );
        let seasonal = Seasonal {
            day_target: [Some(30.0); HORIZON_STEPS],
            day_base: Some(15.0),
            week_target: [None; HORIZON_STEPS],
            week_base: Some(15.0),
            day_mean: Some(15.0),
        };
        let with = model_input(&s, 0, ZERO_SCALE_FALLBACK, &seasonal).expect("ready");
        let f = with.xf[2];
        let z = |v: f64| to_z(v, 15.0) as f32;
        assert_eq!(f[5], z(30.0));
        assert!((f[6] - (z(30.0) - z(15.0))).abs() < 1e-6);
        assert_eq!((f[7], f[10], f[12]), (1.0, 0.0, 1.0));
        assert_eq!(&f[8..10], &[0.0, 0.0], "a week with no target is absent");
        assert_eq!(with.x, none.x, "the context does not touch the encoder");
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
        seasonal: GoldenSeasonal,
        ready: bool,
        scale: f64,
        x: Vec<Vec<f64>>,
        xf: Vec<Vec<f64>>,
    }

    #[derive(serde::Deserialize)]
    struct GoldenSeasonal {
        day_target: [Option<f64>; HORIZON_STEPS],
        day_base: Option<f64>,
        week_target: [Option<f64>; HORIZON_STEPS],
        week_base: Option<f64>,
        day_mean: Option<f64>,
    }

    /// The training script's features of real windows (holes, all zeros, NAB's offset grid,
    /// 1-minute data) equal ours: the two sides of the contract agree.
    #[test]
    fn features_match_the_training_script() {
        let golden: Golden =
            serde_json::from_str(include_str!("../../models/golden.json")).expect("golden parses");
        assert!(golden.feature_cases.len() >= 4);
        assert!(
            golden
                .feature_cases
                .iter()
                .any(|c| c.seasonal.week_base.is_some() && c.ready),
            "a case with a week of history"
        );
        for case in &golden.feature_cases {
            let steps: [Option<f64>; WINDOW_STEPS] =
                case.steps.clone().try_into().expect("36 steps");
            let seasonal = Seasonal {
                day_target: case.seasonal.day_target,
                day_base: case.seasonal.day_base,
                week_target: case.seasonal.week_target,
                week_base: case.seasonal.week_base,
                day_mean: case.seasonal.day_mean,
            };
            let Ok(input) = model_input(&steps, case.origin, ZERO_SCALE_FALLBACK, &seasonal) else {
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
