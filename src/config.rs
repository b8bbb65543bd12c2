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

use serde::Deserialize;
use url::Url;

use crate::band::BandMode;
use crate::exposition::Selector;
use crate::metrics::RESERVED_LABELS;

/// The configuration file (`--config flowcast.yaml`). Every key is optional here; `target`
/// and `selector` must come from the file, a flag or the environment. Unknown keys are an
/// error.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// URL of the application's metrics endpoint to scrape (http or https).
    pub target: Option<String>,
    /// PromQL-style selector of the request counters, e.g.
    /// `http_requests_total{job="api",code!~"5.."}`; matching samples are summed.
    pub selector: Option<String>,
    /// Labels to keep as separate series (like PromQL `sum by (...)`); empty sums all.
    pub by: Option<Vec<String>>,
    /// Value of the `series` label on every exported gauge. Default: `requests`.
    pub series_name: Option<String>,
    /// How often to scrape the target (humantime, e.g. `15s`). Default: `15s`.
    pub scrape_interval: Option<String>,
    /// Timeout of one scrape; must be shorter than `scrape_interval`. Default: 80 % of it.
    pub scrape_timeout: Option<String>,
    /// How often to forecast (humantime). Default: `60s`.
    pub forecast_interval: Option<String>,
    /// Monte-Carlo dropout passes per forecast (1..=1000). Default: 100.
    pub mc_passes: Option<usize>,
    /// Most series kept (distinct `by` label values); the rest are counted as dropped.
    /// Default: 100.
    pub max_series: Option<usize>,
    /// Largest scrape body read, in bytes; a larger body fails the scrape. Default: 16 MiB.
    pub max_body_bytes: Option<usize>,
    /// Directory for state snapshots (history and calibration), created if missing; a
    /// restarted sidecar restores them and forecasts at once. None by default.
    pub state_dir: Option<PathBuf>,
    /// How often to snapshot into `state_dir` (humantime; 10s to 1h); one more snapshot is
    /// written on shutdown. Default: `5m`.
    pub snapshot_interval: Option<String>,
    /// Longest a shutdown (SIGTERM/SIGINT) may take: stop, snapshot, drain in-flight
    /// requests, exit 0 (humantime; 1s to 5m). Default: `5s`.
    pub shutdown_grace: Option<String>,
    /// Address to serve /metrics and the other endpoints on. Default: `127.0.0.1:9464`.
    pub listen: Option<String>,
    /// Path of a user ONNX model of the same contract; default: the embedded model.
    pub model: Option<PathBuf>,
    /// Path of that model's card (required with `model`).
    pub model_card: Option<PathBuf>,
    /// Seed of the Monte-Carlo dropout masks. Default: 0.
    pub seed: Option<u64>,
    /// Prefix of every exported metric name. Default: `flowcast`.
    pub metric_prefix: Option<String>,
    /// Band: `calibrated` (default), or the study's raw `un3` / `un2` for comparison.
    pub band: Option<String>,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// The model embedded in the binary.
    Embedded,
    /// A user's model and card.
    Files {
        /// ONNX file.
        model: PathBuf,
        /// Model card JSON.
        card: PathBuf,
    },
}

/// The validated settings of `flowcast run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Metrics endpoint scraped.
    pub target: Url,
    /// Counter selector.
    pub selector: Selector,
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
    /// Body cap in bytes.
    pub max_body_bytes: usize,
    /// Snapshot directory.
    pub state_dir: Option<PathBuf>,
    /// Snapshot period.
    pub snapshot_interval: Duration,
    /// Shutdown deadline.
    pub shutdown_grace: Duration,
    /// Listen address.
    pub listen: SocketAddr,
    /// Model source.
    pub model: ModelSource,
    /// Mask seed.
    pub seed: u64,
    /// Metric name prefix.
    pub metric_prefix: String,
    /// Band mode.
    pub band: BandMode,
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
    #[error("config file {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
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
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses configuration YAML (an empty document is an empty config).
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

impl FileConfig {
    /// Overlays `over` on `self`: every key set in `over` wins.
    pub fn overlay(self, over: FileConfig) -> FileConfig {
        FileConfig {
            target: over.target.or(self.target),
            selector: over.selector.or(self.selector),
            by: over.by.filter(|b| !b.is_empty()).or(self.by),
            series_name: over.series_name.or(self.series_name),
            scrape_interval: over.scrape_interval.or(self.scrape_interval),
            scrape_timeout: over.scrape_timeout.or(self.scrape_timeout),
            forecast_interval: over.forecast_interval.or(self.forecast_interval),
            mc_passes: over.mc_passes.or(self.mc_passes),
            max_series: over.max_series.or(self.max_series),
            max_body_bytes: over.max_body_bytes.or(self.max_body_bytes),
            state_dir: over.state_dir.or(self.state_dir),
            snapshot_interval: over.snapshot_interval.or(self.snapshot_interval),
            shutdown_grace: over.shutdown_grace.or(self.shutdown_grace),
            listen: over.listen.or(self.listen),
            model: over.model.or(self.model),
            model_card: over.model_card.or(self.model_card),
            seed: over.seed.or(self.seed),
            metric_prefix: over.metric_prefix.or(self.metric_prefix),
            band: over.band.or(self.band),
        }
    }

    /// Validates every key and applies the defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let target_text = self
            .target
            .ok_or_else(|| invalid("target", "is required (the URL of the metrics endpoint)"))?;
        let target = Url::parse(&target_text)
            .map_err(|e| invalid("target", format!("{target_text:?} is not a URL: {e}")))?;
        if !matches!(target.scheme(), "http" | "https") || target.host_str().is_none() {
            return Err(invalid(
                "target",
                format!("{target_text:?} must be an http or https URL with a host"),
            ));
        }
        let selector_text = self.selector.ok_or_else(|| {
            invalid(
                "selector",
                "is required, e.g. http_requests_total{job=\"api\"}",
            )
        })?;
        let selector: Selector = selector_text
            .parse()
            .map_err(|e| invalid("selector", format!("{selector_text:?}: {e}")))?;
        let by = self.by.unwrap_or_default();
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
        let series_name = self.series_name.unwrap_or_else(|| "requests".to_string());
        if series_name.is_empty() || series_name.len() > 128 {
            return Err(invalid("series_name", "must be 1 to 128 characters"));
        }
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
        let mc_passes = self.mc_passes.unwrap_or(100);
        if !(1..=1000).contains(&mc_passes) {
            return Err(invalid("mc_passes", "must be between 1 and 1000"));
        }
        let max_series = self.max_series.unwrap_or(100);
        if !(1..=100_000).contains(&max_series) {
            return Err(invalid("max_series", "must be between 1 and 100000"));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(16 << 20);
        if !(1024..=(1 << 30)).contains(&max_body_bytes) {
            return Err(invalid("max_body_bytes", "must be between 1 KiB and 1 GiB"));
        }
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
        let listen_text = self.listen.unwrap_or_else(|| "127.0.0.1:9464".to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:9464: {e}"),
            )
        })?;
        let model = match (self.model, self.model_card) {
            (None, None) => ModelSource::Embedded,
            (Some(model), Some(card)) => ModelSource::Files { model, card },
            (Some(_), None) => {
                return Err(invalid("model_card", "is required when `model` is set"))
            }
            (None, Some(_)) => {
                return Err(invalid("model", "is required when `model_card` is set"))
            }
        };
        let metric_prefix = self.metric_prefix.unwrap_or_else(|| "flowcast".to_string());
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
        let band = match self.band {
            None => BandMode::default(),
            Some(b) => b.parse().map_err(|e: String| invalid("band", e))?,
        };
        Ok(Config {
            target,
            selector,
            by,
            series_name,
            scrape_interval,
            scrape_timeout,
            forecast_interval,
            mc_passes,
            max_series,
            max_body_bytes,
            state_dir: self.state_dir,
            snapshot_interval,
            shutdown_grace,
            listen,
            model,
            seed: self.seed.unwrap_or(0),
            metric_prefix,
            band,
        })
    }
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

    fn base() -> FileConfig {
        FileConfig {
            target: Some("http://127.0.0.1:8080/metrics".into()),
            selector: Some("http_requests_total{code!~\"5..\"}".into()),
            ..FileConfig::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = base().validate().expect("valid");
        assert_eq!(c.scrape_interval, Duration::from_secs(15));
        assert_eq!(c.scrape_timeout, Duration::from_secs(12));
        assert_eq!(c.forecast_interval, Duration::from_secs(60));
        assert_eq!((c.mc_passes, c.max_series), (100, 100));
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
        let err =
            parse_file("target: http://x/\nscrape_intervall: 15s\n").expect_err("unknown key");
        assert!(
            err.contains("scrape_intervall") && err.contains("line 2"),
            "{err}"
        );
        let err = parse_file("mc_passes: many\n").expect_err("wrong type");
        assert!(err.contains("mc_passes"), "{err}");
    }
}
