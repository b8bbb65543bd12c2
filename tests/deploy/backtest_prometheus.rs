//! `flowcast backtest --prometheus URL --query PROMQL --range …` against a real Prometheus
//! holding nine days of synthetic request counters (blocks made with `promtool tsdb
//! create-blocks-from openmetrics`): it reads the series in as many `query_range` requests
//! as the 11,000-point limit needs, gives the same forecasts as `--data` on a CSV of the
//! same counts, saves that CSV with `--save-data`, and refuses several series, an empty
//! answer, a hole of more than a day and less than 3 days with a clear message.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::prometheus::{start_prometheus, PromApi};
use crate::scratch_dir;
use crate::support::{free_port, tool};

const DAY: i64 = 86_400;

/// Requests in minute `k`: a daily cycle, a weekend dip and deterministic noise; a multiple
/// of 4, so each 15-second counter increment is a whole number.
fn count(k: i64) -> i64 {
    let t = (k * 60) as f64;
    let daily = 1.0 + 0.6 * (std::f64::consts::TAU * t / DAY as f64).sin();
    let weekend = if (k * 60 / DAY + 4) % 7 >= 5 {
        0.7
    } else {
        1.0
    };
    let noise = ((k.wrapping_mul(2_654_435_761) >> 7) % 200) as f64 / 1000.0;
    4 * (300.0 * daily * weekend * (0.9 + noise)).round() as i64
}

/// One counter series as OpenMetrics samples every 15 s over minutes `minutes` (counts
/// from `counts`), skipping the minutes in `hole`.
fn counter_lines(
    out: &mut String,
    series: &str,
    minutes: std::ops::Range<i64>,
    hole: std::ops::Range<i64>,
    counts: impl Fn(i64) -> i64,
) {
    use std::fmt::Write as _;
    let mut total = 0i64;
    for k in minutes {
        if hole.contains(&k) {
            continue;
        }
        let c = counts(k);
        for q in 1..=4 {
            total += c / 4;
            let _ = writeln!(out, "{series} {total} {}", k * 60 + 15 * q);
        }
    }
}

fn run(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .arg("backtest")
        .args(args)
        .output()
        .expect("flowcast runs");
    (out, started.elapsed())
}

/// `backtest --data DATA --out OUT` with `extra`, which must succeed; how long it took.
fn run_data(data: &Path, out: &Path, extra: &[&str]) -> Duration {
    let mut args = vec![
        "--data",
        data.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ];
    args.extend(extra);
    let (done, took) = run(&args);
    assert!(done.status.success(), "{}", text(&done));
    took
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rows(path: &Path) -> Vec<Vec<f64>> {
    std::fs::read_to_string(path)
        .expect("forecast file")
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|c| c.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_reads_prometheus_and_forecasts_as_the_csv_does() {
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let dir = scratch_dir("backtest-prometheus");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // Nine days of minutes ending at the last whole hour before now.
    let end = now / 3600 * 3600 - 3600;
    let (k0, k1) = ((end - 9 * DAY) / 60, end / 60);
    let mut om = String::new();
    om.push_str("# TYPE demo_requests counter\n");
    counter_lines(
        &mut om,
        "demo_requests_total{job=\"demo\",route=\"/a\"}",
        k0..k1,
        0..0,
        count,
    );
    counter_lines(
        &mut om,
        "demo_requests_total{job=\"demo\",route=\"/b\"}",
        k0..k1,
        0..0,
        |k| count(k + 97) / 8 * 4,
    );
    // A series with 30 hours missing, and one with only the last 2 days.
    om.push_str("# TYPE demo_gappy counter\n");
    let hole = (end - 4 * DAY) / 60..(end - 4 * DAY + 30 * 3600) / 60;
    counter_lines(
        &mut om,
        "demo_gappy_total{job=\"demo\"}",
        k0..k1,
        hole,
        count,
    );
    om.push_str("# TYPE demo_young counter\n");
    counter_lines(
        &mut om,
        "demo_young_total{job=\"demo\"}",
        k1 - 2 * 1440..k1,
        0..0,
        count,
    );
    om.push_str("# EOF\n");
    std::fs::write(dir.join("input.om"), &om).expect("openmetrics");

    let started = Instant::now();
    let tsdb = dir.join("tsdb");
    let blocks = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(dir.join("input.om"))
        .arg(&tsdb)
        .output()
        .expect("promtool runs");
    assert!(blocks.status.success(), "create-blocks: {}", text(&blocks));
    let blocks_time = started.elapsed();

    let port = free_port();
    let started = Instant::now();
    let server = start_prometheus(&prometheus, &dir, "global:\n  scrape_interval: 1m\n", port);
    let api = PromApi::new(port);
    let end_s = end.to_string();
    let loaded = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let v = api
                .get(
                    "/api/v1/query",
                    &[("query", "count(demo_requests_total)"), ("time", &end_s)],
                )
                .await;
            if v.is_some_and(|v| v["data"]["result"][0]["value"][1] == "2") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
    .await;
    assert!(
        loaded,
        "Prometheus did not load the blocks:\n{}",
        server.log_tail()
    );
    let ready_time = started.elapsed();
    let url = format!("http://127.0.0.1:{port}");
    let query = "sum(rate(demo_requests_total[1m]))";

    // The read: 8 days of minutes are 11,521 evaluations, so two requests.
    let (fc_prom, saved, fc_saved, fc_csv, truth) = (
        dir.join("prom.csv"),
        dir.join("saved.csv"),
        dir.join("saved-forecast.csv"),
        dir.join("csv-forecast.csv"),
        dir.join("truth.csv"),
    );
    let common = ["--mc-passes", "10", "--seed", "3"];
    let mut prom_args = vec!["--prometheus", &url, "--query", query, "--range", "8d"];
    prom_args.extend(["--end", &end_s, "--step", "1m"]);
    prom_args.extend(["--out", fc_prom.to_str().expect("utf-8")]);
    prom_args.extend(["--save-data", saved.to_str().expect("utf-8")]);
    prom_args.extend(common);
    let (out, prom_time) = run(&prom_args);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("in 2 request(s)"), "{said}");
    assert!(
        said.contains(&format!("read {} steps of 60 s", 8 * 1440 + 1)),
        "{said}"
    );

    // The saved data are the counts per minute, at the minute's start.
    let expected: Vec<(i64, i64)> = (end - 8 * DAY - 60..=end - 60)
        .step_by(60)
        .map(|t| (t, count(t / 60) + count(t / 60 + 97) / 8 * 4))
        .collect();
    let saved_text = std::fs::read_to_string(&saved).expect("saved data");
    let saved_rows: Vec<(i64, f64)> = saved_text
        .lines()
        .skip(1)
        .map(|l| {
            let (t, v) = l.split_once(',').expect("row");
            (t.parse().expect("t"), v.parse().expect("v"))
        })
        .collect();
    assert_eq!(saved_text.lines().next(), Some("timestamp,value"));
    assert_eq!(saved_rows.len(), expected.len());
    for ((t, v), (te, c)) in saved_rows.iter().zip(&expected) {
        assert_eq!(t, te);
        assert!((v - *c as f64).abs() <= 1e-9 * *c as f64, "{t}: {v} vs {c}");
    }

    // The CSV of the same counts gives the same forecasts; the saved CSV gives them
    // exactly.
    let truth_csv: String = std::iter::once("timestamp,value".to_string())
        .chain(expected.iter().map(|(t, c)| format!("{t},{c}")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&truth, truth_csv + "\n").expect("truth");
    let csv_time = run_data(&truth, &fc_csv, &common);
    let (a, b) = (rows(&fc_prom), rows(&fc_csv));
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 3 * 2000, "{} forecasts", a.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x[..2], y[..2], "origin and horizon");
        for (u, v) in x[2..].iter().zip(&y[2..]) {
            assert!(
                (u.is_nan() && v.is_nan()) || (u - v).abs() <= 1e-6 * u.abs().max(1.0),
                "{x:?} vs {y:?}"
            );
        }
    }
    run_data(&saved, &fc_saved, &common);
    assert_eq!(
        std::fs::read(&fc_prom).expect("prom"),
        std::fs::read(&fc_saved).expect("saved"),
        "--prometheus and --data of its --save-data give the same bytes"
    );

    // Clear refusals, exit code 2, before any backtest.
    let out_path = dir.join("refused.csv");
    let out_s = out_path.to_str().expect("utf-8");
    for (q, range, want) in [
        (
            "rate(demo_requests_total[1m])",
            "7d",
            vec!["2 series", "route=\"/a\"", "route=\"/b\""],
        ),
        (
            "sum(rate(no_such_total[1m]))",
            "7d",
            vec!["returned no data"],
        ),
        (
            "sum(rate(demo_gappy_total[1m]))",
            "7d",
            vec!["longer than a day"],
        ),
        (
            "sum(rate(demo_young_total[1m]))",
            "7d",
            vec!["days of data", "at least 3"],
        ),
        (query, "2d", vec!["at least 3 days"]),
    ] {
        let (out, _) = run(&[
            "--prometheus",
            &url,
            "--query",
            q,
            "--range",
            range,
            "--end",
            &end_s,
            "--out",
            out_s,
        ]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{q}: {said}");
        for w in want {
            assert!(said.contains(w), "{q}: {w:?} not in {said}");
        }
        assert!(!out_path.exists(), "{q}: no forecasts written");
    }
    eprintln!(
        "timings: create-blocks {:.1}s, Prometheus ready {:.1}s, backtest --prometheus (8 days, 2 requests) {:.1}s, backtest --data {:.1}s",
        blocks_time.as_secs_f64(),
        ready_time.as_secs_f64(),
        prom_time.as_secs_f64(),
        csv_time.as_secs_f64()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
