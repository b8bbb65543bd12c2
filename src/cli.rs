//! The command line: `run`, `demo`, `backtest` and `check-config`.
//!
//! Owns argument parsing with clap. Flags carry no defaults of their own (a default here
//! would beat the config file); [`RunArgs::to_config`] layers flag/env over the file and
//! leaves defaults and validation to `config`. Every `run` flag can also be set with the
//! environment variable `FLOWCAST_<FLAG>` (upper case, dashes as underscores).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, FileConfig};

/// Why a command failed, which sets the exit code: 2 for usage or configuration (before
/// anything runs), 1 for a failure at run time.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments, configuration or model: exit 2.
    Usage(anyhow::Error),
    /// A failure while running: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    /// A usage or configuration error.
    pub fn usage(e: impl Into<anyhow::Error>) -> Self {
        Self::Usage(e.into())
    }

    /// A run-time failure.
    pub fn runtime(e: impl Into<anyhow::Error>) -> Self {
        Self::Runtime(e.into())
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Runtime(_) => 1,
        }
    }

    /// The error, for the message.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::Usage(e) | Self::Runtime(e) => e,
        }
    }
}

/// flowcast: forecast a service's request rate 5–15 minutes ahead with a calibrated band,
/// exported as Prometheus gauges.
#[derive(Debug, Parser)]
#[command(name = "flowcast", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: scrape the target, forecast, serve /metrics.
    Run(RunArgs),
    /// Start a synthetic app on loopback and the real sidecar against it.
    Demo(DemoArgs),
    /// Replay a recorded `timestamp,value` CSV through the pipeline and write forecasts.
    Backtest(BacktestArgs),
    /// Validate a configuration and the model, then exit 0 (valid) or 2 (invalid).
    CheckConfig(RunArgs),
    /// Time forecast ticks of N ready synthetic series through the real pipeline.
    Bench(BenchArgs),
}

/// Settings of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Ready series per tick.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub series: u32,
    /// Monte-Carlo passes per forecast.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub mc_passes: u32,
    /// Ticks timed (after one warm-up tick).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub ticks: u32,
    /// Forecast interval for the CPU share, e.g. 60s.
    #[arg(long, default_value = "60s")]
    pub forecast_interval: humantime::Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Instead of timing ticks: simulate this many hours on a fast clock (scrapes every
    /// 15 s with counter resets, a tick every minute) and print the RSS after each hour.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=720))]
    pub soak_hours: Option<u32>,
}

/// Settings of `run` (and `check-config`): the configuration file and, over it, every
/// key of [`FileConfig`] as a flag or environment variable.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// YAML configuration file; flags and environment variables override its keys.
    #[arg(long, env = "FLOWCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Every configuration key.
    #[command(flatten)]
    pub settings: FileConfig,
}

impl RunArgs {
    /// Merges file < env/flags and validates.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => config::read_file(path)?,
            None => FileConfig::default(),
        };
        file.overlay(self.settings.clone()).validate()
    }
}

/// Settings of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of flowcast's endpoints (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Stop after this long (e.g. 10m); runs until Ctrl-C by default.
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
}

/// A step as whole seconds: `60` or `1m`.
fn step_seconds(text: &str) -> Result<i64, String> {
    if let Ok(n) = text.parse::<i64>() {
        return Ok(n);
    }
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{text:?} is not a whole number of seconds"));
    }
    i64::try_from(d.as_secs()).map_err(|_| format!("{text:?} is too long"))
}

/// The Prometheus API's credentials and TLS for `backtest --prometheus` (the sidecar's
/// `prometheus_*` keys, checked the same way).
#[derive(Debug, Clone, Default, Args)]
pub struct PrometheusAuthArgs {
    /// A file holding a bearer token for the Prometheus API.
    #[arg(long)]
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user name for the Prometheus API.
    #[arg(long)]
    pub prometheus_basic_auth_user: Option<String>,
    /// A file holding the Prometheus API's basic-auth password.
    #[arg(long)]
    pub prometheus_basic_auth_password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https Prometheus API.
    #[arg(long)]
    pub prometheus_ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS with the Prometheus API (with the key file).
    #[arg(long)]
    pub prometheus_client_cert_file: Option<PathBuf>,
    /// The PEM private key of `--prometheus-client-cert-file`.
    #[arg(long)]
    pub prometheus_client_key_file: Option<PathBuf>,
}

/// Settings of `backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Recorded series: `timestamp,value` CSV (value = count per step). Or read it straight
    /// from Prometheus with `--prometheus`.
    #[arg(
        long,
        required_unless_present = "prometheus",
        conflicts_with = "prometheus"
    )]
    pub data: Option<PathBuf>,
    /// Read the series from this Prometheus API (e.g. http://prometheus:9090) with
    /// `/api/v1/query_range`, instead of `--data`.
    #[arg(long, requires = "query")]
    pub prometheus: Option<String>,
    /// With `--prometheus`: the PromQL query, giving requests per second of one series,
    /// e.g. `sum(rate(http_requests_total{job="api"}[1m]))`.
    #[arg(long, requires = "prometheus")]
    pub query: Option<String>,
    /// With `--prometheus`: how far back to read (at least 3 days).
    #[arg(long, default_value = "7d")]
    pub range: humantime::Duration,
    /// With `--prometheus`: the end of the range, unix seconds or RFC 3339 (default: now).
    #[arg(long, requires = "prometheus")]
    pub end: Option<String>,
    /// With `--prometheus`: also write the series it read as a `--data` CSV.
    #[arg(long, requires = "prometheus")]
    pub save_data: Option<PathBuf>,
    /// With `--prometheus`: its credentials and TLS, as the sidecar's `prometheus_*` keys.
    #[command(flatten)]
    pub prometheus_auth: PrometheusAuthArgs,
    /// Where to write the forecasts (`origin,horizon_seconds,mean,lower,upper`).
    #[arg(long)]
    pub out: PathBuf,
    /// Step of the data (seconds, or humantime as 1m); with `--data` inferred from the file
    /// when absent, with `--prometheus` the query's step (default 1m). Must divide 5m.
    #[arg(long, value_parser = step_seconds)]
    pub step: Option<i64>,
    /// Seed of the Monte-Carlo dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Monte-Carlo passes per forecast (the sidecar's default).
    #[arg(long, default_value_t = config::DEFAULT_MC_PASSES)]
    pub mc_passes: usize,
    /// Band: combined (default: the network and the statistical experts), combined-un3,
    /// or the network alone: calibrated (its quantile heads), calibrated-gaussian, un3 or
    /// un2.
    #[arg(long, default_value = "combined")]
    pub band: crate::forecast::band::BandMode,
    /// Experts of the combination, comma-separated (default: all of lstm, persistence,
    /// holt, day_ago, week_ago, mean_1h, mean_3h, mean_1d).
    #[arg(
        long,
        default_value = "lstm,persistence,holt,day_ago,week_ago,mean_1h,mean_3h,mean_1d"
    )]
    pub experts: crate::forecast::combine::ExpertSet,
    /// Write an SVG plot of the observed series and the band.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Seconds after the first timestamp whose origins are not scored (as score.py).
    #[arg(long, default_value_t = 259_200)]
    pub warmup_seconds: i64,
    /// Threads for inference (default: all cores); the output does not depend on it.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// An ONNX model to use instead of the embedded one (with --model-card).
    #[arg(long, requires = "model_card")]
    pub model: Option<PathBuf>,
    /// The card of `--model`.
    #[arg(long, requires = "model")]
    pub model_card: Option<PathBuf>,
    /// Scaling what-if: requests per second one replica serves (req/s per replica, at the
    /// load you would run it at). With `--startup`, replays KEDA with flowcast's upper
    /// bound against a reactive HPA and an oracle, and recommends a horizon, a headroom
    /// and the KEDA thresholds.
    #[arg(long, requires = "startup")]
    pub replica_capacity: Option<f64>,
    /// Scaling what-if: time from a scaling decision to a ready replica (humantime: 0s, 5m
    /// or 10m); the forecast read is the one for D + 5 minutes.
    #[arg(long, requires = "replica_capacity")]
    pub startup: Option<humantime::Duration>,
    /// Scaling what-if: the reactive HPA's target utilisation, in (0, 1].
    #[arg(long, default_value_t = 0.8)]
    pub target_utilization: f64,
    /// Scaling what-if: fewest replicas.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_replicas: u32,
    /// Scaling what-if: most replicas (unbounded by default).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replicas: Option<u32>,
    /// Scaling what-if: the share of 5-minute windows the recommendation may leave
    /// under-provisioned (0.02 = 2 %).
    #[arg(long, default_value_t = 0.02)]
    pub risk: f64,
    /// Latency what-if: the mean service time of one request (humantime, e.g. 150ms). Each
    /// ready replica is `--concurrency` servers of an M/M/c queue at each step's demand;
    /// reports P50, P99, the busiest hour's P99 and the minutes over `--slo` per policy.
    #[arg(long, requires = "replica_capacity")]
    pub service_time: Option<humantime::Duration>,
    /// Latency what-if: requests one replica serves in parallel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Latency what-if: the objective each minute's P99 is held against.
    #[arg(long, default_value = "800ms")]
    pub slo: humantime::Duration,
    /// Write a self-contained HTML report (band over observed, scores against baselines
    /// run on the same data, the what-if, the settings).
    #[arg(long)]
    pub report: Option<PathBuf>,
}
