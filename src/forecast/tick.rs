//! What one forecast tick produced, per series: the engine writes a [`TickReport`]; the
//! shared state publishes it, the track record and the web page read it. Plain data, so
//! that the engine, the server's state and the track record need not import each other.

use serde::Serialize;

use crate::forecast::band::Forecast;
use crate::forecast::features::HORIZON_STEPS;

/// One series' result at one tick.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesReport {
    /// Values of the `by` labels.
    pub key: Vec<String>,
    /// Whether forecasts are exported.
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready_reason: Option<&'static str>,
    /// Seconds of history held.
    pub history_seconds: f64,
    /// Seconds of 5-minute step history the combination holds (up to a week).
    pub step_history_seconds: f64,
    /// Latest complete step value (req/s).
    pub observed: Option<f64>,
    /// Anomaly score of the latest step.
    pub anomaly_score: Option<f64>,
    /// Whether the latest step left its band.
    pub out_of_band: Option<bool>,
    /// Rolling coverage per horizon.
    pub band_coverage: [Option<f64>; 3],
    /// Rolling error ratio per horizon.
    pub error_ratio: [Option<f64>; 3],
    /// The forecast (ready series only).
    #[serde(skip)]
    pub forecast: Option<Forecast>,
    /// Recent step values (req/s, oldest first, `None` = hole) for the web page.
    pub recent_steps: Vec<Option<f64>>,
    /// The app's mean request latency in seconds, when a latency histogram is read.
    pub mean_latency_seconds: Option<f64>,
    /// The experts' weights and skill, when the band is the combination's.
    #[serde(skip)]
    pub experts: Option<crate::forecast::combine::Skill>,
    /// The weights of the experts in this forecast, per expert and horizon, when the band
    /// is the combination's.
    #[serde(skip)]
    pub weights: Option<[[f64; HORIZON_STEPS]; crate::forecast::combine::EXPERT_COUNT]>,
    /// Each expert's forecast (req/s) per expert and horizon, when the band is the
    /// combination's (the backtest writes them).
    #[serde(skip)]
    pub expert_forecasts:
        Option<[[Option<f64>; HORIZON_STEPS]; crate::forecast::combine::EXPERT_COUNT]>,
}

/// Everything one tick produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TickReport {
    /// Unix seconds of the origin.
    pub origin: i64,
    /// Per series, in the order they were first seen.
    pub series: Vec<SeriesReport>,
    /// Keys of the series evicted before this tick (no sample for `series_stale_after`):
    /// publishing removes their gauges and their track record.
    #[serde(skip)]
    pub evicted: Vec<Vec<String>>,
}
