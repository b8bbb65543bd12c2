//! Recorded series and forecast rows, as files: the strict `timestamp,value` CSV (every
//! error names its line; timestamps checked, memory bounded by the rows), the rows in the
//! scorer's format, the targets and `shared/eval/score.py`'s metrics. Shared by the
//! backtest, the in-process baselines, the scaling what-if and the report, none of which
//! needs the engine.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::forecast::combine::{EXPERTS, EXPERT_COUNT};
use crate::forecast::features::HORIZON_STEPS;
use crate::forecast::history::{FUTURE_SKEW_SECONDS, MINUTE_SECONDS, STEP_SECONDS};

/// Horizons of the forecast file, in seconds.
pub const HORIZON_SECONDS: [i64; HORIZON_STEPS] = [300, 600, 900];

/// Why a series could not be read or rows not written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
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
pub fn read_series(path: &Path, step: Option<i64>) -> Result<Series, DataError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
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
        .map_err(|error| DataError::Data { path: name, error })
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
    /// Each expert's own forecast (req/s) at this horizon ([`EXPERTS`] order), whether or
    /// not it takes part; NaN where it had none or the band is the LSTM's alone.
    pub experts: [f64; EXPERT_COUNT],
    /// The network's Monte-Carlo spread u1 at this horizon (req/s at its mean); NaN when
    /// not known (a baseline, or a series not ready).
    pub u1: f64,
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
/// expert's weight, `w_<expert>`, u1, and each expert's own forecast, `f_<expert>`, empty
/// when the band is not the combination's.
pub fn write_rows(path: &Path, rows: &[Row]) -> Result<(), DataError> {
    let mut out = String::with_capacity(rows.len() * 96);
    out.push_str("origin,horizon_seconds,mean,lower,upper");
    for name in EXPERTS {
        let _ = write!(out, ",w_{name}");
    }
    out.push_str(",u1");
    for name in EXPERTS {
        let _ = write!(out, ",f_{name}");
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
        if r.u1.is_finite() {
            let _ = write!(out, ",{:.6}", r.u1);
        } else {
            out.push(',');
        }
        for f in r.experts {
            if f.is_finite() {
                let _ = write!(out, ",{f:.6}");
            } else {
                out.push(',');
            }
        }
        out.push('\n');
    }
    let io = |source| DataError::Io {
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
