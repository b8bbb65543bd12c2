//! Bytes from outside become samples: HTTP fetches with their limits and credentials, the
//! exposition parsers, the selector, the Prometheus API client, one poll of a source (and
//! the backfill), and the back-off of a failing source.
//!
//! May import `forecast` (a poll records into the engine) and `host` (the clock, secret
//! files). It does not publish: what a poll did comes back as a report that the live loop
//! hands to the metrics, so nothing here imports `serve`.

pub mod backoff;
pub mod exposition;
pub mod promapi;
pub mod scrape;
pub mod selector;
pub mod source;
