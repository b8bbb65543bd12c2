//! flowcast: a Prometheus sidecar that forecasts a service's request rate 5–15 minutes
//! ahead with a calibrated uncertainty band.
//!
//! Data flow (the same engine runs in `run`, `demo` and `backtest`):
//!
//! ```text
//! ingest::source (scrape ─▶ exposition ─▶ selector, or a PromQL query; the backfill)
//!   ─▶ forecast::engine, one tick per origin:
//!        history  counter → 1-minute rates → a 4-hour ring → 5-minute peak steps
//!        features the 36-step window in z = ln(1 + v/s), cyclic time features
//!        model    ONE batched tract run: series × (1 + N Monte-Carlo passes)
//!                 → the LSTM's mean, u1 (spread of the passes), u2 (its variance)
//!        combine  a week of steps per series; the LSTM's mean beside 7 statistical
//!                 experts, weighted per series and horizon by recent loss in
//!                 ζ = ln(1 + v/S) → the centre
//!        band     centre ± k·u3 in ζ (u3: the combination's own error per UTC hour and
//!                 horizon; k per side by adaptive conformal inference) → req/s
//!        tick     one report per series
//!   ─▶ serve::shared (publish) ─▶ metrics, gauge table ─▶ /metrics, /api/v1/forecast, /
//! ```
//!
//! The folders are the layers, listed from the bottom up: a layer imports only the layers
//! listed before it (a test reads every file and keeps it so), and `main` dispatches to
//! `run`.
//!
//! | module | owns |
//! |---|---|
//! | **[`forecast`]** | the pure core: synchronous, no clock, no async; imports no other layer |
//! | [`forecast::history`] | per-series ring buffers of 1-minute rates, the series cap |
//! | [`forecast::features`] | the model's input contract: steps → scale-free window |
//! | [`forecast::model`] | the only importer of tract: load, check against the card, batched MC passes |
//! | [`forecast::combine`] | the online combination: a week of steps, the experts and their weights |
//! | [`forecast::band`] | u1/u2/u3 → calibrated interval; the online calibration per series |
//! | [`forecast::engine`] | the synchronous core: record, prepare, infer, band, judge; snapshot and restore |
//! | [`forecast::tick`] | what one tick produced per series (`TickReport`, `SeriesReport`): plain data |
//! | [`forecast::state`] | the `--state-dir` snapshot file format: write, read, vet |
//! | [`forecast::shard`] | `--shard I/N`: which series this replica owns (Prometheus's `hashmod`) |
//! | **[`host`]** | what the process takes from its machine; imports no other layer |
//! | [`host::clock`] | Unix time for async code: the wall clock, or tokio's clock in tests |
//! | [`host::secrets`] | secret files held in memory, re-read by one background thread (no file I/O per request) |
//! | [`host::pages`] | giving start-up code pages back to the system (the one `unsafe` call) |
//! | [`host::faults`] | scripted faults for tests, compiled only with the `fault-injection` feature |
//! | **[`ingest`]** | bytes from outside → samples; imports `forecast`, `host` |
//! | [`ingest::source`] | what one poll of the app or of Prometheus records; the backfill |
//! | [`ingest::scrape`] | HTTP fetches: timeout, byte cap, status, TLS and credentials |
//! | [`ingest::exposition`] | parsing text 0.0.4 and OpenMetrics 1.0 bodies into samples |
//! | [`ingest::selector`] | the PromQL-style selector language: parser and matcher |
//! | [`ingest::promapi`] | the Prometheus HTTP API client (`query`, `query_range`) |
//! | [`ingest::backoff`] | back-off with jitter and the circuit breaker of a failing source |
//! | **[`serve`]** | what the world reads; imports `forecast`, `host`, `ingest` |
//! | [`serve::shared`] | what the server reads: the latest tick's reports, capacity signals, readiness |
//! | [`serve::metrics`] | every metric's name, help and unit |
//! | [`serve::gauge_table`] | the per-series gauge table and the `/metrics` text/gzip encoding |
//! | [`serve::server`] | hyper: `/metrics`, `/healthz`, `/readyz`, `/`, `/api/v1/forecast` (routing) |
//! | [`serve::webconfig`] | `--web.config.file`: TLS and bcrypt basic auth on the listener (exporter-toolkit format), reloaded |
//! | [`serve::page`] | the live web page at `/`: track record, band ahead, coverage, replicas |
//! | [`serve::track`] | per series, the bands forecast for the last 3 hours of steps (bounded) |
//! | [`serve::chart`] | inline SVG charts (axes in req/s and UTC, bands, lines, marks) for page and report |
//! | **[`evidence`]** | replay and judgement; imports `forecast`, `host`, `ingest`, `serve` |
//! | [`evidence::backtest`] | `flowcast backtest`: replay a CSV on a simulated clock, score, plot |
//! | [`evidence::dataset`] | recorded series and forecast rows as files: the strict CSV, the scorer's rows, targets and metrics |
//! | [`evidence::baselines`] | persistence, PromQL and Holt baselines run in-process (baselines.py's a, c, d) |
//! | [`evidence::scaling`] | the backtest's scaling what-if (scaling.py's model) and its recommendation |
//! | [`evidence::range`] | `backtest --prometheus`: one series read with `query_range` in chunks, checked, as a CSV's rows |
//! | [`evidence::latency`] | the what-if's latency: each policy's ready replicas as an M/M/c queue with backlog |
//! | [`evidence::report`] | `backtest --report`: the self-contained HTML report of one backtest |
//! | **edge** | the command line and the one validated config; imports every layer listed before it |
//! | [`cli`] | the command line (clap) and a command's exit code ([`cli::Failure`]) |
//! | [`config`] | file + env + flags → one validated [`config::Config`]; every default and limit |
//! | **[`run`]** | assembling processes; imports everything |
//! | [`run::sidecar`] | assembling and stopping `flowcast run`; `check-config` |
//! | [`run::live`] | the live loop: poll, forecast and snapshot intervals, a tick on blocking threads |
//! | [`run::backtest`] | `flowcast backtest`: the command's flags, files and printing around the replay |
//! | [`run::demo`] | `flowcast demo`: a synthetic app and the real sidecar on loopback |
//! | [`run::bench`] | `flowcast bench`: timed ticks of synthetic series, and the soak |

pub mod cli;
pub mod config;
pub mod evidence;
pub mod forecast;
pub mod host;
pub mod ingest;
pub mod run;
pub mod serve;

#[cfg(test)]
mod tests {
    /// The modules a file declares with `pub mod name;`.
    fn declared_in(text: &str) -> impl Iterator<Item = &str> {
        text.lines()
            .filter_map(|l| l.strip_prefix("pub mod "))
            .filter_map(|l| l.strip_suffix(';'))
    }

    /// Every module has its line in the map above, and the map names no other.
    #[test]
    fn the_module_map_names_every_module() {
        let lib = include_str!("lib.rs");
        let layers = [
            ("forecast", include_str!("forecast/mod.rs")),
            ("host", include_str!("host/mod.rs")),
            ("ingest", include_str!("ingest/mod.rs")),
            ("serve", include_str!("serve/mod.rs")),
            ("evidence", include_str!("evidence/mod.rs")),
            ("run", include_str!("run/mod.rs")),
        ];
        let mut declared: Vec<String> = declared_in(lib).map(str::to_string).collect();
        for (layer, text) in layers {
            assert!(declared.iter().any(|d| d == layer), "{layer} is declared");
            declared.extend(declared_in(text).map(|m| format!("{layer}::{m}")));
        }
        let mapped: Vec<String> = lib
            .lines()
            .filter_map(|l| {
                l.strip_prefix("//! | ")?
                    .trim_start_matches('*')
                    .strip_prefix("[`")
            })
            .filter_map(|l| l.split_once("`]").map(|(m, _)| m.to_string()))
            .collect();
        assert!(declared.len() > 40, "{declared:?}");
        declared.sort_unstable();
        let mut mapped_sorted = mapped.clone();
        mapped_sorted.sort_unstable();
        assert_eq!(declared, mapped_sorted, "modules declared vs mapped");
    }

    /// What each layer may import: the layers listed before it in the map.
    const MAY_IMPORT: [(&str, &[&str]); 8] = [
        ("forecast", &[]),
        ("host", &[]),
        ("ingest", &["forecast", "host"]),
        ("serve", &["forecast", "host", "ingest"]),
        ("evidence", &["forecast", "host", "ingest", "serve"]),
        (
            "cli",
            &["forecast", "host", "ingest", "serve", "evidence", "config"],
        ),
        (
            "config",
            &["forecast", "host", "ingest", "serve", "evidence", "cli"],
        ),
        (
            "run",
            &[
                "forecast", "host", "ingest", "serve", "evidence", "cli", "config",
            ],
        ),
    ];

    /// The crate's top-level modules that `text` names in code (`crate::name`), comments
    /// left out: a doc comment may point up the layers, code may not.
    fn imports(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let code = line.split(" // ").next().unwrap_or(line);
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '{')
                    .collect();
                found.push(name);
                rest = after;
            }
        }
        found
    }

    /// No layer imports one listed after it, and the core imports no other layer: every
    /// `crate::` path in every file is checked against [`MAY_IMPORT`].
    #[test]
    fn no_layer_imports_a_higher_one() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for (layer, _) in MAY_IMPORT {
            let folder = src.join(layer);
            if folder.is_dir() {
                for entry in std::fs::read_dir(&folder).expect("layer folder") {
                    files.push((layer, entry.expect("entry").path()));
                }
            } else {
                files.push((layer, src.join(format!("{layer}.rs"))));
            }
        }
        assert!(files.len() > 40, "{} files", files.len());
        let mut wrong = Vec::new();
        for (layer, path) in &files {
            let allowed = MAY_IMPORT
                .iter()
                .find(|(l, _)| l == layer)
                .map(|(_, a)| *a)
                .expect("listed");
            let text = std::fs::read_to_string(path).expect("readable source");
            for name in imports(&text) {
                if name != *layer && !allowed.contains(&name.as_str()) {
                    wrong.push(format!("{}: crate::{name}", path.display()));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports up the layers:\n{}",
            wrong.join("\n")
        );
        // The checker itself finds an import where there is one.
        assert_eq!(imports("use crate::serve::x; // crate::run"), ["serve"]);
    }
}
