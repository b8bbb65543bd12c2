//! `deploy/prometheus/`: the rules pass `promtool check rules`, their unit tests pass
//! `promtool test rules`, every alert is tested firing and not firing, and the unit tests
//! catch a broken rule.

use std::path::Path;
use std::process::{Command, Output};

use regex::Regex;
use serde_json::Value;

use crate::{read, repo_path, scratch_dir, support, yaml_documents};

const RULES: &str = "deploy/prometheus/flowcast.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/flowcast.rules.test.yml";

fn report(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `promtool test rules` on the unit-test file in `dir` (rule files resolve relative
/// to it).
fn promtool_test(promtool: &Path, dir: &Path) -> Output {
    Command::new(promtool)
        .args(["test", "rules", "flowcast.rules.test.yml"])
        .current_dir(dir)
        .output()
        .expect("promtool runs")
}

/// Every rule of the rules file, recording and alerting.
pub fn rules() -> Vec<Value> {
    let doc = yaml_documents(&read(RULES)).remove(0);
    doc["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn promtool_checks_the_rules() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo_path(RULES))
        .output()
        .expect("promtool runs");
    let text = report(&out);
    let expected = format!("SUCCESS: {} rules found", rules().len());
    assert!(
        out.status.success() && text.contains(&expected),
        "promtool check rules:\n{text}"
    );
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let out = promtool_test(&promtool, &repo_path("deploy/prometheus"));
    assert!(
        out.status.success(),
        "promtool test rules:\n{}",
        report(&out)
    );
}

/// The unit tests can fail: with the traffic alerts' 5 req/s floor lowered to 1 the
/// low-traffic cases fire, and with the band's `offset 5m` removed the falling-traffic case
/// fires. A copy of the untouched files passes in the same place (the control).
#[test]
fn the_unit_tests_catch_broken_rules() {
    let Some(promtool) = support::tool("promtool") else {
        return;
    };
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let dir = scratch_dir("rules");
    std::fs::write(dir.join("flowcast.rules.test.yml"), &tests).expect("write tests");
    let mutations: [(&str, &str, &str); 2] = [
        (
            "the 5 req/s floor lowered to 1",
            "\n          > 5\n",
            "\n          > 1\n",
        ),
        (
            "the band's offset 5m dropped",
            "{horizon=\"5m\"} offset 5m)",
            "{horizon=\"5m\"})",
        ),
    ];
    std::fs::write(dir.join("flowcast.rules.yml"), &rules).expect("write rules");
    let control = promtool_test(&promtool, &dir);
    assert!(control.status.success(), "control:\n{}", report(&control));
    for (what, from, to) in mutations {
        assert!(rules.contains(from), "{what}: {from:?} is not in the rules");
        std::fs::write(dir.join("flowcast.rules.yml"), rules.replace(from, to))
            .expect("write mutated rules");
        let out = promtool_test(&promtool, &dir);
        assert!(
            !out.status.success(),
            "promtool test rules passed with {what}:\n{}",
            report(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every alert has a unit test where it fires and one where it does not; every recording
/// rule has its value checked.
#[test]
fn every_rule_is_unit_tested_both_ways() {
    let tests = yaml_documents(&read(RULE_TESTS)).remove(0);
    let cases: Vec<&Value> = tests["tests"].as_array().expect("tests").iter().collect();
    let alert_tests: Vec<&Value> = cases
        .iter()
        .flat_map(|c| c["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let expr_tests: Vec<&str> = cases
        .iter()
        .flat_map(|c| c["promql_expr_test"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    let mut alerts = 0;
    for rule in rules() {
        if let Some(name) = rule["alert"].as_str() {
            alerts += 1;
            let expected: Vec<usize> = alert_tests
                .iter()
                .filter(|t| t["alertname"] == name)
                .map(|t| t["exp_alerts"].as_array().map_or(0, Vec::len))
                .collect();
            assert!(
                expected.iter().any(|&n| n > 0),
                "{name} is never tested firing"
            );
            assert!(expected.contains(&0), "{name} is never tested not firing");
        } else {
            let name = rule["record"].as_str().expect("a rule records or alerts");
            assert!(
                expr_tests.iter().any(|e| e.trim() == name),
                "recording rule {name} has no promql_expr_test"
            );
        }
    }
    assert!(alerts >= 6, "only {alerts} alerts");
}

/// Alerts carry a severity and a summary and description; every alert on traffic needs a
/// minimum absolute deviation, so low traffic does not page.
#[test]
fn alerts_are_labelled_and_traffic_alerts_need_a_minimum_deviation() {
    let floor = Regex::new(r">\s*([0-9.]+)\s*$").expect("regex");
    for rule in rules().iter().filter(|r| r["alert"].is_string()) {
        let name = rule["alert"].as_str().expect("name");
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no {key}"
            );
        }
        let expr = rule["expr"].as_str().expect("expr");
        if expr.contains("flowcast_observed_requests_per_second") {
            let deviation: f64 = floor
                .captures(expr)
                .and_then(|c| c[1].parse().ok())
                .unwrap_or_else(|| panic!("{name}: no `> N req/s` floor at the end of {expr}"));
            assert!(deviation >= 1.0, "{name}: floor {deviation} req/s");
            assert!(
                rule["for"].as_str().is_some_and(|f| f.ends_with('m')),
                "{name}: traffic alerts need a `for` in minutes"
            );
        }
    }
}
