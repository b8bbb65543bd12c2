//! Same-file comparison of tract against onnxruntime (issue #7).
//!
//! Runs the shipped `models/flowcast.onnx` (the bytes embedded in the binary) in tract,
//! through flowcast's own [`Model`], and in onnxruntime through the `ort` crate, on the same
//! batches: one encoder row per series and series × (1 deterministic + `passes`
//! Monte-Carlo) pass rows, with the dropout masks drawn exactly as [`Model::predict`] draws
//! them. It checks that the two runtimes agree,
//! then times one call of each (alternating, median of many, after a warm-up) and prints
//! µs per call, the ratio tract/ort and µs per row. Both sides copy the inputs into their
//! own tensors and the outputs out into vectors on every call; both run on one thread.
//!
//! Not run by CI. It needs the optional `ort` dependency, which never downloads anything:
//! onnxruntime 1.31 is loaded at run time from `ORT_DYLIB_PATH`, e.g. the library inside the
//! Python wheel (`pip install onnxruntime==1.31.1`):
//!
//! ```text
//! ORT_DYLIB_PATH=$(python3 -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')/capi/libonnxruntime.so.1.31.1 \
//!   cargo bench --bench ort_compare --features ort-compare
//! ```
//!
//! `ORT_COMPARE_SECONDS` (default 3) is the time budget of each table row.
//!
//! `ORT_COMPARE_STUDY_ONNX` (optional) names the study's graph, where Monte-Carlo dropout
//! also covers the encoder and every pass runs the whole network (inputs x, xf, mask[96]
//! with one row per pass; the shipped model before the decoder-only graph:
//! `git show 78f7ba0:models/flowcast.onnx > study.onnx`). onnxruntime then also runs that
//! file on the same series and passes, and the table gets its time for the same forecast.

use std::time::{Duration, Instant};

use flowcast::forecast::features::{
    self, ModelInput, DECODER_FEATURES, ENCODER_FEATURES, HORIZON_STEPS, WINDOW_STEPS,
};
use flowcast::forecast::model::{Model, EMBEDDED_MODEL};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The largest allowed difference between the two runtimes' outputs.
const TOLERANCE: f32 = 1e-4;
/// Fewest timed calls per runtime and row of the table.
const MIN_RUNS: usize = 15;
/// Most timed calls per runtime and row of the table.
const MAX_RUNS: usize = 2000;

type BoxError = Box<dyn std::error::Error>;

/// One raw batch: the four model inputs, row-major.
struct Batch {
    series: usize,
    x: Vec<f32>,
    xf: Vec<f32>,
    mask: Vec<f32>,
    rows: Vec<i64>,
}

/// Builds the batch [`Model::predict`] would build for `inputs` and `seeds`: per series a
/// deterministic row (all-ones mask) then `passes` rows whose masks come from a ChaCha8
/// stream seeded with the series' seed (kept with probability 1 − rate, scaled by its
/// inverse). [`check_same_batch_as_predict`] verifies that the two agree.
fn batch(
    inputs: &[ModelInput],
    seeds: &[u64],
    passes: usize,
    mask_width: usize,
    rate: f64,
) -> Batch {
    let rows = inputs.len() * (passes + 1);
    let keep = 1.0 - rate;
    let scale = (1.0 / keep) as f32;
    let mut b = Batch {
        series: inputs.len(),
        x: Vec::with_capacity(inputs.len() * WINDOW_STEPS * ENCODER_FEATURES),
        xf: Vec::with_capacity(inputs.len() * HORIZON_STEPS * DECODER_FEATURES),
        mask: Vec::with_capacity(rows * mask_width),
        rows: Vec::with_capacity(rows),
    };
    for (i, (input, seed)) in inputs.iter().zip(seeds).enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(*seed);
        b.x.extend(input.x.iter().flatten());
        b.xf.extend(input.xf.iter().flatten());
        for pass in 0..=passes {
            b.rows.push(i as i64);
            if pass == 0 {
                b.mask.extend(std::iter::repeat_n(1.0f32, mask_width));
            } else {
                b.mask.extend((0..mask_width).map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                }));
            }
        }
    }
    b
}

/// `series` different ready windows (level, shape and origin vary by series).
fn inputs(series: usize) -> Vec<ModelInput> {
    (0..series)
        .map(|i| {
            let level = 5.0 + 3.0 * i as f64;
            let steps: [Option<f64>; WINDOW_STEPS] = std::array::from_fn(|k| {
                (k % 11 != 4).then(|| level * (1.0 + 0.2 * (((k + i) % 7) as f64 - 3.0) / 3.0))
            });
            let origin = 1_700_000_100 + 300 * 37 * i as i64;
            features::model_input(
                &steps,
                origin,
                features::ZERO_SCALE_FALLBACK,
                &features::Seasonal::default(),
            )
            .expect("the bench windows are ready")
        })
        .collect()
}

/// The study's batch: x and xf repeated for every pass, masks over all three dropout sites
/// (96 entries, 0 or 1/(1 − rate)), the first row of each series all ones.
fn study_batch(inputs: &[ModelInput], seeds: &[u64], passes: usize, rate: f64) -> Batch {
    let full = batch(inputs, seeds, passes, 96, rate);
    let mut b = Batch {
        series: full.rows.len(),
        x: Vec::with_capacity(full.rows.len() * WINDOW_STEPS * ENCODER_FEATURES),
        xf: Vec::with_capacity(full.rows.len() * HORIZON_STEPS * DECODER_FEATURES),
        mask: full.mask,
        rows: Vec::new(),
    };
    for &r in &full.rows {
        b.x.extend(inputs[r as usize].x.iter().flatten());
        b.xf.extend(inputs[r as usize].xf.iter().flatten());
    }
    b
}

/// Runs the study's graph (no `rows` input, one row per pass) in onnxruntime.
fn ort_run_study(session: &mut Session, b: &Batch) -> Result<(), BoxError> {
    let n = b.series;
    let x = Tensor::from_array((
        [n, WINDOW_STEPS, ENCODER_FEATURES],
        b.x.clone().into_boxed_slice(),
    ))?;
    let xf = Tensor::from_array((
        [n, HORIZON_STEPS, DECODER_FEATURES],
        b.xf.clone().into_boxed_slice(),
    ))?;
    let mask = Tensor::from_array(([n, b.mask.len() / n], b.mask.clone().into_boxed_slice()))?;
    let out = session.run(ort::inputs!["x" => x, "xf" => xf, "mask" => mask])?;
    let (_, mean) = out["mean"].try_extract_tensor::<f32>()?;
    if mean.len() != n * HORIZON_STEPS || mean.iter().any(|v| !v.is_finite()) {
        return Err("the study graph gave a wrong or non-finite mean".into());
    }
    Ok(())
}

/// Runs one batch in onnxruntime; returns (mean, logvar) like [`Model::run_raw`].
fn ort_run(session: &mut Session, b: &Batch) -> Result<(Vec<f32>, Vec<f32>), BoxError> {
    let x = Tensor::from_array((
        [b.series, WINDOW_STEPS, ENCODER_FEATURES],
        b.x.clone().into_boxed_slice(),
    ))?;
    let xf = Tensor::from_array((
        [b.series, HORIZON_STEPS, DECODER_FEATURES],
        b.xf.clone().into_boxed_slice(),
    ))?;
    let n = b.rows.len();
    let mask = Tensor::from_array(([n, b.mask.len() / n], b.mask.clone().into_boxed_slice()))?;
    let rows = Tensor::from_array(([n], b.rows.clone().into_boxed_slice()))?;
    let out = session.run(ort::inputs!["x" => x, "xf" => xf, "mask" => mask, "rows" => rows])?;
    let take = |name: &str| -> Result<Vec<f32>, BoxError> {
        let (_, data) = out[name].try_extract_tensor::<f32>()?;
        if data.len() != n * HORIZON_STEPS {
            return Err(format!("ort output {name} has {} values", data.len()).into());
        }
        Ok(data.to_vec())
    };
    Ok((take("mean")?, take("logvar")?))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Proves that [`batch`] is the batch `predict` runs: the deterministic means must be
/// bit-identical and the Monte-Carlo spread (u1²) equal, which needs identical masks.
fn check_same_batch_as_predict(
    model: &Model,
    inputs: &[ModelInput],
    seeds: &[u64],
    passes: usize,
    mean: &[f32],
) {
    let predicted = model.predict(inputs, seeds, passes).expect("predict runs");
    let rows = passes + 1;
    for (s, p) in predicted.iter().enumerate() {
        for h in 0..HORIZON_STEPS {
            let at = |r: usize| f64::from(mean[(s * rows + r) * HORIZON_STEPS + h]);
            assert_eq!(p.mean[h], at(0), "deterministic row of series {s}");
            let n = passes as f64;
            let mc = (1..rows).map(at).sum::<f64>() / n;
            let u1_sq = (1..rows).map(|r| (at(r) - mc).powi(2)).sum::<f64>() / n;
            assert!(
                (p.u1_sq[h] - u1_sq).abs() <= 1e-12 * u1_sq.max(1.0),
                "series {s} h{h}: predict u1² {} vs this batch's {u1_sq}",
                p.u1_sq[h]
            );
        }
    }
}

/// The process's thread count (Linux), to show that no runtime started a pool.
fn threads() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "?".to_string())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let dylib = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
        "set ORT_DYLIB_PATH to onnxruntime 1.31's libonnxruntime.so \
         (e.g. site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 from `pip install onnxruntime==1.31.1`)"
    })?;
    let budget = Duration::from_secs_f64(
        std::env::var("ORT_COMPARE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );

    let model = Model::embedded()?;
    let threads_tract = threads();
    let mask_width = model.card().dropout.mask_width;
    let rate = model.card().dropout.rate;

    let env = ort::init_from(&dylib)?.with_name("ort_compare").build()?;
    let open = |bytes: &[u8]| -> Result<Session, BoxError> {
        Ok(Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(1)?
            .with_inter_threads(1)?
            .with_parallel_execution(false)?
            .commit_from_memory(bytes)?)
    };
    let mut session = open(EMBEDDED_MODEL)?;
    let mut study = match std::env::var("ORT_COMPARE_STUDY_ONNX") {
        Ok(path) => {
            let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
            println!(
                "study graph for onnxruntime: {path} ({} bytes)",
                bytes.len()
            );
            Some(open(&bytes)?)
        }
        Err(_) => None,
    };
    let names = |o: &[ort::value::Outlet]| o.iter().map(|o| o.name().to_string()).collect();
    let (ins, outs): (Vec<String>, Vec<String>) =
        (names(session.inputs()), names(session.outputs()));
    assert_eq!(
        ins,
        ["x", "xf", "mask", "rows"],
        "onnxruntime sees the model's inputs"
    );
    assert_eq!(
        outs,
        ["mean", "logvar"],
        "onnxruntime sees the model's outputs"
    );
    let threads_both = threads();

    println!("ort_compare: models/flowcast.onnx ({} bytes, crc32 {:08x}) in tract 0.23.9 (flowcast::forecast::model::Model, embedded) and onnxruntime via ort 2.0.0-rc.15",
        EMBEDDED_MODEL.len(), crc32fast::hash(EMBEDDED_MODEL));
    println!("onnxruntime: {dylib}");
    println!("  process threads: {threads_tract} with tract loaded, {threads_both} with both");
    println!("  {}", ort::info());
    println!(
        "one thread each (ort intra_op = inter_op = 1, sequential; tract has no pool); \
         median of >= {MIN_RUNS} alternating calls, ~{:.1} s per row; mask width {mask_width}, dropout {rate}",
        budget.as_secs_f64()
    );

    let cases = [(1usize, 10usize), (1, 30), (1, 100), (10, 30), (100, 30)];
    let mut agree = true;
    let mut table = Vec::new();
    for (series, passes) in cases {
        let inputs = inputs(series);
        let seeds: Vec<u64> = (0..series as u64).map(|s| 1000 + s).collect();
        let b = batch(&inputs, &seeds, passes, mask_width, rate);
        let sb = study_batch(&inputs, &seeds, passes, rate);

        let t = model.run_raw(&b.x, &b.xf, b.series, &b.mask, &b.rows)?;
        let (t_mean, t_logvar) = (t.mean, t.logvar);
        let (o_mean, o_logvar) = ort_run(&mut session, &b)?;
        check_same_batch_as_predict(&model, &inputs, &seeds, passes, &t_mean);
        let (d_mean, d_logvar) = (
            max_abs_diff(&t_mean, &o_mean),
            max_abs_diff(&t_logvar, &o_logvar),
        );
        let ok = d_mean <= TOLERANCE && d_logvar <= TOLERANCE;
        agree &= ok;
        println!(
            "agreement {series:>3} series x {passes:>3} passes ({:>4} rows): max |tract - ort| mean {d_mean:.2e}, logvar {d_logvar:.2e} -> {}",
            b.rows.len(),
            if ok { "ok" } else { "MISMATCH" }
        );

        // Warm-up, then alternate the two runtimes so that load from other jobs hits both.
        let warm = Instant::now();
        while warm.elapsed() < budget / 10 {
            model.run_raw(&b.x, &b.xf, b.series, &b.mask, &b.rows)?;
            ort_run(&mut session, &b)?;
            if let Some(st) = study.as_mut() {
                ort_run_study(st, &sb)?;
            }
        }
        let (mut tract_t, mut ort_t, mut study_t) = (Vec::new(), Vec::new(), Vec::new());
        let start = Instant::now();
        while tract_t.len() < MIN_RUNS || (start.elapsed() < budget && tract_t.len() < MAX_RUNS) {
            let t = Instant::now();
            std::hint::black_box(model.run_raw(&b.x, &b.xf, b.series, &b.mask, &b.rows)?);
            tract_t.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(ort_run(&mut session, &b)?);
            ort_t.push(t.elapsed());
            if let Some(st) = study.as_mut() {
                let t = Instant::now();
                ort_run_study(st, &sb)?;
                study_t.push(t.elapsed());
            }
        }
        let runs = tract_t.len();
        table.push((
            series,
            passes,
            b.rows.len(),
            runs,
            median(tract_t),
            median(ort_t),
            (!study_t.is_empty()).then(|| median(study_t)),
        ));
    }

    println!();
    println!(
        "{:>13} {:>5} {:>5} {:>14} {:>12} {:>10} {:>13} {:>11} {:>18} {:>16}",
        "series x MC",
        "rows",
        "runs",
        "tract µs/call",
        "ort µs/call",
        "tract/ort",
        "tract µs/row",
        "ort µs/row",
        "ort study µs/call",
        "tract/ort study"
    );
    for (series, passes, rows, runs, tract, ort, study) in table {
        let (t, o) = (tract.as_secs_f64() * 1e6, ort.as_secs_f64() * 1e6);
        let (st, ratio) = match study {
            Some(d) => {
                let us = d.as_secs_f64() * 1e6;
                (format!("{us:.1}"), format!("{:.2}", t / us))
            }
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "{:>13} {rows:>5} {runs:>5} {t:>14.1} {o:>12.1} {:>10.2} {:>13.1} {:>11.1} {st:>18} {ratio:>16}",
            format!("{series} x {passes}"),
            t / o,
            t / rows as f64,
            o / rows as f64
        );
    }
    if !agree {
        return Err(format!("tract and onnxruntime differ by more than {TOLERANCE}").into());
    }
    println!("\nagreement: every output within {TOLERANCE} (mean and logvar)");
    Ok(())
}
