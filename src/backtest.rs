//! `flowcast backtest`: replays a recorded series through the live engine on a simulated
//! clock and writes forecasts in the scorer's format (shared/eval/README.md).
//!
//! Owns CSV reading (strict: header, order, numbers — errors name the line), the simulated
//! clock (a row is fed when its step has ended), batching of several origins into one
//! model run, the scorer's metrics, and the SVG plot. It reuses [`Engine`] unchanged, so
//! what is measured here is what runs live. Causality: an origin's forecast reads only
//! rows that ended by it, and its masks are seeded by the seed and the origin alone.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::band::BandMode;
use crate::band::PassOutputs;
use crate::cli::{BacktestArgs, Failure};
use crate::combine::{EXPERTS, EXPERT_COUNT};
use crate::config::{ModelSource, MC_PASSES_RANGE};
use crate::engine::{Engine, EngineSettings, Prepared};
use crate::features::ModelInput;
use crate::features::HORIZON_STEPS;
use crate::history::{SeriesLimits, FUTURE_SKEW_SECONDS, MINUTE_SECONDS, STEP_SECONDS};
use crate::model::{Model, ModelError};
use crate::shared::TickReport;

/// Horizons of the forecast file, in seconds.
pub const HORIZON_SECONDS: [i64; HORIZON_STEPS] = [300, 600, 900];
/// Origins prepared before one model run.
const ORIGINS_PER_RUN: usize = 64;

/// Errors of a backtest.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The data file is malformed; the error names the line.
    #[error("{path}: {error}")]
    Data {
        /// File.
        path: String,
        /// What is wrong, with the line number (in the message, so not a source: printed
        /// once).
        error: CsvError,
    },
    /// I/O on the input or output.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Error.
        source: std::io::Error,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A thread that shared the inference panicked.
    #[error("an inference thread panicked")]
    InferenceThread,
}

/// A recorded series: rows of (start timestamp, count per step) and the step.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// (start unix seconds, count for the whole step), sorted, unique.
    pub rows: Vec<(i64, f64)>,
    /// Step length in seconds (divides 300).
    pub step: i64,
}

/// Reads a `timestamp,value` CSV. The step comes from `step`, else the file name
/// (`_1min` / `_5min`), else the smallest difference between timestamps.
pub fn read_series(path: &Path, step: Option<i64>) -> Result<Series, BacktestError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| BacktestError::Io {
        path: name.clone(),
        source,
    })?;
    let name_step = path.file_name().and_then(|f| f.to_str()).and_then(|f| {
        ["_1min", "_5min"]
            .iter()
            .zip([60, 300])
            .find(|(tag, _)| f.contains(**tag))
            .map(|(_, s)| s)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    parse_series(&text, step.or(name_step), now + FUTURE_SKEW_SECONDS)
        .map_err(|error| BacktestError::Data { path: name, error })
}

/// Why a `timestamp,value` CSV was refused; every row error names its 1-based line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvError {
    /// The first line is not the header.
    #[error("line 1: header must be exactly 'timestamp,value', got {0:?}")]
    Header(String),
    /// A row without a comma.
    #[error("line {0}: expected 'timestamp,value'")]
    Fields(usize),
    /// A timestamp that is not an integer.
    #[error("line {line}: timestamp {text:?} is not an integer")]
    Timestamp {
        /// Line number.
        line: usize,
        /// The cell.
        text: String,
    },
    /// A value that is not a number.
    #[error("line {line}: value {text:?} is not a number")]
    Value {
        /// Line number.
        line: usize,
        /// The cell.
        text: String,
    },
    /// A value that is negative, NaN or infinite.
    #[error("line {line}: value {value} must be a finite count >= 0")]
    Count {
        /// Line number.
        line: usize,
        /// The value.
        value: f64,
    },
    /// A timestamp not after the previous one.
    #[error("line {line}: {kind} timestamp {ts} after {prev}")]
    Order {
        /// Line number.
        line: usize,
        /// `duplicate` or `unsorted`.
        kind: &'static str,
        /// This row's timestamp.
        ts: i64,
        /// The previous row's.
        prev: i64,
    },
    /// Only a header.
    #[error("no data rows")]
    Empty,
    /// A step that is not whole minutes dividing 300 s.
    #[error("step {0} s must be a whole number of minutes that divides 300 s")]
    Step(i64),
    /// A timestamp before 1970 or later than the clock allows.
    #[error("line {line}: timestamp {ts} is {why}")]
    Time {
        /// Line number.
        line: usize,
        /// The timestamp.
        ts: i64,
        /// `negative`, or how far past the clock it is.
        why: String,
    },
    /// Gaps so long that the rows cover less than half of their span: the replay (and its
    /// memory) would grow with the span, not with the rows.
    #[error(
        "line {line}: a gap of {gap_steps} steps before this row; {rows} rows span {span_steps} \
         steps (at most 2 × rows + {GAP_ALLOWANCE_SECONDS} s of gaps): split the file at its gaps"
    )]
    Span {
        /// The line after the longest gap.
        line: usize,
        /// That gap, in steps.
        gap_steps: i64,
        /// Data rows.
        rows: usize,
        /// Steps from the first row to the last.
        span_steps: i64,
    },
}

/// Gaps a file may hold beyond its rows' own span: two weeks.
pub const GAP_ALLOWANCE_SECONDS: i64 = 14 * 86_400;

/// Parses CSV text (see [`read_series`]); the error names the line.
/// Timestamps after `latest` (unix seconds) are refused.
pub fn parse_series(text: &str, step: Option<i64>, latest: i64) -> Result<Series, CsvError> {
    let mut lines = text.lines().enumerate();
    let header = lines
        .next()
        .map(|(_, l)| l.trim_start_matches('\u{feff}').trim());
    if header != Some("timestamp,value") {
        return Err(CsvError::Header(header.unwrap_or("").to_string()));
    }
    let mut rows: Vec<(i64, f64)> = Vec::new();
    let mut lines_of: Vec<usize> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (ts, value) = line.split_once(',').ok_or(CsvError::Fields(n))?;
        let ts: i64 = ts.trim().parse().map_err(|_| CsvError::Timestamp {
            line: n,
            text: ts.trim().to_string(),
        })?;
        let value: f64 = value.trim().parse().map_err(|_| CsvError::Value {
            line: n,
            text: value.trim().to_string(),
        })?;
        if !value.is_finite() || value < 0.0 {
            return Err(CsvError::Count { line: n, value });
        }
        if ts < 0 || ts > latest {
            let why = if ts < 0 {
                "negative".to_string()
            } else {
                format!(
                    "{} s in the future",
                    ts.saturating_sub(latest - FUTURE_SKEW_SECONDS)
                )
            };
            return Err(CsvError::Time { line: n, ts, why });
        }
        if let Some(&(prev, _)) = rows.last() {
            if ts <= prev {
                let kind = if ts == prev { "duplicate" } else { "unsorted" };
                return Err(CsvError::Order {
                    line: n,
                    kind,
                    ts,
                    prev,
                });
            }
        }
        rows.push((ts, value));
        lines_of.push(n);
    }
    if rows.is_empty() {
        return Err(CsvError::Empty);
    }
    let step = match step {
        Some(s) => s,
        None => rows
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .min()
            .unwrap_or(STEP_SECONDS),
    };
    if step <= 0 || STEP_SECONDS % step != 0 || step % MINUTE_SECONDS != 0 {
        return Err(CsvError::Step(step));
    }
    check_span(&rows, &lines_of, step)?;
    Ok(Series { rows, step })
}

/// Refuses rows whose gaps make the span more than twice the rows plus
/// [`GAP_ALLOWANCE_SECONDS`], naming the line after the longest gap.
fn check_span(rows: &[(i64, f64)], lines_of: &[usize], step: i64) -> Result<(), CsvError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let span_steps = (last.0 - first.0) / step;
    if span_steps <= 2 * rows.len() as i64 + GAP_ALLOWANCE_SECONDS / step {
        return Ok(());
    }
    let (at, gap) = rows
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, w[1].0 - w[0].0))
        .max_by_key(|&(_, gap)| gap)
        .unwrap_or((0, 0));
    Err(CsvError::Span {
        line: lines_of[at],
        gap_steps: gap / step,
        rows: rows.len(),
        span_steps,
    })
}

/// The weights of a row that no combination made (a baseline's, or the LSTM's alone).
pub const NO_WEIGHTS: [f64; EXPERT_COUNT] = [f64::NAN; EXPERT_COUNT];

/// One forecast row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Origin (unix seconds, a multiple of 300).
    pub origin: i64,
    /// 300, 600 or 900.
    pub horizon: i64,
    /// Mean, lower, upper (req/s); NaN when the series was not ready.
    pub mean: f64,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// Each expert's weight in the combination at this horizon ([`EXPERTS`] order); NaN
    /// when the band is the LSTM's alone or the series was not ready.
    pub weights: [f64; EXPERT_COUNT],
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
    pub experts: crate::combine::ExpertSet,
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
fn predict_parallel(
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
    for (h, horizon) in HORIZON_SECONDS.iter().enumerate() {
        let (mean, lower, upper) = forecast.map_or((f64::NAN, f64::NAN, f64::NAN), |f| {
            let i = f.horizons[h];
            (i.mean, i.lower, i.upper)
        });
        rows.push(Row {
            origin: report.origin,
            horizon: *horizon,
            mean,
            lower,
            upper,
            weights: std::array::from_fn(|i| weights.map_or(f64::NAN, |w| w[i][h])),
        });
    }
}

/// The rows exactly as [`write_rows`] writes them (six decimals), so that what is computed
/// from them here (the scaling what-if) is what the scripts compute from the file.
pub fn as_written(rows: &[Row]) -> Vec<Row> {
    let round = |v: f64| -> f64 { format!("{v:.6}").parse().unwrap_or(f64::NAN) };
    rows.iter()
        .map(|r| {
            if r.mean.is_finite() {
                Row {
                    mean: round(r.mean),
                    lower: round(r.lower),
                    upper: round(r.upper),
                    ..*r
                }
            } else {
                Row {
                    mean: f64::NAN,
                    lower: f64::NAN,
                    upper: f64::NAN,
                    ..*r
                }
            }
        })
        .collect()
}

/// Writes rows in the scorer's CSV format, then (columns the scorer ignores) each
/// expert's weight, `w_<expert>`, empty when the band is not the combination's.
pub fn write_rows(path: &Path, rows: &[Row]) -> Result<(), BacktestError> {
    let mut out = String::with_capacity(rows.len() * 96);
    out.push_str("origin,horizon_seconds,mean,lower,upper");
    for name in EXPERTS {
        let _ = write!(out, ",w_{name}");
    }
    out.push('\n');
    for r in rows {
        if r.mean.is_finite() {
            let _ = write!(
                out,
                "{},{},{:.6},{:.6},{:.6}",
                r.origin, r.horizon, r.mean, r.lower, r.upper
            );
        } else {
            let _ = write!(out, "{},{},nan,nan,nan", r.origin, r.horizon);
        }
        for w in r.weights {
            if w.is_finite() {
                let _ = write!(out, ",{w:.4}");
            } else {
                out.push(',');
            }
        }
        out.push('\n');
    }
    let io = |source| BacktestError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(out.as_bytes()).map_err(io)
}

/// The scorer's targets: for each 300-s window start, the peak rate of the rows that start
/// in it, when at least half of its expected rows are present.
pub fn targets(series: &Series) -> std::collections::BTreeMap<i64, f64> {
    let expected = STEP_SECONDS / series.step;
    let mut acc: std::collections::BTreeMap<i64, (f64, i64)> = std::collections::BTreeMap::new();
    for &(ts, value) in &series.rows {
        let e = acc
            .entry(ts.div_euclid(STEP_SECONDS) * STEP_SECONDS)
            .or_insert((f64::MIN, 0));
        e.0 = e.0.max(value / series.step as f64);
        e.1 += 1;
    }
    acc.into_iter()
        .filter(|(_, (_, n))| 2 * n >= expected)
        .map(|(w, (v, _))| (w, v))
        .collect()
}

/// The scorer's metrics over the scorable targets after the warm-up (all horizons pooled).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// Scored targets.
    pub n: usize,
    /// Targets without a finite forecast.
    pub missing: usize,
    /// Share inside [lower, upper].
    pub coverage: f64,
    /// Share at or below upper.
    pub upper_cov: f64,
    /// Mean |mean − y| / mean y.
    pub nmae: f64,
    /// Mean (upper − lower) / mean y.
    pub rel_width: f64,
    /// Mean Winkler score (α = 0.05) / mean y.
    pub int_score: f64,
}

/// Scores `rows` against the data like `shared/eval/score.py` (horizons pooled).
pub fn score(series: &Series, rows: &[Row], warmup_seconds: i64) -> Scores {
    score_horizons(series, rows, warmup_seconds, &HORIZON_SECONDS)
}

/// score.py's rows: one per horizon (300, 600, 900), then `all` (pooled).
pub fn score_table(series: &Series, rows: &[Row], warmup_seconds: i64) -> [Scores; 4] {
    let mut table = [Scores::default(); 4];
    for (h, horizon) in HORIZON_SECONDS.iter().enumerate() {
        table[h] = score_horizons(series, rows, warmup_seconds, std::slice::from_ref(horizon));
    }
    table[3] = score(series, rows, warmup_seconds);
    table
}

/// Scores the rows of these horizons only, as score.py scores one horizon's row (its
/// mean target `ybar` is over those horizons' scorable targets).
pub fn score_horizons(
    series: &Series,
    rows: &[Row],
    warmup_seconds: i64,
    horizons: &[i64],
) -> Scores {
    let targets = targets(series);
    let first = series.rows.first().map_or(0, |r| r.0);
    let by_key: std::collections::HashMap<(i64, i64), &Row> =
        rows.iter().map(|r| ((r.origin, r.horizon), r)).collect();
    let mut s = Scores::default();
    let (mut inside, mut under, mut err, mut width, mut wink, mut ysum, mut present) =
        (0usize, 0usize, 0.0, 0.0, 0.0, 0.0, 0usize);
    for (&w, &y) in &targets {
        for &h in horizons {
            let origin = w - h + STEP_SECONDS;
            if origin < first + warmup_seconds {
                continue;
            }
            s.n += 1;
            ysum += y;
            match by_key
                .get(&(origin, h))
                .filter(|r| r.mean.is_finite() && r.lower.is_finite() && r.upper.is_finite())
            {
                None => s.missing += 1,
                Some(r) => {
                    present += 1;
                    let tol = 1e-6 * y.abs();
                    inside += usize::from(y >= r.lower - tol && y <= r.upper + tol);
                    under += usize::from(y <= r.upper + tol);
                    err += (r.mean - y).abs();
                    width += r.upper - r.lower;
                    wink += (r.upper - r.lower)
                        + 40.0 * (r.lower - y).max(0.0)
                        + 40.0 * (y - r.upper).max(0.0);
                }
            }
        }
    }
    if s.n == 0 {
        return s;
    }
    let ybar = ysum / s.n as f64;
    s.coverage = inside as f64 / s.n as f64;
    s.upper_cov = under as f64 / s.n as f64;
    let p = present.max(1) as f64;
    s.nmae = err / p / ybar;
    s.rel_width = width / p / ybar;
    s.int_score = wink / p / ybar;
    s
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

/// `flowcast backtest`: reads the series, replays it, writes the forecasts (and the plot),
/// and prints the scores. Bad input (arguments, CSV, model) is a usage error.
pub fn command(args: &BacktestArgs) -> Result<(), Failure> {
    if !MC_PASSES_RANGE.contains(&args.mc_passes) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--mc-passes must be between 1 and 1000"
        )));
    }
    let deployment = deployment(args)?;
    let series = read_series(&args.data, args.step).map_err(Failure::usage)?;
    let source = match (&args.model, &args.model_card) {
        (Some(model), Some(card)) => ModelSource::Files {
            model: model.clone(),
            card: card.clone(),
        },
        _ => ModelSource::Embedded,
    };
    let model = Arc::new(crate::sidecar::load_model(&source).map_err(Failure::usage)?);
    let started = std::time::Instant::now();
    let settings = Settings {
        seed: args.seed,
        mc_passes: args.mc_passes,
        band: args.band,
        experts: args.experts,
        threads: args.threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    };
    let rows = run(&series, Arc::clone(&model), settings).map_err(Failure::runtime)?;
    write_rows(&args.out, &rows).map_err(Failure::runtime)?;
    let s = score(&series, &rows, args.warmup_seconds);
    println!(
        "{} origins in {:.1}s; scored {} targets ({} missing): coverage {:.3}, upper_cov {:.3}, nMAE {:.3}, rel_width {:.3}, int_score {:.3}",
        rows.len() / 3,
        started.elapsed().as_secs_f64(),
        s.n,
        s.missing,
        s.coverage,
        s.upper_cov,
        s.nmae,
        s.rel_width,
        s.int_score
    );
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&series, &rows, 3)).map_err(|e| {
            Failure::runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
    }
    // From the rows as written, so that scaling.py on the file gives these numbers.
    let written = as_written(&rows);
    let what_if = match deployment {
        Some(d) => {
            let w =
                crate::scaling::what_if(&series, &written, d, args.risk).map_err(Failure::usage)?;
            print!("{}", crate::scaling::to_text(&w));
            Some(w)
        }
        None => None,
    };
    if let Some(path) = &args.report {
        let started = std::time::Instant::now();
        let baselines = crate::baselines::Baseline::ALL
            .iter()
            .map(|&b| {
                let rows = crate::baselines::run(b, &series, args.warmup_seconds);
                (b, score_table(&series, &rows, args.warmup_seconds))
            })
            .collect();
        let html = crate::report::render(&crate::report::ReportInput {
            data: args.data.display().to_string(),
            series: &series,
            rows: &written,
            scores: score_table(&series, &written, args.warmup_seconds),
            baselines,
            what_if: what_if.as_ref(),
            warmup_seconds: args.warmup_seconds,
            settings: report_settings(args, &model, settings),
        });
        std::fs::write(path, &html).map_err(|e| {
            Failure::runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
        println!(
            "report: {} ({} bytes, baselines and HTML in {:.1}s)",
            path.display(),
            html.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The settings the report lists: what produced these forecasts.
fn report_settings(args: &BacktestArgs, model: &Model, s: Settings) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "flowcast".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("data".to_string(), args.data.display().to_string()),
        (
            "model".to_string(),
            match &args.model {
                Some(m) => m.display().to_string(),
                None => "embedded (models/flowcast.onnx)".to_string(),
            },
        ),
        (
            "model fingerprint".to_string(),
            format!("{:08x}", model.fingerprint()),
        ),
        ("seed".to_string(), s.seed.to_string()),
        ("Monte-Carlo passes".to_string(), s.mc_passes.to_string()),
        ("band".to_string(), format!("{:?}", s.band).to_lowercase()),
        (
            "warm-up (not scored)".to_string(),
            format!("{} s", args.warmup_seconds),
        ),
    ];
    if let (Some(c), Some(d)) = (args.replica_capacity, args.startup) {
        out.push((
            "what-if".to_string(),
            format!(
                "capacity {c} req/s per replica, start-up {d}, target utilisation {}, replicas {}..{}, risk target {}",
                args.target_utilization,
                args.min_replicas,
                args.max_replicas.map_or("unbounded".to_string(), |m| m.to_string()),
                args.risk
            ),
        ));
    }
    out
}

/// The deployment of the scaling what-if, when `--replica-capacity` and `--startup` are
/// given; checked before anything runs.
fn deployment(args: &BacktestArgs) -> Result<Option<crate::scaling::Deployment>, Failure> {
    let (Some(capacity), Some(startup)) = (args.replica_capacity, args.startup) else {
        return Ok(None);
    };
    let startup: std::time::Duration = startup.into();
    if startup.subsec_nanos() != 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--startup must be 0s, 5m or 10m, got {}",
            humantime::format_duration(startup)
        )));
    }
    if !(args.risk >= 0.0 && args.risk < 1.0) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--risk must be a share in [0, 1), got {}",
            args.risk
        )));
    }
    let d = crate::scaling::Deployment {
        utilization: args.target_utilization,
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        warmup_seconds: args.warmup_seconds,
        ..crate::scaling::Deployment::new(capacity, startup.as_secs() as i64)
    };
    d.check().map_err(Failure::usage)?;
    Ok(Some(d))
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
            experts: crate::combine::ExpertSet::ALL,
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
