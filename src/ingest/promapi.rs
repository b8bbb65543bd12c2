//! A client of the Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`): the
//! Prometheus source (the service-forecaster shape) and the backfill on start.
//!
//! Owns the API's JSON shapes, their strict reading (a malformed answer, `status: error`,
//! a partial answer with warnings, an unexpected result type or too many series is a
//! [`PromError`] with a bounded `reason()`), and the mapping from result series to
//! flowcast series keys (the `by` label values; series with the same key are summed, as
//! the scrape source sums its matches). It knows nothing of rings or ticks: callers get
//! `(key, [(unix seconds, value)])` and record what they want.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::forecast::shard::Shard;
use crate::ingest::scrape::{HttpAuth, HttpFetcher, ScrapeError};

/// Why a Prometheus API call failed.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The HTTP exchange failed (timeout, connection, body cap, credentials).
    #[error(transparent)]
    Http(#[from] ScrapeError),
    /// Prometheus answered `status: error` (bad query, execution error, timeout).
    #[error("Prometheus refused the query (HTTP {status}, {error_type}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `errorType` (bad_data, execution, timeout, ...).
        error_type: String,
        /// `error`.
        message: String,
    },
    /// A non-2xx answer without an API error body.
    #[error("Prometheus answered HTTP {0}")]
    Status(u16),
    /// The body is not the API's JSON.
    #[error("malformed Prometheus answer: {0}")]
    Malformed(String),
    /// The answer carries warnings (for example a partial answer from a federated or
    /// remote store): its sums may be short, so it is not used.
    #[error("partial answer from Prometheus: {0}")]
    Partial(String),
    /// More series than `max_series`.
    #[error("the query returned {found} series, more than max_series ({max})")]
    TooManySeries {
        /// Series returned.
        found: usize,
        /// The cap.
        max: usize,
    },
}

impl PromError {
    /// A short bounded label for `flowcast_scrape_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Http(e) => e.reason(),
            Self::Api { status: 400, .. } => "bad_query",
            Self::Api { .. } => "api_error",
            Self::Status(s) if (400..500).contains(s) => "http_4xx",
            Self::Status(_) => "http_5xx",
            Self::Malformed(_) => "malformed",
            Self::Partial(_) => "partial",
            Self::TooManySeries { .. } => "too_many_series",
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// A result series' labels.
pub type Labels = BTreeMap<String, String>;
/// A point as the API writes it: unix seconds (float) and the value as a string.
type RawPoint = (f64, String);

#[derive(Deserialize)]
struct VectorSample {
    metric: Labels,
    value: RawPoint,
}

#[derive(Deserialize)]
struct MatrixSeries {
    metric: Labels,
    values: Vec<RawPoint>,
}

/// Series of one answer, keyed by their `by` label values (summed per key), each with its
/// points in time order; non-finite values are left out (a hole).
pub type Points = BTreeMap<Vec<String>, Vec<(i64, f64)>>;

/// A Prometheus API endpoint and a query.
#[derive(Debug, Clone)]
pub struct PromClient {
    http: HttpFetcher,
    base: Url,
    by: Vec<String>,
    max_series: usize,
    shard: Option<Shard>,
}

impl PromClient {
    /// A client of the API under `base` (e.g. `http://prometheus:9090`).
    pub fn new(
        base: Url,
        timeout: Duration,
        max_body_bytes: usize,
        auth: HttpAuth,
        by: Vec<String>,
        max_series: usize,
    ) -> Result<Self, PromError> {
        Ok(Self {
            http: HttpFetcher::new(timeout, max_body_bytes, auth)?,
            base,
            by,
            max_series,
            shard: None,
        })
    }

    /// Keeps only the series of this shard (`--shard I/N`); the `max_series` check counts
    /// those alone, so N replicas can split a query that returns N times the cap.
    pub fn with_shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    fn endpoint(&self, path: &str, params: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.query_pairs_mut()
            .clear()
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        url
    }

    /// An instant query evaluated at `time` (unix seconds).
    pub async fn query(&self, query: &str, time: i64) -> Result<Points, PromError> {
        let url = self.endpoint(
            "api/v1/query",
            &[("query", query.to_string()), ("time", time.to_string())],
        );
        let data = self.call(url).await?;
        self.points(data)
    }

    /// A range query over `[start, end]` every `step` seconds.
    pub async fn query_range(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Points, PromError> {
        let url = self.range_url(query, start, end, step);
        let data = self.call(url).await?;
        self.points(data)
    }

    /// A range query over `[start, end]` every `step` seconds, each result series with its
    /// own labels (no `by` keys, no summing, no shard, no series cap): what
    /// `backtest --prometheus` needs to refuse a query of several series by name. Points are
    /// in time order; non-finite and negative values are left out (a hole).
    pub async fn query_range_labelled(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<(Labels, Vec<(i64, f64)>)>, PromError> {
        let url = self.range_url(query, start, end, step);
        let data = self.call(url).await?;
        let mut out = Vec::new();
        for (labels, values) in raw_series(data)? {
            let mut points = parse_points(values)?;
            points.retain(|(_, v)| v.is_finite() && *v >= 0.0);
            out.push((labels, points));
        }
        Ok(out)
    }

    fn range_url(&self, query: &str, start: i64, end: i64, step: i64) -> Url {
        self.endpoint(
            "api/v1/query_range",
            &[
                ("query", query.to_string()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", step.to_string()),
            ],
        )
    }

    async fn call(&self, url: Url) -> Result<Data, PromError> {
        let fetched = self.http.get(url, "application/json").await?;
        let answer: Result<Answer, _> = serde_json::from_slice(&fetched.bytes);
        let ok_status = (200..300).contains(&fetched.status);
        match answer {
            Ok(a) if a.status == "success" && ok_status => {
                if let Some(w) = a.warnings.filter(|w| !w.is_empty()) {
                    return Err(PromError::Partial(w.join("; ")));
                }
                a.data
                    .ok_or_else(|| PromError::Malformed("success without data".to_string()))
            }
            Ok(a) if a.status == "error" => Err(PromError::Api {
                status: fetched.status,
                error_type: a.error_type.unwrap_or_default(),
                message: a.error.unwrap_or_default(),
            }),
            _ if !ok_status => Err(PromError::Status(fetched.status)),
            Ok(a) => Err(PromError::Malformed(format!("status {:?}", a.status))),
            Err(e) => Err(PromError::Malformed(e.to_string())),
        }
    }

    fn points(&self, data: Data) -> Result<Points, PromError> {
        let series = raw_series(data)?;
        let mut out: Points = BTreeMap::new();
        for (metric, values) in series {
            let key: Vec<String> = self
                .by
                .iter()
                .map(|l| metric.get(l).cloned().unwrap_or_default())
                .collect();
            if self.shard.is_some_and(|s| !s.owns(&key)) {
                continue;
            }
            let parsed = parse_points(values)?;
            merge_sum(out.entry(key).or_default(), parsed);
        }
        if out.len() > self.max_series {
            return Err(PromError::TooManySeries {
                found: out.len(),
                max: self.max_series,
            });
        }
        for points in out.values_mut() {
            points.retain(|(_, v)| v.is_finite() && *v >= 0.0);
        }
        Ok(out)
    }
}

/// The series of an answer with their labels and raw points.
fn raw_series(data: Data) -> Result<Vec<(Labels, Vec<RawPoint>)>, PromError> {
    let malformed = |e: serde_json::Error| PromError::Malformed(e.to_string());
    Ok(match data.result_type.as_str() {
        "vector" => serde_json::from_value::<Vec<VectorSample>>(data.result)
            .map_err(malformed)?
            .into_iter()
            .map(|s| (s.metric, vec![s.value]))
            .collect(),
        "matrix" => serde_json::from_value::<Vec<MatrixSeries>>(data.result)
            .map_err(malformed)?
            .into_iter()
            .map(|s| (s.metric, s.values))
            .collect(),
        "scalar" => {
            let v: RawPoint = serde_json::from_value(data.result).map_err(malformed)?;
            vec![(BTreeMap::new(), vec![v])]
        }
        other => {
            return Err(PromError::Malformed(format!(
                "result type {other:?} is not a number series (use rate() or sum())"
            )))
        }
    })
}

/// Raw points as (unix seconds, value); a value that is not a number or a non-finite
/// timestamp is malformed.
fn parse_points(values: Vec<RawPoint>) -> Result<Vec<(i64, f64)>, PromError> {
    values
        .into_iter()
        .map(|(t, v)| {
            let v: f64 = v
                .parse()
                .map_err(|_| PromError::Malformed(format!("value {v:?} is not a number")))?;
            if !t.is_finite() {
                return Err(PromError::Malformed(format!("timestamp {t}")));
            }
            Ok((t.round() as i64, v))
        })
        .collect()
}

/// Adds `new` into `into` point by point (same timestamps are summed; a missing one on
/// either side leaves the other's value, which is what `sum()` in PromQL does).
fn merge_sum(into: &mut Vec<(i64, f64)>, new: Vec<(i64, f64)>) {
    if into.is_empty() {
        *into = new;
        return;
    }
    let mut merged: BTreeMap<i64, f64> = into.drain(..).collect();
    for (t, v) in new {
        *merged.entry(t).or_insert(0.0) += v;
    }
    into.extend(merged);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(by: &[&str], max_series: usize) -> PromClient {
        PromClient::new(
            Url::parse("http://127.0.0.1:9/prom/").expect("url"),
            Duration::from_secs(1),
            1 << 20,
            HttpAuth::default(),
            by.iter().map(|s| s.to_string()).collect(),
            max_series,
        )
        .expect("client")
    }

    fn data(json: &str) -> Data {
        serde_json::from_str(json).expect("data json")
    }

    #[test]
    fn endpoints_keep_a_path_prefix_and_encode_the_query() {
        let c = client(&[], 10);
        let url = c.endpoint(
            "api/v1/query",
            &[("query", "sum(rate(x{a=\"b c\"}[1m]))".into())],
        );
        assert_eq!(url.path(), "/prom/api/v1/query");
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            q,
            vec![("query".into(), "sum(rate(x{a=\"b c\"}[1m]))".into())]
        );
    }

    #[test]
    fn vectors_matrices_and_scalars_become_keyed_points() {
        let c = client(&["route"], 10);
        let v = c
            .points(data(
                r#"{"resultType":"vector","result":[
                {"metric":{"route":"/a","pod":"1"},"value":[100,"2.5"]},
                {"metric":{"route":"/a","pod":"2"},"value":[100,"1.5"]},
                {"metric":{"route":"/b"},"value":[100,"NaN"]}]}"#,
            ))
            .expect("vector");
        assert_eq!(v[&vec!["/a".to_string()]], vec![(100, 4.0)]);
        assert!(v[&vec!["/b".to_string()]].is_empty(), "NaN is a hole");

        let m = client(&[], 10)
            .points(data(
                r#"{"resultType":"matrix","result":[
                {"metric":{"a":"x"},"values":[[60,"1"],[120,"2"]]},
                {"metric":{"a":"y"},"values":[[120,"3"],[180,"+Inf"]]}]}"#,
            ))
            .expect("matrix");
        assert_eq!(m[&Vec::<String>::new()], vec![(60, 1.0), (120, 5.0)]);

        let s = c
            .points(data(r#"{"resultType":"scalar","result":[100,"7"]}"#))
            .expect("scalar");
        assert_eq!(s[&vec![String::new()]], vec![(100, 7.0)]);
    }

    #[test]
    fn bad_shapes_and_too_many_series_are_errors() {
        let c = client(&["route"], 1);
        let e = c
            .points(data(
                r#"{"resultType":"vector","result":[
                {"metric":{"route":"/a"},"value":[1,"1"]},
                {"metric":{"route":"/b"},"value":[1,"1"]}]}"#,
            ))
            .expect_err("two series, cap 1");
        assert_eq!(e.reason(), "too_many_series");
        for bad in [
            r#"{"resultType":"string","result":[1,"x"]}"#,
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"one"]}]}"#,
            r#"{"resultType":"vector","result":{"not":"a list"}}"#,
        ] {
            assert_eq!(c.points(data(bad)).expect_err(bad).reason(), "malformed");
        }
    }

    /// With `--shard`, each replica keeps its own series and the cap counts those alone.
    #[test]
    fn a_shard_keeps_its_own_series_and_the_cap_counts_only_those() {
        let routes: Vec<String> = (0..40).map(|i| format!("/r{i}")).collect();
        let body = routes
            .iter()
            .map(|r| format!(r#"{{"metric":{{"route":"{r}"}},"value":[1,"1"]}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let json = format!(r#"{{"resultType":"vector","result":[{body}]}}"#);
        let mut seen = Vec::new();
        for index in 0..3 {
            let shard = Shard { index, count: 3 };
            let c = client(&["route"], 25).with_shard(Some(shard));
            let got = c.points(data(&json)).expect("each shard is under the cap");
            assert!(got.keys().all(|k| shard.owns(k)), "shard {shard}");
            assert!(
                !got.is_empty() && got.len() < 25,
                "shard {shard}: {}",
                got.len()
            );
            seen.extend(got.into_keys());
        }
        seen.sort();
        let mut all: Vec<Vec<String>> = routes.iter().map(|r| vec![r.clone()]).collect();
        all.sort();
        assert_eq!(
            seen, all,
            "the 3 shards together hold every series exactly once"
        );
        let unsplit = client(&["route"], 25).points(data(&json));
        assert_eq!(unsplit.expect_err("40 > 25").reason(), "too_many_series");
    }
}
