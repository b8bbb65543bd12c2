//! `deploy/grafana/flowcast-dashboard.json`: its structure (schema version, variables, core
//! panels only, the band drawn with fill-between, the 15-minute-earlier overlay) and the
//! PromQL of every target, with the variables substituted as Grafana would (the queries are
//! run on a real Prometheus in `prometheus.rs`).

use serde_json::Value;

use crate::read;

pub const DASHBOARD: &str = "deploy/grafana/flowcast-dashboard.json";

/// Panel types built into Grafana: no plugin to install.
const CORE_PANELS: [&str; 9] = [
    "row",
    "timeseries",
    "stat",
    "state-timeline",
    "gauge",
    "bargauge",
    "table",
    "text",
    "heatmap",
];

/// Grafana's own variables that a target may use.
const GLOBAL_VARIABLES: [&str; 4] = ["__rate_interval", "__interval", "__range", "__range_s"];

pub fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every (panel title, target expression, legend) of the dashboard.
pub fn targets(dashboard: &Value) -> Vec<(String, String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    title.clone(),
                    t["expr"].as_str().expect("a target expr").to_string(),
                    t["legendFormat"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// `expr` with the variables replaced: `values` gives the dashboard's variables, and
/// `$__rate_interval` and the other interval variables become `rate_interval`.
pub fn substitute(expr: &str, values: &[(&str, &str)], rate_interval: &str) -> String {
    let mut out = expr.to_string();
    // Longest names first, so `$__range_s` is not read as `$__range` + `_s`.
    let mut all: Vec<(String, String)> = values
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(
            GLOBAL_VARIABLES
                .iter()
                .map(|g| (g.to_string(), rate_interval.to_string())),
        )
        .collect();
    all.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (name, value) in all {
        out = out
            .replace(&format!("${{{name}}}"), &value)
            .replace(&format!("${name}"), &value);
    }
    out
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> &'a Value {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no ${name} variable"))
}

fn variable_query(v: &Value) -> &str {
    v["query"]
        .as_str()
        .or(v["query"]["query"].as_str())
        .expect("a variable query")
}

#[test]
fn the_dashboard_has_its_variables_and_only_core_panels() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_i64().is_some_and(|v| v >= 36));
    assert!(d["uid"].is_string() && d["title"].is_string());
    let datasource = variable(&d, "datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let series = variable(&d, "series");
    assert_eq!(series["type"], "query");
    assert_eq!(
        variable_query(series),
        "label_values(flowcast_ready, series)"
    );
    assert_eq!(series["datasource"]["uid"], "${datasource}");
    let defined: Vec<String> = d["templating"]["list"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    let mut ids = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        let kind = p["type"].as_str().unwrap_or("");
        assert!(CORE_PANELS.contains(&kind), "{title}: panel type {kind}");
        ids.push(p["id"].as_i64().expect("panel id"));
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_i64(), grid["w"].as_i64());
        assert!(
            x.zip(w)
                .is_some_and(|(x, w)| x >= 0 && w > 0 && x + w <= 24)
                && grid["h"].is_i64(),
            "{title}: gridPos {grid}"
        );
        if kind == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no target");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "panel ids are unique");
    // Every variable a target uses is defined (or Grafana's own).
    let values: Vec<(&str, &str)> = defined.iter().map(|n| (n.as_str(), "x")).collect();
    for (title, expr, _) in targets(&d) {
        let rest = substitute(&expr, &values, "1m");
        assert!(!rest.contains('$'), "{title}: undefined variable in {expr}");
    }
    assert!(
        !read(DASHBOARD).contains("\"__requires\""),
        "no plugin requirements"
    );
}

/// The band is filled between the lower and upper series (fill-below-to overrides that
/// name two of the panel's legends), and the panels the issue asks for are there.
#[test]
fn the_dashboard_draws_the_band_and_the_forecast_made_15_minutes_earlier() {
    let d = dashboard();
    let mut band_panels = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        let legends: Vec<&str> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["legendFormat"].as_str())
            .collect();
        for o in p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let matched = o["matcher"]["options"].as_str().unwrap_or("");
            for prop in o["properties"].as_array().expect("properties") {
                if prop["id"] == "custom.fillBelowTo" {
                    let to = prop["value"].as_str().expect("a series name");
                    assert_eq!(o["matcher"]["id"], "byName", "{title}");
                    assert!(
                        legends.contains(&matched) && legends.contains(&to),
                        "{title}: fill from {matched:?} to {to:?}, legends {legends:?}"
                    );
                    band_panels += 1;
                }
            }
        }
    }
    assert!(band_panels >= 2, "{band_panels} panels fill the band");
    let all = targets(&d);
    let in_panel_with = |needle: &str| -> Vec<String> {
        all.iter()
            .filter(|(_, e, _)| e.contains(needle))
            .map(|(t, _, _)| t.clone())
            .collect()
    };
    let earlier = in_panel_with("flowcast_forecast_requests_per_second{")
        .into_iter()
        .filter(|title| {
            all.iter().any(|(t, e, _)| {
                t == title && e.contains("horizon=\"15m\"") && e.contains("offset 15m")
            }) && all.iter().any(|(t, e, _)| {
                t == title && e.starts_with("flowcast_observed_requests_per_second")
            })
        })
        .count();
    assert!(
        earlier > 0,
        "no panel overlays the forecast made 15 minutes earlier on the observed rate"
    );
    for metric in [
        "flowcast_uncertainty_requests_per_second",
        "flowcast_band_coverage_ratio",
        "flowcast_forecast_error_ratio",
        "flowcast_ready",
        "flowcast_history_seconds",
        "flowcast_forecast_lower_requests_per_second",
        "flowcast_forecast_upper_requests_per_second",
        "service:flowcast_forecast_upper_requests_per_second:normal95",
    ] {
        assert!(!in_panel_with(metric).is_empty(), "no panel shows {metric}");
    }
}
