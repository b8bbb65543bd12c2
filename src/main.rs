//! The `flowcast` binary: parse the command line, start tracing, dispatch, map the result
//! to an exit code (0 ok, 1 runtime failure, 2 usage or configuration error).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use flowcast::cli::{Cli, Command};
use flowcast::config::ModelSource;
use flowcast::{backtest, demo, sidecar};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWCAST_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Runtime(e.into())
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::CheckConfig(args) => {
            let config = args.to_config().map_err(usage)?;
            let model = sidecar::load_model(&config.model).map_err(usage)?;
            println!(
                "config ok: {}, model {} inputs checked",
                config.source.describe(),
                model.card().inputs.len()
            );
            Ok(())
        }
        Command::Run(args) => {
            let config = args.to_config().map_err(usage)?;
            let model = Arc::new(sidecar::load_model(&config.model).map_err(usage)?);
            let rt = runtime_builder().map_err(runtime)?;
            let result = rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| runtime(anyhow::anyhow!("cannot listen on {}: {e}", config.listen)))?;
                let sidecar = sidecar::Sidecar::new(&config, model).map_err(runtime)?;
                let shard = config.shard.map_or_else(|| "all".to_string(), |s| s.to_string());
                tracing::info!(listen = %config.listen, source = %config.source.describe(), %shard, "flowcast started");
                sidecar.run(listener, shutdown_on_signal(None)).await;
                Ok(())
            });
            // A tick abandoned on the signal may still be inferring on a blocking thread;
            // dropping the runtime would wait for it, past the shutdown grace.
            rt.shutdown_background();
            result
        }
        Command::Demo(args) => {
            let rt = runtime_builder().map_err(runtime)?;
            let result = rt.block_on(async move {
                let shutdown = shutdown_on_signal(args.duration.map(Into::into));
                demo::run(args.listen, shutdown).await.map_err(runtime)
            });
            rt.shutdown_background();
            result
        }
        Command::Bench(args) => {
            let model = Arc::new(flowcast::model::Model::embedded().map_err(runtime)?);
            if let Some(hours) = args.soak_hours {
                let started = std::time::Instant::now();
                let rss = flowcast::bench::soak(
                    model,
                    args.series as usize,
                    hours as usize,
                    args.mc_passes as usize,
                )
                .map_err(runtime)?;
                for (hour, bytes) in &rss {
                    println!("hour {hour:>3}: RSS {:.1} MB", *bytes as f64 / 1e6);
                }
                println!(
                    "{} series, {hours} simulated hours in {:.1}s",
                    args.series,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            let interval = std::time::Duration::from(args.forecast_interval).as_secs_f64();
            let r = flowcast::bench::run(
                model,
                args.series as usize,
                args.mc_passes as usize,
                args.ticks as usize,
                interval,
            )
            .map_err(runtime)?;
            if args.json {
                println!("{}", serde_json::to_string(&r).map_err(runtime)?);
            } else {
                println!(
                    "{} series x {} passes, {} ticks: median {:.2} ms, p99 {:.2} ms per tick; {:.1} us per series; {:.3} % of one core at a {}s interval; peak RSS {:.1} MB",
                    r.series,
                    r.mc_passes,
                    r.ticks,
                    r.tick_seconds_median * 1e3,
                    r.tick_seconds_p99 * 1e3,
                    r.seconds_per_series * 1e6,
                    r.cpu_share_at_interval * 100.0,
                    r.forecast_interval_seconds,
                    r.peak_rss_bytes as f64 / 1e6
                );
            }
            Ok(())
        }
        Command::Backtest(args) => {
            if !flowcast::config::MC_PASSES_RANGE.contains(&args.mc_passes) {
                return Err(usage(anyhow::anyhow!(
                    "--mc-passes must be between 1 and 1000"
                )));
            }
            let series = backtest::read_series(&args.data, args.step).map_err(usage)?;
            let source = match (&args.model, &args.model_card) {
                (Some(model), Some(card)) => ModelSource::Files {
                    model: model.clone(),
                    card: card.clone(),
                },
                _ => ModelSource::Embedded,
            };
            let model = Arc::new(sidecar::load_model(&source).map_err(usage)?);
            let started = std::time::Instant::now();
            let settings = backtest::Settings {
                seed: args.seed,
                mc_passes: args.mc_passes,
                band: args.band,
                threads: args.threads.map(usize::from).unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
                }),
            };
            let rows = backtest::run(&series, model, settings).map_err(runtime)?;
            backtest::write_rows(&args.out, &rows).map_err(runtime)?;
            let s = backtest::score(&series, &rows, args.warmup_seconds);
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
            if let Some(plot) = &args.plot {
                std::fs::write(plot, backtest::plot(&series, &rows, 3)).map_err(|e| {
                    runtime(anyhow::anyhow!("cannot write {}: {e}", plot.display()))
                })?;
            }
            Ok(())
        }
    }
}

fn runtime_builder() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
}

/// A token cancelled on SIGTERM/SIGINT, or after `limit`.
fn shutdown_on_signal(limit: Option<std::time::Duration>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        match limit {
            Some(d) => {
                tokio::select! {
                    _ = sidecar::termination_signal() => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => sidecar::termination_signal().await,
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}
