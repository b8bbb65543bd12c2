//! `deploy/kubernetes/` (and every other YAML in `deploy/`): each parses; the flowcast
//! container of the per-pod sidecar and of the service forecaster has its probes, resources,
//! a non-root user, a read-only root filesystem with its state on a volume, and no
//! capabilities; Prometheus scrapes the port flowcast listens on; the configurations use
//! keys flowcast knows.

use serde_json::Value;

use flowcast::config::FileConfig;

use crate::keda::{scaled_object, trigger};
use crate::{object_of_kind, repo_path, yaml_file};

const SIDECAR: &str = "deploy/kubernetes/sidecar.yaml";
const SERVICE_FORECASTER: &str = "deploy/kubernetes/service-forecaster.yaml";
const SERVICE_QUERY: &str = "sum(rate(http_requests_total{job=\"api\"}[1m]))";

/// Every YAML file under `deploy/`.
fn deploy_yaml_files() -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![repo_path("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let relative = path
                    .strip_prefix(repo_path(""))
                    .expect("under the repository");
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_yaml_file_parses_and_every_manifest_names_its_object() {
    let files = deploy_yaml_files();
    for expected in [
        SIDECAR,
        SERVICE_FORECASTER,
        "deploy/keda/scaledobject.yaml",
        "deploy/prometheus/flowcast.rules.yml",
        "deploy/prometheus/flowcast.rules.test.yml",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} missing");
    }
    for file in files
        .iter()
        .filter(|f| f.contains("/kubernetes/") || f.contains("/keda/"))
    {
        for doc in yaml_file(file) {
            for key in ["apiVersion", "kind"] {
                assert!(doc[key].is_string(), "{file}: an object without {key}");
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{file}: a {} without a name",
                doc["kind"]
            );
        }
    }
    for file in files.iter().filter(|f| f.contains("/prometheus/")) {
        yaml_file(file);
    }
}

/// The Deployment, its flowcast container, and the parsed flowcast configuration from the
/// ConfigMap that container mounts.
struct FlowcastPod {
    deployment: Value,
    container: Value,
    config: Value,
    config_text: String,
}

fn flowcast_pod(file: &str) -> FlowcastPod {
    let docs = yaml_file(file);
    let deployment = object_of_kind(&docs, "Deployment").clone();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "flowcast")
        .unwrap_or_else(|| panic!("{file}: no flowcast container"))
        .clone();
    // The config volume is the ConfigMap of this file, mounted where --config points.
    let config_path = flag(&args(&container), "--config");
    let (dir, key) = config_path.rsplit_once('/').expect("a file path");
    let mount = mount_at(&container, dir).unwrap_or_else(|| panic!("{file}: {dir} not mounted"));
    let volume = volume(pod, mount["name"].as_str().expect("name"));
    let config_map_name = &volume["configMap"]["name"];
    let config_map = object_of_kind(&docs, "ConfigMap");
    assert_eq!(&config_map["metadata"]["name"], config_map_name, "{file}");
    let config_text = config_map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{file}: the ConfigMap has no {key}"))
        .to_string();
    let config = crate::yaml_documents(&config_text).remove(0);
    FlowcastPod {
        deployment,
        container,
        config,
        config_text,
    }
}

/// A container's arguments.
fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("args are strings").to_string())
        .collect()
}

/// The value after `--name` in a container's arguments.
fn flag(args: &[String], name: &str) -> String {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
}

/// The PromQL query the service forecaster runs (its `--query`).
pub fn service_forecaster_query() -> String {
    flag(
        &args(&flowcast_pod(SERVICE_FORECASTER).container),
        "--query",
    )
}

fn mount_at<'a>(container: &'a Value, path: &str) -> Option<&'a Value> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == path)
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn check_hardened(file: &str) {
    let FlowcastPod {
        deployment,
        container,
        config,
        ..
    } = flowcast_pod(file);
    let template = &deployment["spec"]["template"];
    let pod = &template["spec"];
    let c = &container;
    // Probes on the port flowcast serves.
    let port = c["ports"]
        .as_array()
        .and_then(|p| p.first())
        .expect("a container port")
        .clone();
    let listen = config["listen"].as_str().expect("listen");
    assert!(listen.starts_with("0.0.0.0:"), "{file}: listen {listen}");
    assert_eq!(
        listen.rsplit_once(':').map(|(_, p)| p),
        Some(port["containerPort"].to_string().as_str()),
        "{file}: the container port is the listen port"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{file}: {probe}");
        assert!(
            get["port"] == port["name"] || get["port"] == port["containerPort"],
            "{file}: {probe} on port {}",
            get["port"]
        );
    }
    // Resources.
    for (kind, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            c["resources"][kind][resource].is_string(),
            "{file}: resources.{kind}.{resource}"
        );
    }
    // Security context.
    let sc = &c["securityContext"];
    assert!(
        sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true,
        "{file}: runAsNonRoot"
    );
    let user = sc["runAsUser"]
        .as_i64()
        .or(pod["securityContext"]["runAsUser"].as_i64())
        .expect("runAsUser");
    assert!(user > 0, "{file}: runs as root");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
    assert!(
        sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL")),
        "{file}: capabilities not dropped"
    );
    assert!(
        sc["capabilities"]["add"].is_null(),
        "{file}: adds capabilities"
    );
    // With a read-only root, state_dir must be a writable volume.
    let state_dir = config["state_dir"].as_str().expect("state_dir");
    let mount = mount_at(c, state_dir).unwrap_or_else(|| panic!("{file}: {state_dir} not mounted"));
    assert_ne!(mount["readOnly"], true, "{file}: state_dir read-only");
    assert!(volume(pod, mount["name"].as_str().expect("name")).is_object());
    // Prometheus scrapes flowcast's port and path.
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{file}");
    assert_eq!(
        annotations["prometheus.io/port"],
        port["containerPort"].to_string(),
        "{file}"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{file}");
}

#[test]
fn the_sidecar_deployment_is_hardened() {
    check_hardened(SIDECAR);
}

#[test]
fn the_service_forecaster_deployment_is_hardened() {
    check_hardened(SERVICE_FORECASTER);
}

/// The per-pod sidecar's configuration is one flowcast accepts.
#[test]
fn the_sidecar_configuration_is_valid() {
    let pod = flowcast_pod(SIDECAR);
    let file: FileConfig =
        serde_norway::from_str(&pod.config_text).expect("every key is a flowcast key");
    file.validate().expect("a valid sidecar configuration");
}

/// The service forecaster runs the Prometheus source on the service's total rate, names its
/// series as the ScaledObject and the rules expect, and reads the Prometheus KEDA reads.
/// (Its configuration is not run: the Prometheus source is new; the key names are the
/// agreed ones.)
#[test]
fn the_service_forecaster_forecasts_what_keda_reads() {
    let pod = flowcast_pod(SERVICE_FORECASTER);
    let args = args(&pod.container);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert_eq!(flag(&args, "--source"), "prometheus");
    assert_eq!(flag(&args, "--query"), SERVICE_QUERY);
    let known_flags = [
        "--config",
        "--source",
        "--prometheus-url",
        "--query",
        "--backfill-url",
        "--prometheus-bearer-token-file",
    ];
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(known_flags.contains(&a.as_str()), "unexpected flag {a}");
    }
    // Every key of the file is a flowcast key (FileConfig refuses unknown keys); the
    // Prometheus-source keys are flags here, so the file is not validated as a whole.
    let _: FileConfig =
        serde_norway::from_str(&pod.config_text).expect("every key is a flowcast key");
    for commented in ["prometheus_bearer_token_file", "backfill_url"] {
        assert!(
            pod.config_text.contains(commented),
            "{commented} is documented"
        );
    }
    assert_eq!(pod.config["series_name"], "api");
    let so = scaled_object();
    let predictive = trigger(&so, "forecast-upper-10m");
    assert_eq!(
        predictive["metadata"]["serverAddress"],
        flag(&args, "--prometheus-url"),
        "KEDA and the forecaster read the same Prometheus"
    );
    assert_eq!(
        trigger(&so, "observed-rate")["metadata"]["query"],
        SERVICE_QUERY,
        "KEDA's reactive trigger reads the rate the forecaster forecasts"
    );
    let query = predictive["metadata"]["query"].as_str().expect("query");
    assert!(query.contains("series=\"api\""), "{query}");
}
