//! When to poll a failing source again: exponential back-off with jitter, and a circuit
//! breaker that pauses a source after repeated failures and probes it again later
//! (SPEC.md "Reliability rules", METHOD.md §6).
//!
//! A pure state machine over `tokio::time::Instant` (so tests drive it with paused time);
//! the live loop asks [`Backoff::may_poll`] on every poll tick and reports each outcome.

use std::time::Duration;

use tokio::time::Instant;

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Polling normally (perhaps backing off after a failure).
    Closed,
    /// The pause is over: the next poll is a probe.
    HalfOpen,
    /// Paused after repeated failures.
    Open,
}

impl Breaker {
    /// The value of `flowcast_source_circuit_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            Breaker::Closed => 0,
            Breaker::HalfOpen => 1,
            Breaker::Open => 2,
        }
    }
}

/// Back-off and breaker state of one source.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max_delay: Duration,
    threshold: u32,
    open_base: Duration,
    open_max: Duration,
    failures: u32,
    opened: u32,
    state: Breaker,
    next: Option<Instant>,
    rng: u64,
}

impl Backoff {
    /// Consecutive failures that open the breaker.
    pub const THRESHOLD: u32 = 5;

    /// A back-off for a source polled every `interval`: delays double from one interval up
    /// to 16 intervals (at most 5 minutes); after [`Backoff::THRESHOLD`] consecutive
    /// failures the breaker opens for 1 minute, doubling on each failed probe up to 15.
    pub fn new(interval: Duration, seed: u64) -> Self {
        Self {
            base: interval,
            max_delay: (interval * 16).min(Duration::from_secs(300)),
            threshold: Self::THRESHOLD,
            open_base: Duration::from_secs(60).max(interval * 2),
            open_max: Duration::from_secs(900),
            failures: 0,
            opened: 0,
            state: Breaker::Closed,
            next: None,
            rng: seed | 1,
        }
    }

    /// The breaker's state.
    pub fn state(&self) -> Breaker {
        self.state
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a poll may run at `now`; an open breaker whose pause is over turns
    /// half-open (the next poll is the probe).
    pub fn may_poll(&mut self, now: Instant) -> bool {
        let due = self.next.is_none_or(|next| now >= next);
        if due && self.state == Breaker::Open {
            self.state = Breaker::HalfOpen;
        }
        due
    }

    /// Records a poll's outcome at `now`.
    pub fn record(&mut self, ok: bool, now: Instant) {
        if ok {
            self.failures = 0;
            self.opened = 0;
            self.state = Breaker::Closed;
            self.next = None;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.state == Breaker::HalfOpen || self.failures >= self.threshold {
            let pause = self.open_base.saturating_mul(1 << self.opened.min(4));
            self.opened = self.opened.saturating_add(1);
            self.state = Breaker::Open;
            self.next = Some(now + self.jitter(pause.min(self.open_max)));
        } else {
            let delay = self.base.saturating_mul(1 << (self.failures - 1).min(16));
            self.next = Some(now + self.jitter(delay.min(self.max_delay)));
        }
    }

    /// `d` scaled by a factor in [0.5, 1.0): "equal jitter", so that many sidecars
    /// restarted together do not retry in lockstep.
    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64*: plenty for spreading retries.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        let unit = r as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + 0.5 * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls every `interval` of paused tokio time for `total`, with the source failing
    /// while `failing(t)` holds; returns the seconds at which polls ran and the states seen.
    async fn drive(
        b: &mut Backoff,
        interval: Duration,
        total: Duration,
        failing: impl Fn(Duration) -> bool,
    ) -> (Vec<u64>, Vec<Breaker>) {
        let start = Instant::now();
        let (mut polls, mut states) = (Vec::new(), Vec::new());
        while start.elapsed() < total {
            if b.may_poll(Instant::now()) {
                polls.push(start.elapsed().as_secs());
                b.record(!failing(start.elapsed()), Instant::now());
            }
            states.push(b.state());
            tokio::time::sleep(interval).await;
        }
        (polls, states)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_then_open_the_breaker_which_probes_and_closes() {
        let interval = Duration::from_secs(15);
        let mut b = Backoff::new(interval, 7);
        // Down for 10 minutes, then back.
        let (polls, states) = drive(&mut b, interval, Duration::from_secs(1200), |t| {
            t < Duration::from_secs(600)
        })
        .await;
        // Back-off: the gaps between the first failed polls grow.
        let gaps: Vec<u64> = polls.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] < gaps[2] && gaps[1] <= gaps[3], "gaps {gaps:?}");
        // The breaker opened after THRESHOLD failures and polled far less while down:
        // every 15 s would be 40 polls.
        assert!(states.contains(&Breaker::Open));
        let while_down = polls.iter().filter(|&&t| t < 600).count();
        assert!(
            (5..=12).contains(&while_down),
            "{while_down} polls while down: {polls:?}"
        );
        // Once the source is back, a probe closes the breaker and polling is regular.
        assert_eq!(b.state(), Breaker::Closed);
        assert_eq!(b.failures(), 0);
        let after: Vec<u64> = polls.iter().copied().filter(|&t| t > 900).collect();
        assert!(after.windows(2).all(|w| w[1] - w[0] == 15), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer() {
        let mut b = Backoff::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        for i in 0..Backoff::THRESHOLD {
            assert!(
                b.may_poll(Instant::now()),
                "failure {i}: the back-off is over"
            );
            b.record(false, Instant::now());
            if i + 1 < Backoff::THRESHOLD {
                assert!(!b.may_poll(Instant::now()), "failure {i}: backing off");
                tokio::time::advance(Duration::from_secs(20)).await;
            }
        }
        assert_eq!(b.state(), Breaker::Open);
        let first_pause = b.next.expect("pause") - Instant::now();
        assert!(!b.may_poll(Instant::now()));
        tokio::time::advance(first_pause).await;
        assert!(b.may_poll(Instant::now()));
        assert_eq!(b.state(), Breaker::HalfOpen);
        b.record(false, Instant::now());
        assert_eq!(b.state(), Breaker::Open);
        let second_pause = b.next.expect("pause") - Instant::now();
        // Jitter keeps each pause within [0.5, 1) of its nominal 60 s, then 120 s.
        assert!(first_pause >= Duration::from_secs(30) && first_pause < Duration::from_secs(60));
        assert!(second_pause >= Duration::from_secs(60) && second_pause < Duration::from_secs(120));
        assert!(t0.elapsed() >= Duration::from_secs(80));
    }
}
