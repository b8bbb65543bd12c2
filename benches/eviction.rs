//! What `Engine::evict_stale` costs on a tick with nothing stale (issue #20): the live loop
//! calls it every forecast tick when `series_stale_after` is set, so at 10,000 series it
//! must not copy every key each minute. A counting global allocator measures the heap
//! allocations of one call; the bench prints them with the time per call, so a change shows
//! in allocations per call.
//!
//! `cargo bench --bench eviction -- [SERIES]` (default 10,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flowcast::forecast::band::BandMode;
use flowcast::forecast::combine::ExpertSet;
use flowcast::forecast::engine::{Engine, EngineSettings};
use flowcast::forecast::history::SeriesLimits;
use flowcast::forecast::model::Model;

/// The system allocator, counting calls and bytes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let series: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let model = Arc::new(Model::embedded().expect("model"));
    let mut engine = Engine::new(
        model,
        EngineSettings {
            mc_passes: 1,
            seed: 1,
            band: BandMode::default(),
            experts: ExpertSet::ALL,
            limits: SeriesLimits {
                max_series: series,
                max_children: series,
                max_gap_seconds: 45.0,
                shard: None,
                stale_after_seconds: Some(3600.0),
            },
        },
    );
    let keys: Vec<Vec<String>> = (0..series)
        .map(|i| vec![format!("/api/route/{i}")])
        .collect();
    let t0 = 1_700_000_040.0;
    for (k, t) in [(1.0, t0), (2.0, t0 + 15.0)] {
        engine.observe(
            t,
            keys.iter()
                .enumerate()
                .map(|(i, key)| (i as u64, key.as_slice(), k * i as f64)),
        );
    }
    assert_eq!(engine.series_set().series().len(), series);
    let now = t0 as i64 + 60;
    // The first call also makes the engine's per-series state; measure the calls after it.
    assert!(engine.evict_stale(now).is_empty());

    let calls = 200u64;
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let mut evicted = 0;
    for _ in 0..calls {
        evicted += engine.evict_stale(std::hint::black_box(now)).len();
    }
    let elapsed = started.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - a0;
    let bytes = BYTES.load(Ordering::Relaxed) - b0;
    assert_eq!(evicted, 0, "nothing was stale");
    assert_eq!(
        allocations, 0,
        "a tick with nothing stale must not allocate per series"
    );
    println!(
        "evict_stale, nothing stale, {series} series: {:.1} allocations and {:.0} bytes per call, {:.1} µs per call",
        allocations as f64 / calls as f64,
        bytes as f64 / calls as f64,
        elapsed.as_secs_f64() * 1e6 / calls as f64,
    );

    // And a call that does evict: every series is stale an hour and a minute later.
    let later = now + 3660;
    let started = Instant::now();
    let gone = engine.evict_stale(later);
    println!(
        "evict_stale, all {} stale: {:.1} ms",
        gone.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(gone.len(), series, "every series went");
    assert!(engine.series_set().series().is_empty());
}
