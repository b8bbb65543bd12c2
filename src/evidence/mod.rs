//! Replay and judgement: a recorded series through the engine on a simulated clock, the
//! files it reads and writes, the baselines it is judged against, the scaling what-if, and
//! the self-contained HTML report.
//!
//! May import `forecast`, `host`, `ingest` and `serve` (the report draws with the page's
//! charts). It takes plain settings: the `backtest` command that reads the command line,
//! loads the model and writes the files lives in `run`.

pub mod backtest;
pub mod baselines;
pub mod dataset;
pub mod latency;
pub mod range;
pub mod report;
pub mod scaling;
