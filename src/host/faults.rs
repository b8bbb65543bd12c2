//! Scripted faults for the tests, so that "a snapshot half written" or "a `/metrics`
//! response in flight" is a state a test creates rather than a race it hopes to win.
//!
//! Compiled only with the `fault-injection` feature, which only the tests enable (the
//! crate's dev-dependency on itself): a shipped build has neither the hooks nor the names
//! of their environment variables, and every function here returns `None`.

use std::time::Duration;

/// Pause this many milliseconds after writing half of a snapshot's temporary file, so a
/// test can kill the process mid-write.
#[cfg(feature = "fault-injection")]
pub const SNAPSHOT_PAUSE_ENV: &str = "FLOWCAST_FAULT_SNAPSHOT_PAUSE_MS";

/// Hold every `/metrics` response this many milliseconds before its last chunk, so a test
/// can signal the process while a response is half sent.
#[cfg(feature = "fault-injection")]
pub const METRICS_HOLD_ENV: &str = "FLOWCAST_FAULT_METRICS_HOLD_MS";

/// While the file this names exists, every snapshot write fails with ENOSPC (a full state
/// volume), so a test can fill and free the volume without a small filesystem to mount.
#[cfg(feature = "fault-injection")]
pub const SNAPSHOT_NO_SPACE_ENV: &str = "FLOWCAST_FAULT_SNAPSHOT_NO_SPACE_FILE";

/// Whether a test has made the state volume full (see [`SNAPSHOT_NO_SPACE_ENV`]).
pub fn snapshot_no_space() -> bool {
    #[cfg(feature = "fault-injection")]
    {
        std::env::var_os(SNAPSHOT_NO_SPACE_ENV).is_some_and(|p| std::path::Path::new(&p).exists())
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        false
    }
}

/// The snapshot writer's pause, when a test set one.
pub fn snapshot_pause() -> Option<Duration> {
    #[cfg(feature = "fault-injection")]
    {
        millis(SNAPSHOT_PAUSE_ENV)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        None
    }
}

/// The `/metrics` hold, when a test set one.
pub fn metrics_hold() -> Option<Duration> {
    #[cfg(feature = "fault-injection")]
    {
        millis(METRICS_HOLD_ENV)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        None
    }
}

#[cfg(feature = "fault-injection")]
fn millis(var: &str) -> Option<Duration> {
    std::env::var(var)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}
