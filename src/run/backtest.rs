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
use crate::evidence::dataset::Series;
use crate::evidence::range;
use crate::forecast::model::{Model, ModelSource};
use crate::ingest::promapi::PromClient;

/// `flowcast backtest`: reads the series, replays it, writes the forecasts (and the plot),
/// and prints the scores. Bad input (arguments, CSV, model) is a usage error.
pub fn command(args: &BacktestArgs) -> Result<(), Failure> {
    if !MC_PASSES_RANGE.contains(&args.mc_passes) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--mc-passes must be between 1 and 1000"
        )));
    }
    let deployment = deployment(args)?;
    let (series, data) = load_series(args)?;
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
            data: data.clone(),
            series: &series,
            rows: &written,
            scores: score_table(&series, &written, args.warmup_seconds),
            baselines,
            what_if: what_if.as_ref(),
            warmup_seconds: args.warmup_seconds,
            settings: report_settings(args, &data, &model, settings),
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

/// The series of `--data FILE`, or of `--prometheus URL --query Q` (read with
/// `query_range`, saved with `--save-data`), and how to name it.
fn load_series(args: &BacktestArgs) -> Result<(Series, String), Failure> {
    if let Some(path) = &args.data {
        let series = read_series(path, args.step).map_err(Failure::usage)?;
        return Ok((series, path.display().to_string()));
    }
    let (Some(url), Some(query)) = (&args.prometheus, &args.query) else {
        return Err(Failure::usage(anyhow::anyhow!(
            "give --data FILE, or --prometheus URL with --query PROMQL"
        )));
    };
    let a = args.prometheus_auth.clone();
    let (url, auth) = crate::config::prometheus_api(
        url,
        crate::config::PrometheusCredentials {
            bearer_token_file: a.prometheus_bearer_token_file,
            basic_auth_user: a.prometheus_basic_auth_user,
            basic_auth_password_file: a.prometheus_basic_auth_password_file,
            ca_file: a.prometheus_ca_file,
            client_cert_file: a.prometheus_client_cert_file,
            client_key_file: a.prometheus_client_key_file,
        },
    )
    .map_err(Failure::usage)?;
    let step = args.step.unwrap_or(60);
    let range = std::time::Duration::from(args.range);
    if range.as_secs() < range::MIN_SPAN_SECONDS as u64 || range.subsec_nanos() != 0 {
        return Err(Failure::usage(range::RangeError::RangeTooShort(
            args.range.to_string(),
        )));
    }
    let end = match &args.end {
        Some(text) => parse_time(text).map_err(Failure::usage)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    };
    let end = end.div_euclid(step.max(1)) * step.max(1);
    let start = end - range.as_secs() as i64;
    // Up to 11,000 points of one series per answer: a few MB of JSON at most.
    let client = PromClient::new(
        url.clone(),
        std::time::Duration::from_secs(120),
        64 << 20,
        auth,
        Vec::new(),
        usize::MAX,
    )
    .map_err(Failure::usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    let started = std::time::Instant::now();
    let read = runtime
        .block_on(range::read(&client, query, start, end, step))
        .map_err(|e| match e {
            range::RangeError::Prom(_) => Failure::runtime(e),
            _ => Failure::usage(e),
        })?;
    println!(
        "read {} steps of {} s ({} to {} UTC) from {url} in {} request(s), {:.1}s",
        read.series.rows.len(),
        step,
        crate::serve::chart::utc(start),
        crate::serve::chart::utc(end),
        read.requests,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.save_data {
        std::fs::write(path, range::to_csv(&read.series)).map_err(|e| {
            Failure::runtime(anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })?;
        println!("data: {}", path.display());
    }
    Ok((read.series, format!("{url} {query}")))
}

/// Unix seconds or an RFC 3339 time.
fn parse_time(text: &str) -> Result<i64, anyhow::Error> {
    if let Ok(t) = text.parse::<i64>() {
        return Ok(t);
    }
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| anyhow::anyhow!("--end {text:?} is neither unix seconds nor RFC 3339: {e}"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64))
}

/// The settings the report lists: what produced these forecasts.
fn report_settings(
    args: &BacktestArgs,
    data: &str,
    model: &Model,
    s: Settings,
) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "flowcast".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("data".to_string(), data.to_string()),
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
