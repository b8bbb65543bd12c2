//! flowcast: a Prometheus sidecar that forecasts a service's request rate 5–15 minutes
//! ahead with a calibrated uncertainty band.
//!
//! Data flow (the same engine runs in `run`, `demo` and `backtest`):
//!
//! ```text
//! source (scrape ─▶ exposition ─▶ selector, or a PromQL query) ─▶ engine: history
//!   (counter → 1-min rates → ring buffer → 5-min peak steps) ─▶ features ─▶ model (one
//!   batched tract run: series × Monte-Carlo passes) ─▶ band (u1, u2, u3, calibration)
//!   ─▶ shared (tick report) ─▶ metrics / server
//! ```
//!
//! The modules, and what each owns:
//!
//! | module | owns |
//! |---|---|
//! | [`cli`] | the command line (clap) and a command's exit code ([`cli::Failure`]) |
//! | [`config`] | file + env + flags → one validated [`config::Config`]; every default and limit |
//! | [`sidecar`] | assembling and stopping `flowcast run`; `check-config` |
//! | [`live`] | the live loop: poll, forecast and snapshot intervals, a tick on blocking threads |
//! | [`clock`] | Unix time for async code: the wall clock, or tokio's clock in tests |
//! | [`source`] | what one poll of the app or of Prometheus records; the backfill |
//! | [`backoff`] | back-off with jitter and the circuit breaker of a failing source |
//! | [`scrape`] | HTTP fetches: timeout, byte cap, status, TLS and credentials |
//! | [`promapi`] | the Prometheus HTTP API client (`query`, `query_range`) |
//! | [`exposition`] | parsing text 0.0.4 and OpenMetrics 1.0 bodies into samples |
//! | [`selector`] | the PromQL-style selector language: parser and matcher |
//! | [`shard`] | `--shard I/N`: which series this replica owns (Prometheus's `hashmod`) |
//! | [`dataset`] | recorded series and forecast rows as files: the strict CSV, the scorer's rows, targets and metrics |
//! | [`engine`] | the synchronous core: record, prepare, infer, band, judge; snapshot and restore |
//! | [`history`] | per-series ring buffers of 1-minute rates, the series cap |
//! | [`features`] | the model's input contract: steps → scale-free window |
//! | [`model`] | the only importer of tract: load, check against the card, batched MC passes |
//! | [`combine`] | the online combination: a week of steps, the experts and their weights |
//! | [`band`] | u1/u2/u3 → calibrated interval; the online calibration per series |
//! | [`webconfig`] | `--web.config.file`: TLS and bcrypt basic auth on the listener (exporter-toolkit format), reloaded |
//! | [`shared`] | what the server reads: the latest tick's reports, capacity signals, readiness |
//! | [`metrics`] | every metric's name, help and unit |
//! | [`gauge_table`] | the per-series gauge table and the `/metrics` text/gzip encoding |
//! | [`secrets`] | secret files held in memory, re-read by one background thread (no file I/O per request) |
//! | [`server`] | hyper: `/metrics`, `/healthz`, `/readyz`, `/`, `/api/v1/forecast` (routing) |
//! | [`page`] | the live web page at `/`: track record, band ahead, coverage, replicas |
//! | [`tick`] | what one tick produced per series (`TickReport`, `SeriesReport`): plain data |
//! | [`track`] | per series, the bands forecast for the last 3 hours of steps (bounded) |
//! | [`chart`] | inline SVG charts (axes in req/s and UTC, bands, lines, marks) for page and report |
//! | [`state`] | the `--state-dir` snapshot file format: write, read, vet |
//! | [`pages`] | giving start-up code pages back to the system (the one `unsafe` call) |
//! | [`faults`] | scripted faults for tests, compiled only with the `fault-injection` feature |
//! | [`demo`] | `flowcast demo`: a synthetic app and the real sidecar on loopback |
//! | [`backtest`] | `flowcast backtest`: replay a CSV on a simulated clock, score, plot |
//! | [`scaling`] | the backtest's scaling what-if (scaling.py's model) and its recommendation |
//! | [`report`] | `backtest --report`: the self-contained HTML report of one backtest |
//! | [`baselines`] | persistence, PromQL and Holt baselines run in-process (baselines.py's a, c, d) |
//! | [`bench`] | `flowcast bench`: timed ticks of synthetic series, and the soak |

pub mod backoff;
pub mod backtest;
pub mod band;
pub mod baselines;
pub mod bench;
pub mod chart;
pub mod cli;
pub mod clock;
pub mod combine;
pub mod config;
pub mod dataset;
pub mod demo;
pub mod engine;
pub mod exposition;
pub mod faults;
pub mod features;
pub mod gauge_table;
pub mod history;
pub mod live;
pub mod metrics;
pub mod model;
pub mod page;
pub mod pages;
pub mod promapi;
pub mod report;
pub mod scaling;
pub mod scrape;
pub mod secrets;
pub mod selector;
pub mod server;
pub mod shard;
pub mod shared;
pub mod sidecar;
pub mod source;
pub mod state;
pub mod tick;
pub mod track;
pub mod webconfig;

#[cfg(test)]
mod tests {
    /// Every module has its line in the map above, and the map names no other.
    #[test]
    fn the_module_map_names_every_module() {
        let lib = include_str!("lib.rs");
        let declared: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod "))
            .filter_map(|l| l.strip_suffix(';'))
            .collect();
        let mapped: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.strip_prefix("//! | [`"))
            .filter_map(|l| l.split_once("`]").map(|(name, _)| name))
            .collect();
        assert!(declared.len() > 20, "{declared:?}");
        let mut a = declared.clone();
        let mut b = mapped.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "modules declared vs mapped");
    }
}
