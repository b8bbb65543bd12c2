//! What the world reads: every metric's name, the gauge table and its `/metrics` encoding,
//! the state the server reads, the track record of past bands, the web page and its
//! charts, the listener's web config (TLS, basic auth), and the hyper server itself.
//!
//! May import `forecast` (a tick's reports are what it serves), `host` and `ingest` (the
//! credential settings and the exposition formats it shares with the scraper). It never
//! reaches the engine or the model: the live loop publishes, the server only reads.

pub mod chart;
pub mod gauge_table;
pub mod metrics;
pub mod page;
pub mod server;
pub mod shared;
pub mod track;
pub mod webconfig;
