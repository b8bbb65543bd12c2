//! `flowcast backtest --report REPORT.html`: the evidence of one backtest as one
//! self-contained page: the band over what happened for the whole series and a closer view
//! of its worst days, per-horizon scores against baselines run on the same data, the
//! scaling what-if and its recommendation, and the model, seed and settings used.
//!
//! Owns the report's HTML; draws with [`crate::serve::chart`]. Takes everything as arguments
//! (rows, scores, what-if, settings) and writes nothing itself. No scripts, no external
//! assets: inline SVG and CSS only.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::evidence::baselines::Baseline;
use crate::evidence::dataset::{Row, Scores, Series, HORIZON_SECONDS};
use crate::evidence::latency::Service;
use crate::evidence::scaling::{fmt_ms, threshold_text, WhatIf};
use crate::forecast::history::STEP_SECONDS;
use crate::serve::chart::{escape, utc, Chart};

/// Days shown in the closer view.
const WORST_DAYS: usize = 3;
/// Width of the charts.
const WIDTH: f64 = 1100.0;
/// Colours, as on the live page.
const OBSERVED: &str = "#264653";
const BAND: &str = "#4a7fc1";
const MISS: &str = "#d62828";

/// What the report shows.
#[derive(Debug)]
pub struct ReportInput<'a> {
    /// The data file, as given.
    pub data: String,
    /// The series.
    pub series: &'a Series,
    /// flowcast's forecasts.
    pub rows: &'a [Row],
    /// Scores per horizon and pooled (score.py's rows) of flowcast.
    pub scores: [Scores; 4],
    /// Each baseline's scores, same layout.
    pub baselines: Vec<(Baseline, [Scores; 4])>,
    /// The what-if, when a capacity and start-up were given.
    pub what_if: Option<&'a WhatIf>,
    /// Seconds after the first timestamp that were not scored (the worst days come after).
    pub warmup_seconds: i64,
    /// Settings shown at the end: (name, value).
    pub settings: Vec<(String, String)>,
}

/// The report's HTML.
pub fn render(input: &ReportInput) -> String {
    let targets = crate::evidence::dataset::targets(input.series);
    let (first, last) = (
        targets.keys().next().copied().unwrap_or(0),
        targets.keys().next_back().copied().unwrap_or(0),
    );
    let mut html = String::with_capacity(1 << 20);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flowcast backtest: {}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1150px}}\
         h2{{margin-top:1.6em;border-bottom:1px solid #ddd}}svg{{background:#fafafa;border:1px solid #ddd;display:block;margin:.4em 0}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}}\
         th:first-child,td:first-child,#scores td:nth-child(2),#scores th:nth-child(2){{text-align:left}}.best{{font-weight:bold;color:#1d6b3a}}.chosen{{background:#fff3cd}}\
         .k{{color:#555}}.box{{background:#f3f7fb;border:1px solid #cfe0f0;padding:.6em 1em}}code{{background:#f4f4f4;padding:0 .2em}}\
         </style></head><body><h1>flowcast backtest</h1>",
        escape(&input.data)
    );
    let _ = write!(
        html,
        "<p class=\"k\">{} · {} to {} UTC · {} five-minute steps with a target · data step {} s · the forecast at each 5-minute origin used only data that had ended by it.</p>",
        escape(&input.data),
        utc(first),
        utc(last + STEP_SECONDS),
        targets.len(),
        input.series.step
    );
    summary(&mut html, input);
    overview(&mut html, input, &targets);
    worst_days(&mut html, input, &targets);
    scores(&mut html, input);
    if let Some(w) = input.what_if {
        what_if(&mut html, w);
    } else {
        html.push_str("<h2>Scaling what-if</h2><p>Not run: give <code>--replica-capacity C --startup D</code> to replay KEDA with this forecast against a reactive HPA and an oracle.</p>");
    }
    html.push_str("<h2>Model, seed and settings</h2><table>");
    for (k, v) in &input.settings {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    html.push_str("</table><p class=\"k\">Scores as <code>shared/eval/score.py</code> computes them (targets from the raw data, a 3-day warm-up, missing forecasts count as misses). Baselines as <code>shared/eval/baselines.py</code> a, c and d, run here on the same data.</p></body></html>");
    html
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", 100.0 * v)
    } else {
        "–".into()
    }
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

fn summary(html: &mut String, input: &ReportInput) {
    let all = &input.scores[3];
    let best = input
        .baselines
        .iter()
        .min_by(|a, b| a.1[3].int_score.total_cmp(&b.1[3].int_score));
    let _ = write!(
        html,
        "<div class=\"box\" id=\"summary\"><p><b>Band:</b> {} of the targets fell inside flowcast's 95 % band (target 95 %), {} at or below its upper bound (target 97.5 %, what autoscaling needs); interval score {} (lower is better)",
        pct(all.coverage),
        pct(all.upper_cov),
        num(all.int_score)
    );
    if let Some((b, s)) = best {
        let _ = write!(
            html,
            " against {} for the best baseline, {} ({} inside)",
            num(s[3].int_score),
            b.label(),
            pct(s[3].coverage)
        );
    }
    html.push_str(".</p>");
    if let Some(w) = input.what_if {
        let r = &w.recommendation;
        let f = &w.policies[0].outcome;
        let reactive = &w.policies[1].outcome;
        let _ = write!(
            html,
            "<p><b>Scaling:</b> with the upper bound beside a reactive trigger, {} of the 5-minute windows were under-provisioned against {} for a reactive HPA alone, at {:.2}× the oracle's replica-hours (reactive: {:.2}×). Recommended: <code>horizon=\"{}m\"</code>, headroom {:.0} %, predictive threshold <code>\"{}\"</code> req/s.</p>",
            pct(f.under_windows),
            pct(reactive.under_windows),
            f.replica_hours_vs_oracle,
            reactive.replica_hours_vs_oracle,
            r.chosen.horizon / 60,
            r.chosen.headroom * 100.0,
            threshold_text(r.predictive_threshold)
        );
        if let Some(note) = crate::evidence::scaling::little_difference(w) {
            let _ = write!(html, "<p>Note: {note}.</p>");
        }
    }
    html.push_str("</div>");
}

/// The 5-minute-ahead band per window start (the forecast made at origin = window start).
fn band_by_window(rows: &[Row], horizon: i64) -> BTreeMap<i64, (f64, f64)> {
    rows.iter()
        .filter(|r| r.horizon == horizon && r.lower.is_finite() && r.upper.is_finite())
        .map(|r| (r.origin + horizon - STEP_SECONDS, (r.lower, r.upper)))
        .collect()
}

fn overview(html: &mut String, input: &ReportInput, targets: &BTreeMap<i64, f64>) {
    let (Some(&first), Some(&last)) = (targets.keys().next(), targets.keys().next_back()) else {
        return;
    };
    let band = band_by_window(input.rows, 300);
    let y_max = targets
        .values()
        .copied()
        .chain(band.values().map(|b| b.1))
        .fold(0.0, f64::max);
    let mut c = Chart::new(WIDTH, 300.0, first, last + STEP_SECONDS, y_max);
    // Every window from the first to the last, so holes break the band and the line.
    let windows = (first..=last).step_by(STEP_SECONDS as usize);
    c.band(
        "band5m",
        windows
            .clone()
            .map(|w| (w + STEP_SECONDS, band.get(&w).copied())),
        BAND,
        0.35,
    );
    let points = c.line(
        "observed",
        windows.map(|w| (w + STEP_SECONDS, targets.get(&w).copied())),
        OBSERVED,
        0.8,
        None,
    );
    let _ = write!(
        html,
        "<h2>The band over what happened</h2><p class=\"k\">Every 5-minute step's peak 1-minute rate (line, {points} points) and the 95 % band forecast for it 5 minutes earlier (shaded).</p><div id=\"overview\" data-points=\"{points}\">{}</div>",
        c.finish("observed rate and the 5-minute-ahead band, whole series (req/s)")
    );
}

fn worst_days(html: &mut String, input: &ReportInput, targets: &BTreeMap<i64, f64>) {
    let bands: Vec<BTreeMap<i64, (f64, f64)>> = HORIZON_SECONDS
        .iter()
        .map(|&h| band_by_window(input.rows, h))
        .collect();
    // Days (UTC) by mean Winkler score of the 5-minute band, relative to the day's mean.
    let mut days: BTreeMap<i64, (f64, f64, usize)> = BTreeMap::new();
    let scored_from = input.series.rows.first().map_or(0, |r| r.0) + input.warmup_seconds;
    for (&w, &y) in targets.range(scored_from..) {
        if let Some(&(l, u)) = bands[0].get(&w) {
            let e = days.entry(w.div_euclid(86_400)).or_insert((0.0, 0.0, 0));
            e.0 += (u - l) + 40.0 * (l - y).max(0.0) + 40.0 * (y - u).max(0.0);
            e.1 += y;
            e.2 += 1;
        }
    }
    let mut ranked: Vec<(i64, f64)> = days
        .into_iter()
        .filter(|(_, (_, _, n))| *n >= 144)
        .map(|(d, (wink, ys, n))| (d, if ys > 0.0 { wink / ys } else { wink / n as f64 }))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    html.push_str("<h2>The worst days, closer</h2><p class=\"k\">The days after the warm-up whose 5-minute band scored worst (interval score relative to the day's traffic). Shaded: the bands forecast 5, 10 and 15 minutes before each step (darker where they overlap); dots: steps outside their 5-minute band.</p>");
    for &(day, score) in ranked.iter().take(WORST_DAYS) {
        let (t0, t1) = (day * 86_400, day * 86_400 + 86_400);
        let in_day: Vec<(i64, f64)> = targets.range(t0..t1).map(|(w, y)| (*w, *y)).collect();
        let y_max = in_day
            .iter()
            .map(|p| p.1)
            .chain(bands.iter().flat_map(|b| b.range(t0..t1).map(|(_, v)| v.1)))
            .fold(0.0, f64::max);
        let mut c = Chart::new(WIDTH, 240.0, t0, t1, y_max);
        for (h, b) in bands.iter().enumerate().rev() {
            c.band(
                &format!("band{}m", 5 * (h + 1)),
                (t0..t1)
                    .step_by(STEP_SECONDS as usize)
                    .map(|w| (w + STEP_SECONDS, b.get(&w).copied())),
                BAND,
                0.18,
            );
        }
        c.line(
            "observed",
            (t0..t1)
                .step_by(STEP_SECONDS as usize)
                .map(|w| (w + STEP_SECONDS, targets.get(&w).copied())),
            OBSERVED,
            1.5,
            None,
        );
        let misses: Vec<(i64, f64, String)> = in_day
            .iter()
            .filter_map(|&(w, y)| {
                let (l, u) = *bands[0].get(&w)?;
                (y < l * (1.0 - 1e-6) || y > u * (1.0 + 1e-6)).then(|| {
                    (
                        w + STEP_SECONDS,
                        y,
                        format!("{}: {y:.3} req/s outside [{l:.3}, {u:.3}]", utc(w)),
                    )
                })
            })
            .collect();
        c.marks("miss", &misses, MISS);
        let _ = write!(
            html,
            "<h3>{} (UTC): relative interval score {score:.2}, {} steps outside the 5-minute band</h3>{}",
            &utc(t0)[..10],
            misses.len(),
            c.finish("a worst day: observed and the bands 5, 10 and 15 minutes ahead (req/s)")
        );
    }
}

fn scores(html: &mut String, input: &ReportInput) {
    html.push_str("<h2>Scores per horizon, against baselines on the same data</h2><table id=\"scores\"><tr><th>horizon</th><th>forecaster</th><th>coverage</th><th>upper coverage</th><th>interval score</th><th>nMAE</th><th>relative width</th><th>missing</th></tr>");
    let labels = ["5m", "10m", "15m", "all"];
    for (k, label) in labels.iter().enumerate() {
        let mut all: Vec<(&str, &Scores)> = vec![("flowcast", &input.scores[k])];
        all.extend(input.baselines.iter().map(|(b, s)| (b.label(), &s[k])));
        let best = all
            .iter()
            .map(|(_, s)| s.int_score)
            .filter(|v| v.is_finite())
            .fold(f64::INFINITY, f64::min);
        for (name, s) in all {
            let class = if s.int_score == best {
                " class=\"best\""
            } else {
                ""
            };
            let _ = write!(
                html,
                "<tr{class}><td>{label}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(name),
                pct(s.coverage),
                pct(s.upper_cov),
                num(s.int_score),
                num(s.nmae),
                num(s.rel_width),
                s.missing
            );
        }
    }
    html.push_str("</table><p class=\"k\">Coverage: share of targets inside the 95 % band (target 95 %). Upper coverage: at or below the upper bound (target 97.5 %). Interval score: Winkler score at α = 0.05 over the mean target (lower is better; bold: the best per horizon). nMAE: mean absolute error of the mean over the mean target.</p>");
}

fn what_if(html: &mut String, w: &WhatIf) {
    let d = &w.deployment;
    let _ = write!(
        html,
        "<h2>Scaling what-if</h2><p class=\"k\">The model of <code>shared/eval/scaling.py</code> over {} five-minute windows after the warm-up: one replica serves <b>{} req/s</b>; a replica asked for at origin o serves from o + <b>{} s</b> (start-up); removed replicas go at once; scale-down stabilisation {} s; replicas {}..{}. The reactive HPA asks for ⌈observed / ({:.0} % × capacity)⌉ from the latest complete window; flowcast's policy asks for the larger of that and ⌈upper bound / capacity⌉ for the window the new replicas will serve (horizon {} min), as a KEDA ScaledObject with both triggers does.</p>",
        w.windows,
        d.capacity,
        d.startup_seconds,
        d.stabilisation_seconds,
        d.min_replicas,
        d.max_replicas.map_or("unbounded".to_string(), |m| m.to_string()),
        d.utilization * 100.0,
        d.matching_horizon() / 60
    );
    html.push_str("<table id=\"what-if\"><tr><th>policy</th><th>windows under-provisioned</th><th>demand unserved</th><th>replica-hours / oracle</th><th>replica-hours</th><th>scale events</th><th>most replicas</th></tr>");
    for p in &w.policies {
        let o = &p.outcome;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.2}%</td><td>{:.3}%</td><td>{:.3}</td><td>{:.1}</td><td>{}</td><td>{:.0}</td></tr>",
            escape(&p.name),
            100.0 * o.under_windows,
            100.0 * o.unserved_share,
            o.replica_hours_vs_oracle,
            o.replica_hours,
            o.scale_events,
            o.peak_replicas
        );
    }
    html.push_str("</table>");
    if let Some(s) = &d.service {
        latency(html, w, s);
    }
    let r = &w.recommendation;
    let c = &r.chosen;
    let _ = write!(
        html,
        "<div class=\"box\" id=\"recommendation\"><p><b>Recommendation:</b> scale on <code>flowcast_forecast_upper_requests_per_second{{horizon=\"{}m\"}}</code> with headroom {:.0} %: {}. On this series it left {:.2} % of windows under-provisioned and {:.3} % of demand unserved, at {:.3}× the oracle's replica-hours with {} scale events.</p>\
         <p>In the ScaledObject (<code>metricType: AverageValue</code>): the predictive trigger's <code>threshold: \"{}\"</code> (capacity / (1 + headroom), req/s); the reactive trigger on the observed rate, <code>threshold: \"{}\"</code> (utilisation × capacity, req/s).</p></div>",
        c.horizon / 60,
        c.headroom * 100.0,
        if r.meets_target {
            format!("the cheapest candidate with at most {:.1} % of windows under-provisioned", 100.0 * r.risk_target)
        } else {
            format!("no candidate reached {:.1} % of windows under-provisioned; this one came closest", 100.0 * r.risk_target)
        },
        100.0 * c.outcome.under_windows,
        100.0 * c.outcome.unserved_share,
        c.outcome.replica_hours_vs_oracle,
        c.outcome.scale_events,
        threshold_text(r.predictive_threshold),
        threshold_text(r.reactive_threshold)
    );
    html.push_str("<table id=\"candidates\"><tr><th>horizon</th><th>headroom</th><th>windows under-provisioned</th><th>demand unserved</th><th>replica-hours / oracle</th><th>scale events</th></tr>");
    for cand in &r.candidates {
        let o = &cand.outcome;
        let class = if cand == c { " class=\"chosen\"" } else { "" };
        let _ = write!(
            html,
            "<tr{class}><td>{}m</td><td>{:.0}%</td><td>{:.2}%</td><td>{:.3}%</td><td>{:.3}</td><td>{}</td></tr>",
            cand.horizon / 60,
            cand.headroom * 100.0,
            100.0 * o.under_windows,
            100.0 * o.unserved_share,
            o.replica_hours_vs_oracle,
            o.scale_events
        );
    }
    html.push_str("</table>");
}

/// Colours of the policies in the latency chart: flowcast, reactive, oracle.
const POLICY_COLOURS: [&str; 3] = [BAND, MISS, "#2a9d8f"];

/// The latency table and the chart of each hour's P99 per policy.
fn latency(html: &mut String, w: &WhatIf, s: &Service) {
    let _ = write!(
        html,
        "<h3>Latency</h3><p class=\"k\">The same replays as the table above, as a queue: each ready replica is {} server{} with a mean service time of <b>{} ms</b> (M/M/c at each step's demand, {} req/s per replica at full load). A backlog left by an under-provisioned step carries into the next. SLO: each minute's P99 at most <b>{} ms</b>.</p>\
         <table id=\"latency\"><tr><th>policy</th><th>P50</th><th>P99</th><th>P99 in the busiest hour (median day)</th><th>… worst day</th><th>minutes with P99 over the SLO</th></tr>",
        s.concurrency,
        if s.concurrency == 1 { "" } else { "s" },
        fmt_ms(s.service_seconds),
        threshold_text(s.throughput()),
        fmt_ms(s.slo_seconds)
    );
    for p in &w.policies {
        if let Some(l) = &p.latency {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{} ms</td><td>{} ms</td><td>{} ms</td><td>{} ms</td><td>{:.0}</td></tr>",
                escape(&p.name),
                fmt_ms(l.p50),
                fmt_ms(l.p99),
                fmt_ms(l.busiest_hour_p99_median),
                fmt_ms(l.busiest_hour_p99_worst),
                l.minutes_over_slo
            );
        }
    }
    html.push_str("</table>");
    let hours = || w.policies.iter().flat_map(|p| p.hourly_p99.iter());
    let (Some(t0), Some(t1)) = (hours().map(|h| h.0).min(), hours().map(|h| h.0).max()) else {
        return;
    };
    // Up to 10× the SLO: a reactive HPA's backlog can reach minutes and flatten the rest.
    let top = hours()
        .map(|h| 1000.0 * h.1)
        .fold(2000.0 * s.slo_seconds, f64::max)
        .min(10_000.0 * s.slo_seconds);
    let mut c = Chart::new(WIDTH, 260.0, t0, t1 + 3600, top).in_unit("ms");
    c.line(
        "slo",
        [
            (t0, Some(1000.0 * s.slo_seconds)),
            (t1 + 3600, Some(1000.0 * s.slo_seconds)),
        ],
        "#999",
        1.0,
        Some("4 3"),
    );
    let mut legend = String::new();
    for (p, colour) in w.policies.iter().zip(POLICY_COLOURS) {
        let first = p.hourly_p99.first().map_or(t0, |h| h.0);
        let by_hour: BTreeMap<i64, f64> = p.hourly_p99.iter().copied().collect();
        c.line(
            "p99",
            (first..=t1)
                .step_by(3600)
                .map(|h| (h + 1800, by_hour.get(&h).map(|v| 1000.0 * v))),
            colour,
            1.2,
            None,
        );
        let _ = write!(
            legend,
            "<span style=\"color:{colour}\">■</span> {} ",
            escape(&p.name)
        );
    }
    let _ = write!(
        html,
        "<p class=\"k\">Each hour's P99 per policy (ms; dashed: the SLO; values above {:.0} ms drawn at the top). {legend}</p><div id=\"latency-chart\">{}</div>",
        top,
        c.finish("P99 response time per hour and policy (ms)")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::scaling::{what_if as run_what_if, Deployment};

    /// A week of 5-minute steps and a forecast band of ± 20 % that misses one burst.
    fn input_parts() -> (Series, Vec<Row>) {
        let start = 1_700_000_100;
        let value = |i: i64| 20.0 + 10.0 * ((i as f64) / 288.0 * std::f64::consts::TAU).sin();
        let mut rows_data = Vec::new();
        for i in 0..7 * 288 {
            if (500..503).contains(&i) {
                continue; // a hole
            }
            let v = if i == 1500 { 90.0 } else { value(i) };
            rows_data.push((start + 300 * i, v * 300.0));
        }
        let series = Series {
            rows: rows_data,
            step: 300,
        };
        let rows = (1..7 * 288)
            .flat_map(|i| {
                HORIZON_SECONDS.map(|h| {
                    let v = value(i + h / 300 - 1);
                    Row {
                        origin: start + 300 * i,
                        horizon: h,
                        mean: v,
                        lower: 0.8 * v,
                        upper: 1.2 * v,
                        weights: crate::evidence::dataset::NO_WEIGHTS,
                        experts: crate::evidence::dataset::NO_WEIGHTS,
                        u1: f64::NAN,
                    }
                })
            })
            .collect();
        (series, rows)
    }

    #[test]
    fn the_report_has_every_part_and_no_outside_reference() {
        let (series, rows) = input_parts();
        let scores = crate::evidence::dataset::score_table(&series, &rows, 86_400);
        let baselines = Baseline::ALL
            .iter()
            .map(|&b| {
                let r = crate::evidence::baselines::run(b, &series, 86_400);
                (
                    b,
                    crate::evidence::dataset::score_table(&series, &r, 86_400),
                )
            })
            .collect();
        let w = run_what_if(
            &series,
            &rows,
            Deployment {
                warmup_seconds: 86_400,
                service: Some(Service {
                    service_seconds: 0.15,
                    concurrency: 1,
                    slo_seconds: 0.8,
                }),
                ..Deployment::new(5.0, 300)
            },
            0.02,
        )
        .expect("what-if");
        let html = render(&ReportInput {
            data: "week_5min.csv".into(),
            series: &series,
            rows: &rows,
            scores,
            baselines,
            what_if: Some(&w),
            warmup_seconds: 86_400,
            settings: vec![("seed".into(), "7".into())],
        });
        // One point per step with a target: 7 days less the 3-step hole.
        assert!(
            html.contains(&format!("data-points=\"{}\"", 7 * 288 - 3)),
            "points"
        );
        for part in [
            "id=\"summary\"",
            "id=\"overview\"",
            "The worst days, closer",
            "id=\"scores\"",
            "PromQL predict_linear",
            "id=\"what-if\"",
            "id=\"recommendation\"",
            "id=\"candidates\"",
            "<td>seed</td><td>7</td>",
            ">req/s</text>",
            "id=\"latency\"",
            "id=\"latency-chart\"",
            ">ms</text>",
        ] {
            assert!(html.contains(part), "{part} missing");
        }
        // The burst at step 1500 is on the worst day and marked.
        let burst_day = (1_700_000_100 + 300 * 1500) / 86_400;
        assert!(html.contains(&format!("<h3>{} (UTC)", &utc(burst_day * 86_400)[..10])));
        assert!(html.contains("90.000 req/s outside"));
        assert!(!html.contains("<script"));
        assert_eq!(
            html.matches("://").count(),
            html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
            "no reference outside the file"
        );
    }
}
