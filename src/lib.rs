//! flowcast: a Prometheus sidecar that forecasts a service's request rate 5–15 minutes
//! ahead with a calibrated uncertainty band.
//!
//! Data flow (the same core runs in `run`, `demo` and `backtest`):
//!
//! ```text
//! scrape ─▶ exposition (parse, select) ─▶ history (counter → 1-min rates → ring buffer
//!   → 5-min peak steps) ─▶ features (scale-free window) ─▶ model (one batched tract run:
//!   series × Monte-Carlo passes) ─▶ band (u1, u2, u3, calibration) ─▶ metrics / server
//! ```
//!
//! Modules: [`config`] and [`cli`] parse settings at the edge; [`scrape`] fetches;
//! [`exposition`] parses; [`history`] keeps fixed-size per-series state; [`features`] owns
//! the model contract; [`model`] is the only module that imports tract; [`band`] turns
//! model outputs into calibrated intervals; [`pipeline`] runs a tick; [`state`] snapshots what it learnt; [`pages`] gives start-up code back to the system; [`metrics`] names
//! every metric; [`server`] serves them; [`sidecar`], [`demo`] and [`backtest`] are drivers.

pub mod backoff;
pub mod backtest;
pub mod band;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
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
pub mod pages;
pub mod promapi;
pub mod scrape;
pub mod selector;
pub mod server;
pub mod shard;
pub mod shared;
pub mod sidecar;
pub mod source;
pub mod state;
