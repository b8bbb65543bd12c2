//! The command line: `run`, `demo`, `backtest` and `check-config`.
//!
//! Owns argument parsing with clap. Flags carry no defaults of their own (a default here
//! would beat the config file); [`RunArgs::to_config`] layers flag/env over the file and
//! leaves defaults and validation to `config`. Every `run` flag can also be set with the
//! environment variable `FLOWCAST_<FLAG>` (upper case, dashes as underscores).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, FileConfig};

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
}

/// Settings of `run` (and `check-config`).
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// YAML configuration file; flags and environment variables override its keys.
    #[arg(long, env = "FLOWCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Metrics endpoint of the application to scrape.
    #[arg(long, env = "FLOWCAST_TARGET")]
    pub target: Option<String>,
    /// PromQL-style counter selector, e.g. 'http_requests_total{code!~"5.."}'.
    #[arg(long, env = "FLOWCAST_SELECTOR")]
    pub selector: Option<String>,
    /// Keep this label as a separate series (repeatable; comma-separated in the env var).
    #[arg(long, env = "FLOWCAST_BY", value_delimiter = ',')]
    pub by: Vec<String>,
    /// Value of the `series` label.
    #[arg(long, env = "FLOWCAST_SERIES_NAME")]
    pub series_name: Option<String>,
    /// Scrape period, e.g. 15s.
    #[arg(long, env = "FLOWCAST_SCRAPE_INTERVAL")]
    pub scrape_interval: Option<String>,
    /// Scrape timeout (shorter than the interval).
    #[arg(long, env = "FLOWCAST_SCRAPE_TIMEOUT")]
    pub scrape_timeout: Option<String>,
    /// Forecast period, e.g. 60s.
    #[arg(long, env = "FLOWCAST_FORECAST_INTERVAL")]
    pub forecast_interval: Option<String>,
    /// Monte-Carlo dropout passes per forecast.
    #[arg(long, env = "FLOWCAST_MC_PASSES")]
    pub mc_passes: Option<usize>,
    /// Most series kept.
    #[arg(long, env = "FLOWCAST_MAX_SERIES")]
    pub max_series: Option<usize>,
    /// Largest scrape body in bytes.
    #[arg(long, env = "FLOWCAST_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Directory for state snapshots.
    #[arg(long, env = "FLOWCAST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often to snapshot into --state-dir, e.g. 5m.
    #[arg(long, env = "FLOWCAST_SNAPSHOT_INTERVAL")]
    pub snapshot_interval: Option<String>,
    /// Deadline of a graceful shutdown, e.g. 5s.
    #[arg(long, env = "FLOWCAST_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Address to listen on, e.g. 0.0.0.0:9464.
    #[arg(long, env = "FLOWCAST_LISTEN")]
    pub listen: Option<String>,
    /// A user ONNX model (with --model-card).
    #[arg(long, env = "FLOWCAST_MODEL")]
    pub model: Option<PathBuf>,
    /// The user model's card.
    #[arg(long, env = "FLOWCAST_MODEL_CARD")]
    pub model_card: Option<PathBuf>,
    /// Seed of the Monte-Carlo dropout masks.
    #[arg(long, env = "FLOWCAST_SEED")]
    pub seed: Option<u64>,
    /// Prefix of exported metric names.
    #[arg(long, env = "FLOWCAST_METRIC_PREFIX")]
    pub metric_prefix: Option<String>,
    /// Band: calibrated (default), un3 or un2.
    #[arg(long, env = "FLOWCAST_BAND")]
    pub band: Option<String>,
}

impl RunArgs {
    /// Merges file < env/flags and validates.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => config::read_file(path)?,
            None => FileConfig::default(),
        };
        file.overlay(self.as_file_config()).validate()
    }

    fn as_file_config(&self) -> FileConfig {
        FileConfig {
            target: self.target.clone(),
            selector: self.selector.clone(),
            by: (!self.by.is_empty()).then(|| self.by.clone()),
            series_name: self.series_name.clone(),
            scrape_interval: self.scrape_interval.clone(),
            scrape_timeout: self.scrape_timeout.clone(),
            forecast_interval: self.forecast_interval.clone(),
            mc_passes: self.mc_passes,
            max_series: self.max_series,
            max_body_bytes: self.max_body_bytes,
            state_dir: self.state_dir.clone(),
            snapshot_interval: self.snapshot_interval.clone(),
            shutdown_grace: self.shutdown_grace.clone(),
            listen: self.listen.clone(),
            model: self.model.clone(),
            model_card: self.model_card.clone(),
            seed: self.seed,
            metric_prefix: self.metric_prefix.clone(),
            band: self.band.clone(),
        }
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

/// Settings of `backtest`.
#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Recorded series: `timestamp,value` CSV (value = count per step).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the forecasts (`origin,horizon_seconds,mean,lower,upper`).
    #[arg(long)]
    pub out: PathBuf,
    /// Step of the data in seconds; inferred from the timestamps when absent.
    #[arg(long)]
    pub step: Option<i64>,
    /// Seed of the Monte-Carlo dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Monte-Carlo passes per forecast.
    #[arg(long, default_value_t = 100)]
    pub mc_passes: usize,
    /// Band: calibrated (default), un3 or un2.
    #[arg(long, default_value = "calibrated")]
    pub band: crate::band::BandMode,
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
}
