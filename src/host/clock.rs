//! Unix time for the async code: the system's wall clock in production, or tokio's clock
//! (which tests pause and advance) from a chosen start.
//!
//! Owns nothing else. The pure core never reads a clock: it takes timestamps as arguments,
//! and the live code reads them here, once per poll or tick.

use std::time::{SystemTime, UNIX_EPOCH};

/// Where Unix seconds come from.
#[derive(Debug, Clone, Copy)]
pub enum UnixClock {
    /// The system's wall clock.
    System,
    /// `start` at the moment `base` of tokio's clock, moving with it: under
    /// `tokio::time::pause` a test advances it with `tokio::time::advance`.
    Tokio {
        /// Unix seconds at `base`.
        start: f64,
        /// The tokio instant that reads as `start`.
        base: tokio::time::Instant,
    },
    /// The system's wall clock plus an offset in seconds that a test changes while the
    /// sidecar runs: an NTP step, back or forward, at an instant the test picks.
    #[cfg(feature = "fault-injection")]
    Shifted(&'static std::sync::atomic::AtomicI64),
}

impl UnixClock {
    /// A clock that reads `start` now and moves with tokio's clock.
    pub fn tokio_from(start: f64) -> Self {
        Self::Tokio {
            start,
            base: tokio::time::Instant::now(),
        }
    }

    /// Unix seconds now.
    pub fn now(&self) -> f64 {
        match self {
            Self::System => system_now(),
            Self::Tokio { start, base } => start + base.elapsed().as_secs_f64(),
            #[cfg(feature = "fault-injection")]
            Self::Shifted(offset) => {
                system_now() + offset.load(std::sync::atomic::Ordering::Acquire) as f64
            }
        }
    }
}

/// Unix seconds now, from the system's wall clock (0 if it is before 1970).
pub fn system_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let clock = UnixClock::tokio_from(1_700_000_000.0);
        assert_eq!(clock.now(), 1_700_000_000.0);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), 1_700_000_090.0);
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        let before = system_now();
        let read = UnixClock::System.now();
        assert!(read >= before && read < before + 60.0, "{before} {read}");
        assert!(before > 1.6e9, "after 2020: {before}");
    }
}
