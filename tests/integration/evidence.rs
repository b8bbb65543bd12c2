//! The backtest's evidence against the evaluation scripts of `../shared/eval`, on
//! development series: the scaling what-if against `scaling.py`, the in-process baselines
//! against `baselines.py`, the per-horizon scores against `score.py`.
//!
//! Needs python3 with numpy and pandas; without them these tests say so and skip, unless
//! `FLOWCAST_REQUIRE_TOOLS=1` (set by .ci/run, which installs them) makes it a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

use flowcast::evidence::backtest::{self, Row, Series};
use flowcast::evidence::baselines::{self, Baseline};
use flowcast::evidence::scaling::{self, Deployment};
use flowcast::forecast::combine::{EXPERTS, EXPERT_COUNT};
use serde_json::Value;

use crate::support::{python, shared_dir};

/// The series of the what-if test: 5-minute NAB stamps at :x2:53, so the reactive HPA sees
/// the newest complete window one window late (the case most easily got wrong).
const WHAT_IF_SERIES: &str = "nab_twitter_volume_AAPL_5min.csv";

/// A scratch directory, emptied first.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcast-evidence-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Runs a script of `shared/eval` and returns its stdout; a failure fails the test.
fn script(python: &Path, shared: &Path, name: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(shared.join("eval").join(name))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a forecast CSV (`origin,horizon_seconds,mean,lower,upper,w_<expert>…,u1,
/// f_<expert>…`); empty
/// cells and `nan` are NaN.
fn read_rows(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).expect("forecast CSV");
    let cell = |s: &str| -> f64 {
        if s.is_empty() || s.eq_ignore_ascii_case("nan") {
            f64::NAN
        } else {
            s.parse().unwrap_or_else(|_| panic!("cell {s:?}"))
        }
    };
    text.lines()
        .skip(1)
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            Row {
                origin: c[0].parse().expect("origin"),
                horizon: c[1].parse().expect("horizon"),
                mean: cell(c[2]),
                lower: cell(c[3]),
                upper: cell(c[4]),
                weights: std::array::from_fn(|i| c.get(5 + i).map_or(f64::NAN, |s| cell(s))),
                u1: c.get(5 + EXPERT_COUNT).map_or(f64::NAN, |s| cell(s)),
                experts: std::array::from_fn(|i| {
                    c.get(6 + EXPERT_COUNT + i).map_or(f64::NAN, |s| cell(s))
                }),
            }
        })
        .collect()
}

/// `a` and `b` agree within `rel` of their size (or 1e-9 absolutely), NaN matching NaN.
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-9
}

/// Runs the real binary's `backtest` of `data` into `out` with `extra` flags; returns its
/// stdout, failing the test if it fails.
fn run_backtest(data: &Path, out: &Path, extra: &[&str]) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .arg("backtest")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("flowcast runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "backtest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

/// The series' flowcast forecasts written by the real binary with the what-if on, and its
/// stdout.
fn flowcast_backtest(data: &Path, out: &Path, capacity: f64) -> String {
    run_backtest(
        data,
        out,
        &[
            "--replica-capacity",
            &capacity.to_string(),
            "--startup",
            "5m",
            // Latency: 4 servers per replica, at full load 25 % above the capacity.
            "--service-time",
            &format!("{:.0}ms", 4000.0 / (1.25 * capacity)),
            "--concurrency",
            "4",
        ],
    )
}

/// The what-if gives scaling.py's numbers on a development series: the binary's policies
/// at D = 5 min (as it printed them, and at full precision from the library on the rows
/// it wrote), and the library's at D = 0 and 10 min, each against the script on the same
/// forecast file; the per-horizon scores of the same file are score.py's.
#[test]
fn the_what_if_and_the_scores_agree_with_the_scripts() {
    let (Some(python), Some(shared)) = (python(), shared_dir()) else {
        return;
    };
    let dir = scratch("what-if");
    let data = shared.join("data/traffic").join(WHAT_IF_SERIES);
    let data_s = data.to_str().expect("utf-8 path");
    // scaling.py's own capacity (a quarter of the median target), read at full precision.
    let base_json = dir.join("base.json");
    script(
        &python,
        &shared,
        "scaling.py",
        &[data_s, "--json", base_json.to_str().expect("utf-8")],
    );
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(&base_json).expect("json")).expect("json");
    let capacity = base["capacity"].as_f64().expect("capacity");
    let fc = dir.join("fc.csv");
    let stdout = flowcast_backtest(&data, &fc, capacity);
    let rows = read_rows(&fc);
    let series = backtest::read_series(&data, None).expect("series");

    for startup in [300, 0, 600] {
        let json = dir.join(format!("scaling-{startup}.json"));
        let fc_arg = format!("flowcast={}", fc.display());
        script(
            &python,
            &shared,
            "scaling.py",
            &[
                data_s,
                &fc_arg,
                "--startup",
                &startup.to_string(),
                "--json",
                json.to_str().expect("utf-8"),
            ],
        );
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
        assert_eq!(expected["capacity"].as_f64(), Some(capacity));
        let ours = scaling::what_if(&series, &rows, Deployment::new(capacity, startup), 0.02)
            .expect("what-if");
        let pairs = [
            ("flowcast upper + reactive", &ours.policies[0]),
            ("reactive (HPA, 80 %)", &ours.policies[1]),
            ("oracle (perfect foresight)", &ours.policies[2]),
        ];
        for (name, policy) in pairs {
            let e = &expected["policies"][name];
            assert!(e.is_object(), "scaling.py has no {name}: {expected}");
            let o = &policy.outcome;
            for (field, value) in [
                ("under_windows", o.under_windows),
                ("unserved_share", o.unserved_share),
                ("replica_hours_vs_oracle", o.replica_hours_vs_oracle),
            ] {
                let want = e[field].as_f64().expect("a number");
                assert!(
                    close(value, want, 1e-9),
                    "start-up {startup}, {name}, {field}: {value} vs scaling.py {want}"
                );
            }
        }
        // Not trivially equal: the forecast beats the reactive HPA on misses.
        assert!(ours.policies[0].outcome.under_windows < ours.policies[1].outcome.under_windows);
        if startup == 300 {
            // The binary printed the same numbers (rounded as in its table).
            for policy in &ours.policies {
                let line = stdout
                    .lines()
                    .find(|l| l.starts_with(&policy.name))
                    .unwrap_or_else(|| panic!("no row {} in:\n{stdout}", policy.name));
                let cells: Vec<&str> = line[policy.name.len()..].split_whitespace().collect();
                assert_eq!(
                    cells[0],
                    format!("{:.2}", 100.0 * policy.outcome.under_windows),
                    "{line}"
                );
                assert_eq!(
                    cells[2],
                    format!("{:.3}", policy.outcome.replica_hours_vs_oracle),
                    "{line}"
                );
            }
            assert!(stdout.contains("recommendation: horizon=\""), "{stdout}");
            // The latency table: a second row per policy, P50 <= P99, and the oracle never
            // slower than the reactive HPA at the P99.
            let p99: Vec<f64> = ours
                .policies
                .iter()
                .map(|policy| {
                    let line = stdout
                        .lines()
                        .filter(|l| l.starts_with(&policy.name))
                        .nth(1)
                        .unwrap_or_else(|| panic!("no latency row {} in:\n{stdout}", policy.name));
                    let cells: Vec<f64> = line[policy.name.len()..]
                        .split_whitespace()
                        .take(2)
                        .map(|c| c.parse().expect("ms"))
                        .collect();
                    assert!(cells[0] > 0.0 && cells[0] <= cells[1], "{line}");
                    cells[1]
                })
                .collect();
            assert!(p99[2] <= p99[1], "oracle {} vs reactive {}", p99[2], p99[1]);
            assert!(
                stdout.contains("latency: each ready replica is 4 servers"),
                "{stdout}"
            );
            assert!(stdout.contains("req/s per replica"), "{stdout}");
        }
    }

    // score.py on the same file: every horizon's row and the pooled one.
    let score_json = dir.join("score.json");
    script(
        &python,
        &shared,
        "score.py",
        &[
            data_s,
            fc.to_str().expect("utf-8"),
            "--json",
            score_json.to_str().expect("utf-8"),
        ],
    );
    check_scores(&score_json, &series, &rows);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Our per-horizon scores of `rows` equal score.py's JSON.
fn check_scores(json: &Path, series: &Series, rows: &[Row]) {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("json")).expect("json");
    let table = backtest::score_table(series, rows, 259_200);
    for (key, ours) in ["300", "600", "900", "all"].iter().zip(table) {
        let e = &expected["series"][0]["rows"][key];
        assert_eq!(e["n"].as_u64(), Some(ours.n as u64), "{key}");
        assert_eq!(e["missing"].as_u64(), Some(ours.missing as u64), "{key}");
        for (field, value) in [
            ("coverage", ours.coverage),
            ("upper_cov", ours.upper_cov),
            ("nMAE", ours.nmae),
            ("rel_width", ours.rel_width),
            ("int_score", ours.int_score),
        ] {
            let want = e[field].as_f64().unwrap_or(f64::NAN);
            assert!(
                close(value, want, 1e-9),
                "{key} {field}: {value} vs score.py {want}"
            );
        }
    }
}

/// The in-process baselines write baselines.py's rows (within 1e-6, the script's %.8g
/// rounding aside) on a 5-minute series with offset stamps and on a 1-minute series with
/// holes; their scores are score.py's.
#[test]
fn the_baselines_agree_with_baselines_py() {
    let (Some(python), Some(shared)) = (python(), shared_dir()) else {
        return;
    };
    let dir = scratch("baselines");
    for name in [
        "nab_twitter_volume_AAPL_5min",
        "twitter_sample_stream_2021_08_1min",
    ] {
        let data = shared.join("data/traffic").join(format!("{name}.csv"));
        script(
            &python,
            &shared,
            "baselines.py",
            &[
                data.to_str().expect("utf-8"),
                "--baselines",
                "a,c,d",
                "--out",
                dir.to_str().expect("utf-8"),
            ],
        );
        let series = backtest::read_series(&data, None).expect("series");
        for baseline in Baseline::ALL {
            let path = dir.join(format!("{name}__{}.csv", baseline.name()));
            let theirs = read_rows(&path);
            let ours = baselines::run(baseline, &series, 259_200);
            assert_eq!(ours.len(), theirs.len(), "{name} {}", baseline.name());
            assert!(ours.len() > 10_000, "{name}: {} rows", ours.len());
            let mut finite = 0;
            for (a, b) in ours.iter().zip(&theirs) {
                assert_eq!(
                    (a.origin, a.horizon),
                    (b.origin, b.horizon),
                    "{name} {}",
                    baseline.name()
                );
                for (what, x, y) in [
                    ("mean", a.mean, b.mean),
                    ("lower", a.lower, b.lower),
                    ("upper", a.upper, b.upper),
                ] {
                    assert!(
                        close(x, y, 1e-6),
                        "{name} {} origin {} horizon {} {what}: {x} vs baselines.py {y}",
                        baseline.name(),
                        a.origin,
                        a.horizon
                    );
                    finite += usize::from(x.is_finite());
                }
            }
            assert!(
                finite > ours.len(),
                "{name} {}: mostly finite",
                baseline.name()
            );
            let json = dir.join(format!("{name}__{}.json", baseline.name()));
            script(
                &python,
                &shared,
                "score.py",
                &[
                    data.to_str().expect("utf-8"),
                    path.to_str().expect("utf-8"),
                    "--json",
                    json.to_str().expect("utf-8"),
                ],
            );
            check_scores(&json, &series, &theirs);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The backtest writes each expert's own forecast beside the combination's (`f_<expert>`),
/// the evidence of models/training/oracle_weights.py: persistence is the newest complete
/// window and day-ago the window a day before the target, to the step history's bf16
/// precision, on a real 1-minute series (ClarkNet), with the header naming each column.
#[test]
fn the_backtest_writes_what_each_expert_forecast() {
    let Some(shared) = shared_dir() else {
        return;
    };
    let dir = scratch("experts");
    let data = shared.join("data/extra/clarknet_http_1min.csv");
    let fc = dir.join("fc.csv");
    run_backtest(&data, &fc, &["--mc-passes", "4"]);
    let text = std::fs::read_to_string(&fc).expect("forecast CSV");
    let header: Vec<&str> = text.lines().next().expect("header").split(',').collect();
    let named: Vec<String> = EXPERTS.iter().map(|e| format!("f_{e}")).collect();
    assert_eq!(header[6 + EXPERT_COUNT..], named[..], "{header:?}");
    let rows = read_rows(&fc);
    let targets = backtest::targets(&backtest::read_series(&data, None).expect("series"));
    let at = |name: &str| EXPERTS.iter().position(|e| *e == name).expect("expert");
    let (persistence, day_ago, lstm) = (at("persistence"), at("day_ago"), at("lstm"));
    let near = |a: f64, b: f64| (a - b).abs() <= 4e-3 * b.abs().max(1e-9);
    let (mut checked_p, mut checked_d) = (0, 0);
    for r in rows.iter().filter(|r| r.mean.is_finite()) {
        let h = r.horizon / 300 - 1;
        assert!(
            r.experts[lstm].is_finite() && r.experts[lstm] >= 0.0,
            "{r:?}"
        );
        if let Some(&last) = targets.get(&(r.origin - 300)) {
            assert!(
                near(r.experts[persistence], last),
                "persistence {r:?} vs {last}"
            );
            checked_p += 1;
        }
        match targets.get(&(r.origin + 300 * h - 86_400)) {
            Some(&day) => {
                assert!(near(r.experts[day_ago], day), "day ago {r:?} vs {day}");
                checked_d += 1;
            }
            None if r.origin + 300 * h - 86_400 > rows[0].origin => {
                assert!(r.experts[day_ago].is_nan(), "day ago of a hole: {r:?}");
            }
            None => {}
        }
    }
    assert!(
        checked_p > 10_000 && checked_d > 10_000,
        "{checked_p} {checked_d}"
    );
}
