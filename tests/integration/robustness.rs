//! Robustness of the band on synthetic series with what production traffic does: a sudden
//! 10x level change, an outage (a hole, and a run of zeros), a series of mostly zeros, and
//! days that cross midnight UTC. Each runs through the same engine as the live sidecar
//! (`backtest::run`), with the embedded model.

use std::sync::Arc;

use flowcast::evidence::backtest::{self, Row, Series, Settings};
use flowcast::forecast::band::BandMode;
use flowcast::forecast::model::Model;

const STEP: i64 = 300;
/// 2023-11-14 22:15 UTC, so day boundaries fall inside every series.
const T0: i64 = 1_700_000_100;

/// A 5-minute series (requests per step) with a daily cycle and multiplicative noise;
/// `level(i)` scales step `i`, `None` drops it (a hole).
fn series(days: i64, level: impl Fn(i64) -> Option<f64>) -> Series {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rows = Vec::new();
    for i in 0..days * 288 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let noise = 1.0 + 0.15 * ((x % 2001) as f64 / 1000.0 - 1.0);
        let day = 1.0 + 0.4 * ((i as f64 / 288.0) * std::f64::consts::TAU).sin();
        if let Some(l) = level(i) {
            rows.push((T0 + i * STEP, (l * day * noise * STEP as f64).round()));
        }
    }
    Series { rows, step: STEP }
}

fn run(s: &Series) -> Vec<Row> {
    let model = Arc::new(Model::embedded().expect("model"));
    backtest::run(
        s,
        model,
        Settings {
            seed: 1,
            mc_passes: 20,
            band: BandMode::default(),
            experts: flowcast::forecast::combine::ExpertSet::ALL,
            threads: 2,
        },
    )
    .expect("backtest runs")
}

/// The 5-minute-ahead rows for steps `from..to` (indices), with their observed rate.
fn judged(s: &Series, rows: &[Row], from: i64, to: i64) -> Vec<(Row, f64)> {
    rows.iter()
        .filter(|r| r.horizon == 300)
        .filter_map(|r| {
            let i = (r.origin - T0) / STEP;
            let y = s.rows.iter().find(|row| row.0 == r.origin)?.1 / STEP as f64;
            (from..to).contains(&i).then_some((*r, y))
        })
        .collect()
}

fn coverage(j: &[(Row, f64)]) -> f64 {
    let inside = j
        .iter()
        .filter(|(r, y)| r.lower <= *y && *y <= r.upper)
        .count();
    inside as f64 / j.len().max(1) as f64
}

/// Mean band width over mean observed rate.
fn relative_width(j: &[(Row, f64)]) -> f64 {
    let w: f64 = j.iter().map(|(r, _)| r.upper - r.lower).sum();
    let y: f64 = j.iter().map(|(_, y)| y).sum();
    w / y
}

fn all_rows_sane(rows: &[Row]) {
    for r in rows.iter().filter(|r| r.mean.is_finite()) {
        assert!(
            r.lower.is_finite() && r.upper.is_finite(),
            "finite bounds: {r:?}"
        );
        assert!(
            0.0 <= r.lower && r.lower <= r.mean && r.mean <= r.upper,
            "ordered, non-negative: {r:?}"
        );
    }
}

/// A 10x jump at day 3: an hour later the band holds the new level again, and two hours
/// later it is no wider, relative to the level, than three times what it was before.
#[test]
fn the_band_recovers_within_an_hour_of_a_10x_level_change() {
    let jump = 3 * 288;
    let s = series(4, |i| Some(if i < jump { 20.0 } else { 200.0 }));
    let rows = run(&s);
    all_rows_sane(&rows);
    let before = judged(&s, &rows, jump - 288, jump);
    let after = judged(&s, &rows, jump + 12, jump + 36);
    let later = judged(&s, &rows, jump + 24, jump + 48);
    eprintln!(
        "10x: coverage before {:.2} after {:.2}; width before {:.2} later {:.2}",
        coverage(&before),
        coverage(&after),
        relative_width(&before),
        relative_width(&later)
    );
    assert!(coverage(&after) >= 0.8, "coverage 1-3 h after the jump");
    assert!(relative_width(&later) <= 3.0 * relative_width(&before));
}

/// A one-hour outage, once as missing data and once as zero traffic: an hour after it ends
/// the band is back around the traffic.
#[test]
fn the_band_recovers_within_an_hour_of_an_outage() {
    let (start, end) = (3 * 288, 3 * 288 + 12);
    for (name, outage) in [("hole", None), ("zeros", Some(0.0))] {
        let s = series(4, |i| {
            if (start..end).contains(&i) {
                outage
            } else {
                Some(50.0)
            }
        });
        let rows = run(&s);
        all_rows_sane(&rows);
        let after = judged(&s, &rows, end + 12, end + 36);
        let before = judged(&s, &rows, start - 288, start);
        eprintln!(
            "outage {name}: coverage after {:.2}, {} forecasts; width before {:.2} after {:.2}",
            coverage(&after),
            after.len(),
            relative_width(&before),
            relative_width(&after)
        );
        assert!(after.len() >= 20, "{name}: forecasts resume");
        assert!(
            coverage(&after) >= 0.8,
            "{name}: coverage 1-3 h after the outage"
        );
        assert!(
            relative_width(&after) <= 3.0 * relative_width(&before),
            "{name}"
        );
    }
}

/// A series that is zero 95 % of the time never yields NaN, infinite or negative bounds.
#[test]
fn mostly_zero_series_give_finite_non_negative_bands() {
    let s = series(3, |i| Some(if i % 20 == 7 { 0.02 } else { 0.0 }));
    let rows = run(&s);
    let ready = rows.iter().filter(|r| r.mean.is_finite()).count();
    assert!(ready > 1000, "ready through the zeros: {ready}");
    all_rows_sane(&rows);
    let j = judged(&s, &rows, 288, 3 * 288);
    eprintln!("mostly zeros: coverage {:.2}", coverage(&j));
    assert!(coverage(&j) >= 0.8);
}
