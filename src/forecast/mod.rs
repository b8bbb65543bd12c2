//! The pure forecasting core: history, features, the model, the online combination, the
//! band, the engine that ties them into a tick, and the snapshot format of what it learnt.
//!
//! Owns every number flowcast forecasts and how it is learnt. Synchronous and
//! deterministic given a seed: no clock (every timestamp is an argument), no async, no
//! network. Imports no other layer of the crate, so `run`, `demo` and `backtest` share it
//! unchanged and a test of it needs nothing but data.

pub mod band;
pub mod combine;
pub mod engine;
pub mod features;
pub mod history;
pub mod model;
pub mod shard;
pub mod state;
pub mod tick;
