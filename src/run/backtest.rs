//! `flowcast backtest`: reads the arguments, the series and the model, replays the series
//! through the engine ([`crate::evidence::backtest`]), writes the forecasts (and the plot),
//! prints the scores and the what-if, and writes the report.
//!
//! Owns only the command's edge: checking its flags, loading files, printing. Bad input
//! (arguments, CSV, model) is a usage error.

use std::sync::Arc;

use crate::cli::{BacktestArgs, Failure};
use crate::config::MC_PASSES_RANGE;
use crate::evidence::backtest::{
    as_written, plot, read_series, run, score, score_table, write_rows, Settings,
};
use crate::forecast::model::{Model, ModelSource};

/// `flowcast backtest`: reads the series, replays it, writes the forecasts (and the plot),
/// and prints the scores. Bad input (arguments, CSV, model) is a usage error.
pub fn command(args: &BacktestArgs) -> Result<(), Failure> {
    if !MC_PASSES_RANGE.contains(&args.mc_passes) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--mc-passes must be between 1 and 1000"
        )));
    }
    let deployment = deployment(args)?;
    let series = read_series(&args.data, args.step).map_err(Failure::usage)?;
    let source = match (&args.model, &args.model_card) {
        (Some(model), Some(card)) => ModelSource::Files {
            model: model.clone(),
            card: card.clone(),
        },
        _ => ModelSource::Embedded,
    };
    let model = Arc::new(Model::load(&source).map_err(Failure::usage)?);
    let started = std::time::Instant::now();
    let settings = Settings {
        seed: args.seed,
        mc_passes: args.mc_passes,
        band: args.band,
        experts: args.experts,
        threads: args.threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    };
    let rows = run(&series, Arc::clone(&model), settings).map_err(Failure::runtime)?;
    write_rows(&args.out, &rows).map_err(Failure::runtime)?;
    let s = score(&series, &rows, args.warmup_seconds);
    println!(
        "{} origins in {:.1}s; scored {} targets ({} missing): coverage {:.3}, upper_cov {:.3}, nMAE {:.3}, rel_width {:.3}, int_score {:.3}",
        rows.len() / 3,
        started.elapsed().as_secs_f64(),
        s.n,
        s.missing,
        s.coverage,
        s.upper_cov,
        s.nmae,
        s.rel_width,
        s.int_score
    );
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&series, &rows, 3)).map_err(|e| {
            Failure::runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
    }
    // From the rows as written, so that scaling.py on the file gives these numbers.
    let written = as_written(&rows);
    let what_if = match deployment {
        Some(d) => {
            let w = crate::evidence::scaling::what_if(&series, &written, d, args.risk)
                .map_err(Failure::usage)?;
            print!("{}", crate::evidence::scaling::to_text(&w));
            Some(w)
        }
        None => None,
    };
    if let Some(path) = &args.report {
        let started = std::time::Instant::now();
        let baselines = crate::evidence::baselines::Baseline::ALL
            .iter()
            .map(|&b| {
                let rows = crate::evidence::baselines::run(b, &series, args.warmup_seconds);
                (b, score_table(&series, &rows, args.warmup_seconds))
            })
            .collect();
        let html = crate::evidence::report::render(&crate::evidence::report::ReportInput {
            data: args.data.display().to_string(),
            series: &series,
            rows: &written,
            scores: score_table(&series, &written, args.warmup_seconds),
            baselines,
            what_if: what_if.as_ref(),
            warmup_seconds: args.warmup_seconds,
            settings: report_settings(args, &model, settings),
        });
        std::fs::write(path, &html).map_err(|e| {
            Failure::runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
        println!(
            "report: {} ({} bytes, baselines and HTML in {:.1}s)",
            path.display(),
            html.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The settings the report lists: what produced these forecasts.
fn report_settings(args: &BacktestArgs, model: &Model, s: Settings) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "flowcast".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("data".to_string(), args.data.display().to_string()),
        (
            "model".to_string(),
            match &args.model {
                Some(m) => m.display().to_string(),
                None => "embedded (models/flowcast.onnx)".to_string(),
            },
        ),
        (
            "model fingerprint".to_string(),
            format!("{:08x}", model.fingerprint()),
        ),
        ("seed".to_string(), s.seed.to_string()),
        ("Monte-Carlo passes".to_string(), s.mc_passes.to_string()),
        ("band".to_string(), format!("{:?}", s.band).to_lowercase()),
        (
            "warm-up (not scored)".to_string(),
            format!("{} s", args.warmup_seconds),
        ),
    ];
    if let (Some(c), Some(d)) = (args.replica_capacity, args.startup) {
        out.push((
            "what-if".to_string(),
            format!(
                "capacity {c} req/s per replica, start-up {d}, target utilisation {}, replicas {}..{}, risk target {}",
                args.target_utilization,
                args.min_replicas,
                args.max_replicas.map_or("unbounded".to_string(), |m| m.to_string()),
                args.risk
            ),
        ));
    }
    if let Some(s) = args.service_time {
        out.push((
            "latency".to_string(),
            format!(
                "service time {s}, {} parallel per replica, SLO {} on each minute's P99",
                args.concurrency, args.slo
            ),
        ));
    }
    out
}

/// The deployment of the scaling what-if, when `--replica-capacity` and `--startup` are
/// given; checked before anything runs.
fn deployment(
    args: &BacktestArgs,
) -> Result<Option<crate::evidence::scaling::Deployment>, Failure> {
    let (Some(capacity), Some(startup)) = (args.replica_capacity, args.startup) else {
        return Ok(None);
    };
    let startup: std::time::Duration = startup.into();
    if startup.subsec_nanos() != 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--startup must be 0s, 5m or 10m, got {}",
            humantime::format_duration(startup)
        )));
    }
    if !(args.risk >= 0.0 && args.risk < 1.0) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--risk must be a share in [0, 1), got {}",
            args.risk
        )));
    }
    let service = args
        .service_time
        .map(|s| crate::evidence::latency::Service {
            service_seconds: std::time::Duration::from(s).as_secs_f64(),
            concurrency: args.concurrency,
            slo_seconds: std::time::Duration::from(args.slo).as_secs_f64(),
        });
    let d = crate::evidence::scaling::Deployment {
        service,
        utilization: args.target_utilization,
        min_replicas: args.min_replicas,
        max_replicas: args.max_replicas,
        warmup_seconds: args.warmup_seconds,
        ..crate::evidence::scaling::Deployment::new(capacity, startup.as_secs() as i64)
    };
    d.check().map_err(Failure::usage)?;
    Ok(Some(d))
}
