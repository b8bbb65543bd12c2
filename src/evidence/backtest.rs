//! The backtest: replays a recorded series through the live engine on a simulated
//! clock and writes forecasts in the scorer's format (shared/eval/README.md).
//!
//! Owns the simulated clock (a row is fed when its step has ended), batching of several
//! origins into one model run, and the SVG plot; the CSV, the rows and the scorer's
//! metrics are [`crate::evidence::dataset`]'s (re-exported here). The command that reads
//! the arguments and writes the files is `run::backtest`. It reuses [`Engine`] unchanged, so what is measured here is what runs live.
//! Causality: an origin's forecast reads only rows that ended by it, and its masks are
//! seeded by the seed and the origin alone.

use std::fmt::Write as _;
use std::sync::Arc;

pub use crate::evidence::dataset::{
    as_written, parse_series, read_series, score, score_horizons, score_table, targets, write_rows,
    CsvError, DataError, Row, Scores, Series, GAP_ALLOWANCE_SECONDS, HORIZON_SECONDS, NO_WEIGHTS,
};
use crate::forecast::band::BandMode;
use crate::forecast::band::PassOutputs;
use crate::forecast::engine::{Engine, EngineSettings, Prepared};
use crate::forecast::features::ModelInput;
use crate::forecast::features::HORIZON_STEPS;
use crate::forecast::history::{SeriesLimits, MINUTE_SECONDS, STEP_SECONDS};
use crate::forecast::model::{Model, ModelError};
use crate::forecast::tick::TickReport;

/// Origins prepared before one model run.
const ORIGINS_PER_RUN: usize = 64;

/// Errors of a backtest.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The data file could not be read or parsed, or the output not written.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A thread that shared the inference panicked.
    #[error("an inference thread panicked")]
    InferenceThread,
}

/// Settings of a backtest.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Mask seed.
    pub seed: u64,
    /// Monte-Carlo passes.
    pub mc_passes: usize,
    /// Band mode.
    pub band: BandMode,
    /// The experts of the combination.
    pub experts: crate::forecast::combine::ExpertSet,
    /// Threads sharing each batch's inference (results do not depend on it).
    pub threads: usize,
}

/// Replays `series` through a fresh engine; one row per origin (every multiple of 300 s
/// from the first row's end to the last row's start) and horizon.
pub fn run(
    series: &Series,
    model: Arc<Model>,
    settings: Settings,
) -> Result<Vec<Row>, BacktestError> {
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes: settings.mc_passes,
            seed: settings.seed,
            band: settings.band,
            experts: settings.experts,
            limits: SeriesLimits {
                max_series: 1,
                max_children: 1,
                max_gap_seconds: f64::INFINITY,
                shard: None,
                stale_after_seconds: None,
            },
        },
    );
    let key: Vec<String> = Vec::new();
    let (Some(&(first, _)), Some(&(last, _))) = (series.rows.first(), series.rows.last()) else {
        return Ok(Vec::new());
    };
    let first_origin = (first + series.step).div_euclid(STEP_SECONDS) * STEP_SECONDS + STEP_SECONDS;
    let origins: Vec<i64> = (first_origin..=last + STEP_SECONDS)
        .step_by(STEP_SECONDS as usize)
        .collect();
    let mut next_row = 0;
    let mut rows = Vec::with_capacity(origins.len() * HORIZON_STEPS);
    for chunk in origins.chunks(ORIGINS_PER_RUN) {
        let mut prepared: Vec<Prepared> = Vec::with_capacity(chunk.len());
        for &origin in chunk {
            // The simulated clock: a row is known once its step has ended.
            while let Some(&(ts, value)) = series.rows.get(next_row) {
                if ts + series.step > origin {
                    break;
                }
                engine.record_rate(
                    &key,
                    ts.div_euclid(MINUTE_SECONDS),
                    value / series.step as f64,
                );
                next_row += 1;
            }
            prepared.push(engine.prepare(origin));
        }
        let (inputs, seeds): (Vec<_>, Vec<_>) = prepared.iter().map(Prepared::inputs).unzip();
        let counts: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let outputs = predict_parallel(
            engine.model(),
            &inputs.concat(),
            &seeds.concat(),
            settings.mc_passes,
            settings.threads,
        )?;
        let mut at = 0;
        for (p, n) in prepared.into_iter().zip(counts) {
            let report = engine.finish(p, &outputs[at..at + n]);
            at += n;
            push_rows(&report, &mut rows);
        }
    }
    Ok(rows)
}

/// [`Model::predict`] split into contiguous parts on `threads` threads. Each input's masks
/// come from its own seed, so the result is the same for any split.
pub fn predict_parallel(
    model: &Model,
    inputs: &[&ModelInput],
    seeds: &[u64],
    passes: usize,
    threads: usize,
) -> Result<Vec<PassOutputs>, BacktestError> {
    let part = inputs.len().div_ceil(threads.max(1)).max(1);
    if threads <= 1 || inputs.len() <= part {
        return Ok(model.predict(inputs, seeds, passes)?);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .chunks(part)
            .zip(seeds.chunks(part))
            .map(|(i, s)| scope.spawn(move || model.predict(i, s, passes)))
            .collect();
        let mut out = Vec::with_capacity(inputs.len());
        for h in handles {
            let part = h.join().map_err(|_| BacktestError::InferenceThread)??;
            out.extend(part);
        }
        Ok(out)
    })
}

fn push_rows(report: &TickReport, rows: &mut Vec<Row>) {
    let series = report.series.first();
    let forecast = series.and_then(|s| s.forecast.as_ref());
    let weights = series.and_then(|s| s.weights);
    let experts = series.and_then(|s| s.expert_forecasts);
    for (h, horizon) in HORIZON_SECONDS.iter().enumerate() {
        let (mean, lower, upper, u1) =
            forecast.map_or((f64::NAN, f64::NAN, f64::NAN, f64::NAN), |f| {
                let i = f.horizons[h];
                (i.mean, i.lower, i.upper, i.components[0])
            });
        rows.push(Row {
            origin: report.origin,
            horizon: *horizon,
            mean,
            lower,
            upper,
            weights: std::array::from_fn(|i| weights.map_or(f64::NAN, |w| w[i][h])),
            experts: std::array::from_fn(|i| experts.and_then(|f| f[i][h]).unwrap_or(f64::NAN)),
            u1,
        });
    }
}

/// An SVG of the last `days` days: observed targets and the 5-minute-ahead band.
pub fn plot(series: &Series, rows: &[Row], days: i64) -> String {
    let targets = targets(series);
    let end = targets.keys().next_back().copied().unwrap_or(0);
    let start = end - days * 86_400;
    let band: Vec<&Row> = rows
        .iter()
        .filter(|r| r.horizon == 300 && r.origin >= start && r.mean.is_finite())
        .collect();
    let obs: Vec<(i64, f64)> = targets.range(start..).map(|(k, v)| (*k, *v)).collect();
    let max = obs
        .iter()
        .map(|o| o.1)
        .chain(band.iter().map(|r| r.upper))
        .fold(1e-9, f64::max);
    let (w, h) = (1200.0, 360.0);
    let x = |t: i64| 40.0 + (w - 50.0) * (t - start) as f64 / (end - start).max(1) as f64;
    let y = |v: f64| h - 20.0 - (h - 40.0) * v / max;
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let mut d = String::new();
    for (i, r) in band.iter().enumerate() {
        let _ = write!(
            d,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(r.origin),
            y(r.upper)
        );
    }
    for r in band.iter().rev() {
        let _ = write!(d, "L{:.1},{:.1} ", x(r.origin), y(r.lower));
    }
    let _ = write!(
        svg,
        "<path d=\"{d}Z\" fill=\"#f4a261\" fill-opacity=\"0.4\"/>"
    );
    let mut o = String::new();
    for (i, (t, v)) in obs.iter().enumerate() {
        let _ = write!(
            o,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(*t),
            y(*v)
        );
    }
    let _ = write!(
        svg,
        "<path d=\"{o}\" fill=\"none\" stroke=\"#264653\" stroke-width=\"1\"/>"
    );
    let _ = write!(svg, "<text x=\"45\" y=\"15\" font-size=\"12\">observed (line) and 95% band 5 min ahead (shaded); max {max:.3} req/s</text></svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two days of a 5-minute series with a daily cycle, noise and a hole.
    fn synthetic() -> Series {
        let mut rows = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..576_i64 {
            if (300..306).contains(&i) {
                continue; // a 30-minute hole
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x % 1000) as f64 / 1000.0;
            let day = (i as f64 / 288.0 * std::f64::consts::TAU).sin();
            rows.push((
                1_700_000_100 + i * 300,
                300.0 * (40.0 + 25.0 * day + 8.0 * noise),
            ));
        }
        Series { rows, step: 300 }
    }

    fn settings(seed: u64, threads: usize) -> Settings {
        settings_with(seed, threads, BandMode::default())
    }

    fn settings_with(seed: u64, threads: usize, band: BandMode) -> Settings {
        Settings {
            seed,
            mc_passes: 8,
            band,
            experts: crate::forecast::combine::ExpertSet::ALL,
            threads,
        }
    }

    fn bits(rows: &[Row]) -> Vec<(i64, i64, u64, u64, u64)> {
        rows.iter()
            .map(|r| {
                (
                    r.origin,
                    r.horizon,
                    r.mean.to_bits(),
                    r.lower.to_bits(),
                    r.upper.to_bits(),
                )
            })
            .collect()
    }

    fn model() -> Arc<Model> {
        Arc::new(Model::embedded().expect("embedded model"))
    }

    /// Same input and seed give the same bits, whatever the thread count; with the LSTM's
    /// own band (u1 from the Monte-Carlo masks), another seed gives other masks and so
    /// other bands. (The shipped band's width is u3 alone, which no mask touches.)
    #[test]
    fn backtests_are_deterministic() {
        let series = synthetic();
        let a = run(&series, model(), settings(5, 1)).expect("run");
        let b = run(&series, model(), settings(5, 2)).expect("run");
        assert!(
            a.iter().filter(|r| r.mean.is_finite()).count() > 300,
            "mostly ready"
        );
        assert_eq!(bits(&a), bits(&b));
        let lstm = |seed| {
            run(
                &series,
                model(),
                settings_with(seed, 2, BandMode::Calibrated),
            )
        };
        let (c, d) = (lstm(5).expect("run"), lstm(6).expect("run"));
        assert_ne!(bits(&c), bits(&d), "the seed reaches the masks");
    }

    /// Causality: cutting the input after time T leaves every forecast with origin <= T
    /// bit-for-bit unchanged (history, calibration and masks only see the past).
    #[test]
    fn truncating_the_input_changes_no_earlier_forecast() {
        let full = synthetic();
        let all = run(&full, model(), settings(3, 2)).expect("run");
        for cut in [1_700_000_100 + 400 * 300, 1_700_000_100 + 301 * 300 + 120] {
            let truncated = Series {
                rows: full
                    .rows
                    .iter()
                    .copied()
                    .filter(|&(t, _)| t + 300 <= cut)
                    .collect(),
                step: full.step,
            };
            let part = run(&truncated, model(), settings(3, 2)).expect("run");
            // A cut inside a hole ends the truncated file's origins before the cut.
            let until = part.last().map_or(cut, |r| r.origin.min(cut));
            let upto = |rows: &[Row]| {
                bits(
                    &rows
                        .iter()
                        .copied()
                        .filter(|r| r.origin <= until)
                        .collect::<Vec<_>>(),
                )
            };
            let (a, b) = (upto(&all), upto(&part));
            assert!(a.len() > 300, "cut at {cut}: {} rows compared", a.len());
            assert_eq!(a.len(), b.len(), "cut at {cut}");
            let first_difference = a.iter().zip(&b).position(|(x, y)| x != y);
            assert_eq!(first_difference, None, "cut at {cut}");
        }
    }

    #[test]
    fn csv_errors_name_the_line() {
        for (text, want) in [
            ("ts,value\n1,2\n", "line 1"),
            ("timestamp,value\n60,1\n0,1\n", "line 3: unsorted"),
            ("timestamp,value\n60,1\n60,1\n", "line 3: duplicate"),
            ("timestamp,value\n60,x\n", "line 2"),
            ("timestamp,value\n60,-1\n", "line 2"),
            ("timestamp,value\n", "no data rows"),
            ("timestamp,value\n0,1\n7,1\n", "step 7"),
        ] {
            let err = parse_series(text, None, i64::MAX)
                .expect_err(text)
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let s =
            parse_series("timestamp,value\n0,1\n120,2\n180,3\n", None, i64::MAX).expect("valid");
        assert_eq!(s.step, 60);
    }

    /// Far-future and negative timestamps are refused with their line, and so are gaps
    /// that would make the replay grow with the span instead of the rows.
    #[test]
    fn timestamps_are_checked_and_the_span_is_bounded_by_the_rows() {
        let latest = 1_800_000_000;
        for (text, want) in [
            (
                "timestamp,value\n-60,1\n0,1\n",
                "line 2: timestamp -60 is negative",
            ),
            (
                "timestamp,value\n0,1\n60,1\n9000000000000,1\n",
                "line 4: timestamp 9000000000000 is 8998200000300 s in the future",
            ),
            (
                "timestamp,value\n0,1\n300,1\n600,1\n1700000000,1\n",
                "line 5: a gap of 5666664 steps",
            ),
        ] {
            let err = parse_series(text, None, latest)
                .expect_err(text)
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Two weeks of gap, plus twice the rows, are allowed.
        let ok = format!(
            "timestamp,value\n0,1\n300,1\n{},1\n",
            300 + GAP_ALLOWANCE_SECONDS
        );
        assert!(parse_series(&ok, None, latest).is_ok());
        let at_the_clock = format!("timestamp,value\n0,1\n{latest},1\n");
        assert!(matches!(
            parse_series(&at_the_clock, Some(300), latest),
            Err(CsvError::Span { line: 3, .. })
        ));
    }

    #[test]
    fn targets_follow_the_scorer() {
        let s = Series {
            rows: vec![(0, 60.0), (60, 120.0), (300, 30.0)],
            step: 60,
        };
        let t = targets(&s);
        assert_eq!(t.get(&0), None, "2 of 5 minutes is fewer than half");
        let s = Series {
            rows: (0..3).map(|i| (i * 60, 60.0 * (i + 1) as f64)).collect(),
            step: 60,
        };
        assert_eq!(targets(&s).get(&0), Some(&3.0));
    }
}
