//! The deploy artefacts (`deploy/`) checked by the real tools where users have them:
//! `promtool` on the Prometheus rules and their unit tests, KEDA's ScaledObject CRD schema
//! on the ScaledObject, the parsed structure of the Kubernetes manifests and the Grafana
//! dashboard, and a real Prometheus scraping a real flowcast that runs every dashboard
//! query, both KEDA queries and the rules.
//!
//! A missing `promtool` or `prometheus` skips its test with a note, unless
//! `FLOWCAST_REQUIRE_TOOLS=1` (set by .ci/run) makes it a failure.

// Shared with the integration tests; this crate uses only part of it.
#[allow(dead_code)]
#[path = "../integration/support/mod.rs"]
mod support;

mod backtest_prometheus;
mod chaos;
mod dashboard;
mod dockerfile;
mod https;
mod keda;
mod keda_metrics_api;
mod kubernetes;
mod prometheus;
mod rules;
mod shard;
mod slow_clients;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The absolute path of a file in the repository.
fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The text of a file in the repository.
fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Every document of a (multi-document) YAML text, as JSON values; empty documents are
/// skipped.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("the YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The documents of a YAML file in the repository.
fn yaml_file(relative: &str) -> Vec<Value> {
    let documents = yaml_documents(&read(relative));
    assert!(!documents.is_empty(), "{relative} holds no YAML document");
    documents
}

/// The one document of `kind` in a list of Kubernetes objects.
fn object_of_kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = documents.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

/// A scratch directory for one test, emptied first.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcast-deploy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}
