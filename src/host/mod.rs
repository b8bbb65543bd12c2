//! What the process takes from the machine it runs on: Unix time for the async code,
//! secret files held in memory and re-read off the runtime, giving start-up pages back to
//! the system, and the tests' scripted faults.
//!
//! Small, leaf-level services with no knowledge of forecasting or HTTP. Imports no other
//! layer; `ingest`, `serve` and `run` use it.

pub mod clock;
pub mod faults;
pub mod pages;
pub mod secrets;
