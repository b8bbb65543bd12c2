//! Per-series history: counter samples become 1-minute rates in fixed-capacity ring
//! buffers, and ring buffers become 5-minute step values (METHOD.md §1).
//!
//! This module owns the series set and its cap, counter-reset handling and holes. It has no
//! clock (every call takes the time as an argument), no I/O and no async, so the live
//! sidecar, the demo and the backtest share it unchanged. Memory per series is fixed by
//! [`RING_MINUTES`]: nothing here grows with uptime.

use std::collections::HashMap;

/// Seconds in one minute bucket.
pub const MINUTE_SECONDS: i64 = 60;
/// How far past the clock a timestamp may be (samples, Prometheus points, snapshot
/// entries, backtest rows); later ones are refused and never move a ring.
pub const FUTURE_SKEW_SECONDS: i64 = 300;
/// Seconds in one model step (the 5-minute window whose peak 1-minute rate is the target).
pub const STEP_SECONDS: i64 = 300;
/// Minutes held per series: 36 five-minute steps (3 h) of model input, 15 minutes of
/// targets still being scored, plus slack for late samples.
pub const RING_MINUTES: usize = 4 * 60;

/// A fixed-capacity ring of per-minute rates (req/s); `NaN` marks a hole.
///
/// Slot `m % RING_MINUTES` holds minute `m` (unix minutes) for every `m` in
/// `(newest - RING_MINUTES, newest]`. Advancing `newest` clears the slots it passes, so a
/// gap in the data stays a hole and is never filled with an older value.
#[derive(Debug, Clone)]
pub struct MinuteRing {
    rates: Box<[f32]>,
    newest: Option<i64>,
}

impl Default for MinuteRing {
    fn default() -> Self {
        Self::new()
    }
}

impl MinuteRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self {
            rates: vec![f32::NAN; RING_MINUTES].into_boxed_slice(),
            newest: None,
        }
    }

    /// The ring's contents for a snapshot: the newest minute and every slot, raw.
    pub fn to_parts(&self) -> (Option<i64>, Vec<f32>) {
        (self.newest, self.rates.to_vec())
    }

    /// Rebuilds a ring from [`MinuteRing::to_parts`]; refuses a wrong length, a value that
    /// [`MinuteRing::record`] would refuse, or data in a ring with no newest minute.
    pub fn from_parts(newest: Option<i64>, rates: Vec<f32>) -> Result<Self, &'static str> {
        if rates.len() != RING_MINUTES {
            return Err("ring has the wrong length");
        }
        if rates.iter().any(|r| r.is_infinite() || *r < 0.0) {
            return Err("ring holds a negative or infinite rate");
        }
        if newest.is_none() && rates.iter().any(|r| !r.is_nan()) {
            return Err("ring holds rates but no newest minute");
        }
        if newest.is_some_and(|m| m.checked_add(RING_MINUTES as i64).is_none() || m < 0) {
            return Err("ring's newest minute is out of range");
        }
        Ok(Self {
            rates: rates.into_boxed_slice(),
            newest,
        })
    }

    /// Records the rate of unix minute `minute`. Returns `false` (and changes nothing) when
    /// the minute is older than the ring holds or the rate is not a finite non-negative
    /// number.
    pub fn record(&mut self, minute: i64, rate: f64) -> bool {
        if !rate.is_finite() || rate < 0.0 {
            return false;
        }
        match self.newest {
            Some(newest) if minute <= newest - RING_MINUTES as i64 => return false,
            Some(newest) if minute > newest => {
                let first_cleared = (newest + 1).max(minute - RING_MINUTES as i64 + 1);
                for m in first_cleared..=minute {
                    self.rates[slot(m)] = f32::NAN;
                }
                self.newest = Some(minute);
            }
            Some(_) => {}
            None => self.newest = Some(minute),
        }
        self.rates[slot(minute)] = rate as f32;
        true
    }

    /// The rate of `minute`, or `None` for a hole or a minute outside the ring.
    pub fn get(&self, minute: i64) -> Option<f64> {
        let newest = self.newest?;
        if minute > newest || minute <= newest - RING_MINUTES as i64 {
            return None;
        }
        let v = self.rates[slot(minute)];
        (!v.is_nan()).then_some(f64::from(v))
    }

    /// The newest minute recorded so far.
    pub fn newest_minute(&self) -> Option<i64> {
        self.newest
    }

    /// Number of minutes that hold a rate.
    pub fn present_minutes(&self) -> usize {
        match self.newest {
            None => 0,
            Some(_) => self.rates.iter().filter(|v| !v.is_nan()).count(),
        }
    }

    /// Peak 1-minute rate over the minutes in `[start, start + STEP_SECONDS)` (unix seconds,
    /// a multiple of 60), or `None` when the window holds no rate.
    pub fn step_value(&self, start: i64) -> Option<f64> {
        let first = start.div_euclid(MINUTE_SECONDS);
        (first..first + STEP_SECONDS / MINUTE_SECONDS)
            .filter_map(|m| self.get(m))
            .reduce(f64::max)
    }

    /// Fills `out` with the step values of the `out.len()` windows that end at `origin`,
    /// oldest first: window `k` starts at `origin - STEP_SECONDS * (out.len() - k)`.
    pub fn step_values(&self, origin: i64, out: &mut [Option<f64>]) {
        let n = out.len() as i64;
        for (k, slot) in out.iter_mut().enumerate() {
            *slot = self.step_value(origin - STEP_SECONDS * (n - k as i64));
        }
    }
}

fn slot(minute: i64) -> usize {
    minute.rem_euclid(RING_MINUTES as i64) as usize
}

/// Turns scrape-time increments into 1-minute rates.
///
/// An increment observed over `(t - dt, t]` is attributed to the minute containing `t`;
/// a minute's rate is the sum of its increments over the sum of their durations. A minute
/// is emitted once the clock has passed its end ([`RateAccumulator::flush_until`]).
#[derive(Debug, Clone, Default)]
pub struct RateAccumulator {
    minute: Option<i64>,
    increase: f64,
    seconds: f64,
}

impl RateAccumulator {
    /// Adds an increase of `increase` observed over the `seconds` ending at `t` (unix seconds).
    /// Returns a finished `(minute, rate)` when `t` starts a new minute.
    pub fn add(&mut self, t: f64, seconds: f64, increase: f64) -> Option<(i64, f64)> {
        let minute = (t / MINUTE_SECONDS as f64).floor() as i64;
        let finished = match self.minute {
            Some(m) if m != minute => self.take(),
            _ => None,
        };
        self.minute = Some(minute);
        self.increase += increase;
        self.seconds += seconds;
        finished
    }

    /// Emits the pending minute if it ended at or before `now` (unix seconds).
    pub fn flush_until(&mut self, now: f64) -> Option<(i64, f64)> {
        let m = self.minute?;
        if ((m + 1) * MINUTE_SECONDS) as f64 <= now {
            self.take()
        } else {
            None
        }
    }

    /// Drops the pending minute (its data straddled a hole).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn take(&mut self) -> Option<(i64, f64)> {
        let m = self.minute.take()?;
        let out = (self.seconds > 0.0).then(|| (m, self.increase / self.seconds));
        self.increase = 0.0;
        self.seconds = 0.0;
        out
    }
}

/// One forecast series: its ring of minute rates and the rate it is accumulating.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Values of the `by` labels that identify the series (empty without `by`).
    pub key: Vec<String>,
    /// Completed 1-minute rates.
    pub ring: MinuteRing,
    accumulator: RateAccumulator,
    increase: f64,
    tainted: bool,
    /// Unix seconds of the newest sample or rate seen for the series (eviction).
    last_seen: f64,
}

impl Series {
    /// Notes that the series had data at `t` (unix seconds); time never goes back.
    pub fn touch(&mut self, t: f64) {
        if t.is_finite() {
            self.last_seen = self.last_seen.max(t);
        }
    }

    /// Unix seconds of the newest sample or rate seen for the series.
    pub fn last_seen(&self) -> f64 {
        self.last_seen
    }
}

/// What one scrape did to the series set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObserveStats {
    /// Samples that matched the selector.
    pub matched: usize,
    /// Counter resets seen (a child counter went down).
    pub resets: usize,
    /// Samples skipped because their value was NaN, infinite or negative.
    pub invalid: usize,
    /// Samples whose series was refused because the series cap was reached.
    pub dropped: usize,
    /// Samples of series that belong to another shard (`--shard`).
    pub not_owned: usize,
}

/// Limits of a [`SeriesSet`].
#[derive(Debug, Clone, Copy)]
pub struct SeriesLimits {
    /// Most series kept (each a distinct combination of `by` label values).
    pub max_series: usize,
    /// Most child counters tracked across all series (each matching label set).
    pub max_children: usize,
    /// Longest interval between two scrapes that still yields a rate; longer is a hole.
    pub max_gap_seconds: f64,
    /// Only series of this shard are kept (`--shard I/N`); `None` keeps all.
    pub shard: Option<crate::forecast::shard::Shard>,
    /// A series with no sample for this long (seconds) is evicted by
    /// [`SeriesSet::evict_stale`]; `None` keeps every series (the backtest).
    pub stale_after_seconds: Option<f64>,
}

/// Why a series key was not admitted.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// `max_series` is reached.
    Cap,
    /// The key belongs to another shard.
    OtherShard,
}

#[derive(Debug, Clone, Copy)]
struct Child {
    last: f64,
    series: usize,
    seen: u64,
}

/// All series of one target: child counters are summed into series by their `by` labels.
///
/// Each matching child counter (one label set) is tracked on its own so that a reset of one
/// child never looks like a drop of the whole sum: increases are computed per child, as
/// PromQL's `sum(rate(...))` does, then added up per series.
#[derive(Debug)]
pub struct SeriesSet {
    limits: SeriesLimits,
    series: Vec<Series>,
    index: HashMap<Vec<String>, usize>,
    children: HashMap<u64, Child>,
    last_scrape: Option<f64>,
    epoch: u64,
}

impl SeriesSet {
    /// An empty set with the given limits.
    pub fn new(limits: SeriesLimits) -> Self {
        Self {
            limits,
            series: Vec::new(),
            index: HashMap::new(),
            children: HashMap::new(),
            last_scrape: None,
            epoch: 0,
        }
    }

    /// The series, in the order they were first seen.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Mutable access for drivers that record rates directly (backtest, demo seeding).
    pub fn series_mut(&mut self) -> &mut [Series] {
        &mut self.series
    }

    /// The index of the series with this key, if it exists.
    pub fn find(&self, key: &[String]) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Whether this set keeps series with this key at all (its shard, if split).
    pub fn owns(&self, key: &[String]) -> bool {
        self.limits.shard.is_none_or(|s| s.owns(key))
    }

    /// The index of the series with this key, creating it if the cap and the shard allow.
    pub fn series_index(&mut self, key: &[String]) -> Option<usize> {
        self.admit(key).ok()
    }

    /// [`Self::series_index`], saying why a key was refused (the shard's hash is computed
    /// once per new key).
    fn admit(&mut self, key: &[String]) -> Result<usize, Refused> {
        if let Some(&i) = self.index.get(key) {
            return Ok(i);
        }
        if !self.owns(key) {
            return Err(Refused::OtherShard);
        }
        if self.series.len() >= self.limits.max_series {
            return Err(Refused::Cap);
        }
        let i = self.series.len();
        self.series.push(Series {
            key: key.to_vec(),
            ..Series::default()
        });
        self.index.insert(key.to_vec(), i);
        Ok(i)
    }

    /// Records one scrape taken at `t` (unix seconds): `samples` yields, for every sample
    /// that matched the selector, a hash of its full label set, its `by` key and its value.
    ///
    /// A scrape interval counts towards a series' rate only when every child counter of the
    /// series was known and valid at both ends of it: a new, vanished or invalid child makes
    /// the increase unknown, so that interval is left out rather than guessed.
    pub fn observe<'k>(
        &mut self,
        t: f64,
        samples: impl IntoIterator<Item = (u64, &'k [String], f64)>,
    ) -> ObserveStats {
        let mut stats = ObserveStats::default();
        if !t.is_finite() {
            for _ in samples {
                stats.matched += 1;
            }
            return stats;
        }
        if self.last_scrape.is_some_and(|last| t <= last) {
            // The wall clock stepped back (NTP): no rate spans the step, but this scrape
            // is the new baseline, so rates resume at the next one rather than once the
            // clock has caught up with the last scrape (an hour later for a 1-h step). The
            // minute each series was accumulating was measured on the old clock: kept.
            for s in &mut self.series {
                if let Some((m, rate)) = s.accumulator.take() {
                    s.ring.record(m, rate);
                }
            }
            self.mark_gap();
        }
        self.epoch += 1;
        for s in &mut self.series {
            s.increase = 0.0;
            s.tainted = false;
        }
        for (hash, key, value) in samples {
            stats.matched += 1;
            let series = match self.admit(key) {
                Ok(series) => series,
                Err(Refused::Cap) => {
                    stats.dropped += 1;
                    continue;
                }
                Err(Refused::OtherShard) => {
                    stats.not_owned += 1;
                    continue;
                }
            };
            self.series[series].touch(t);
            if !value.is_finite() || value < 0.0 {
                stats.invalid += 1;
                self.series[series].tainted = true;
                continue;
            }
            let room = self.children.len() < self.limits.max_children;
            match self.children.get_mut(&hash) {
                Some(child) if child.series == series => {
                    let increase = if value >= child.last {
                        value - child.last
                    } else {
                        stats.resets += 1;
                        value
                    };
                    child.last = value;
                    child.seen = self.epoch;
                    self.series[series].increase += increase;
                }
                Some(_) => {}
                None if room => {
                    let seen = self.epoch;
                    self.children.insert(
                        hash,
                        Child {
                            last: value,
                            series,
                            seen,
                        },
                    );
                    self.series[series].tainted = true;
                }
                None => stats.dropped += 1,
            }
        }
        let epoch = self.epoch;
        let series = &mut self.series;
        self.children.retain(|_, c| {
            if c.seen != epoch {
                series[c.series].tainted = true;
            }
            c.seen == epoch
        });
        let dt = self.last_scrape.map(|last| t - last);
        self.last_scrape = Some(t);
        for s in &mut self.series {
            match dt {
                Some(d) if d <= self.limits.max_gap_seconds => {
                    if s.tainted {
                        continue;
                    }
                    if let Some((m, rate)) = s.accumulator.add(t, d, s.increase) {
                        s.ring.record(m, rate);
                    }
                }
                // A gap too long to trust: the minutes in it stay holes.
                _ => s.accumulator.clear(),
            }
        }
        stats
    }

    /// Completes every pending minute that ended by `now` (unix seconds).
    pub fn flush_until(&mut self, now: f64) {
        for s in &mut self.series {
            if let Some((m, rate)) = s.accumulator.flush_until(now) {
                s.ring.record(m, rate);
            }
        }
    }

    /// Removes every series with no sample since `now - stale_after_seconds` (nothing
    /// without a limit), freeing its memory and its cap slot, and returns each removed
    /// series' index before the call and its key, in index order. With nothing stale it
    /// allocates nothing. Child counters of removed series go with them; the others are
    /// renumbered.
    pub fn evict_stale(&mut self, now: f64) -> Vec<(usize, Vec<String>)> {
        let Some(stale_after) = self.limits.stale_after_seconds else {
            return Vec::new();
        };
        let is_kept = |s: &Series| now - s.last_seen <= stale_after;
        // The common tick: nothing stale, and nothing allocated to find that out.
        if self.series.iter().all(is_kept) {
            return Vec::new();
        }
        let mut renumbered = Vec::with_capacity(self.series.len());
        let mut removed = Vec::new();
        let mut next = 0;
        for (index, series) in self.series.iter_mut().enumerate() {
            if is_kept(series) {
                renumbered.push(Some(next));
                next += 1;
            } else {
                renumbered.push(None);
                // The series is dropped below, so its key moves out rather than being copied.
                removed.push((index, std::mem::take(&mut series.key)));
            }
        }
        let mut flags = renumbered.iter();
        self.series
            .retain(|_| flags.next().is_some_and(|slot| slot.is_some()));
        self.series.shrink_to(self.series.len().max(1) * 2);
        self.index = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        self.children.retain(|_, c| match renumbered[c.series] {
            Some(i) => {
                c.series = i;
                true
            }
            None => false,
        });
        removed
    }

    /// Forgets the time of the last scrape, so the next scrape gives no rate (after a
    /// failed scrape whose data is unknown).
    pub fn mark_gap(&mut self) {
        self.last_scrape = None;
        for s in &mut self.series {
            s.accumulator.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> SeriesLimits {
        SeriesLimits {
            max_series: 3,
            max_children: 100,
            max_gap_seconds: 60.0,
            shard: None,
            stale_after_seconds: None,
        }
    }

    /// Eviction removes exactly the series without a sample for the limit, frees their
    /// cap slots, and leaves the survivors' child counters attached to them.
    #[test]
    fn eviction_frees_the_cap_and_keeps_the_survivors_counting() {
        let mut set = SeriesSet::new(SeriesLimits {
            stale_after_seconds: Some(600.0),
            ..limits()
        });
        let (a, b, c) = (
            vec!["a".to_string()],
            vec!["b".to_string()],
            vec!["c".to_string()],
        );
        set.observe(0.0, [(1, &a[..], 1.0), (2, &b[..], 1.0), (3, &c[..], 1.0)]);
        let d = vec!["d".to_string()];
        // a goes quiet; b and c keep coming, so d is refused by the cap (3).
        let mut t = 0.0;
        for _ in 0..50 {
            t += 15.0;
            let stats = set.observe(t, [(2, &b[..], t), (3, &c[..], 2.0 * t), (4, &d[..], 0.0)]);
            assert_eq!(stats.dropped, 1);
        }
        assert_eq!(set.evict_stale(t), [(0, a.clone())], "only a is stale");
        assert_eq!(set.evict_stale(t), [], "nothing more");
        assert_eq!(set.find(&b), Some(0));
        assert_eq!(set.find(&c), Some(1));
        assert_eq!(set.find(&a), None);
        // b's and c's counters still land on their own series after the renumbering.
        for _ in 0..8 {
            t += 15.0;
            set.observe(t, [(2, &b[..], t), (3, &c[..], 2.0 * t), (4, &d[..], 0.0)]);
        }
        set.flush_until(t + 60.0);
        let newest = |i: usize| {
            let r = &set.series()[i].ring;
            r.get(r.newest_minute().expect("rates"))
        };
        assert_eq!((newest(0), newest(1)), (Some(1.0), Some(2.0)));
        assert_eq!(set.find(&d), Some(2), "d took a's place");
    }

    #[test]
    fn ring_holds_at_most_its_capacity_and_clears_gaps() {
        let mut r = MinuteRing::new();
        for m in 0..(RING_MINUTES as i64 + 10) {
            assert!(r.record(m, m as f64));
        }
        assert_eq!(r.present_minutes(), RING_MINUTES);
        assert_eq!(r.get(9), None, "evicted");
        assert_eq!(r.get(10), Some(10.0));
        // A jump leaves the skipped minutes as holes, not old values.
        let newest = RING_MINUTES as i64 + 9;
        assert!(r.record(newest + 5, 1.0));
        for m in newest + 1..newest + 5 {
            assert_eq!(r.get(m), None);
        }
        assert!(!r.record(0, 1.0), "too old");
        assert!(!r.record(newest + 5, f64::NAN));
        assert!(!r.record(newest + 5, -1.0));
    }

    #[test]
    fn step_value_is_the_peak_minute_and_holes_stay_holes() {
        let mut r = MinuteRing::new();
        for (m, v) in [(100, 1.0), (101, 5.0), (102, 2.0), (104, 3.0)] {
            r.record(m, v);
        }
        assert_eq!(r.step_value(100 * 60), Some(5.0));
        assert_eq!(r.step_value(105 * 60), None);
        let mut out = [None; 3];
        r.step_values(110 * 60, &mut out);
        assert_eq!(out, [None, Some(5.0), None]);
    }

    #[test]
    fn counters_become_rates_with_resets_and_holes() {
        let mut set = SeriesSet::new(limits());
        let key: Vec<String> = vec![];
        let scrape =
            |set: &mut SeriesSet, t: f64, v: f64| set.observe(t, [(1u64, key.as_slice(), v)]);
        // 15 s scrapes at 10 req/s from t = 600.
        for i in 0..=8 {
            scrape(&mut set, 600.0 + 15.0 * i as f64, 150.0 * i as f64);
        }
        set.flush_until(720.0);
        let ring = &set.series()[0].ring;
        assert_eq!(ring.get(10), Some(10.0));
        assert_eq!(ring.get(11), Some(10.0));
        // A reset: the counter restarts at 30 (count from the new value).
        let stats = scrape(&mut set, 735.0, 30.0);
        assert_eq!(stats.resets, 1);
        scrape(&mut set, 750.0, 180.0);
        set.flush_until(800.0);
        // Minute 12 holds the pairs ending at 720 (+150), 735 (reset: +30) and 750 (+150).
        let rate = set.series()[0].ring.get(12).expect("minute 12");
        assert!((rate - 330.0 / 45.0).abs() < 1e-4, "{rate}");
        // A 5-minute silence is longer than max_gap: those minutes stay holes.
        scrape(&mut set, 1050.0, 3180.0);
        scrape(&mut set, 1065.0, 3330.0);
        set.flush_until(1200.0);
        let ring = &set.series()[0].ring;
        for m in 13..17 {
            assert_eq!(ring.get(m), None, "minute {m}");
        }
        assert_eq!(ring.get(17), Some(10.0));
    }

    #[test]
    fn children_are_summed_per_series_and_a_child_reset_is_not_a_drop() {
        let mut set = SeriesSet::new(limits());
        let a = vec!["a".to_string()];
        set.observe(0.0, [(1, a.as_slice(), 100.0), (2, a.as_slice(), 1000.0)]);
        // Child 2 resets to 5; child 1 grows by 60: the increase is 60 + 5, not a reset of 1100.
        set.observe(30.0, [(1, a.as_slice(), 160.0), (2, a.as_slice(), 5.0)]);
        set.flush_until(60.0);
        let rate = set.series()[0].ring.get(0).expect("minute 0 recorded");
        assert!((rate - 65.0 / 30.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn the_series_cap_counts_what_it_drops() {
        let mut set = SeriesSet::new(limits());
        let keys: Vec<Vec<String>> = (0..5).map(|i| vec![i.to_string()]).collect();
        let stats = set.observe(
            0.0,
            keys.iter()
                .enumerate()
                .map(|(i, k)| (i as u64, k.as_slice(), 1.0)),
        );
        assert_eq!(set.series().len(), 3);
        assert_eq!(stats.dropped, 2);
    }

    /// A shard keeps only its own series; the others are neither kept nor counted as
    /// dropped, and the cap counts only this shard's series.
    #[test]
    fn a_shard_keeps_its_own_series_only() {
        let shard = crate::forecast::shard::Shard { index: 1, count: 2 };
        let mut set = SeriesSet::new(SeriesLimits {
            max_series: 100,
            shard: Some(shard),
            stale_after_seconds: None,
            ..limits()
        });
        let keys: Vec<Vec<String>> = (0..40).map(|i| vec![format!("/r{i}")]).collect();
        let owned = keys.iter().filter(|k| shard.owns(k)).count();
        assert!((10..=30).contains(&owned), "{owned} of 40");
        let stats = set.observe(
            0.0,
            keys.iter()
                .enumerate()
                .map(|(i, k)| (i as u64, k.as_slice(), 1.0)),
        );
        assert_eq!(set.series().len(), owned);
        assert!(set.series().iter().all(|s| shard.owns(&s.key)));
        assert_eq!((stats.not_owned, stats.dropped), (40 - owned, 0));
        assert_eq!(set.series_index(&keys[0]).is_some(), shard.owns(&keys[0]));
    }

    #[test]
    fn invalid_values_and_backwards_clocks_do_not_corrupt_history() {
        let mut set = SeriesSet::new(limits());
        let k: Vec<String> = vec![];
        set.observe(0.0, [(1, k.as_slice(), 0.0)]);
        set.observe(30.0, [(1, k.as_slice(), 300.0)]);
        let s = set.observe(45.0, [(1, k.as_slice(), f64::NAN)]);
        assert_eq!(s.invalid, 1);
        set.observe(20.0, [(1, k.as_slice(), 1e12)]);
        set.observe(60.0, [(1, k.as_slice(), 1e12 + 150.0)]);
        set.observe(75.0, [(1, k.as_slice(), 1e12 + 300.0)]);
        set.flush_until(180.0);
        let ring = &set.series()[0].ring;
        // The invalid sample left its interval out instead of diluting minute 0.
        assert_eq!(ring.get(0), Some(10.0));
        // After the invalid sample the child is new again (its increase unknown); the
        // backwards scrape (at 20, after 45) gave no rate but is the new baseline, so
        // minute 1 counts (20, 60] and (60, 75]: 300 over 55 s.
        assert_eq!(ring.get(1), Some(f64::from((300.0 / 55.0) as f32)));
    }

    #[test]
    fn after_the_clock_steps_back_an_hour_rates_resume_at_the_next_scrape() {
        let mut set = SeriesSet::new(limits());
        let k: Vec<String> = vec![];
        let mut value = 0.0;
        let mut scrape = |set: &mut SeriesSet, t: f64| {
            value += 15.0 * 10.0;
            set.observe(t, [(1, k.as_slice(), value)]);
        };
        for i in 0..=20 {
            scrape(&mut set, 7200.0 + 15.0 * f64::from(i));
        }
        // NTP steps the clock back an hour; scrapes go on every 15 s.
        for i in 0..=8 {
            scrape(&mut set, 3600.0 + 300.0 + 15.0 * f64::from(i));
        }
        set.flush_until(7600.0);
        let ring = &set.series()[0].ring;
        assert_eq!(ring.get(120), Some(10.0), "before the step");
        // Minute 65 (3900–3960 s): its scrapes after the first one after the step.
        assert_eq!(ring.get(65), Some(10.0), "straight after the step");
        assert_eq!(ring.get(66), Some(10.0));
        assert!(ring.get(64).is_none(), "no rate spans the step");
    }

    proptest! {
        #[test]
        fn ring_never_holds_more_than_capacity(
            ops in proptest::collection::vec((0i64..2000, 0.0f64..1e6), 0..600)
        ) {
            let mut r = MinuteRing::new();
            for (m, v) in ops {
                r.record(m, v);
                prop_assert!(r.present_minutes() <= RING_MINUTES);
                if let Some(n) = r.newest_minute() {
                    prop_assert_eq!(r.get(n - RING_MINUTES as i64), None);
                }
            }
        }

        #[test]
        fn rates_are_finite_and_non_negative(
            values in proptest::collection::vec(prop_oneof![
                Just(f64::NAN), Just(f64::INFINITY), -10.0f64..1e9], 1..100)
        ) {
            let mut set = SeriesSet::new(limits());
            let k: Vec<String> = vec![];
            for (i, v) in values.iter().enumerate() {
                set.observe(i as f64 * 15.0, [(1, k.as_slice(), *v)]);
            }
            set.flush_until(values.len() as f64 * 15.0 + 60.0);
            for m in 0..(values.len() as i64 / 4 + 2) {
                if let Some(r) = set.series()[0].ring.get(m) {
                    prop_assert!(r.is_finite() && r >= 0.0);
                }
            }
        }
    }
}
