//! Inline SVG charts for the live page ([`crate::serve::page`]) and the backtest report
//! (`evidence::report`): a time axis in UTC, a y-axis in req/s with round ticks, lines with
//! gaps at holes, bands, marks and a "now" rule; and the HTML escaping and UTC labels both
//! documents use.
//!
//! Owns only the drawing: it is handed numbers and times, never reads the engine or the
//! data. The output is plain SVG without scripts; path data is `M x,y L x,y … Z` only, so
//! tests can read it back.

use std::fmt::Write as _;

/// Space around the plot area: left (y labels), right, top, bottom (x labels).
const MARGIN: (f64, f64, f64, f64) = (54.0, 8.0, 8.0, 18.0);
/// Tick intervals of the time axis (seconds), smallest first.
const TIME_STEPS: [i64; 13] = [
    300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 172_800, 604_800, 1_209_600,
];

/// One chart being drawn: the axes are fixed at creation, shapes are added in order.
#[derive(Debug, Clone)]
pub struct Chart {
    width: f64,
    height: f64,
    t0: i64,
    t1: i64,
    y_top: f64,
    y_step: f64,
    unit: &'static str,
    body: String,
}

impl Chart {
    /// A chart of `width` × `height` pixels over times `[t0, t1]` (unix seconds) and
    /// values `[0, y_max]` (req/s; rounded up to a tick).
    pub fn new(width: f64, height: f64, t0: i64, t1: i64, y_max: f64) -> Self {
        let y_step = nice_step(if y_max.is_finite() && y_max > 0.0 {
            y_max / 4.0
        } else {
            0.25
        });
        let y_top = (y_max.max(0.0) / y_step).ceil().max(1.0) * y_step;
        Self {
            width,
            height,
            t0,
            t1: t1.max(t0 + 1),
            y_top,
            y_step,
            unit: "req/s",
            body: String::new(),
        }
    }

    /// The same chart with its y-axis labelled in `unit` instead of req/s.
    pub fn in_unit(self, unit: &'static str) -> Self {
        Self { unit, ..self }
    }

    /// The x pixel of time `t`.
    pub fn x(&self, t: i64) -> f64 {
        let (l, r, _, _) = MARGIN;
        l + (self.width - l - r) * (t - self.t0) as f64 / (self.t1 - self.t0) as f64
    }

    /// The y pixel of value `v` (req/s), kept inside the plot area.
    pub fn y(&self, v: f64) -> f64 {
        let (_, _, top, bottom) = MARGIN;
        let share = (v / self.y_top).clamp(0.0, 1.0);
        self.height - bottom - (self.height - top - bottom) * share
    }

    /// A filled band through `(t, Some((lower, upper)))` points; a `None` ends a piece, so
    /// holes stay holes. Returns the number of points drawn.
    pub fn band(
        &mut self,
        class: &str,
        points: impl IntoIterator<Item = (i64, Option<(f64, f64)>)>,
        fill: &str,
        opacity: f64,
    ) -> usize {
        let mut d = String::new();
        let mut run: Vec<(f64, f64, f64)> = Vec::new();
        let mut drawn = 0;
        let mut flush = |run: &mut Vec<(f64, f64, f64)>, d: &mut String| {
            for (i, (x, _, yu)) in run.iter().enumerate() {
                let _ = write!(d, "{}{x:.1},{yu:.1} ", if i == 0 { "M" } else { "L" });
            }
            for (x, yl, _) in run.iter().rev() {
                let _ = write!(d, "L{x:.1},{yl:.1} ");
            }
            if !run.is_empty() {
                d.push_str("Z ");
            }
            drawn += run.len();
            run.clear();
        };
        for (t, b) in points {
            match b {
                Some((l, u)) if l.is_finite() && u.is_finite() => {
                    run.push((self.x(t), self.y(l), self.y(u)));
                }
                _ => flush(&mut run, &mut d),
            }
        }
        flush(&mut run, &mut d);
        if !d.is_empty() {
            let _ = write!(
                self.body,
                "<path class=\"{class}\" d=\"{}\" fill=\"{fill}\" fill-opacity=\"{opacity}\" stroke=\"none\"/>",
                d.trim_end()
            );
        }
        drawn
    }

    /// A line through `(t, Some(v))` points, lifted at `None`. Returns the points drawn.
    pub fn line(
        &mut self,
        class: &str,
        points: impl IntoIterator<Item = (i64, Option<f64>)>,
        stroke: &str,
        width: f64,
        dash: Option<&str>,
    ) -> usize {
        let mut d = String::new();
        let mut pen_down = false;
        let mut drawn = 0;
        for (t, v) in points {
            match v.filter(|v| v.is_finite()) {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        self.x(t),
                        self.y(v)
                    );
                    pen_down = true;
                    drawn += 1;
                }
                None => pen_down = false,
            }
        }
        let dash = dash.map_or(String::new(), |d| format!(" stroke-dasharray=\"{d}\""));
        let _ = write!(
            self.body,
            "<path class=\"{class}\" d=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{width}\" stroke-linejoin=\"round\"{dash}/>",
            d.trim_end()
        );
        drawn
    }

    /// Round marks at `(t, v)`, each with a tooltip.
    pub fn marks(&mut self, class: &str, points: &[(i64, f64, String)], colour: &str) {
        let _ = write!(self.body, "<g class=\"{class}\" fill=\"{colour}\">");
        for (t, v, title) in points {
            let _ = write!(
                self.body,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>{}</title></circle>",
                self.x(*t),
                self.y(*v),
                escape(title)
            );
        }
        self.body.push_str("</g>");
    }

    /// A dotted vertical rule at `t` with a label at its foot.
    pub fn rule(&mut self, t: i64, label: &str) {
        let x = self.x(t);
        let (_, _, top, bottom) = MARGIN;
        let _ = write!(
            self.body,
            "<line class=\"rule\" x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"2 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>",
            self.height - bottom,
            x + 3.0,
            top + 10.0,
            escape(label)
        );
    }

    /// The finished `<svg>`: grid, axes with labels (y in req/s, x in UTC), then the shapes.
    pub fn finish(self, title: &str) -> String {
        let (l, r, top, bottom) = MARGIN;
        let (w, h) = (self.width, self.height);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\"><title>{}</title><g class=\"axes\" font-size=\"10\" fill=\"#555\">",
            escape(title),
            escape(title)
        );
        let ticks = (self.y_top / self.y_step).round() as usize;
        for k in 0..=ticks {
            let v = self.y_step * k as f64;
            let y = self.y(v);
            let _ = write!(
                svg,
                "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/><text class=\"ytick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                w - r,
                l - 4.0,
                y + 3.5,
                value_label(v, self.y_step)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" transform=\"rotate(-90 4 {:.1})\" dy=\"8\" text-anchor=\"middle\">{}</text>",
            (top + h - bottom) / 2.0,
            (top + h - bottom) / 2.0,
            self.unit
        );
        let span = self.t1 - self.t0;
        let max_ticks = ((w - l - r) / 80.0).max(2.0) as i64;
        let step = TIME_STEPS
            .into_iter()
            .find(|s| span / s <= max_ticks)
            .unwrap_or(span.max(1));
        let mut t = self.t0.div_euclid(step) * step;
        if t < self.t0 {
            t += step;
        }
        while t <= self.t1 {
            let x = self.x(t);
            if x > w - r - 14.0 {
                // Its label would run off the chart.
                break;
            }
            let label = if step >= 86_400 {
                let (_, m, d) = civil(t.div_euclid(86_400));
                format!("{m:02}-{d:02}")
            } else {
                let s = t.rem_euclid(86_400);
                format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
            };
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#bbb\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
                h - bottom,
                h - bottom + 3.0,
                h - 4.0
            );
            t += step;
        }
        let _ = write!(
            svg,
            "<line x1=\"{l}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/><line x1=\"{l}\" y1=\"{top}\" x2=\"{l}\" y2=\"{:.1}\" stroke=\"#888\"/></g>",
            h - bottom,
            w - r,
            h - bottom,
            h - bottom
        );
        svg.push_str(&self.body);
        svg.push_str("</svg>");
        svg
    }
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let m = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|m| norm <= *m + 1e-9)
        .unwrap_or(10.0);
    m * magnitude
}

/// A tick label with the decimals its step needs, large values with k, M or G.
fn value_label(v: f64, step: f64) -> String {
    let (scale, suffix) = if step >= 1e9 {
        (1e9, "G")
    } else if step >= 1e6 {
        (1e6, "M")
    } else if step >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let (v, step) = (v / scale, step / scale);
    let mut decimals = (-step.log10().floor()).max(0.0) as usize;
    if (step / 10f64.powi(-(decimals as i32)) - 2.5).abs() < 1e-9 {
        decimals += 1;
    }
    format!("{v:.decimals$}{suffix}")
}

/// (year, month, day) of a day number since 1970-01-01 (proleptic Gregorian).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD HH:MM` (UTC) of unix time `t`.
pub fn utc(t: i64) -> String {
    let (y, m, d) = civil(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_values() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(17.0), 20.0);
        assert_eq!(nice_step(2.2), 2.5);
        let c = Chart::new(720.0, 200.0, 0, 3600, 87.0);
        assert_eq!(c.y_step, 25.0);
        assert_eq!(c.y_top, 100.0);
        assert_eq!(value_label(0.5, 0.5), "0.5");
        assert_eq!(value_label(7.5, 2.5), "7.5");
        assert_eq!(value_label(200.0, 50.0), "200");
        assert_eq!(value_label(6e7, 1e7), "60M");
        assert_eq!(value_label(7.5e6, 2.5e6), "7.5M");
        assert_eq!(value_label(60_000.0, 20_000.0), "60k");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
    }

    /// A hole splits the band and lifts the pen; every point stays inside the chart; the
    /// y-axis is labelled in req/s.
    #[test]
    fn holes_split_bands_and_lines() {
        let mut c = Chart::new(720.0, 200.0, 0, 3000, 10.0);
        let b = c.band(
            "band",
            (0..10).map(|i| (i * 300, (i != 4).then_some((1.0, 2.0 + i as f64)))),
            "#f4a261",
            0.35,
        );
        assert_eq!(b, 9);
        let n = c.line(
            "observed",
            (0..10).map(|i| (i * 300, (i != 4).then_some(i as f64))),
            "#264653",
            2.0,
            None,
        );
        assert_eq!(n, 9);
        let svg = c.finish("t");
        let d = |class: &str| {
            let at = svg.find(&format!("class=\"{class}\" d=\"")).expect(class) + class.len() + 12;
            svg[at..at + svg[at..].find('"').expect("end")].to_string()
        };
        assert_eq!(d("band").matches('M').count(), 2, "two pieces");
        assert_eq!(d("band").matches('Z').count(), 2);
        assert_eq!(d("observed").matches('M').count(), 2, "pen lifted once");
        for token in d("band").split_whitespace().filter(|t| *t != "Z") {
            let (x, y) = token[1..].split_once(',').expect("x,y");
            let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
            assert!((0.0..=720.0).contains(&x) && (0.0..=200.0).contains(&y));
        }
        assert!(svg.contains(">req/s</text>"));
        assert!(
            svg.contains(">10.0</text>") || svg.contains(">10</text>"),
            "{svg}"
        );
    }
}
