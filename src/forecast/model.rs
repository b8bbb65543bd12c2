//! The forecasting model: the only module that imports tract.
//!
//! Owns loading the ONNX file (the embedded one or a user's), checking it against its
//! model card (names, shapes, a finite test run), and one batched run of Monte-Carlo
//! dropout passes for many series. Following tract's own pattern: load → check facts →
//! optimise → run. Dropout masks are an explicit input drawn here with a seeded PRNG,
//! because tract treats ONNX `Dropout` as identity (TRACT.md); an all-ones mask gives the
//! deterministic forecast. It must not know about metrics, HTTP or the clock.
//!
//! The graph has two batch axes (models/README.md): `x` and `xf` hold one row per series,
//! `mask` and `rows` one row per pass, `rows[b]` naming the series of pass `b`. The encoder
//! runs once per series and only the decoder's last layer and the head once per pass, so
//! Monte-Carlo passes are cheap.

use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use tract_onnx::prelude::*;

use crate::forecast::band::{CalibrationPrior, PassOutputs};
use crate::forecast::band::{QUANTILE_COUNT, QUANTILE_LEVELS};
use crate::forecast::features::{
    ModelInput, Seasonal, DECODER_FEATURES, DECODER_FEATURE_NAMES, ENCODER_FEATURES,
    ENCODER_FEATURE_NAMES, HORIZON_STEPS, MIN_PRESENT_STEPS, RECENT_STEPS, WINDOW_STEPS,
    ZERO_SCALE_FALLBACK,
};

/// The card format this build reads: version 2 (issue #21) added the seasonal decoder
/// inputs, the recent-level normalisation and the quantile output.
pub const CARD_FORMAT_VERSION: u32 = 2;

/// The ONNX model shipped inside the binary.
pub const EMBEDDED_MODEL: &[u8] = include_bytes!("../../models/flowcast.onnx");
/// Its model card.
pub const EMBEDDED_CARD: &str = include_str!("../../models/flowcast.card.json");

/// Errors loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model or card file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The card is not valid JSON of the expected form.
    #[error("model card is invalid: {0}")]
    Card(String),
    /// The card describes a contract this build does not implement.
    #[error("model card does not match the feature contract: {0}")]
    Contract(String),
    /// tract could not load or optimise the ONNX file.
    #[error("cannot load the ONNX model: {0}")]
    Load(String),
    /// The model's inputs or outputs differ from the card.
    #[error("model does not match its card: {0}")]
    Shape(String),
    /// The caller's inputs do not fit the model (counts or row indices): a bug in the
    /// caller, never the data.
    #[error("model input rejected: {0}")]
    Input(String),
    /// tract could not bind or run the plan.
    #[error("model run failed: {0}")]
    Run(String),
    /// The run's outputs are missing or of the wrong size.
    #[error("model output malformed: {0}")]
    Output(String),
    /// The model produced NaN or infinite numbers.
    #[error("the model produced NaN or infinite outputs")]
    NonFinite,
}

impl ModelError {
    /// A short bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Card(_) => "card",
            Self::Contract(_) => "contract",
            Self::Load(_) => "load",
            Self::Shape(_) => "shape",
            Self::Input(_) => "input",
            Self::Run(_) => "run",
            Self::Output(_) => "output",
            Self::NonFinite => "non_finite",
        }
    }
}

/// The parts of the model card (`models/flowcast.card.json`) the runtime relies on. Other
/// fields (the training record, scores, the passes the calibration was made with) are
/// documentation and are not read.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelCard {
    /// Card format; this build reads [`CARD_FORMAT_VERSION`].
    pub format_version: u32,
    /// Encoder feature names, in order.
    #[serde(default)]
    pub encoder_features: Vec<String>,
    /// Decoder feature names, in order.
    #[serde(default)]
    pub decoder_features: Vec<String>,
    /// The levels of the `quantiles` output.
    #[serde(default)]
    pub quantile_levels: Vec<f64>,
    /// Input names and shapes (`null` = batch dimension).
    pub inputs: std::collections::BTreeMap<String, Vec<Option<usize>>>,
    /// Output names and shapes.
    pub outputs: std::collections::BTreeMap<String, Vec<Option<usize>>>,
    /// Seconds per step.
    pub step_seconds: i64,
    /// Past steps read.
    pub window_steps: usize,
    /// Future steps forecast.
    pub horizon_steps: usize,
    /// Normalisation description.
    pub normalisation: Normalisation,
    /// Readiness rule.
    pub readiness: Readiness,
    /// Dropout of the Monte-Carlo passes.
    pub dropout: Dropout,
    /// Calibration prior learnt on the training data's validation windows.
    pub calibration_prior: CalibrationPrior,
}

/// Card: normalisation.
#[derive(Debug, Clone, Deserialize)]
pub struct Normalisation {
    /// Must be `log1p_over_window_mean`.
    pub kind: String,
    /// Scale for all-zero windows.
    pub zero_scale_fallback: f64,
}

/// Card: readiness rule.
#[derive(Debug, Clone, Deserialize)]
pub struct Readiness {
    /// Fewest present steps.
    pub min_present_steps: usize,
    /// Newest steps of which one must be present.
    pub recent_steps: usize,
}

/// Card: dropout.
#[derive(Debug, Clone, Deserialize)]
pub struct Dropout {
    /// Drop probability p; kept units are scaled by 1/(1-p).
    pub rate: f64,
    /// Width of the `mask` input (the masks of the decoder's Monte-Carlo passes).
    pub mask_width: usize,
}

/// A loaded and checked model; it is optimised per call shape ([`Model::plan`]).
#[derive(Debug)]
pub struct Model {
    /// The typed model before optimisation; every call runs a copy bound to its shape.
    typed: TypedModel,
    /// Plans bound to a call's shape (series `S`, pass rows `B`), least recently used
    /// first (see [`Self::plan`]).
    bound: std::sync::Mutex<Vec<BoundPlan>>,
    card: ModelCard,
    mask_width: usize,
    keep: f64,
    fingerprint: u32,
}

/// Refuses weights that hold NaN or infinity. The probe run at load cannot be relied on
/// for this: tract's clamped activations can turn a NaN gate into a finite, wrong number.
fn check_weights(model: &TypedModel) -> Result<(), ModelError> {
    for node in model.nodes() {
        let Some(konst) = node.op_as::<tract_onnx::tract_core::ops::konst::Const>() else {
            continue;
        };
        let tensor = konst.val();
        let bad = match tensor.datum_type() {
            DatumType::F32 => tensor
                .to_plain_array_view::<f32>()
                .map(|v| v.iter().any(|x| !x.is_finite()))
                .unwrap_or(false),
            DatumType::F64 => tensor
                .to_plain_array_view::<f64>()
                .map(|v| v.iter().any(|x| !x.is_finite()))
                .unwrap_or(false),
            _ => false,
        };
        if bad {
            return Err(ModelError::Load(format!(
                "the weights {:?} hold NaN or infinite values",
                node.name
            )));
        }
    }
    Ok(())
}

/// Most pass rows (series × (passes + 1)) run in one tract call; bigger ticks are split so
/// that memory stays bounded (TRACT.md: RSS grows with the batch). A pass row costs only
/// the decoder's last layer and the head, so this can be large.
const MAX_ROWS: usize = 1024;

/// How many shapes keep a bound plan. A tick has at most two (full chunks of
/// [`MAX_ROWS`] and the rest), a two-thread backtest up to four.
const BOUND_PLANS: usize = 4;

/// A plan optimised for one shape: `series` series and `rows` pass rows.
#[derive(Debug)]
struct BoundPlan {
    series: usize,
    rows: usize,
    plan: Arc<TypedRunnableModel>,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// The model embedded in the binary.
    Embedded,
    /// A user's model and card.
    Files {
        /// ONNX file.
        model: std::path::PathBuf,
        /// Model card JSON.
        card: std::path::PathBuf,
    },
}

impl Model {
    /// Loads the model `source` names.
    pub fn load(source: &ModelSource) -> Result<Self, ModelError> {
        match source {
            ModelSource::Embedded => Self::embedded(),
            ModelSource::Files { model, card } => Self::from_files(model, card),
        }
    }

    /// Loads the model embedded in the binary.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::from_parts(EMBEDDED_MODEL, EMBEDDED_CARD)
    }

    /// Loads a user's model and card from files.
    pub fn from_files(model: &Path, card: &Path) -> Result<Self, ModelError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ModelError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let bytes = read(model)?;
        let card = String::from_utf8(read(card)?)
            .map_err(|_| ModelError::Card("not UTF-8".to_string()))?;
        Self::from_parts(&bytes, &card)
    }

    /// Loads a model from ONNX bytes and card JSON, and checks one against the other.
    pub fn from_parts(onnx: &[u8], card_json: &str) -> Result<Self, ModelError> {
        let card: ModelCard =
            serde_json::from_str(card_json).map_err(|e| ModelError::Card(e.to_string()))?;
        check_contract(&card)?;
        let mut reader = onnx;
        let model = tract_onnx::onnx()
            .model_for_read(&mut reader)
            .and_then(|m| m.into_typed())
            .map_err(|e| ModelError::Load(format!("{e:#}")))?;
        check_io(&model, &card)?;
        check_weights(&model)?;
        let keep = 1.0 - card.dropout.rate;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(onnx);
        hasher.update(card_json.as_bytes());
        let this = Self {
            typed: model,
            bound: std::sync::Mutex::new(Vec::with_capacity(BOUND_PLANS)),
            mask_width: card.dropout.mask_width,
            keep,
            card,
            fingerprint: hasher.finalize(),
        };
        // A model with NaN weights loads fine and fails here, at start, not at the first tick.
        let probe = crate::forecast::features::model_input(
            &[Some(1.0); WINDOW_STEPS],
            0,
            ZERO_SCALE_FALLBACK,
            &Seasonal::default(),
        )
        .map_err(|e| ModelError::Load(format!("probe window not ready: {e:?}")))?;
        // Two series, so the batched gathers run too. It also checks that the model can be
        // bound to a shape and optimised; its plan (2 series, 6 rows) is for a shape no tick
        // has, so it is dropped.
        this.predict(&[&probe, &probe], &[0, 1], 2)
            .map_err(|e| ModelError::Load(format!("probe run: {e}")))?;
        this.bound_plans().clear();
        Ok(this)
    }

    /// The model card.
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// A checksum of the ONNX file and its card: state learnt with one model is never
    /// restored into another (see [`crate::forecast::state`]).
    pub fn fingerprint(&self) -> u32 {
        self.fingerprint
    }

    /// Runs the deterministic pass and `passes` Monte-Carlo passes for every input in one
    /// batched run (split only beyond [`MAX_ROWS`] rows). Input `i`'s masks come from a
    /// ChaCha8 stream seeded with `seeds[i]`, so a result never depends on what else shares
    /// the batch.
    pub fn predict<I: std::borrow::Borrow<ModelInput>>(
        &self,
        inputs: &[I],
        seeds: &[u64],
        passes: usize,
    ) -> Result<Vec<PassOutputs>, ModelError> {
        if seeds.len() != inputs.len() {
            return Err(ModelError::Input(format!(
                "{} inputs but {} seeds",
                inputs.len(),
                seeds.len()
            )));
        }
        let rows_per_series = passes + 1;
        let series_per_call = (MAX_ROWS / rows_per_series).max(1);
        let mut out = Vec::with_capacity(inputs.len());
        for (chunk, chunk_seeds) in inputs
            .chunks(series_per_call)
            .zip(seeds.chunks(series_per_call))
        {
            let raw = self.run_rows(chunk, chunk_seeds, rows_per_series)?;
            for i in 0..chunk.len() {
                out.push(reduce(&raw, i * rows_per_series, passes)?);
            }
        }
        Ok(out)
    }

    /// Runs the raw network on explicit inputs: `x` and `xf` for `series` series, then one
    /// mask per entry of `rows` (the series index of each pass). Returns `mean` and
    /// `logvar`, `rows.len()` × 3 each, and `quantiles`, `rows.len()` × 3 × 5. Used by the
    /// golden tests and the benchmarks.
    pub fn run_raw(
        &self,
        x: &[f32],
        xf: &[f32],
        series: usize,
        mask: &[f32],
        rows: &[i64],
    ) -> Result<RawOutputs, ModelError> {
        if let Some(bad) = rows.iter().find(|r| !(0..series as i64).contains(r)) {
            return Err(ModelError::Input(format!(
                "row names series {bad} of {series}"
            )));
        }
        let plan = self.plan(series, rows.len())?;
        self.run_on(&plan, x, xf, series, mask, rows)
    }

    /// [`Self::run_raw`] on a given plan, with the rows already checked.
    fn run_on(
        &self,
        plan: &Arc<TypedRunnableModel>,
        x: &[f32],
        xf: &[f32],
        series: usize,
        mask: &[f32],
        rows: &[i64],
    ) -> Result<RawOutputs, ModelError> {
        let tensor = |shape: &[usize], data: &[f32]| {
            Tensor::from_shape(shape, data).map_err(|e| ModelError::Input(format!("{e:#}")))
        };
        let batch = rows.len();
        let x = tensor(&[series, WINDOW_STEPS, ENCODER_FEATURES], x)?;
        let xf = tensor(&[series, HORIZON_STEPS, DECODER_FEATURES], xf)?;
        let mask = tensor(&[batch, self.mask_width], mask)?;
        let rows =
            Tensor::from_shape(&[batch], rows).map_err(|e| ModelError::Input(format!("{e:#}")))?;
        let result = plan
            .run(tvec!(x.into(), xf.into(), mask.into(), rows.into()))
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let take = |i: usize, per_row: usize| -> Result<Vec<f32>, ModelError> {
            let t = result
                .get(i)
                .ok_or_else(|| ModelError::Output(format!("missing output {i}")))?;
            let v = t
                .to_plain_array_view::<f32>()
                .map_err(|e| ModelError::Output(format!("{e:#}")))?;
            if v.len() != batch * per_row {
                return Err(ModelError::Output(format!(
                    "output {i} has {} values",
                    v.len()
                )));
            }
            Ok(v.iter().copied().collect())
        };
        Ok(RawOutputs {
            mean: take(0, HORIZON_STEPS)?,
            logvar: take(1, HORIZON_STEPS)?,
            quantiles: take(2, HORIZON_STEPS * QUANTILE_COUNT)?,
        })
    }

    /// The plan for `series` series and `rows` pass rows: bound to that shape and optimised
    /// on first use (20-30 ms), then kept while it is among the [`BOUND_PLANS`] most
    /// recently used shapes. On the symbolic plan, tract cannot prove the sizes its fast
    /// element-wise kernels need, so it falls back to a generic loop inside every LSTM
    /// step; a bound plan runs a tick 25-40 % faster, with bit-identical outputs
    /// (BENCHMARKS.md, `model::tests`).
    fn plan(&self, series: usize, rows: usize) -> Result<Arc<TypedRunnableModel>, ModelError> {
        let mut bound = self.bound_plans();
        if let Some(i) = bound
            .iter()
            .position(|b| b.series == series && b.rows == rows)
        {
            let hit = bound.remove(i);
            let plan = Arc::clone(&hit.plan);
            bound.push(hit);
            return Ok(plan);
        }
        let sym = |name: &str, n: usize| (self.typed.sym(name), TDim::Val(n as i64));
        let subs = std::collections::HashMap::from([sym("S", series), sym("B", rows)]);
        let plan = self
            .typed
            .set_symbols(&subs)
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                ModelError::Run(format!("binding the plan to {series} × {rows}: {e:#}"))
            })?;
        if bound.len() == BOUND_PLANS {
            bound.remove(0);
        }
        bound.push(BoundPlan {
            series,
            rows,
            plan: Arc::clone(&plan),
        });
        Ok(plan)
    }

    /// The bound plans; a poisoned lock only means another thread panicked while
    /// building one, and the list is valid either way.
    fn bound_plans(&self) -> std::sync::MutexGuard<'_, Vec<BoundPlan>> {
        self.bound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run_rows<I: std::borrow::Borrow<ModelInput>>(
        &self,
        inputs: &[I],
        seeds: &[u64],
        rows_per_series: usize,
    ) -> Result<RawOutputs, ModelError> {
        let batch = inputs.len() * rows_per_series;
        let mut x = Vec::with_capacity(inputs.len() * WINDOW_STEPS * ENCODER_FEATURES);
        let mut xf = Vec::with_capacity(inputs.len() * HORIZON_STEPS * DECODER_FEATURES);
        let mut mask = Vec::with_capacity(batch * self.mask_width);
        let mut rows = Vec::with_capacity(batch);
        let scale = (1.0 / self.keep) as f32;
        for (i, (input, seed)) in inputs.iter().zip(seeds).enumerate() {
            let input = input.borrow();
            x.extend(input.x.iter().flatten());
            xf.extend(input.xf.iter().flatten());
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            for pass in 0..rows_per_series {
                rows.push(i as i64);
                if pass == 0 {
                    mask.extend(std::iter::repeat_n(1.0f32, self.mask_width));
                } else {
                    mask.extend((0..self.mask_width).map(|_| {
                        if rng.random::<f64>() < self.keep {
                            scale
                        } else {
                            0.0
                        }
                    }));
                }
            }
        }
        self.run_raw(&x, &xf, inputs.len(), &mask, &rows)
    }
}

/// The raw outputs of one run, row-major: `mean` and `logvar` rows × 3, `quantiles`
/// rows × 3 × 5 (z-space).
#[derive(Debug, Clone, PartialEq)]
pub struct RawOutputs {
    /// Mean per row and horizon.
    pub mean: Vec<f32>,
    /// Log variance per row and horizon.
    pub logvar: Vec<f32>,
    /// Quantiles per row, horizon and level.
    pub quantiles: Vec<f32>,
}

/// Reduces the rows of one series (deterministic row first, then the MC passes). The
/// quantiles are the deterministic row's; u1 is the spread of the passes' means.
fn reduce(raw: &RawOutputs, first_row: usize, passes: usize) -> Result<PassOutputs, ModelError> {
    let (mean, logvar) = (&raw.mean[..], &raw.logvar[..]);
    let at = |v: &[f32], row: usize, h: usize| f64::from(v[(first_row + row) * HORIZON_STEPS + h]);
    let mut out = PassOutputs {
        mean: [0.0; HORIZON_STEPS],
        u1_sq: [0.0; HORIZON_STEPS],
        u2_sq: [0.0; HORIZON_STEPS],
        quantiles: Some(std::array::from_fn(|h| {
            std::array::from_fn(|q| {
                f64::from(raw.quantiles[(first_row * HORIZON_STEPS + h) * QUANTILE_COUNT + q])
            })
        })),
    };
    for h in 0..HORIZON_STEPS {
        out.mean[h] = at(mean, 0, h);
        if passes == 0 {
            out.u2_sq[h] = at(logvar, 0, h).clamp(-30.0, 30.0).exp();
            continue;
        }
        let n = passes as f64;
        let mc_mean = (1..=passes).map(|r| at(mean, r, h)).sum::<f64>() / n;
        out.u1_sq[h] = (1..=passes)
            .map(|r| (at(mean, r, h) - mc_mean).powi(2))
            .sum::<f64>()
            / n;
        out.u2_sq[h] = (1..=passes)
            .map(|r| at(logvar, r, h).clamp(-30.0, 30.0).exp())
            .sum::<f64>()
            / n;
    }
    let finite = out
        .mean
        .iter()
        .chain(&out.u1_sq)
        .chain(&out.u2_sq)
        .chain(out.quantiles.iter().flatten().flatten())
        .all(|v| v.is_finite());
    if finite {
        Ok(out)
    } else {
        Err(ModelError::NonFinite)
    }
}

fn check_contract(card: &ModelCard) -> Result<(), ModelError> {
    let want = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(ModelError::Contract(what.to_string()))
        }
    };
    want(
        card.format_version == CARD_FORMAT_VERSION,
        "format_version must be 2 (a version-1 model predates the seasonal inputs and \
         quantile heads of issue #21: train one with models/training/train.py)",
    )?;
    want(
        card.encoder_features == ENCODER_FEATURE_NAMES,
        &format!("encoder_features must be {ENCODER_FEATURE_NAMES:?}"),
    )?;
    want(
        card.decoder_features == DECODER_FEATURE_NAMES,
        &format!("decoder_features must be {DECODER_FEATURE_NAMES:?}"),
    )?;
    want(
        card.quantile_levels == QUANTILE_LEVELS,
        &format!("quantile_levels must be {QUANTILE_LEVELS:?}"),
    )?;
    want(
        card.step_seconds == crate::forecast::history::STEP_SECONDS,
        "step_seconds must be 300",
    )?;
    want(card.window_steps == WINDOW_STEPS, "window_steps must be 36")?;
    want(
        card.horizon_steps == HORIZON_STEPS,
        "horizon_steps must be 3",
    )?;
    want(
        card.normalisation.kind == "log1p_over_recent_level",
        "normalisation.kind must be log1p_over_recent_level",
    )?;
    want(
        card.normalisation.zero_scale_fallback == ZERO_SCALE_FALLBACK,
        "normalisation.zero_scale_fallback must be 1.0",
    )?;
    want(
        card.readiness.min_present_steps == MIN_PRESENT_STEPS,
        "readiness.min_present_steps must be 18",
    )?;
    want(
        card.readiness.recent_steps == RECENT_STEPS,
        "readiness.recent_steps must be 3",
    )?;
    want(
        (0.0..1.0).contains(&card.dropout.rate),
        "dropout.rate must be in [0, 1)",
    )?;
    want(
        card.dropout.mask_width > 0,
        "dropout.mask_width must be positive",
    )?;
    let p = &card.calibration_prior;
    want(
        p.u3_sq_by_hour.len() == HORIZON_STEPS
            && p.u3_sq_by_hour
                .iter()
                .all(|h| h.len() == 24 && h.iter().all(|v| v.is_finite() && *v >= 0.0)),
        "calibration_prior.u3_sq_by_hour must be 3 x 24 non-negative numbers",
    )?;
    want(
        p.k_upper.len() == HORIZON_STEPS
            && p.k_lower.len() == HORIZON_STEPS
            && p.k_upper
                .iter()
                .chain(&p.k_lower)
                .all(|v| v.is_finite() && *v > 0.0),
        "calibration_prior.k_upper and k_lower must be 3 positive numbers each",
    )?;
    want(
        p.quantile_k_upper.len() == HORIZON_STEPS
            && p.quantile_k_lower.len() == HORIZON_STEPS
            && p.quantile_k_upper
                .iter()
                .chain(&p.quantile_k_lower)
                .all(|v| v.is_finite() && *v > 0.0),
        "calibration_prior.quantile_k_upper and quantile_k_lower must be 3 positive numbers each",
    )?;
    let expect_inputs = [
        ("x", vec![None, Some(WINDOW_STEPS), Some(ENCODER_FEATURES)]),
        (
            "xf",
            vec![None, Some(HORIZON_STEPS), Some(DECODER_FEATURES)],
        ),
        ("mask", vec![None, Some(card.dropout.mask_width)]),
        ("rows", vec![None]),
    ];
    for (name, shape) in &expect_inputs {
        want(
            card.inputs.get(*name) == Some(shape),
            &format!("inputs.{name} must be {shape:?}"),
        )?;
    }
    for name in ["mean", "logvar"] {
        let shape = vec![None, Some(HORIZON_STEPS)];
        want(
            card.outputs.get(name) == Some(&shape),
            &format!("outputs.{name} must be {shape:?}"),
        )?;
    }
    let shape = vec![None, Some(HORIZON_STEPS), Some(QUANTILE_COUNT)];
    want(
        card.outputs.get("quantiles") == Some(&shape),
        &format!("outputs.quantiles must be {shape:?}"),
    )?;
    Ok(())
}

/// Checks the ONNX graph's inputs (x, xf, mask, rows) and outputs (mean, logvar,
/// quantiles) against the card.
fn check_io(model: &TypedModel, card: &ModelCard) -> Result<(), ModelError> {
    let err = |m: String| ModelError::Shape(m);
    let inputs = model.input_outlets().map_err(|e| err(format!("{e:#}")))?;
    let outputs = model.output_outlets().map_err(|e| err(format!("{e:#}")))?;
    let in_names = ["x", "xf", "mask", "rows"];
    let out_names = ["mean", "logvar", "quantiles"];
    if inputs.len() != in_names.len() {
        return Err(err(format!(
            "expected 4 inputs (x, xf, mask, rows), found {}",
            inputs.len()
        )));
    }
    if outputs.len() != out_names.len() {
        return Err(err(format!(
            "expected 3 outputs (mean, logvar, quantiles), found {}",
            outputs.len()
        )));
    }
    let check =
        |outlet: OutletId, name: &str, expected: &[Option<usize>]| -> Result<(), ModelError> {
            let fact = model
                .outlet_fact(outlet)
                .map_err(|e| err(format!("{e:#}")))?;
            let want_type = if name == "rows" {
                i64::datum_type()
            } else {
                f32::datum_type()
            };
            if fact.datum_type != want_type {
                return Err(err(format!(
                    "{name} must be {want_type:?}, is {:?}",
                    fact.datum_type
                )));
            }
            let dims: Vec<Option<i64>> = fact.shape.iter().map(|d| d.as_i64()).collect();
            let ok = dims.len() == expected.len()
                && dims.iter().zip(expected).all(|(d, e)| match e {
                    None => true,
                    Some(n) => *d == Some(*n as i64),
                });
            if ok {
                Ok(())
            } else {
                Err(err(format!(
                    "{name} has shape {:?}, the card says {expected:?}",
                    fact.shape
                )))
            }
        };
    for (outlet, name) in inputs.iter().zip(in_names) {
        let actual = &model.node(outlet.node).name;
        if actual != name {
            return Err(err(format!("input {name} expected, found {actual}")));
        }
        check(*outlet, name, &card.inputs[name])?;
    }
    for (outlet, name) in outputs.iter().zip(out_names) {
        check(*outlet, name, &card.outputs[name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Golden {
        model_cases: Vec<GoldenCase>,
    }
    #[derive(Deserialize)]
    struct GoldenCase {
        x: serde_json::Value,
        xf: serde_json::Value,
        mask: serde_json::Value,
        mean: serde_json::Value,
        logvar: serde_json::Value,
        quantiles: serde_json::Value,
    }

    fn flat(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|e| flat(e, out)),
            serde_json::Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN) as f32),
            _ => out.push(f32::NAN),
        }
    }

    fn flattened(v: &serde_json::Value) -> Vec<f32> {
        let mut out = Vec::new();
        flat(v, &mut out);
        out
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-4, "{what}: tract {g} vs torch {w}");
        }
    }

    #[test]
    fn tract_reproduces_the_training_scripts_golden_outputs() {
        let model = Model::embedded().expect("embedded model loads");
        let golden: Golden =
            serde_json::from_str(include_str!("../../models/golden.json")).expect("golden parses");
        let cases = &golden.model_cases;
        assert!(cases.len() >= 2);
        for (i, case) in cases.iter().enumerate() {
            let RawOutputs {
                mean,
                logvar,
                quantiles,
            } = model
                .run_raw(
                    &flattened(&case.x),
                    &flattened(&case.xf),
                    1,
                    &flattened(&case.mask),
                    &[0],
                )
                .expect("runs");
            close(&mean, &flattened(&case.mean), &format!("case {i} mean"));
            close(
                &quantiles,
                &flattened(&case.quantiles),
                &format!("case {i} quantiles"),
            );
            assert!(
                quantiles
                    .windows(2)
                    .enumerate()
                    .all(|(k, w)| (k + 1) % QUANTILE_COUNT == 0 || w[0] <= w[1]),
                "case {i}: quantiles are monotone"
            );
            close(
                &logvar,
                &flattened(&case.logvar),
                &format!("case {i} logvar"),
            );
        }
        // All cases as one batch of series, with the passes in another order and one series
        // passed twice: each row must follow the series its `rows` entry names.
        let all = |f: &dyn Fn(&GoldenCase) -> &serde_json::Value| -> Vec<Vec<f32>> {
            cases.iter().map(|c| flattened(f(c))).collect()
        };
        let (xs, xfs, masks) = (all(&|c| &c.x), all(&|c| &c.xf), all(&|c| &c.mask));
        let (means, logvars) = (all(&|c| &c.mean), all(&|c| &c.logvar));
        let mut order: Vec<usize> = (0..cases.len()).rev().collect();
        order.push(1);
        let pick =
            |v: &[Vec<f32>]| -> Vec<f32> { order.iter().flat_map(|&i| v[i].clone()).collect() };
        let rows: Vec<i64> = order.iter().map(|&i| i as i64).collect();
        let RawOutputs { mean, logvar, .. } = model
            .run_raw(
                &xs.concat(),
                &xfs.concat(),
                cases.len(),
                &pick(&masks),
                &rows,
            )
            .expect("runs");
        close(&mean, &pick(&means), "batched mean");
        close(&logvar, &pick(&logvars), "batched logvar");
    }

    #[test]
    fn rows_naming_a_missing_series_are_refused() {
        let model = Model::embedded().expect("loads");
        let x = vec![0.0; WINDOW_STEPS * ENCODER_FEATURES];
        let xf = vec![0.0; HORIZON_STEPS * DECODER_FEATURES];
        let mask = vec![1.0; model.card().dropout.mask_width];
        assert!(model.run_raw(&x, &xf, 1, &mask, &[0]).is_ok());
        let err = model.run_raw(&x, &xf, 1, &mask, &[1]).expect_err("refused");
        assert!(err.to_string().contains("series 1 of 1"), "{err}");
    }

    #[test]
    fn a_card_that_disagrees_with_the_model_is_refused() {
        let wrong = EMBEDDED_CARD.replace("\"mask_width\": 64", "\"mask_width\": 65");
        assert_ne!(wrong, EMBEDDED_CARD, "the card names mask_width 64");
        let err = Model::from_parts(EMBEDDED_MODEL, &wrong).expect_err("refused");
        assert_eq!(err.reason(), "contract", "{err}");
        let card: serde_json::Value = serde_json::from_str(EMBEDDED_CARD).expect("card");
        let mut card = card;
        card["inputs"]["mask"] = serde_json::json!([null, 65]);
        card["dropout"]["mask_width"] = serde_json::json!(65);
        let err = Model::from_parts(EMBEDDED_MODEL, &card.to_string()).expect_err("refused");
        assert_eq!(err.reason(), "shape", "{err}");
        assert!(err.to_string().contains("mask"), "{err}");
    }

    #[test]
    fn bytes_that_are_not_onnx_are_refused() {
        let err = Model::from_parts(b"not an onnx file", EMBEDDED_CARD).expect_err("refused");
        assert_eq!(err.reason(), "load");
    }

    /// NaN weights load (ONNX does not forbid them) but are refused at start, not at the
    /// first tick. The NaN goes into float runs of the file, so it lands in weight data
    /// rather than in the protobuf structure.
    #[test]
    fn nan_weights_are_refused_at_load() {
        let mut refused_as_non_finite = 0;
        // Offsets whose 16 bytes before and after look like ordinary f32 weights.
        let plausible = |b: &[u8], at: usize| {
            b[at - 16..at + 20].chunks_exact(4).all(|w| {
                let v = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                v.is_finite() && v.abs() > 1e-6 && v.abs() < 10.0
            })
        };
        let n = EMBEDDED_MODEL.len();
        let mut tried = 0;
        let mut at = n / 4;
        while at < n - 64 && tried < 8 {
            if plausible(EMBEDDED_MODEL, at) {
                let mut bytes = EMBEDDED_MODEL.to_vec();
                // Overwrite a whole 64-byte run: every alignment gets a NaN.
                for k in 0..16 {
                    bytes[at + 4 * k..at + 4 * k + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
                let bytes_shifted: Vec<u8> = bytes.clone();
                match Model::from_parts(&bytes_shifted, EMBEDDED_CARD) {
                    Err(e) if e.to_string().contains("NaN or infinite") => {
                        refused_as_non_finite += 1
                    }
                    Err(_) => {}
                    Ok(_) => panic!("a model with NaN weights at byte {at} was accepted"),
                }
                tried += 1;
                at += n / 16;
            } else {
                at += 1;
            }
        }
        assert!(tried >= 4, "found weight runs to poison: {tried}");
        assert_eq!(
            refused_as_non_finite, tried,
            "every poisoned model named as such"
        );
    }

    #[test]
    fn bound_plans_match_the_symbolic_plan_and_only_the_recent_ones_are_kept() {
        let model = Model::embedded().expect("loads");
        assert!(
            model.bound_plans().is_empty(),
            "the probe's plan is dropped"
        );
        let golden: Golden =
            serde_json::from_str(include_str!("../../models/golden.json")).expect("golden parses");
        let cases = &golden.model_cases;
        let symbolic_plan = model
            .typed
            .clone()
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .expect("optimises");
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut keep = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state % 5 == 0 {
                0.0
            } else {
                1.25
            }
        };
        // Five shapes, the first again at the end: (1, 31) is evicted by the fifth and
        // bound again.
        for (series, passes) in [(1, 30), (3, 10), (2, 30), (1, 10), (3, 30), (1, 30)] {
            let (mut x, mut xf, mut mask, mut rows) = (vec![], vec![], vec![], vec![]);
            for i in 0..series {
                x.extend(flattened(&cases[i % cases.len()].x));
                xf.extend(flattened(&cases[i % cases.len()].xf));
                for _ in 0..=passes {
                    rows.push(i as i64);
                    mask.extend((0..model.mask_width).map(|_| keep()));
                }
            }
            let bound = model.run_raw(&x, &xf, series, &mask, &rows).expect("runs");
            let symbolic = model
                .run_on(&symbolic_plan, &x, &xf, series, &mask, &rows)
                .expect("runs");
            assert_eq!(bound, symbolic, "{series} series × {passes} passes");
            assert!(bound.mean.iter().all(|v| v.is_finite()));
            assert!(model.bound_plans().len() <= BOUND_PLANS);
        }
        let kept: Vec<(usize, usize)> = model
            .bound_plans()
            .iter()
            .map(|b| (b.series, b.rows))
            .collect();
        assert_eq!(
            kept,
            [(2, 62), (1, 11), (3, 93), (1, 31)],
            "least recent first"
        );
    }

    #[test]
    fn monte_carlo_passes_are_seeded_and_spread() {
        let model = Model::embedded().expect("loads");
        let steps: [Option<f64>; WINDOW_STEPS] =
            std::array::from_fn(|k| Some(10.0 + (k % 5) as f64));
        let input = crate::forecast::features::model_input(
            &steps,
            86_400 * 30,
            ZERO_SCALE_FALLBACK,
            &Seasonal::default(),
        )
        .expect("ready");
        let a = model
            .predict(std::slice::from_ref(&input), &[7], 30)
            .expect("runs");
        let b = model
            .predict(std::slice::from_ref(&input), &[7], 30)
            .expect("runs");
        let c = model
            .predict(std::slice::from_ref(&input), &[8], 30)
            .expect("runs");
        let two = model
            .predict(&[input.clone(), input.clone()], &[8, 7], 30)
            .expect("runs");
        assert_eq!(
            two[1], a[0],
            "batch neighbours do not change a series' masks"
        );
        // Another pass count runs on another bound plan, and a batch of two on a third; a
        // series' result depends on neither.
        let ten = model
            .predict(std::slice::from_ref(&input), &[7], 10)
            .expect("runs");
        let two_ten = model
            .predict(&[input.clone(), input.clone()], &[8, 7], 10)
            .expect("runs");
        assert_eq!(ten[0], two_ten[1], "10 passes, bound plan");
        assert_ne!(ten[0], a[0]);
        let again = model
            .predict(std::slice::from_ref(&input), &[7], 30)
            .expect("runs");
        assert_eq!(again, a, "back to 30 passes");
        assert_eq!(a, b, "same seed, same result");
        assert_ne!(a[0].u1_sq, c[0].u1_sq, "another seed, other masks");
        assert_eq!(
            a[0].mean, c[0].mean,
            "the deterministic pass ignores the seed"
        );
        assert!(
            a[0].u1_sq.iter().all(|v| *v > 0.0),
            "dropout spreads the passes"
        );
        assert!(a[0].u2_sq.iter().all(|v| *v > 0.0));
    }
}
