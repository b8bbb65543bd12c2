//! `flowcast backtest --prometheus URL --query PROMQL --range 7d [--step 1m]`: one recorded
//! series read from Prometheus's `/api/v1/query_range`, in as many requests as its
//! 11,000-points-per-series limit needs, checked and turned into the backtest's
//! [`Series`] (the same rows a `--data` CSV gives).
//!
//! Owns the request plan (chunks), the "exactly one series" rule, and the checks on what came
//! back (empty, a hole longer than a day, fewer than 3 days). The query gives req/s, as the
//! sidecar's `source: prometheus` query does; the rate at evaluation time t covers the step
//! that ends at t, so it becomes the row (t − step, rate × step).

use std::collections::BTreeMap;

use crate::evidence::dataset::Series;
use crate::ingest::promapi::{Labels, PromClient, PromError};

/// Prometheus refuses a range query of more than 11,000 points per series.
pub const MAX_POINTS_PER_QUERY: i64 = 11_000;
/// The shortest data a backtest takes: its scores start after a 3-day warm-up.
pub const MIN_SPAN_SECONDS: i64 = 3 * 86_400;
/// The longest hole accepted inside the range.
pub const MAX_HOLE_SECONDS: i64 = 86_400;

/// Why a range could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// The API call failed.
    #[error("Prometheus: {0}")]
    Prom(#[from] PromError),
    /// The step does not divide 5 minutes.
    #[error("--step must divide 5 minutes (15s, 30s, 1m, 5m, …), got {0} s")]
    Step(i64),
    /// The range is shorter than the warm-up.
    #[error(
        "--range must be at least 3 days (the backtest scores after a 3-day warm-up), got {0}"
    )]
    RangeTooShort(String),
    /// Nothing came back.
    #[error("the query returned no data from {start} to {end} (UTC); check it in Prometheus's graph page")]
    Empty {
        /// Start of the range (UTC).
        start: String,
        /// End of the range (UTC).
        end: String,
    },
    /// More than one series came back.
    #[error("the query returned {count} series; it must return one (aggregate it, e.g. sum(...)): {names}")]
    Several {
        /// How many.
        count: usize,
        /// The first few, as label sets.
        names: String,
    },
    /// A hole longer than a day.
    #[error("the series has no data for {hours:.1} h, from {from} to {to} (UTC), longer than a day; pick a --range or --end without it")]
    Hole {
        /// Length of the hole (hours).
        hours: f64,
        /// Last step before it (UTC).
        from: String,
        /// First step after it (UTC).
        to: String,
    },
    /// Less than 3 days of data in the range.
    #[error("the series has {days:.1} days of data ({first} to {last} UTC); the backtest needs at least 3")]
    TooLittle {
        /// Days of data.
        days: f64,
        /// First step (UTC).
        first: String,
        /// Last step (UTC).
        last: String,
    },
}

/// The requests of a range: `[start, end]` cut so that none holds more than
/// [`MAX_POINTS_PER_QUERY`] evaluations; each starts one step after the previous ends.
pub fn chunks(start: i64, end: i64, step: i64) -> Vec<(i64, i64)> {
    let span = step * (MAX_POINTS_PER_QUERY - 1);
    let mut out = Vec::new();
    let mut s = start;
    while s <= end {
        let e = (s + span).min(end);
        out.push((s, e));
        s = e + step;
    }
    out
}

/// A label set as PromQL writes it: `name{a="b", …}`.
fn selector_text(labels: &Labels) -> String {
    let name = labels.get("__name__").cloned().unwrap_or_default();
    let rest: Vec<String> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// What a read gave: the series and how it was read.
#[derive(Debug, Clone)]
pub struct Read {
    /// The series, as a `--data` CSV of it would give.
    pub series: Series,
    /// Range requests made.
    pub requests: usize,
}

/// Reads `query` (req/s) over `[start, end]` every `step` seconds.
pub async fn read(
    client: &PromClient,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
) -> Result<Read, RangeError> {
    if step <= 0 || 300 % step != 0 {
        return Err(RangeError::Step(step));
    }
    let plan = chunks(start, end, step);
    let mut by_labels: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    for &(s, e) in &plan {
        for (labels, points) in client.query_range_labelled(query, s, e, step).await? {
            by_labels.entry(labels).or_default().extend(points);
        }
    }
    by_labels.retain(|_, p| !p.is_empty());
    if by_labels.len() > 1 {
        let mut names: Vec<String> = by_labels.keys().take(5).map(selector_text).collect();
        if by_labels.len() > 5 {
            names.push(format!("and {} more", by_labels.len() - 5));
        }
        return Err(RangeError::Several {
            count: by_labels.len(),
            names: names.join("; "),
        });
    }
    let utc = crate::serve::chart::utc;
    let Some((_, mut points)) = by_labels.pop_first() else {
        return Err(RangeError::Empty {
            start: utc(start),
            end: utc(end),
        });
    };
    points.sort_by_key(|p| p.0);
    points.dedup_by_key(|p| p.0);
    let rows: Vec<(i64, f64)> = points
        .iter()
        .map(|&(t, rate)| (t - step, rate * step as f64))
        .collect();
    for pair in rows.windows(2) {
        let gap = pair[1].0 - pair[0].0 - step;
        if gap > MAX_HOLE_SECONDS {
            return Err(RangeError::Hole {
                hours: gap as f64 / 3600.0,
                from: utc(pair[0].0),
                to: utc(pair[1].0),
            });
        }
    }
    let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
    if last + step - first < MIN_SPAN_SECONDS {
        return Err(RangeError::TooLittle {
            days: (last + step - first) as f64 / 86_400.0,
            first: utc(first),
            last: utc(last),
        });
    }
    Ok(Read {
        series: Series { rows, step },
        requests: plan.len(),
    })
}

/// The series as the `timestamp,value` CSV `--data` reads (shortest round-trip floats, so
/// the CSV gives back exactly these rows).
pub fn to_csv(series: &Series) -> String {
    let mut out = String::with_capacity(24 * series.rows.len() + 16);
    out.push_str("timestamp,value\n");
    for (t, v) in &series.rows {
        out.push_str(&format!("{t},{v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hold_at_most_11000_points_and_cover_the_range_once() {
        let (start, end, step) = (1_000_000, 1_000_000 + 8 * 86_400, 60);
        let plan = chunks(start, end, step);
        assert_eq!(plan.len(), 2, "8 days of minutes are 11,521 points");
        let mut covered = Vec::new();
        for &(s, e) in &plan {
            let n = (e - s) / step + 1;
            assert!(n <= MAX_POINTS_PER_QUERY, "{n}");
            covered.extend((s..=e).step_by(step as usize));
        }
        let all: Vec<i64> = (start..=end).step_by(step as usize).collect();
        assert_eq!(covered, all, "every evaluation once, in order");
        assert_eq!(chunks(0, 600, 60), vec![(0, 600)]);
        assert_eq!(chunks(0, 0, 60), vec![(0, 0)]);
    }

    #[test]
    fn label_sets_read_as_selectors() {
        let labels: Labels = [("__name__", "up"), ("job", "api"), ("pod", "a\"b")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(selector_text(&labels), r#"up{job="api", pod="a\"b"}"#);
        assert_eq!(selector_text(&Labels::new()), "{}");
    }

    #[test]
    fn the_csv_gives_back_the_same_rows() {
        let series = Series {
            rows: vec![
                (1_700_000_000, 0.1 + 0.2),
                (1_700_000_060, 1e-7),
                (1_700_000_120, 12345.678),
            ],
            step: 60,
        };
        let parsed = crate::evidence::dataset::parse_series(&to_csv(&series), Some(60), i64::MAX)
            .expect("parses");
        assert_eq!(parsed, series);
    }
}
