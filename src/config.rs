//! Settings: a YAML file, environment variables and flags merged into one validated
//! [`Config`] of typed values (flag > env > file > default).
//!
//! Owns the names, defaults and limits of every setting, and `ConfigError`, which names
//! the key and the reason. The doc comments of [`FileConfig`]'s fields are the reference
//! documentation of the configuration file (the README's table is checked against them).
//! Nothing outside this module sees a raw string setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::forecast::band::BandMode;
use crate::forecast::combine::ExpertSet;
use crate::forecast::model::ModelSource;
use crate::forecast::shard::Shard;
use crate::ingest::scrape::{HttpAuth, ScrapeLimits};
use crate::ingest::selector::Selector;
use crate::serve::metrics::RESERVED_LABELS;
use crate::serve::shared::Capacity;

/// Monte-Carlo passes per forecast when none are configured (`run`, `backtest`).
pub const DEFAULT_MC_PASSES: usize = 30;
/// The Monte-Carlo passes a forecast may be configured with.
pub const MC_PASSES_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;

/// The configuration file (`--config flowcast.yaml`), and the same keys as `run` flags
/// (`--scrape-interval`) and environment variables (`FLOWCAST_SCRAPE_INTERVAL`). Every key
/// is optional here; the source's keys must come from the file, a flag or the environment.
/// Unknown keys are an error. The doc comments are the reference documentation (and the
/// flags' help).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the request rates come from: `scrape` (default: the app's metrics endpoint)
    /// or `prometheus` (a PromQL query against a Prometheus API: the service forecaster).
    #[arg(long, env = "FLOWCAST_SOURCE")]
    pub source: Option<String>,
    /// URL of the application's metrics endpoint to scrape (http or https).
    #[arg(long, env = "FLOWCAST_TARGET")]
    pub target: Option<String>,
    /// PromQL-style selector of the request counters, e.g.
    /// `http_requests_total{job="api",code!~"5.."}`; matching samples are summed.
    #[arg(long, env = "FLOWCAST_SELECTOR")]
    pub selector: Option<String>,
    /// Labels to keep as separate series (like PromQL `sum by (...)`); empty sums all.
    /// Repeat the flag, or comma-separate in the environment variable.
    #[arg(long, env = "FLOWCAST_BY", value_delimiter = ',')]
    pub by: Option<Vec<String>>,
    /// Value of the `series` label on every exported gauge. Default: `requests`.
    #[arg(long, env = "FLOWCAST_SERIES_NAME")]
    pub series_name: Option<String>,
    /// How often to scrape the target or query Prometheus (humantime, e.g. `15s`).
    /// Default: `15s`.
    #[arg(long, env = "FLOWCAST_SCRAPE_INTERVAL")]
    pub scrape_interval: Option<String>,
    /// Timeout of one scrape or query; must be shorter than `scrape_interval`. Default: 80 %
    /// of it.
    #[arg(long, env = "FLOWCAST_SCRAPE_TIMEOUT")]
    pub scrape_timeout: Option<String>,
    /// A file holding a bearer token for the target (re-read every second, off the runtime).
    #[arg(long, env = "FLOWCAST_TARGET_BEARER_TOKEN_FILE")]
    pub target_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user name for the target (with `target_basic_auth_password_file`).
    #[arg(long, env = "FLOWCAST_TARGET_BASIC_AUTH_USER")]
    pub target_basic_auth_user: Option<String>,
    /// A file holding the target's basic-auth password (re-read every second, off the
    /// runtime).
    #[arg(long, env = "FLOWCAST_TARGET_BASIC_AUTH_PASSWORD_FILE")]
    pub target_basic_auth_password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https target.
    #[arg(long, env = "FLOWCAST_TARGET_CA_FILE")]
    pub target_ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) for mutual TLS with the target (with the key file).
    #[arg(long, env = "FLOWCAST_TARGET_CLIENT_CERT_FILE")]
    pub target_client_cert_file: Option<PathBuf>,
    /// The PEM (PKCS#8, RSA or SEC1) private key of `target_client_cert_file`.
    #[arg(long, env = "FLOWCAST_TARGET_CLIENT_KEY_FILE")]
    pub target_client_key_file: Option<PathBuf>,
    /// Base URL of a Prometheus-compatible HTTP API (e.g. `http://prometheus:9090`), for
    /// `source: prometheus` and the default of `backfill_url`.
    #[arg(long, env = "FLOWCAST_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// The PromQL query of `source: prometheus`, giving requests per second, e.g.
    /// `sum(rate(http_requests_total{job="api"}[1m]))`; its result series are kept apart
    /// by the `by` labels (summed otherwise).
    #[arg(long, env = "FLOWCAST_QUERY")]
    pub query: Option<String>,
    /// A file holding a bearer token for the Prometheus API (re-read every second, off the
    /// runtime).
    #[arg(long, env = "FLOWCAST_PROMETHEUS_BEARER_TOKEN_FILE")]
    pub prometheus_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user name for the Prometheus API.
    #[arg(long, env = "FLOWCAST_PROMETHEUS_BASIC_AUTH_USER")]
    pub prometheus_basic_auth_user: Option<String>,
    /// A file holding the Prometheus API's basic-auth password.
    #[arg(long, env = "FLOWCAST_PROMETHEUS_BASIC_AUTH_PASSWORD_FILE")]
    pub prometheus_basic_auth_password_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https Prometheus API.
    #[arg(long, env = "FLOWCAST_PROMETHEUS_CA_FILE")]
    pub prometheus_ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS with the Prometheus API (with the key file).
    #[arg(long, env = "FLOWCAST_PROMETHEUS_CLIENT_CERT_FILE")]
    pub prometheus_client_cert_file: Option<PathBuf>,
    /// The PEM private key of `prometheus_client_cert_file`.
    #[arg(long, env = "FLOWCAST_PROMETHEUS_CLIENT_KEY_FILE")]
    pub prometheus_client_key_file: Option<PathBuf>,
    /// Prometheus API to backfill the last 4 hours from on start (`/api/v1/query_range`),
    /// so a new replica forecasts at once. Default: `prometheus_url` with
    /// `source: prometheus`, none with `source: scrape`. Uses the `prometheus_*` credentials.
    #[arg(long, env = "FLOWCAST_BACKFILL_URL")]
    pub backfill_url: Option<String>,
    /// The PromQL query that gives the same series as the source, in requests per second,
    /// e.g. `sum by (route) (rate(http_requests_total{pod="api-0"}[1m]))`. Required for a
    /// backfill with `source: scrape`; default `query` with `source: prometheus`.
    #[arg(long, env = "FLOWCAST_BACKFILL_QUERY")]
    pub backfill_query: Option<String>,
    /// How often to forecast (humantime). Default: `60s`.
    #[arg(long, env = "FLOWCAST_FORECAST_INTERVAL")]
    pub forecast_interval: Option<String>,
    /// Monte-Carlo dropout passes per forecast (1..=1000). Default: 30 (the ablation in
    /// models/README.md: 10, 30 and 100 passes give the same calibrated scores; 30 keeps
    /// the published epistemic component steady at a third of the cost of 100).
    #[arg(long, env = "FLOWCAST_MC_PASSES")]
    pub mc_passes: Option<usize>,
    /// Most series kept (distinct `by` label values); the rest are counted as dropped.
    /// Default: 100.
    #[arg(long, env = "FLOWCAST_MAX_SERIES")]
    pub max_series: Option<usize>,
    /// A series with no sample for this long leaves the set: its memory, its gauges and its
    /// snapshot entry go, and `flowcast_series_evicted_total` counts it, so junk series
    /// that came once do not hold `max_series` for good (humantime; 1m to 30d). Default:
    /// `1h`.
    #[arg(long, env = "FLOWCAST_SERIES_STALE_AFTER")]
    pub series_stale_after: Option<String>,
    /// Forecast only shard I of N (`I/N`, 0 ≤ I < N): the series whose `by` label values
    /// hash to I with Prometheus's `hashmod` (MD5, `;` separator). N replicas with
    /// `0/N` … `N-1/N` split the series with no coordination. Needs `by`. Default: all.
    #[arg(long, env = "FLOWCAST_SHARD")]
    pub shard: Option<String>,
    /// Largest scrape or API body read, in bytes; a larger body fails. Default: 16 MiB.
    #[arg(long, env = "FLOWCAST_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Whether redirects from the target or the Prometheus API are followed (up to 10, as
    /// Prometheus's `follow_redirects`); a redirect from https to http is refused either
    /// way, and with `false` a redirect fails the scrape (`reason="redirect"`). Default:
    /// true.
    #[arg(long, env = "FLOWCAST_FOLLOW_REDIRECTS")]
    pub follow_redirects: Option<bool>,
    /// Most samples in one scrape of the target; a scrape with more fails as a whole
    /// (Prometheus's `sample_limit`; 0 is no limit). Default: 100000.
    #[arg(long, env = "FLOWCAST_SAMPLE_LIMIT")]
    pub sample_limit: Option<usize>,
    /// Most labels on one scraped sample, the metric name included (Prometheus's
    /// `label_limit`; 0 is no limit). Default: 64.
    #[arg(long, env = "FLOWCAST_LABEL_LIMIT")]
    pub label_limit: Option<usize>,
    /// Longest label name in a scrape, in bytes (Prometheus's `label_name_length_limit`;
    /// 0 is no limit). Default: 128.
    #[arg(long, env = "FLOWCAST_LABEL_NAME_LENGTH_LIMIT")]
    pub label_name_length_limit: Option<usize>,
    /// Longest label value (or metric name) in a scrape, in bytes (Prometheus's
    /// `label_value_length_limit`; 0 is no limit). Default: 1024.
    #[arg(long, env = "FLOWCAST_LABEL_VALUE_LENGTH_LIMIT")]
    pub label_value_length_limit: Option<usize>,
    /// Directory for state snapshots (history and calibration), created if missing; a
    /// restarted sidecar restores them and forecasts at once. None by default.
    #[arg(long, env = "FLOWCAST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often to snapshot into `state_dir` (humantime; 10s to 1h); one more snapshot is
    /// written on shutdown. Default: `5m`.
    #[arg(long, env = "FLOWCAST_SNAPSHOT_INTERVAL")]
    pub snapshot_interval: Option<String>,
    /// Longest a shutdown (SIGTERM/SIGINT) may take: stop, snapshot, drain in-flight
    /// requests, exit 0 (humantime; 1s to 5m). Default: `5s`.
    #[arg(long, env = "FLOWCAST_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// Name of the app's request-latency histogram in seconds (scrape source), e.g.
    /// `http_request_duration_seconds`: enables `flowcast_forecast_concurrency_upper`
    /// (Little's law: upper rate × mean latency from the `_sum`/`_count` rates). It is read
    /// with the selector's label matchers.
    #[arg(long, env = "FLOWCAST_LATENCY_HISTOGRAM")]
    pub latency_histogram: Option<String>,
    /// Requests per second one replica serves at its target load: enables
    /// `flowcast_recommended_replicas{horizon}` = ceil(upper × (1 + headroom) / capacity).
    #[arg(long, env = "FLOWCAST_REPLICA_CAPACITY")]
    pub replica_capacity: Option<f64>,
    /// Extra share of capacity kept free in `flowcast_recommended_replicas` (0 to 1).
    /// Default: 0.1.
    #[arg(long, env = "FLOWCAST_REPLICA_HEADROOM")]
    pub replica_headroom: Option<f64>,
    /// Address to serve /metrics and the other endpoints on. Default: `127.0.0.1:9464`.
    #[arg(long, env = "FLOWCAST_LISTEN")]
    pub listen: Option<String>,
    /// A file holding a bearer token that every request to flowcast's endpoints must carry
    /// (except /healthz and /readyz, for probes); re-read every second, off the runtime.
    #[arg(long, env = "FLOWCAST_LISTEN_BEARER_TOKEN_FILE")]
    pub listen_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user name required on flowcast's endpoints (with the password file).
    #[arg(long, env = "FLOWCAST_LISTEN_BASIC_AUTH_USER")]
    pub listen_basic_auth_user: Option<String>,
    /// A file holding the basic-auth password required on flowcast's endpoints.
    #[arg(long, env = "FLOWCAST_LISTEN_BASIC_AUTH_PASSWORD_FILE")]
    pub listen_basic_auth_password_file: Option<PathBuf>,
    /// A web config in the Prometheus exporter-toolkit's format: `tls_server_config`
    /// (`cert_file`, `key_file`, `client_ca_file`, `client_auth_type`, `min_version`) puts
    /// TLS on the listener, `basic_auth_users` (bcrypt hashes) requires basic auth on every
    /// endpoint but the probes. Re-read every second; an invalid change is logged and the
    /// last good one stays. Default: none (plain HTTP).
    #[arg(long = "web.config.file", env = "FLOWCAST_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Path of a user ONNX model of the same contract; default: the embedded model.
    #[arg(long, env = "FLOWCAST_MODEL")]
    pub model: Option<PathBuf>,
    /// Path of that model's card (required with `model`).
    #[arg(long, env = "FLOWCAST_MODEL_CARD")]
    pub model_card: Option<PathBuf>,
    /// Seed of the Monte-Carlo dropout masks. Default: 0.
    #[arg(long, env = "FLOWCAST_SEED")]
    pub seed: Option<u64>,
    /// Prefix of every exported metric name. Default: `flowcast`.
    #[arg(long, env = "FLOWCAST_METRIC_PREFIX")]
    pub metric_prefix: Option<String>,
    /// Band: `combined` (default: centred on the online combination of the LSTM and the
    /// statistical experts), or for comparison `combined-un3` (the same centre with the
    /// study's u1+u2+u3 width) or the LSTM alone: `calibrated`, the study's raw `un3` / `un2`.
    #[arg(long, env = "FLOWCAST_BAND")]
    pub band: Option<String>,
    /// Experts of the combination (repeat the flag, or comma-separate in the environment
    /// variable): any of `lstm`, `persistence`, `holt`, `day_ago`, `week_ago`, `mean_1h`,
    /// `mean_3h`, `mean_1d`. Default: all.
    #[arg(long, env = "FLOWCAST_EXPERTS", value_delimiter = ',')]
    pub experts: Option<Vec<String>>,
}

/// Where the request rates come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Scrape the app's metrics endpoint and select counters.
    Scrape {
        /// Metrics endpoint.
        target: Url,
        /// Counter selector.
        selector: Selector,
        /// Credentials and CA.
        auth: HttpAuth,
    },
    /// Query a Prometheus API for rates.
    Prometheus(PromEndpoint),
}

impl Source {
    /// What the series mean, for state snapshots and logs (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Source::Scrape { selector, .. } => format!("selector={selector}"),
            Source::Prometheus(p) => format!("query={}", p.query),
        }
    }
}

/// A Prometheus API and a query of request rates.
#[derive(Debug, Clone, PartialEq)]
pub struct PromEndpoint {
    /// Base URL of the API.
    pub url: Url,
    /// PromQL giving requests per second.
    pub query: String,
    /// Credentials and CA.
    pub auth: HttpAuth,
}

/// The validated settings of `flowcast run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the rates come from.
    pub source: Source,
    /// Where to backfill history from on start, if anywhere.
    pub backfill: Option<PromEndpoint>,
    /// Little's law and replica recommendations.
    pub capacity: Capacity,
    /// Labels kept as separate series.
    pub by: Vec<String>,
    /// `series` label value.
    pub series_name: String,
    /// Scrape period.
    pub scrape_interval: Duration,
    /// Scrape timeout (< `scrape_interval`).
    pub scrape_timeout: Duration,
    /// Forecast period.
    pub forecast_interval: Duration,
    /// Monte-Carlo passes.
    pub mc_passes: usize,
    /// Series cap.
    pub max_series: usize,
    /// Eviction after this long without a sample.
    pub series_stale_after: Duration,
    /// This replica's shard of the series (`--shard I/N`), if split.
    pub shard: Option<Shard>,
    /// Body cap in bytes.
    pub max_body_bytes: usize,
    /// Per-scrape limits of the target's exposition.
    pub scrape_limits: ScrapeLimits,
    /// Snapshot directory.
    pub state_dir: Option<PathBuf>,
    /// Snapshot period.
    pub snapshot_interval: Duration,
    /// Shutdown deadline.
    pub shutdown_grace: Duration,
    /// Listen address.
    pub listen: SocketAddr,
    /// Credentials required on flowcast's own endpoints (no CA).
    pub listen_auth: HttpAuth,
    /// The exporter-toolkit web config (TLS, basic-auth users), checked at start.
    pub web_config_file: Option<PathBuf>,
    /// Model source.
    pub model: ModelSource,
    /// Mask seed.
    pub seed: u64,
    /// Metric name prefix.
    pub metric_prefix: String,
    /// Band mode.
    pub band: BandMode,
    /// Experts of the combination.
    pub experts: ExpertSet,
}

/// A configuration problem, naming the key (or file) and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected form (unknown key, wrong type...).
    #[error("config file {path}: {source}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// The parser's error, with line and column.
        source: serde_norway::Error,
    },
    /// A key has a bad or missing value.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key, as spelled in the file (flags use the same name with dashes).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Reads and parses a configuration file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses configuration YAML (an empty document is an empty config).
pub fn parse_file(text: &str) -> Result<FileConfig, serde_norway::Error> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text)
}

impl FileConfig {
    /// Overlays `over` on `self`: every key set in `over` wins (an empty `by` list counts
    /// as unset).
    pub fn overlay(self, mut over: FileConfig) -> FileConfig {
        if over.by.as_ref().is_some_and(Vec::is_empty) {
            over.by = None;
        }
        let (Ok(serde_json::Value::Object(mut base)), Ok(serde_json::Value::Object(top))) =
            (serde_json::to_value(&self), serde_json::to_value(&over))
        else {
            return over;
        };
        for (key, value) in top {
            if !value.is_null() {
                base.insert(key, value);
            }
        }
        // Both sides are FileConfigs, so the merged object always reads back as one.
        serde_json::from_value(serde_json::Value::Object(base)).unwrap_or(over)
    }

    /// Validates every key and applies the defaults, section by section (each section's
    /// keys in the order the reference lists them).
    pub fn validate(self) -> Result<Config, ConfigError> {
        let (source, backfill) = self.sources()?;
        let capacity = self.capacity(&source)?;
        let series = self.series()?;
        let timing = self.timing()?;
        let inference = self.inference()?;
        let state = self.state()?;
        let server = self.server()?;
        Ok(Config {
            source,
            backfill,
            capacity,
            by: series.by,
            series_name: series.name,
            scrape_interval: timing.scrape_interval,
            scrape_timeout: timing.scrape_timeout,
            forecast_interval: timing.forecast_interval,
            mc_passes: inference.mc_passes,
            max_series: series.max_series,
            series_stale_after: series.stale_after,
            shard: series.shard,
            max_body_bytes: server.max_body_bytes,
            scrape_limits: self.scrape_limits(),
            state_dir: state.dir,
            snapshot_interval: state.snapshot_interval,
            shutdown_grace: state.shutdown_grace,
            listen: server.listen,
            listen_auth: server.listen_auth,
            web_config_file: server.web_config_file,
            model: inference.model,
            seed: inference.seed,
            metric_prefix: server.metric_prefix,
            band: inference.band,
            experts: inference.experts,
        })
    }

    /// The per-scrape limits, each defaulting to [`ScrapeLimits::DEFAULT`]'s.
    fn scrape_limits(&self) -> ScrapeLimits {
        let d = ScrapeLimits::DEFAULT;
        ScrapeLimits {
            sample_limit: self.sample_limit.unwrap_or(d.sample_limit),
            label_limit: self.label_limit.unwrap_or(d.label_limit),
            label_name_length_limit: self
                .label_name_length_limit
                .unwrap_or(d.label_name_length_limit),
            label_value_length_limit: self
                .label_value_length_limit
                .unwrap_or(d.label_value_length_limit),
        }
    }

    /// The source section: where rates come from (`source`, `target`, `selector`,
    /// `prometheus_url`, `query` and their credentials) and the backfill.
    fn sources(&self) -> Result<(Source, Option<PromEndpoint>), ConfigError> {
        let prometheus_auth = auth(AuthFiles {
            side: AuthSide::Prometheus,
            bearer_token_file: self.prometheus_bearer_token_file.clone(),
            user: self.prometheus_basic_auth_user.clone(),
            password_file: self.prometheus_basic_auth_password_file.clone(),
            ca_file: self.prometheus_ca_file.clone(),
            client_cert_file: self.prometheus_client_cert_file.clone(),
            client_key_file: self.prometheus_client_key_file.clone(),
            follow_redirects: self.follow_redirects.unwrap_or(true),
        })?;
        let prometheus_url = self
            .prometheus_url
            .as_deref()
            .map(|u| http_url("prometheus_url", u))
            .transpose()?;
        let source = match self.source.as_deref().unwrap_or("scrape") {
            "scrape" => self.scrape_source()?,
            "prometheus" => {
                let url = prometheus_url.clone().ok_or_else(|| {
                    invalid("prometheus_url", "is required with source: prometheus")
                })?;
                let query = non_empty_query("query", self.query.clone())?.ok_or_else(|| {
                    invalid(
                        "query",
                        "is required with source: prometheus, e.g. sum(rate(http_requests_total{job=\"api\"}[1m]))",
                    )
                })?;
                Source::Prometheus(PromEndpoint {
                    url,
                    query,
                    auth: prometheus_auth.clone(),
                })
            }
            other => {
                return Err(invalid(
                    "source",
                    format!("{other:?} is not a source: use scrape or prometheus"),
                ))
            }
        };
        let backfill = self.backfill(&source, prometheus_url, prometheus_auth)?;
        Ok((source, backfill))
    }

    /// `source: scrape`: the target, its selector and its credentials.
    fn scrape_source(&self) -> Result<Source, ConfigError> {
        let target_text = self
            .target
            .clone()
            .ok_or_else(|| invalid("target", "is required (the URL of the metrics endpoint)"))?;
        let target = http_url("target", &target_text)?;
        let selector_text = self.selector.clone().ok_or_else(|| {
            invalid(
                "selector",
                "is required, e.g. http_requests_total{job=\"api\"}",
            )
        })?;
        let selector: Selector = selector_text
            .parse()
            .map_err(|e| invalid("selector", format!("{selector_text:?}: {e}")))?;
        let auth = auth(AuthFiles {
            side: AuthSide::Target,
            bearer_token_file: self.target_bearer_token_file.clone(),
            user: self.target_basic_auth_user.clone(),
            password_file: self.target_basic_auth_password_file.clone(),
            ca_file: self.target_ca_file.clone(),
            client_cert_file: self.target_client_cert_file.clone(),
            client_key_file: self.target_client_key_file.clone(),
            follow_redirects: self.follow_redirects.unwrap_or(true),
        })?;
        Ok(Source::Scrape {
            target,
            selector,
            auth,
        })
    }

    /// `backfill_url` and `backfill_query`, defaulting to the Prometheus source's own.
    fn backfill(
        &self,
        source: &Source,
        prometheus_url: Option<Url>,
        prometheus_auth: HttpAuth,
    ) -> Result<Option<PromEndpoint>, ConfigError> {
        let backfill_url = match self.backfill_url.as_deref() {
            Some(u) => Some(http_url("backfill_url", u)?),
            None if matches!(source, Source::Prometheus(_)) => prometheus_url,
            None => None,
        };
        let backfill_query = match (
            non_empty_query("backfill_query", self.backfill_query.clone())?,
            source,
        ) {
            (Some(q), _) => Some(q),
            (None, Source::Prometheus(p)) => Some(p.query.clone()),
            (None, Source::Scrape { .. }) => None,
        };
        match (backfill_url, backfill_query) {
            (Some(url), Some(query)) => Ok(Some(PromEndpoint {
                url,
                query,
                auth: prometheus_auth,
            })),
            (Some(_), None) => Err(invalid(
                "backfill_query",
                "is required with backfill_url and source: scrape (a PromQL query giving the same series in req/s, e.g. sum by (route) (rate(http_requests_total{pod=\"api-0\"}[1m])))",
            )),
            (None, Some(_)) if self.backfill_query.is_some() => {
                Err(invalid("backfill_url", "is required with backfill_query"))
            }
            (None, _) => Ok(None),
        }
    }

    /// The capacity signals: `latency_histogram`, `replica_capacity`, `replica_headroom`.
    fn capacity(&self, source: &Source) -> Result<Capacity, ConfigError> {
        let latency_histogram = self.latency_histogram.clone();
        if let Some(name) = &latency_histogram {
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            if !valid {
                return Err(invalid(
                    "latency_histogram",
                    format!("{name:?} is not a metric name"),
                ));
            }
            if !matches!(source, Source::Scrape { .. }) {
                return Err(invalid("latency_histogram", "needs source: scrape"));
            }
        }
        if let Some(c) = self.replica_capacity {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid(
                    "replica_capacity",
                    "must be a positive number of req/s",
                ));
            }
        }
        let replica_headroom = self.replica_headroom.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&replica_headroom) {
            return Err(invalid("replica_headroom", "must be between 0 and 1"));
        }
        Ok(Capacity {
            latency_histogram,
            replica_capacity: self.replica_capacity,
            replica_headroom,
        })
    }

    /// The series section: `by`, `series_name`, `max_series`, `series_stale_after` and
    /// `shard`.
    fn series(&self) -> Result<SeriesSection, ConfigError> {
        let by = self.by.clone().unwrap_or_default();
        for (i, label) in by.iter().enumerate() {
            let valid = label
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid || label.starts_with("__") {
                return Err(invalid(
                    "by",
                    format!("{label:?} is not a valid label name"),
                ));
            }
            if RESERVED_LABELS.contains(&label.as_str()) {
                return Err(invalid(
                    "by",
                    format!("{label:?} is used by flowcast's own metrics"),
                ));
            }
            if by[..i].contains(label) {
                return Err(invalid("by", format!("{label:?} is listed twice")));
            }
        }
        let name = self
            .series_name
            .clone()
            .unwrap_or_else(|| "requests".to_string());
        if name.is_empty() || name.len() > 128 {
            return Err(invalid("series_name", "must be 1 to 128 characters"));
        }
        let max_series = self.max_series.unwrap_or(100);
        if !(1..=100_000).contains(&max_series) {
            return Err(invalid("max_series", "must be between 1 and 100000"));
        }
        let stale_after = duration(
            "series_stale_after",
            self.series_stale_after.as_deref(),
            Duration::from_secs(3600),
        )?;
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86_400)).contains(&stale_after) {
            return Err(invalid("series_stale_after", "must be between 1m and 30d"));
        }
        let shard = match self.shard.as_deref() {
            None => None,
            Some(text) => {
                let shard: Shard =
                    text.parse()
                        .map_err(|e: crate::forecast::shard::ShardError| {
                            invalid("shard", e.to_string())
                        })?;
                if shard.count > 1 && by.is_empty() {
                    return Err(invalid(
                        "shard",
                        "splitting needs series to split: set `by` (without it there is one series)",
                    ));
                }
                Some(shard)
            }
        };
        Ok(SeriesSection {
            by,
            name,
            max_series,
            stale_after,
            shard,
        })
    }

    /// The timing section: `scrape_interval`, `scrape_timeout`, `forecast_interval`.
    fn timing(&self) -> Result<TimingSection, ConfigError> {
        let scrape_interval = duration(
            "scrape_interval",
            self.scrape_interval.as_deref(),
            Duration::from_secs(15),
        )?;
        if scrape_interval < Duration::from_secs(1) || scrape_interval > Duration::from_secs(60) {
            return Err(invalid(
                "scrape_interval",
                "must be between 1s and 60s (rates are kept per minute)",
            ));
        }
        let scrape_timeout = duration(
            "scrape_timeout",
            self.scrape_timeout.as_deref(),
            scrape_interval.mul_f64(0.8),
        )?;
        if scrape_timeout >= scrape_interval || scrape_timeout.is_zero() {
            return Err(invalid(
                "scrape_timeout",
                format!(
                    "must be above 0 and shorter than scrape_interval ({})",
                    humantime::format_duration(scrape_interval)
                ),
            ));
        }
        let forecast_interval = duration(
            "forecast_interval",
            self.forecast_interval.as_deref(),
            Duration::from_secs(60),
        )?;
        if forecast_interval < Duration::from_secs(1)
            || forecast_interval > Duration::from_secs(300)
        {
            return Err(invalid("forecast_interval", "must be between 1s and 5m"));
        }
        Ok(TimingSection {
            scrape_interval,
            scrape_timeout,
            forecast_interval,
        })
    }

    /// The inference section: `mc_passes`, `model` and `model_card`, `seed`, `band`,
    /// `experts`.
    fn inference(&self) -> Result<InferenceSection, ConfigError> {
        let mc_passes = self.mc_passes.unwrap_or(DEFAULT_MC_PASSES);
        if !MC_PASSES_RANGE.contains(&mc_passes) {
            return Err(invalid("mc_passes", "must be between 1 and 1000"));
        }
        let model = match (self.model.clone(), self.model_card.clone()) {
            (None, None) => ModelSource::Embedded,
            (Some(model), Some(card)) => ModelSource::Files { model, card },
            (Some(_), None) => {
                return Err(invalid("model_card", "is required when `model` is set"))
            }
            (None, Some(_)) => {
                return Err(invalid("model", "is required when `model_card` is set"))
            }
        };
        let band = match self.band.as_deref() {
            None => BandMode::default(),
            Some(b) => b
                .parse()
                .map_err(|e: crate::forecast::band::UnknownBandMode| {
                    invalid("band", e.to_string())
                })?,
        };
        let experts =
            match &self.experts {
                None => ExpertSet::ALL,
                Some(list) => list.join(",").parse().map_err(
                    |e: crate::forecast::combine::ExpertListError| {
                        invalid("experts", e.to_string())
                    },
                )?,
            };
        Ok(InferenceSection {
            mc_passes,
            model,
            seed: self.seed.unwrap_or(0),
            band,
            experts,
        })
    }

    /// The state section: `state_dir`, `snapshot_interval`, `shutdown_grace`.
    fn state(&self) -> Result<StateSection, ConfigError> {
        let snapshot_interval = duration(
            "snapshot_interval",
            self.snapshot_interval.as_deref(),
            Duration::from_secs(300),
        )?;
        if snapshot_interval < Duration::from_secs(10)
            || snapshot_interval > Duration::from_secs(3600)
        {
            return Err(invalid("snapshot_interval", "must be between 10s and 1h"));
        }
        let shutdown_grace = duration(
            "shutdown_grace",
            self.shutdown_grace.as_deref(),
            Duration::from_secs(5),
        )?;
        if shutdown_grace < Duration::from_secs(1) || shutdown_grace > Duration::from_secs(300) {
            return Err(invalid("shutdown_grace", "must be between 1s and 5m"));
        }
        if self
            .state_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("state_dir", "must not be empty"));
        }
        Ok(StateSection {
            dir: self.state_dir.clone(),
            snapshot_interval,
            shutdown_grace,
        })
    }

    /// The server section: `listen` and its credentials, `metric_prefix`, and the body cap
    /// of what flowcast reads (`max_body_bytes`).
    fn server(&self) -> Result<ServerSection, ConfigError> {
        let max_body_bytes = self.max_body_bytes.unwrap_or(16 << 20);
        if !(1024..=(1 << 30)).contains(&max_body_bytes) {
            return Err(invalid("max_body_bytes", "must be between 1 KiB and 1 GiB"));
        }
        let listen_text = self
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9464".to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:9464: {e}"),
            )
        })?;
        let listen_auth = auth(AuthFiles {
            side: AuthSide::Listen,
            bearer_token_file: self.listen_bearer_token_file.clone(),
            user: self.listen_basic_auth_user.clone(),
            password_file: self.listen_basic_auth_password_file.clone(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            follow_redirects: false,
        })?;
        let metric_prefix = self
            .metric_prefix
            .clone()
            .unwrap_or_else(|| "flowcast".to_string());
        let prefix_ok = metric_prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && metric_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !prefix_ok {
            return Err(invalid(
                "metric_prefix",
                format!("{metric_prefix:?} is not a valid metric name prefix"),
            ));
        }
        if let Some(path) = &self.web_config_file {
            crate::serve::webconfig::WebConfig::load(path)
                .map_err(|e| invalid("web_config_file", e.to_string()))?;
        }
        Ok(ServerSection {
            max_body_bytes,
            listen,
            listen_auth,
            metric_prefix,
            web_config_file: self.web_config_file.clone(),
        })
    }
}

/// Validated `by`, `series_name`, `max_series`, `series_stale_after`, `shard`.
struct SeriesSection {
    by: Vec<String>,
    name: String,
    max_series: usize,
    stale_after: Duration,
    shard: Option<Shard>,
}

/// Validated intervals and timeout.
struct TimingSection {
    scrape_interval: Duration,
    scrape_timeout: Duration,
    forecast_interval: Duration,
}

/// Validated inference settings.
struct InferenceSection {
    mc_passes: usize,
    model: ModelSource,
    seed: u64,
    band: BandMode,
    experts: ExpertSet,
}

/// Validated state settings.
struct StateSection {
    dir: Option<PathBuf>,
    snapshot_interval: Duration,
    shutdown_grace: Duration,
}

/// Validated server settings.
struct ServerSection {
    max_body_bytes: usize,
    listen: SocketAddr,
    listen_auth: HttpAuth,
    metric_prefix: String,
    web_config_file: Option<PathBuf>,
}

impl Config {
    /// What a state snapshot must have been taken with to be restored here: the source,
    /// the `by` labels, the band mode and the shard (another shard holds other series).
    pub fn state_identity(&self) -> String {
        let base = crate::forecast::state::identity(&self.source.describe(), &self.by);
        match self.shard {
            Some(shard) => format!("{base};shard={shard}"),
            None => base,
        }
    }
}

/// An http(s) URL with a host.
/// The Prometheus API of `flowcast backtest --prometheus`: its URL and credentials checked
/// as the sidecar's `prometheus_url` and `prometheus_*` keys are (and named by those keys
/// in errors).
pub fn prometheus_api(
    url: &str,
    creds: PrometheusCredentials,
) -> Result<(Url, HttpAuth), ConfigError> {
    let url = http_url("prometheus_url", url)?;
    let auth = auth(AuthFiles {
        side: AuthSide::Prometheus,
        bearer_token_file: creds.bearer_token_file,
        user: creds.basic_auth_user,
        password_file: creds.basic_auth_password_file,
        ca_file: creds.ca_file,
        client_cert_file: creds.client_cert_file,
        client_key_file: creds.client_key_file,
        follow_redirects: true,
    })?;
    Ok((url, auth))
}

/// The `prometheus_*` credential files of [`prometheus_api`].
#[derive(Debug, Clone, Default)]
pub struct PrometheusCredentials {
    /// `prometheus_bearer_token_file`.
    pub bearer_token_file: Option<PathBuf>,
    /// `prometheus_basic_auth_user`.
    pub basic_auth_user: Option<String>,
    /// `prometheus_basic_auth_password_file`.
    pub basic_auth_password_file: Option<PathBuf>,
    /// `prometheus_ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `prometheus_client_cert_file`.
    pub client_cert_file: Option<PathBuf>,
    /// `prometheus_client_key_file`.
    pub client_key_file: Option<PathBuf>,
}

fn http_url(key: &'static str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| invalid(key, format!("{text:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key,
            format!("{text:?} must be an http or https URL with a host"),
        ));
    }
    Ok(url)
}

fn non_empty_query(key: &'static str, q: Option<String>) -> Result<Option<String>, ConfigError> {
    match q {
        Some(q) if q.trim().is_empty() => Err(invalid(key, "must not be empty")),
        Some(q) if q.len() > 16 * 1024 => Err(invalid(key, "is longer than 16 KiB")),
        other => Ok(other),
    }
}

/// Whose credentials a set of `*_file` keys holds: the keys are named after it.
#[derive(Debug, Clone, Copy)]
enum AuthSide {
    /// `target_*`: the scraped application.
    Target,
    /// `prometheus_*`: the Prometheus API (source and backfill).
    Prometheus,
    /// `listen_*`: flowcast's own endpoints (no CA, no client certificate).
    Listen,
}

impl AuthSide {
    /// The configuration key of `part` (`token`, `user`, `password`, `ca`, `cert`, `key`).
    fn key(self, part: &str) -> &'static str {
        match (self, part) {
            (Self::Listen, "token") => "listen_bearer_token_file",
            (Self::Listen, "user") => "listen_basic_auth_user",
            (Self::Listen, _) => "listen_basic_auth_password_file",
            (Self::Target, "token") => "target_bearer_token_file",
            (Self::Target, "user") => "target_basic_auth_user",
            (Self::Target, "password") => "target_basic_auth_password_file",
            (Self::Target, "cert") => "target_client_cert_file",
            (Self::Target, "key") => "target_client_key_file",
            (Self::Target, _) => "target_ca_file",
            (Self::Prometheus, "token") => "prometheus_bearer_token_file",
            (Self::Prometheus, "user") => "prometheus_basic_auth_user",
            (Self::Prometheus, "password") => "prometheus_basic_auth_password_file",
            (Self::Prometheus, "cert") => "prometheus_client_cert_file",
            (Self::Prometheus, "key") => "prometheus_client_key_file",
            (Self::Prometheus, _) => "prometheus_ca_file",
        }
    }
}

/// The credential keys of one side, as given.
struct AuthFiles {
    side: AuthSide,
    bearer_token_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    follow_redirects: bool,
}

/// Credentials: every file must be readable now (a typo is a start-up error, exit 2), and
/// a token or password file must not be empty; they are re-read in the background so that
/// rotated secrets are picked up.
fn auth(files: AuthFiles) -> Result<HttpAuth, ConfigError> {
    let readable = |key: &'static str, path: &Path| {
        std::fs::metadata(path)
            .map_err(|e| invalid(key, format!("{}: {e}", path.display())))
            .and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(invalid(key, format!("{} is not a file", path.display())))
                }
            })
    };
    let not_empty = |key: &'static str, path: &Path| match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(invalid(
            key,
            format!("{} is empty: an empty secret is refused", path.display()),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(invalid(key, format!("{}: {e}", path.display()))),
    };
    let key = |part: &str| files.side.key(part);
    if let Some(p) = &files.bearer_token_file {
        readable(key("token"), p)?;
        not_empty(key("token"), p)?;
    }
    let basic = match (files.user, files.password_file) {
        (Some(u), Some(p)) => {
            readable(key("password"), &p)?;
            not_empty(key("password"), &p)?;
            Some((u, p))
        }
        (None, None) => None,
        (Some(_), None) => return Err(invalid(key("password"), "is required with the user name")),
        (None, Some(_)) => return Err(invalid(key("user"), "is required with the password file")),
    };
    if files.bearer_token_file.is_some() && basic.is_some() {
        return Err(invalid(
            key("user"),
            "cannot be combined with a bearer token",
        ));
    }
    if let Some(p) = &files.ca_file {
        readable(key("ca"), p)?;
    }
    let client_identity = match (files.client_cert_file, files.client_key_file) {
        (Some(cert), Some(k)) => {
            readable(key("cert"), &cert)?;
            readable(key("key"), &k)?;
            Some((cert, k))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                key("key"),
                "is required with the client certificate",
            ))
        }
        (None, Some(_)) => return Err(invalid(key("cert"), "is required with the client key")),
    };
    Ok(HttpAuth {
        bearer_token_file: files.bearer_token_file,
        basic,
        ca_file: files.ca_file,
        client_identity,
        follow_redirects: files.follow_redirects,
    })
}

fn duration(
    key: &'static str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            invalid(
                key,
                format!("{t:?} is not a duration like 15s or 1m30s: {e}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration key has a row in the README's table.
    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../README.md");
        let keys = match serde_json::to_value(FileConfig::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect::<Vec<_>>(),
            other => panic!("FileConfig is not an object: {other:?}"),
        };
        assert!(keys.len() > 20);
        let missing: Vec<_> = keys
            .iter()
            .filter(|k| !readme.contains(&format!("`{k}`")))
            .collect();
        assert!(missing.is_empty(), "README lacks {missing:?}");
    }

    fn base() -> FileConfig {
        FileConfig {
            target: Some("http://127.0.0.1:8080/metrics".into()),
            selector: Some("http_requests_total{code!~\"5..\"}".into()),
            ..FileConfig::default()
        }
    }

    #[test]
    fn the_state_identity_names_the_shard() {
        let with = |shard: Option<&str>| {
            FileConfig {
                by: Some(vec!["route".into()]),
                shard: shard.map(String::from),
                ..base()
            }
            .validate()
            .expect("valid")
            .state_identity()
        };
        let (all, first, second) = (with(None), with(Some("0/2")), with(Some("1/2")));
        assert!(first.ends_with(";shard=0/2"), "{first}");
        assert!(all != first && first != second && all != second);
        assert_eq!(first, with(Some("0/2")));
    }

    #[test]
    fn defaults_apply() {
        let c = base().validate().expect("valid");
        assert_eq!(c.scrape_interval, Duration::from_secs(15));
        assert_eq!(c.scrape_timeout, Duration::from_secs(12));
        assert_eq!(c.forecast_interval, Duration::from_secs(60));
        assert_eq!((c.mc_passes, c.max_series), (30, 100));
        assert_eq!(
            c.listen,
            "127.0.0.1:9464".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(c.model, ModelSource::Embedded);
    }

    #[test]
    fn later_layers_win() {
        let file =
            parse_file("scrape_interval: 30s\nmc_passes: 10\nby: [route]\n").expect("parses");
        let flags = FileConfig {
            mc_passes: Some(20),
            ..FileConfig::default()
        };
        let c = base()
            .overlay(file)
            .overlay(flags)
            .validate()
            .expect("valid");
        assert_eq!(c.scrape_interval, Duration::from_secs(30));
        assert_eq!(c.mc_passes, 20);
        assert_eq!(c.by, vec!["route".to_string()]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(FileConfig, &str)> = vec![
            (
                FileConfig {
                    scrape_timeout: Some("20s".into()),
                    ..base()
                },
                "scrape_timeout",
            ),
            (
                FileConfig {
                    scrape_interval: Some("soon".into()),
                    ..base()
                },
                "scrape_interval",
            ),
            (
                FileConfig {
                    target: Some("not a url".into()),
                    ..base()
                },
                "target",
            ),
            (
                FileConfig {
                    target: Some("ftp://x/metrics".into()),
                    ..base()
                },
                "target",
            ),
            (
                FileConfig {
                    selector: Some("http_requests_total{code=~\"(\"}".into()),
                    ..base()
                },
                "selector",
            ),
            (
                FileConfig {
                    by: Some(vec!["horizon".into()]),
                    ..base()
                },
                "by",
            ),
            (
                FileConfig {
                    shard: Some("3/3".into()),
                    by: Some(vec!["route".into()]),
                    ..base()
                },
                "shard",
            ),
            (
                FileConfig {
                    shard: Some("0/2".into()),
                    ..base()
                },
                "shard",
            ),
            (
                FileConfig {
                    mc_passes: Some(0),
                    ..base()
                },
                "mc_passes",
            ),
            (
                FileConfig {
                    listen: Some("everywhere".into()),
                    ..base()
                },
                "listen",
            ),
            (
                FileConfig {
                    model: Some("m.onnx".into()),
                    ..base()
                },
                "model_card",
            ),
            (
                FileConfig {
                    band: Some("wide".into()),
                    ..base()
                },
                "band",
            ),
            (
                FileConfig {
                    target: None,
                    ..base()
                },
                "target",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().expect_err(key);
            assert!(
                err.to_string().contains(&format!("`{key}`")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_the_line() {
        let err = parse_file("target: http://x/\nscrape_intervall: 15s\n")
            .expect_err("unknown key")
            .to_string();
        assert!(
            err.contains("scrape_intervall") && err.contains("line 2"),
            "{err}"
        );
        let err = parse_file("mc_passes: many\n")
            .expect_err("wrong type")
            .to_string();
        assert!(err.contains("mc_passes"), "{err}");
    }
}
