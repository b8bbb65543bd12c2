//! The live web page at `/`: per series, the last three hours (or, at `/?hours=24`, the last
//! day) of observed steps with the band forecast for each of them 5, 10 and 15 minutes
//! earlier (the track record), marks
//! where traffic left its band, the band for the next 15 minutes, a y-axis in req/s, the
//! coverage per horizon and, with `replica_capacity`, the recommended replicas.
//!
//! Owns the page's HTML. Reads only [`Shared`] (the latest tick and the track record,
//! copied out under the lock, drawn after it is released); draws with [`crate::serve::chart`].
//! Self-contained: inline SVG and CSS, no scripts, no external assets.

use std::fmt::Write as _;

use crate::forecast::features::HORIZON_STEPS;
use crate::forecast::history::STEP_SECONDS;
use crate::serve::chart::{escape, utc, Chart};
use crate::serve::metrics::HORIZONS;
use crate::serve::shared::{capacity_signals, SeriesReport, Shared, TickReport};
use crate::serve::track::{coverage, TrackStep, SHORT_VIEW_STEPS, TRACKED_SERIES, TRACK_STEPS};

/// Series drawn at most; the page says how many more there are.
pub const MAX_SERIES: usize = TRACKED_SERIES;

/// How much of the track record the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// The last 3 hours (`/`).
    #[default]
    Hours3,
    /// The last 24 hours (`/?hours=24`).
    Hours24,
}

impl View {
    /// The view a request's query string asks for (`hours=24`); anything else is 3 hours.
    pub fn from_query(query: Option<&str>) -> Self {
        let day = query.is_some_and(|q| {
            url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "hours" && v == "24")
        });
        if day {
            Self::Hours24
        } else {
            Self::Hours3
        }
    }

    /// Past steps drawn.
    pub fn steps(self) -> usize {
        match self {
            Self::Hours3 => SHORT_VIEW_STEPS,
            Self::Hours24 => TRACK_STEPS,
        }
    }

    /// Hours drawn.
    fn hours(self) -> usize {
        self.steps() * STEP_SECONDS as usize / 3600
    }
}
/// Size of each chart (the browser test checks points against it).
pub const CHART: (f64, f64) = (720.0, 200.0);
/// Colours: observed line, forecast mean, the band ahead, past bands, misses.
const OBSERVED: &str = "#264653";
const MEAN: &str = "#e76f51";
const BAND: &str = "#f4a261";
const PAST: &str = "#4a7fc1";
const MISS: &str = "#d62828";

/// The page for the latest tick.
pub fn render(shared: &Shared, report: &TickReport, view: View) -> String {
    let shown = &report.series[..report.series.len().min(MAX_SERIES)];
    let tracks: Vec<Vec<TrackStep>> = {
        let book = shared.track();
        shown
            .iter()
            .map(|s| book.get(&s.key).map(|r| r.steps()).unwrap_or_default())
            .collect()
    };
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flowcast</title>\
         <meta http-equiv=\"refresh\" content=\"30\"><style>body{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#222}\
         .s{margin-bottom:1.5em}h2{font-size:1.1em;margin:.2em 0}p{margin:.2em 0}svg{background:#fafafa;border:1px solid #ddd}.k{color:#555}\
         .key span{display:inline-block;width:1.6em;height:.7em;margin:0 .3em 0 .8em;vertical-align:middle}</style></head><body>\
         <h1>flowcast</h1><p class=\"k key\">Peak 1-minute request rate per 5-minute step (req/s, UTC).\
         <span style=\"background:#264653;height:2px\"></span>observed\
         <span style=\"background:#4a7fc1;opacity:.45\"></span>95% band forecast 5, 10 and 15 min before each step (darker where they overlap)\
         <span style=\"background:#d62828;width:.7em;border-radius:50%\"></span>outside its 5-min band\
         <span style=\"background:#f4a261;opacity:.6\"></span>band for the next 15 min</p>",
    );
    // The two views, as plain links (the page has no scripts).
    let link = |v: View, href: &str| {
        if v == view {
            format!("<b>last {} hours</b>", v.hours())
        } else {
            format!("<a href=\"{href}\">last {} hours</a>", v.hours())
        }
    };
    let _ = write!(
        html,
        "<p class=\"k\" id=\"views\" data-hours=\"{}\">show: {} · {}</p>",
        view.hours(),
        link(View::Hours3, "/"),
        link(View::Hours24, "/?hours=24")
    );
    if report.series.is_empty() {
        html.push_str("<p>No series yet: waiting for the first scrape.</p>");
    }
    for (s, track) in shown.iter().zip(&tracks) {
        series_section(&mut html, shared, report.origin, s, track, view);
    }
    if report.series.len() > shown.len() {
        let _ = write!(
            html,
            "<p class=\"k\">{} more series are not drawn; /api/v1/forecast has them all.</p>",
            report.series.len() - shown.len()
        );
    }
    let _ = write!(
        html,
        "<p class=\"k\">Forecast at {} UTC.</p></body></html>",
        utc(report.origin)
    );
    html
}

fn percent(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |c| format!("{:.0}%", c * 100.0))
}

fn series_section(
    html: &mut String,
    shared: &Shared,
    origin: i64,
    s: &SeriesReport,
    track: &[TrackStep],
    view: View,
) {
    let name = std::iter::once(shared.series_name.as_str())
        .chain(s.key.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" / ");
    // The past: steps that ended by the origin, as many as the view shows.
    let from = origin - STEP_SECONDS * view.steps() as i64;
    let past: Vec<&TrackStep> = track
        .iter()
        .filter(|t| t.start + STEP_SECONDS <= origin && t.start >= from)
        .collect();
    let held = coverage(&past.iter().map(|t| **t).collect::<Vec<_>>());
    let _ = write!(
        html,
        "<div class=\"s\"><h2>{}</h2><p class=\"k\">ready: {} · history: {:.0} min · coverage (5m): {}</p>\
         <p class=\"k\">coverage per horizon, rolling (about a day): {}; over the steps drawn: {}</p>",
        escape(&name),
        if s.forecast.is_some() { "yes" } else { "no" },
        s.history_seconds / 60.0,
        percent(s.band_coverage[0]),
        (0..HORIZON_STEPS)
            .map(|h| format!("{} {}", HORIZONS[h], percent(s.band_coverage[h])))
            .collect::<Vec<_>>()
            .join(" · "),
        (0..HORIZON_STEPS)
            .map(|h| {
                let (inside, n) = held[h];
                if n == 0 {
                    format!("{} –", HORIZONS[h])
                } else {
                    format!("{} {inside}/{n}", HORIZONS[h])
                }
            })
            .collect::<Vec<_>>()
            .join(" · "),
    );
    if let (Some(f), Some(capacity)) = (&s.forecast, shared.capacity.replica_capacity) {
        let (_, replicas) = capacity_signals(f, s.mean_latency_seconds, &shared.capacity);
        let _ = write!(
            html,
            "<p class=\"k replicas\">recommended replicas at {capacity} req/s per replica and {:.0}% headroom: {}</p>",
            shared.capacity.replica_headroom * 100.0,
            (0..HORIZON_STEPS)
                .map(|h| format!(
                    "{} {}",
                    HORIZONS[h],
                    replicas[h].map_or("–".to_string(), |r| format!("{r:.0}"))
                ))
                .collect::<Vec<_>>()
                .join(" · ")
        );
    }
    html.push_str(&chart(origin, s, &past, view));
    html.push_str("</div>");
}

/// The chart of one series: past bands, observed line, misses, the band ahead.
fn chart(origin: i64, s: &SeriesReport, past: &[&TrackStep], view: View) -> String {
    // Observed steps: the track record's (on the 5-minute grid); before the first grid
    // tick, the latest tick's own window.
    let mut observed: Vec<(i64, Option<f64>)> = past
        .iter()
        .map(|t| (t.start + STEP_SECONDS, t.observed))
        .collect();
    if observed.iter().all(|(_, v)| v.is_none()) {
        let n = s.recent_steps.len() as i64;
        observed = s
            .recent_steps
            .iter()
            .enumerate()
            .map(|(k, v)| (origin - STEP_SECONDS * (n - 1 - k as i64), *v))
            .collect();
    }
    let newest = observed.iter().rev().find_map(|(t, v)| v.map(|v| (*t, v)));
    let ahead: Vec<(i64, f64, f64, f64)> = s
        .forecast
        .iter()
        .flat_map(|f| f.horizons.iter().enumerate())
        .map(|(h, i)| {
            (
                origin + STEP_SECONDS * (h as i64 + 1),
                i.lower,
                i.mean,
                i.upper,
            )
        })
        .collect();
    let y_max = observed
        .iter()
        .filter_map(|(_, v)| *v)
        .chain(
            past.iter()
                .flat_map(|t| t.bands.iter().flatten().map(|b| b.1)),
        )
        .chain(ahead.iter().map(|a| a.3))
        .fold(0.0f64, f64::max);
    let t0 = origin - STEP_SECONDS * view.steps() as i64;
    let t1 = origin + STEP_SECONDS * HORIZON_STEPS as i64;
    let mut c = Chart::new(CHART.0, CHART.1, t0, t1, y_max);
    // Widest (15 min ahead) first, so the nearer bands draw over it.
    for h in (0..HORIZON_STEPS).rev() {
        c.band(
            &format!("past{}", HORIZONS[h]),
            past.iter().map(|t| (t.start + STEP_SECONDS, t.bands[h])),
            PAST,
            0.18,
        );
    }
    if !ahead.is_empty() {
        // The band ahead starts at the newest observation and fans out over the horizons.
        let start = newest.map(|(_, v)| (origin, Some((v, v))));
        c.band(
            "band",
            start
                .into_iter()
                .chain(ahead.iter().map(|a| (a.0, Some((a.1, a.3))))),
            BAND,
            0.35,
        );
        c.line(
            "mean",
            newest
                .map(|(_, v)| (origin, Some(v)))
                .into_iter()
                .chain(ahead.iter().map(|a| (a.0, Some(a.2)))),
            MEAN,
            2.0,
            Some("4 3"),
        );
    }
    c.line("observed", observed.iter().copied(), OBSERVED, 2.0, None);
    let misses: Vec<(i64, f64, String)> = past
        .iter()
        .filter(|t| t.outside(0) == Some(true))
        .filter_map(|t| {
            let (v, (l, u)) = (t.observed?, t.bands[0]?);
            Some((
                t.start + STEP_SECONDS,
                v,
                format!(
                    "{}: {v:.3} req/s, outside the 5-min band [{l:.3}, {u:.3}]",
                    utc(t.start)
                ),
            ))
        })
        .collect();
    c.marks("miss", &misses, MISS);
    c.rule(origin, "now");
    c.finish("observed rate, past bands and the band for the next 15 minutes (req/s)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::band::{Forecast, Interval};
    use crate::serve::metrics::Metrics;
    use crate::serve::shared::Capacity;

    fn tick(origin: i64, level: f64) -> TickReport {
        let interval = |m: f64| Interval {
            mean: m,
            lower: m * 0.8,
            upper: m * 1.2,
            stddev: 1.0,
            components: [0.0; 3],
        };
        TickReport {
            origin,
            evicted: Vec::new(),
            series: vec![SeriesReport {
                key: vec!["/a".into()],
                ready: true,
                not_ready_reason: None,
                history_seconds: 14_400.0,
                step_history_seconds: 0.0,
                experts: None,
                weights: None,
                expert_forecasts: None,
                observed: Some(level),
                anomaly_score: None,
                out_of_band: None,
                band_coverage: [Some(0.95), Some(0.9), None],
                error_ratio: [None; 3],
                forecast: Some(Forecast {
                    origin,
                    horizons: [interval(level), interval(level), interval(level)],
                }),
                // A burst at the newest step: outside every band made for it.
                recent_steps: (0..36)
                    .map(|k| Some(if k == 35 && level > 50.0 { 120.0 } else { 40.0 }))
                    .collect(),
                mean_latency_seconds: None,
            }],
        }
    }

    /// After an hour of grid ticks the page draws the three past bands, the observed line
    /// over them, a mark where the burst left its band, the band ahead, a y-axis in req/s,
    /// the coverage per horizon and the recommended replicas.
    #[test]
    fn the_page_draws_the_track_record() {
        let shared = Shared::new(
            Metrics::new("flowcast", &["route".to_string()]).expect("metrics"),
            "api".into(),
            vec!["route".into()],
        )
        .with_capacity(Capacity {
            replica_capacity: Some(25.0),
            replica_headroom: 0.1,
            latency_histogram: None,
        });
        let g = 1_700_000_100;
        for k in 0..12 {
            shared.publish(tick(g + 300 * k, 40.0));
        }
        shared.publish(tick(g + 300 * 12, 60.0));
        let html = render(&shared, &shared.latest(), View::Hours3);
        for class in ["past5m", "past10m", "past15m", "band", "mean", "observed"] {
            assert!(
                html.contains(&format!("<path class=\"{class}\" d=\"M")),
                "{class} missing:\n{html}"
            );
        }
        assert_eq!(
            html.matches("<circle").count(),
            1,
            "one miss: the burst\n{html}"
        );
        assert!(html.contains("outside the 5-min band"));
        assert!(html.contains(">req/s</text>"));
        assert!(html.contains("coverage (5m): 95%"));
        assert!(html.contains("5m 95% · 10m 90% · 15m –"));
        // 60 × 1.2 × 1.1 / 25 = 3.17 → 4 replicas.
        assert!(html.contains("5m 4 · 10m 4 · 15m 4"), "{html}");
        assert!(!html.contains("<script"));
        // Self-contained: the only URLs are the SVG namespace.
        assert_eq!(
            html.matches("://").count(),
            html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
    }

    /// `/?hours=24` asks for the day view; anything else is the 3-hour one. Each view
    /// links to the other and draws its own time span.
    #[test]
    fn the_page_has_a_3_hour_and_a_24_hour_view() {
        assert_eq!(View::from_query(Some("hours=24")), View::Hours24);
        assert_eq!(View::from_query(Some("a=1&hours=24")), View::Hours24);
        for q in [
            None,
            Some(""),
            Some("hours=3"),
            Some("hours=240"),
            Some("hours"),
        ] {
            assert_eq!(View::from_query(q), View::Hours3, "{q:?}");
        }
        let shared = Shared::new(
            Metrics::new("flowcast", &[]).expect("metrics"),
            "api".into(),
            vec!["route".into()],
        );
        let g = 1_700_000_100;
        for k in 0..300 {
            shared.publish(tick(g + 300 * k, 40.0));
        }
        let short = render(&shared, &shared.latest(), View::Hours3);
        let day = render(&shared, &shared.latest(), View::Hours24);
        assert!(
            short.contains("data-hours=\"3\"")
                && short.contains("<a href=\"/?hours=24\">last 24 hours</a>")
        );
        assert!(
            day.contains("data-hours=\"24\"") && day.contains("<a href=\"/\">last 3 hours</a>")
        );
        // The day view draws eight times the steps: count the observed line's vertices.
        let vertices = |html: &str| {
            let at = html
                .find("<path class=\"observed\" d=\"")
                .expect("observed line");
            let d = &html[at..];
            d[..d.find("\"/>").expect("end")]
                .matches(['M', 'L'])
                .count()
        };
        assert_eq!(vertices(&short), SHORT_VIEW_STEPS);
        assert_eq!(vertices(&day), TRACK_STEPS);
    }

    #[test]
    fn an_empty_report_says_so() {
        let shared = Shared::new(
            Metrics::new("flowcast", &[]).expect("metrics"),
            "api".into(),
            Vec::new(),
        );
        let html = render(&shared, &TickReport::default(), View::Hours3);
        assert!(html.contains("No series yet"));
    }
}
