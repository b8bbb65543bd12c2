//! The web page in a real headless Chromium (issue #5): `flowcast demo` on loopback, the
//! page rendered by the browser, its DOM and a screenshot checked, the track record of
//! past bands included (issue #16); and the backtest's HTML report on a development
//! series: no console errors, one chart point per step of the data.
//!
//! Needs Debian's `chromium` package (the report also `../shared`). Without it the test
//! says so and skips, unless `FLOWCAST_REQUIRE_TOOLS=1` is set. With
//! `FLOWCAST_WRITE_SCREENSHOT=1` the screenshots are also written to `docs/web-page.png`,
//! the image the README shows, and `docs/backtest-report.png`:
//!
//! ```sh
//! FLOWCAST_WRITE_SCREENSHOT=1 cargo test --release --test browser
//! ```

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowcast::ingest::exposition::{self, Format};
use support::{shared_dir, tool, ChildGuard};

// Shared with the integration tests; this crate uses only part of it.
#[allow(dead_code)]
#[path = "../integration/support/mod.rs"]
mod support;

/// The demo's series: the `series` label and the `route` of each.
const SERIES: &str = "demo";
const ROUTES: [&str; 2] = ["/api/orders", "/api/search"];
/// Browser window; the page is about 750 px wide, so the screenshot stays small.
const WINDOW: (u32, u32) = (800, 760);
/// Chart colours from src/page.rs, as painted: the observed line, the mean line, and the
/// band (#f4a261 at 35 % opacity over the chart's #fafafa background).
const OBSERVED_RGB: [u8; 3] = [0x26, 0x46, 0x53];
const MEAN_RGB: [u8; 3] = [0xe7, 0x6f, 0x51];
const BAND_RGB: [u8; 3] = [248, 219, 196];
/// The past bands where all three overlap: #4a7fc1 at 18 % opacity three times over
/// #fafafa (1 − 0.82³ = 45 % of the colour).
const PAST_RGB: [u8; 3] = [171, 195, 224];
/// The report's browser window.
const REPORT_WINDOW: (u32, u32) = (1180, 2300);
/// One Chromium run (start, load over loopback, render, exit) must finish within this.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Chromium loads the demo's page, and both what it parsed (the DOM) and what it painted
/// (the screenshot) show every series with its band, mean and observed line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_chart_of_every_series() {
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let started = Instant::now();
    let (_demo, page_url, metrics_url) = support::start_demo("180s").await;
    wait_until_ready(&metrics_url).await;
    let ready_after = started.elapsed();

    let dir = TempDir::new("flowcast-browser");
    let screenshot = dir.0.join("web-page.png");
    let (dom, shot, day_dom, day_shot) = tokio::task::spawn_blocking({
        let (chromium, dir, url, screenshot) = (
            chromium.clone(),
            dir.0.clone(),
            page_url.clone(),
            screenshot.clone(),
        );
        move || {
            let dom = chromium_run(
                &chromium,
                &dir.join("profile-dom"),
                &[
                    "--dump-dom".to_string(),
                    "--enable-logging=stderr".to_string(),
                    "--v=0".to_string(),
                ],
                &url,
            );
            let shot = chromium_run(
                &chromium,
                &dir.join("profile-shot"),
                &[format!("--screenshot={}", screenshot.display())],
                &url,
            );
            // The 24-hour view of the same page.
            let day_url = format!("{url}?hours=24");
            let day_dom = chromium_run(
                &chromium,
                &dir.join("profile-day-dom"),
                &["--dump-dom".to_string()],
                &day_url,
            );
            let day_shot = chromium_run(
                &chromium,
                &dir.join("profile-day-shot"),
                &[format!(
                    "--screenshot={}",
                    dir.join("web-page-24h.png").display()
                )],
                &day_url,
            );
            (dom, shot, day_dom, day_shot)
        }
    })
    .await
    .expect("the chromium runs do not panic");
    eprintln!(
        "ready after {ready_after:.1?}; chromium --dump-dom {:.1?}, --screenshot {:.1?}",
        dom.elapsed, shot.elapsed
    );

    check_dom(&dom.stdout);
    // 3 hours: 36 steps, upper and lower edges, a polygon of about 72 points.
    check_track_record(&dom.stdout, 60..=80);
    assert_eq!(console_messages(&dom.stderr), Vec::<String>::new());
    assert!(dom.stdout.contains("data-hours=\"3\""), "the 3-hour view");
    assert!(dom
        .stdout
        .contains("<a href=\"/?hours=24\">last 24 hours</a>"));
    // 24 hours, from the demo's seeded week: 288 steps, about 576 points per band.
    check_dom(&day_dom.stdout);
    check_track_record(&day_dom.stdout, 540..=600);
    assert!(
        day_dom.stdout.contains("data-hours=\"24\""),
        "the 24-hour view"
    );
    assert!(day_dom.stdout.contains("<a href=\"/\">last 3 hours</a>"));
    let day_png = std::fs::read(dir.0.join("web-page-24h.png"))
        .unwrap_or_else(|e| panic!("no 24-hour screenshot ({e}); stderr:\n{}", day_shot.stderr));
    // The next 15 minutes take 15 / (24 h + 15 min) of the day view's width, 15 / 195 of
    // the 3-hour one's.
    check_screenshot(
        &day_png,
        195.0 / (24.0 * 60.0 + 15.0),
        band_area(&day_dom.stdout),
    );
    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!(
            "chromium wrote no screenshot at {} ({e}); stderr:\n{}",
            screenshot.display(),
            shot.stderr
        )
    });
    check_screenshot(&png, 1.0, band_area(&dom.stdout));
    if std::env::var_os("FLOWCAST_WRITE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).expect("create docs/");
        std::fs::write(docs.join("web-page.png"), &png).expect("write docs/web-page.png");
        std::fs::write(docs.join("web-page-24h.png"), &day_png)
            .expect("write docs/web-page-24h.png");
        eprintln!(
            "wrote docs/web-page.png ({} bytes, {}x{})",
            png.len(),
            WINDOW.0,
            WINDOW.1
        );
    }
}

/// The development series of the report test: 51 days of 5-minute ISP traffic, strongly
/// seasonal, no holes, so each data row is one step of the chart.
const REPORT_SERIES: &str = "isp_internet_traffic_eu_5min.csv";

/// `flowcast backtest --report` on a development series, rendered by Chromium: no console
/// message (and a broken copy does log one, so the check can fail), the main chart has one
/// point per step of the data, every section is there; the render time is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_backtest_report() {
    let (Some(chromium), Some(shared)) = (tool("chromium"), shared_dir()) else {
        return;
    };
    let dir = TempDir::new("flowcast-report");
    let data = shared.join("data/traffic").join(REPORT_SERIES);
    let text = std::fs::read_to_string(&data).expect("the development series");
    let rows = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    // A quarter of the median step rate per replica, as scaling.py chooses by default.
    let mut rates: Vec<f64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(',')?.1.trim().parse::<f64>().ok())
        .map(|v| v / 300.0)
        .collect();
    rates.sort_by(f64::total_cmp);
    let capacity = rates[rates.len() / 2] / 4.0;
    let report = dir.0.join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .arg("backtest")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(dir.0.join("fc.csv"))
        .args([
            "--replica-capacity",
            &format!("{capacity:.6}"),
            "--startup",
            "5m",
        ])
        .arg("--report")
        .arg(&report)
        .output()
        .expect("flowcast runs");
    assert!(
        out.status.success(),
        "backtest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&report).expect("the report");
    // A copy that logs to the console: the check below must see it.
    let broken = dir.0.join("broken.html");
    std::fs::write(
        &broken,
        html.replace(
            "</body>",
            "<script>console.error('control'); undefinedFunction();</script></body>",
        ),
    )
    .expect("write the broken copy");
    let blank = dir.0.join("blank.html");
    std::fs::write(&blank, "<!doctype html><html><body></body></html>").expect("blank");
    let screenshot = dir.0.join("report.png");
    let url = |p: &Path| format!("file://{}", p.display());
    let logging = |extra: &str| {
        vec![
            extra.to_string(),
            "--enable-logging=stderr".to_string(),
            "--v=0".to_string(),
        ]
    };
    let (dom, control, shot, blank_shot) = tokio::task::spawn_blocking({
        let (chromium, profile) = (chromium.clone(), dir.0.clone());
        let (report_url, broken_url, blank_url) = (url(&report), url(&broken), url(&blank));
        let shot_arg = format!("--screenshot={}", screenshot.display());
        let blank_arg = format!("--screenshot={}", dir.0.join("blank.png").display());
        move || {
            let run = |name: &str, args: Vec<String>, url: &str| {
                chromium_run_sized(&chromium, &profile.join(name), REPORT_WINDOW, &args, url)
            };
            (
                run("dom", logging("--dump-dom"), &report_url),
                run("control", logging("--dump-dom"), &broken_url),
                run("shot", vec![shot_arg], &report_url),
                run("blank", vec![blank_arg], &blank_url),
            )
        }
    })
    .await
    .expect("the chromium runs do not panic");

    assert_eq!(
        console_messages(&dom.stderr),
        Vec::<String>::new(),
        "the report logged to the console"
    );
    let control_messages = console_messages(&control.stderr);
    assert!(
        control_messages.iter().any(|m| m.contains("control"))
            && control_messages
                .iter()
                .any(|m| m.contains("undefinedFunction")),
        "the console check sees nothing: {control_messages:?}"
    );
    let dom = dom.stdout;
    let overview_at = dom.find("id=\"overview\"").expect("the overview chart");
    let overview = &dom[overview_at..];
    let overview = &overview[..overview.find("</svg>").expect("its end")];
    let d = path_data(overview, "observed").expect("the observed line");
    let points = points(&d).expect("well-formed path data");
    assert_eq!(
        points.len(),
        rows,
        "one chart point per 5-minute step of the data"
    );
    assert!(path_data(overview, "band5m").is_some(), "the band");
    for part in [
        "id=\"summary\"",
        "The worst days, closer",
        "id=\"scores\"",
        "PromQL predict_linear",
        "Holt",
        "id=\"what-if\"",
        "id=\"recommendation\"",
        "model fingerprint",
        ">req/s</text>",
    ] {
        assert!(dom.contains(part), "the report has no {part}");
    }
    let png = std::fs::read(&screenshot).expect("a screenshot");
    eprintln!(
        "report: {} bytes, {} rows; chromium --screenshot {:.2?} (blank page {:.2?}), --dump-dom {:.2?}",
        html.len(),
        rows,
        shot.elapsed,
        blank_shot.elapsed,
        control.elapsed
    );
    if std::env::var_os("FLOWCAST_WRITE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join("backtest-report.png"), &png)
            .expect("write docs/backtest-report.png");
        eprintln!("wrote docs/backtest-report.png ({} bytes)", png.len());
    }
}

/// The serialised DOM has, per series, a section with its name, readiness, coverage and an
/// inline SVG whose band, mean and observed paths have drawable, in-bounds `d` data.
fn check_dom(dom: &str) {
    assert!(
        dom.contains("<h1>flowcast</h1>"),
        "not the flowcast page:\n{dom}"
    );
    let coverage = regex::Regex::new(r"coverage \(5m\): (–|\d{1,3}%)").expect("regex");
    let history = regex::Regex::new(r"history: (\d+) min").expect("regex");
    for route in ROUTES {
        let heading = format!("<h2>{SERIES} / {route}</h2>");
        let start = dom
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {heading} in the DOM:\n{dom}"));
        let end = dom[start..].find("</div>").map_or(dom.len(), |i| start + i);
        let section = &dom[start..end];
        assert!(
            section.contains("ready: yes"),
            "{route} not ready:\n{section}"
        );
        assert!(
            coverage.is_match(section),
            "{route}: no coverage text:\n{section}"
        );
        let minutes: u32 = history
            .captures(section)
            .and_then(|c| c[1].parse().ok())
            .unwrap_or_else(|| panic!("{route}: no history text:\n{section}"));
        assert!(minutes >= 180, "{route}: {minutes} min of history");
        let svg_start = section
            .find("<svg")
            .unwrap_or_else(|| panic!("{route}: no <svg>:\n{section}"));
        let svg = &section[svg_start..];
        assert!(svg.contains("</svg>"), "{route}: unclosed <svg>:\n{svg}");
        for (class, min_points) in [("band", 6), ("mean", 3), ("observed", 20)] {
            let d = path_data(svg, class)
                .unwrap_or_else(|| panic!("{route}: no <path class=\"{class}\">:\n{svg}"));
            let points =
                points(&d).unwrap_or_else(|| panic!("{route}: {class} path has malformed d={d:?}"));
            assert!(
                points.len() >= min_points,
                "{route}: {class} path has {} points (< {min_points}): {d:?}",
                points.len()
            );
            for (x, y) in points {
                assert!(
                    (0.0..=720.0).contains(&x) && (0.0..=200.0).contains(&y),
                    "{route}: {class} point ({x}, {y}) outside the 720x200 chart"
                );
            }
        }
    }
}

/// Issue #16: each series' chart draws the bands forecast 5, 10 and 15 minutes before each
/// past step (3 or 24 hours of them, from the demo's seeded week; `points` is the range of
/// polygon points per band) over a y-axis labelled in req/s, and the page states the
/// coverage per horizon and the replicas.
fn check_track_record(dom: &str, expected: std::ops::RangeInclusive<usize>) {
    for route in ROUTES {
        let heading = format!("<h2>{SERIES} / {route}</h2>");
        let start = dom.find(&heading).expect("section");
        let end = dom[start..].find("</div>").map_or(dom.len(), |i| start + i);
        let section = &dom[start..end];
        for class in ["past5m", "past10m", "past15m"] {
            let d = path_data(section, class)
                .unwrap_or_else(|| panic!("{route}: no past band {class}:\n{section}"));
            let points =
                points(&d).unwrap_or_else(|| panic!("{route}: {class} path has malformed d={d:?}"));
            assert!(
                expected.contains(&points.len()),
                "{route}: {class} has {} points, not {expected:?}",
                points.len()
            );
            for (x, y) in points {
                assert!(
                    (0.0..=720.0).contains(&x) && (0.0..=200.0).contains(&y),
                    "{route}: {class} point ({x}, {y}) outside the chart"
                );
            }
        }
        let ticks = section.matches("class=\"ytick\"").count();
        assert!(ticks >= 3, "{route}: {ticks} y-axis ticks");
        assert!(section.contains(">req/s</text>"), "{route}: no y-axis unit");
        assert!(
            section.contains("coverage per horizon"),
            "{route}: no coverage per horizon"
        );
        assert!(
            section.contains("recommended replicas at 25 req/s per replica"),
            "{route}: no replicas:\n{section}"
        );
    }
}

/// Console messages Chromium logged (`--enable-logging=stderr --v=0`): errors, warnings
/// and logs of the page.
fn console_messages(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

/// The `d` attribute of the first `<path>` with this class, as Chromium serialised it.
fn path_data(svg: &str, class: &str) -> Option<String> {
    let tag = regex::Regex::new(r"<path\b[^>]*>").expect("regex");
    let attr = |tag: &str, name: &str| {
        regex::Regex::new(&format!(r#"\s{name}="([^"]*)""#))
            .expect("regex")
            .captures(tag)
            .map(|c| c[1].to_string())
    };
    let path = tag
        .find_iter(svg)
        .map(|m| m.as_str())
        .find(|t| attr(t, "class").as_deref() == Some(class));
    path.and_then(|t| attr(t, "d"))
}

/// The points of path data made only of `M x,y`, `L x,y` and `Z`, or `None` if it has
/// anything else (or starts with anything but a move).
fn points(d: &str) -> Option<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for (i, token) in d.split_whitespace().enumerate() {
        if token == "Z" {
            continue;
        }
        let (command, xy) = token.split_at(1);
        if !(command == "M" || (command == "L" && i > 0)) {
            return None;
        }
        let (x, y) = xy.split_once(',')?;
        out.push((x.parse().ok()?, y.parse().ok()?));
    }
    Some(out)
}

/// The area, in screen pixels, of the band ahead over every series' chart, from the polygons
/// of the DOM (the SVG's user units are CSS pixels: its `viewBox` equals its size).
fn band_area(dom: &str) -> f64 {
    ROUTES
        .iter()
        .map(|route| {
            let heading = format!("<h2>{SERIES} / {route}</h2>");
            let start = dom.find(&heading).expect("section");
            let d = path_data(&dom[start..], "band").expect("band path");
            // Each piece is `M … Z`; the shoelace formula per piece.
            d.split('Z')
                .filter_map(|piece| points(piece.trim()))
                .map(|p| {
                    let n = p.len();
                    (0..n)
                        .map(|i| {
                            let ((x0, y0), (x1, y1)) = (p[i], p[(i + 1) % n]);
                            x0 * y1 - x1 * y0
                        })
                        .sum::<f64>()
                        .abs()
                        / 2.0
                })
                .sum::<f64>()
        })
        .sum()
}

/// The screenshot is a PNG of the window's size, not blank, with the chart's colours
/// painted on enough pixels to be lines and bands rather than stray pixels.
/// `ahead` is the share of the chart's width the next 15 minutes take (1 for the 3-hour
/// view, about 1/8 for the 24-hour one), which scales what the mean line must cover.
/// `band_area` is the band's area in the DOM: how tall the band ahead is depends on the
/// hour (the y-axis spans the view's peak), so the painted band is held to the DOM's own
/// polygon: at least a third of what the mean line leaves of its area in the band's colour
/// (the anti-aliased edges take the rest), and never more than its area plus its edges.
fn check_screenshot(png: &[u8], ahead: f64, band_area: f64) {
    // The 2-px mean line over the band ahead, at most 55 px long on each of two charts.
    const MEAN_COVERS: f64 = 2.0 * 2.0 * 55.0;
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a sane image size")];
    let frame = reader.next_frame(&mut buf).expect("the PNG decodes");
    assert_eq!(
        (frame.width, frame.height),
        WINDOW,
        "screenshot size differs from the window"
    );
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let pixels: Vec<[u8; 3]> = buf[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let distinct: HashSet<[u8; 3]> = pixels.iter().copied().collect();
    eprintln!("screenshot: {} distinct colours", distinct.len());
    assert!(
        distinct.len() > 50,
        "blank-looking screenshot: {} distinct colours",
        distinct.len()
    );
    let near = |target: [u8; 3]| {
        pixels
            .iter()
            .filter(|p| p.iter().zip(target).all(|(a, b)| a.abs_diff(b) <= 8))
            .count()
    };
    // Each line is 2 px wide and crosses a good part of two charts; the band is an area.
    for (what, rgb, min) in [
        ("observed line", OBSERVED_RGB, 1000),
        ("mean line", MEAN_RGB, (10.0 * ahead).ceil() as usize),
        (
            "band",
            BAND_RGB,
            ((band_area - MEAN_COVERS) / 3.0).ceil().max(0.0) as usize,
        ),
        ("past bands", PAST_RGB, 1000),
    ] {
        let n = near(rgb);
        eprintln!("screenshot: {n} px of the {what}");
        assert!(n >= min, "{what}: {n} pixels near {rgb:?} (< {min})");
    }
    // The band's edges: two charts, each band ahead at most 55 px wide, so its outline is
    // under 2 × (2 × 55 + 2 × 200) px.
    let band = near(BAND_RGB) as f64;
    eprintln!("screenshot: band area in the DOM {band_area:.0} px");
    assert!(
        band <= band_area + 2.0 * (2.0 * 55.0 + 2.0 * 200.0),
        "band: {band} pixels painted for a DOM area of {band_area:.0}"
    );
}

/// What one Chromium run printed and how long it took.
struct BrowserRun {
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs headless Chromium on `url` with a fresh profile, bounded by [`BROWSER_TIMEOUT`]:
/// a hung browser is killed (by its handle) and the test fails with its stderr.
fn chromium_run(chromium: &Path, profile: &Path, extra: &[String], url: &str) -> BrowserRun {
    chromium_run_sized(chromium, profile, WINDOW, extra, url)
}

/// [`chromium_run`] with a window of `size`.
fn chromium_run_sized(
    chromium: &Path,
    profile: &Path,
    size: (u32, u32),
    extra: &[String],
    url: &str,
) -> BrowserRun {
    let started = Instant::now();
    let mut child = ChildGuard(
        Command::new(chromium)
            // Chromium ≥ 112 takes `--headless` as the new headless mode, which renders
            // like the windowed browser; root in a container needs `--no-sandbox`.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={},{}", size.0, size.1))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts"),
    );
    let stdout = drain(child.0.stdout.take().expect("stdout"));
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.0.kill();
            let _ = child.0.wait();
            let stderr = stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Helpers the browser started could keep the pipes open; do not wait on them forever.
    let stdout = stdout
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    let stderr = stderr
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{stderr}"
    );
    BrowserRun {
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Reads a pipe to its end on a thread; the text arrives on the channel.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Polls the demo's `/metrics` (bounded) until `flowcast_ready` is 1 for every route.
async fn wait_until_ready(metrics_url: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(r) = client.get(metrics_url).send().await {
            last = r.text().await.unwrap_or_default();
            let mut ready = HashSet::new();
            exposition::parse(last.as_bytes(), Format::Text004, |s| {
                if s.name == "flowcast_ready"
                    && s.value == 1.0
                    && s.labels.get("series").as_deref() == Some(SERIES)
                {
                    if let Some(route) = s.labels.get("route") {
                        ready.insert(route.into_owned());
                    }
                }
            })
            .expect("/metrics parses as text 0.0.4");
            if ROUTES.iter().all(|r| ready.contains(*r)) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("demo series not all ready within 60 s; last /metrics:\n{last}");
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
