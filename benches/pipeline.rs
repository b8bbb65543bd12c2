//! The ring buffer and 5-minute smoothing, and inference by batch size (series x passes).
// criterion_group! generates public functions without doc comments.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowcast::forecast::features::{self, WINDOW_STEPS};
use flowcast::forecast::history::MinuteRing;
use flowcast::forecast::model::Model;

fn ring(c: &mut Criterion) {
    let mut ring = MinuteRing::new();
    for m in 0..240 {
        ring.record(28_000_000 + m, 10.0 + (m % 7) as f64);
    }
    let mut minute = 28_000_240;
    c.bench_function("ring/record_one_minute", |b| {
        b.iter(|| {
            minute += 1;
            ring.record(minute, 12.5)
        })
    });
    let mut steps = [None; WINDOW_STEPS];
    c.bench_function("ring/36_five_minute_steps", |b| {
        b.iter(|| {
            ring.step_values(minute * 60, &mut steps);
            steps[WINDOW_STEPS - 1]
        })
    });
}

fn inference(c: &mut Criterion) {
    let model = Arc::new(Model::embedded().expect("model"));
    let steps: [Option<f64>; WINDOW_STEPS] = std::array::from_fn(|i| Some(20.0 + (i % 5) as f64));
    let input = features::model_input(&steps, 1_700_000_100, 1.0, &features::Seasonal::default())
        .expect("ready window");
    let mut g = c.benchmark_group("inference");
    g.sample_size(20);
    for (series, passes) in [(1usize, 10usize), (1, 30), (1, 100), (10, 30), (100, 30)] {
        let inputs = vec![input.clone(); series];
        let seeds: Vec<u64> = (0..series as u64).collect();
        g.throughput(Throughput::Elements((series * (passes + 1)) as u64));
        g.bench_with_input(
            BenchmarkId::new("series_x_passes", format!("{series}x{passes}")),
            &passes,
            |b, &p| b.iter(|| model.predict(&inputs, &seeds, p).expect("runs")),
        );
    }
    g.finish();
}

criterion_group!(benches, ring, inference);
criterion_main!(benches);
