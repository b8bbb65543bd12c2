//! The commands that assemble processes: the sidecar (`flowcast run`, `check-config`) and
//! its live loop, the demo, the backtest command, and the bench.
//!
//! The top layer: it may import every other one, and the edge (`cli`, `config`), and
//! nothing imports it but `main`.

pub mod backtest;
pub mod bench;
pub mod demo;
pub mod live;
pub mod sidecar;
