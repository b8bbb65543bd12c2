//! `deploy/keda/scaledobject.yaml` and `deploy/keda/scaledobject-metrics-api.yaml` against
//! KEDA's ScaledObject CRD schema (the relevant part, in keda_scaledobject_schema.yaml), the
//! rules KEDA's webhook adds and the metadata its prometheus and metrics-api scalers need,
//! and against what flowcast needs of them. A broken copy must be rejected, so the checker
//! can fail.

use serde_json::{json, Value};

use crate::{object_of_kind, read, yaml_documents, yaml_file};

pub const SCALED_OBJECT: &str = "deploy/keda/scaledobject.yaml";
/// The ScaledObject that reads `/api/v1/forecast` with KEDA's metrics-api scaler.
pub const METRICS_API: &str = "deploy/keda/scaledobject-metrics-api.yaml";

/// The ScaledObject that reads flowcast's `/metrics` with the metrics-api scaler's
/// `format: prometheus` (KEDA v2.19+).
pub const METRICS_API_PROMETHEUS: &str = "deploy/keda/scaledobject-metrics-api-prometheus.yaml";

/// The metrics-api ScaledObject as parsed from the repository.
pub fn metrics_api_scaled_object() -> Value {
    object_of_kind(&yaml_file(METRICS_API), "ScaledObject").clone()
}

/// The metrics-api ScaledObject in Prometheus format as parsed from the repository.
pub fn metrics_api_prometheus_scaled_object() -> Value {
    object_of_kind(&yaml_file(METRICS_API_PROMETHEUS), "ScaledObject").clone()
}

/// The ScaledObject as parsed from the repository.
pub fn scaled_object() -> Value {
    yaml_file(SCALED_OBJECT).remove(0)
}

/// The trigger with this name.
pub fn trigger<'a>(scaled_object: &'a Value, name: &str) -> &'a Value {
    scaled_object["spec"]["triggers"]
        .as_array()
        .expect("triggers")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no trigger named {name}"))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `value` against an OpenAPI v3 structural schema as the API server does for a
/// custom resource: type, format int32, enum, minimum/maximum, required, properties,
/// additionalProperties and items. A field the schema does not know is reported too (the
/// API server would silently prune it, which hides a typo).
fn check_schema(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(expected) = schema["type"].as_str() {
        let found = kind_of(value);
        let ok = found == expected || (expected == "number" && found == "integer");
        if !ok {
            errors.push(format!("{path}: must be {expected}, is {found} ({value})"));
            return;
        }
    }
    if schema["format"] == "int32" {
        let fits = value.as_i64().is_some_and(|n| i32::try_from(n).is_ok());
        if !fits {
            errors.push(format!("{path}: {value} is not an int32"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if n < min {
            errors.push(format!("{path}: {n} is below the minimum {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), value.as_f64()) {
        if n > max {
            errors.push(format!("{path}: {n} is above the maximum {max}"));
        }
    }
    if let Some(object) = value.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().expect("required names are strings");
            if object.get(key).is_none_or(Value::is_null) {
                errors.push(format!("{path}.{key}: required"));
            }
        }
        let properties = schema["properties"].as_object();
        let additional = schema.get("additionalProperties");
        for (key, field) in object {
            let field_path = format!("{path}.{key}");
            match (properties.and_then(|p| p.get(key)), additional) {
                (Some(s), _) => check_schema(s, field, &field_path, errors),
                (None, Some(s)) => check_schema(s, field, &field_path, errors),
                // A free-form object (no properties listed) takes anything.
                (None, None) if properties.is_none() => {}
                (None, None) => errors.push(format!("{field_path}: unknown field")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check_schema(items, item, &format!("{path}[{i}]"), errors);
        }
    }
}

/// Every reason KEDA (its CRD schema, its admission webhook or its Prometheus scaler)
/// would refuse this ScaledObject; empty when it would accept it.
pub fn scaled_object_errors(object: &Value) -> Vec<String> {
    let schema = yaml_documents(include_str!("keda_scaledobject_schema.yaml")).remove(0);
    let mut errors = Vec::new();
    check_schema(&schema, object, "", &mut errors);
    if object["apiVersion"] != "keda.sh/v1alpha1" || object["kind"] != "ScaledObject" {
        errors.push("apiVersion/kind: must be keda.sh/v1alpha1 ScaledObject".into());
    }
    let spec = &object["spec"];
    let triggers = spec["triggers"].as_array().cloned().unwrap_or_default();
    if triggers.is_empty() {
        errors.push(".spec.triggers: at least one trigger".into());
    }
    // KEDA's CheckFallbackValid: non-negative numbers, and only AverageValue triggers (not
    // cpu/memory) may have a fallback.
    if spec["fallback"].is_object() {
        for key in ["failureThreshold", "replicas"] {
            if spec["fallback"][key].as_i64().is_some_and(|n| n < 0) {
                errors.push(format!(".spec.fallback.{key}: must be >= 0"));
            }
        }
        for (i, t) in triggers.iter().enumerate() {
            if t["metricType"] != "AverageValue" || t["type"] == "cpu" || t["type"] == "memory" {
                errors.push(format!(
                    ".spec.triggers[{i}].metricType: a fallback needs AverageValue on every trigger"
                ));
            }
        }
    }
    // KEDA's ValidateTriggers: trigger names are unique.
    let mut names: Vec<&str> = triggers.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        errors.push(".spec.triggers: names must be unique".into());
    }
    // The Prometheus scaler's metadata: serverAddress, query and threshold are required;
    // numbers and booleans are parsed from the strings.
    for (i, t) in triggers.iter().enumerate() {
        if t["type"] != "prometheus" {
            continue;
        }
        let meta = &t["metadata"];
        for key in ["serverAddress", "query", "threshold"] {
            if meta[key].as_str().is_none_or(str::is_empty) {
                errors.push(format!(".spec.triggers[{i}].metadata.{key}: required"));
            }
        }
        for key in ["threshold", "activationThreshold"] {
            if let Some(s) = meta[key].as_str() {
                if !s.parse::<f64>().is_ok_and(f64::is_finite) {
                    errors.push(format!(
                        ".spec.triggers[{i}].metadata.{key}: {s:?} is not a number"
                    ));
                }
            }
        }
        for key in ["ignoreNullValues", "unsafeSsl"] {
            if let Some(s) = meta[key].as_str() {
                if s != "true" && s != "false" {
                    errors.push(format!(
                        ".spec.triggers[{i}].metadata.{key}: {s:?} is not true or false"
                    ));
                }
            }
        }
    }
    // The metrics-api scaler's metadata: url and valueLocation (for json) are required,
    // targetValue too (it is not used as a metric source here); numbers are strings.
    for (i, t) in triggers.iter().enumerate() {
        if t["type"] != "metrics-api" {
            continue;
        }
        let meta = &t["metadata"];
        for key in ["url", "valueLocation", "targetValue"] {
            if meta[key].as_str().is_none_or(str::is_empty) {
                errors.push(format!(".spec.triggers[{i}].metadata.{key}: required"));
            }
        }
        for key in ["targetValue", "activationTargetValue"] {
            if let Some(s) = meta[key].as_str() {
                if !s.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0) {
                    errors.push(format!(
                        ".spec.triggers[{i}].metadata.{key}: {s:?} is not a positive number"
                    ));
                }
            }
        }
        if let Some(f) = meta["format"].as_str() {
            if !["json", "xml", "yaml", "prometheus"].contains(&f) {
                errors.push(format!(
                    ".spec.triggers[{i}].metadata.format: {f:?} is not json, xml, yaml or prometheus"
                ));
            }
            // KEDA parses a prometheus-format valueLocation as a PromQL metric selector.
            if f == "prometheus" {
                if let Err(e) = crate::keda_metrics_api::parse_selector(
                    meta["valueLocation"].as_str().unwrap_or(""),
                ) {
                    errors.push(format!(".spec.triggers[{i}].metadata.valueLocation: {e}"));
                }
            }
        }
        if let Some(url) = meta["url"].as_str() {
            // Go's HTTP client takes http and https only.
            if !url::Url::parse(url).is_ok_and(|u| ["http", "https"].contains(&u.scheme())) {
                errors.push(format!(
                    ".spec.triggers[{i}].metadata.url: {url:?} is not an http(s) URL"
                ));
            }
        }
    }
    errors
}

#[test]
fn the_metrics_api_scaled_objects_are_valid_for_keda() {
    for so in [
        metrics_api_scaled_object(),
        metrics_api_prometheus_scaled_object(),
    ] {
        let errors = scaled_object_errors(&so);
        assert!(
            errors.is_empty(),
            "KEDA would refuse it:\n{}",
            errors.join("\n")
        );
    }
}

/// The metrics-api variants scale the same Deployment in the same way as the Prometheus
/// one (fallback, behaviour, capacity), read the 10m upper bound of series "api" from the
/// forecaster's Service, and that Service reaches the forecaster's pods on their port.
#[test]
fn the_metrics_api_scaled_objects_read_the_forecaster_service() {
    use crate::keda_metrics_api::{
        PREDICTIVE_LOCATION, PREDICTIVE_SELECTOR, REACTIVE_LOCATION, REACTIVE_SELECTOR,
    };
    for (file, format, path, locations) in [
        (
            METRICS_API,
            "json",
            "/api/v1/forecast",
            [PREDICTIVE_LOCATION, REACTIVE_LOCATION],
        ),
        (
            METRICS_API_PROMETHEUS,
            "prometheus",
            "/metrics",
            [PREDICTIVE_SELECTOR, REACTIVE_SELECTOR],
        ),
    ] {
        check_metrics_api(file, format, path, locations);
    }
    // The two files declare the same Service, so applying both is harmless.
    assert_eq!(
        object_of_kind(&yaml_file(METRICS_API), "Service"),
        object_of_kind(&yaml_file(METRICS_API_PROMETHEUS), "Service")
    );
}

fn check_metrics_api(file: &str, format: &str, path: &str, locations: [&str; 2]) {
    let so = object_of_kind(&yaml_file(file), "ScaledObject").clone();
    let prom = scaled_object();
    for key in [
        "scaleTargetRef",
        "fallback",
        "advanced",
        "minReplicaCount",
        "maxReplicaCount",
    ] {
        assert_eq!(so["spec"][key], prom["spec"][key], "{key} differs");
    }
    let predictive = trigger(&so, "forecast-upper-10m");
    assert_eq!(predictive["type"], "metrics-api");
    assert_eq!(predictive["metricType"], "AverageValue");
    assert_eq!(
        predictive["metadata"]["targetValue"],
        trigger(&prom, "forecast-upper-10m")["metadata"]["threshold"],
        "the same per-replica capacity"
    );
    assert_eq!(predictive["metadata"]["valueLocation"], locations[0]);
    let reactive = trigger(&so, "observed-peak");
    assert_eq!(reactive["metadata"]["valueLocation"], locations[1]);
    for t in [predictive, reactive] {
        assert_eq!(t["metadata"]["format"], format, "{file}");
    }
    let service = object_of_kind(&yaml_file(file), "Service").clone();
    let forecaster = object_of_kind(
        &yaml_documents(&read("deploy/kubernetes/service-forecaster.yaml")),
        "Deployment",
    )
    .clone();
    assert_eq!(
        service["spec"]["selector"],
        forecaster["spec"]["template"]["metadata"]["labels"]
    );
    let port = &service["spec"]["ports"][0];
    let container_ports = &forecaster["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        container_ports
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == port["targetPort"]),
        "targetPort {} is not a port of the forecaster",
        port["targetPort"]
    );
    for t in [predictive, reactive] {
        let url = url::Url::parse(t["metadata"]["url"].as_str().expect("url")).expect("a URL");
        let host = url.host_str().expect("host");
        assert!(
            host.starts_with(&format!(
                "{}.",
                service["metadata"]["name"].as_str().expect("name")
            )),
            "{url} does not name the Service"
        );
        assert_eq!(url.port().map(i64::from), port["port"].as_i64());
        assert_eq!(url.path(), path);
    }
}

#[test]
fn the_scaled_object_is_valid_for_keda() {
    let errors = scaled_object_errors(&scaled_object());
    assert!(
        errors.is_empty(),
        "KEDA would refuse it:\n{}",
        errors.join("\n")
    );
}

/// What flowcast needs of the ScaledObject: the predictive trigger on the service
/// forecaster's 10m upper bound with ignoreNullValues "false", a reactive trigger on the
/// observed rate, the same per-replica capacity in both, a fallback, a scale-down
/// stabilisation window, and the api Deployment as target.
#[test]
fn the_scaled_object_scales_on_the_forecast_upper_bound() {
    let so = scaled_object();
    let spec = &so["spec"];
    let predictive = trigger(&so, "forecast-upper-10m");
    let query = predictive["metadata"]["query"].as_str().expect("query");
    for part in [
        "flowcast_forecast_upper_requests_per_second{",
        "series=\"api\"",
        "horizon=\"10m\"",
    ] {
        assert!(query.contains(part), "{query} lacks {part}");
    }
    assert_eq!(predictive["type"], "prometheus");
    assert_eq!(predictive["metricType"], "AverageValue");
    assert_eq!(predictive["metadata"]["ignoreNullValues"], "false");
    let reactive = trigger(&so, "observed-rate");
    assert_eq!(reactive["type"], "prometheus");
    assert_eq!(
        reactive["metadata"]["query"],
        "sum(rate(http_requests_total{job=\"api\"}[1m]))"
    );
    assert_eq!(
        reactive["metadata"]["threshold"], predictive["metadata"]["threshold"],
        "both triggers divide by the same per-replica capacity"
    );
    assert!(spec["fallback"]["replicas"].as_i64().is_some_and(|n| n > 0));
    assert!(spec["fallback"]["failureThreshold"]
        .as_i64()
        .is_some_and(|n| n > 0));
    let down = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"];
    assert!(
        down["stabilizationWindowSeconds"]
            .as_i64()
            .is_some_and(|s| s >= 300),
        "scale-down stabilisation: {down}"
    );
    let min = spec["minReplicaCount"].as_i64().expect("minReplicaCount");
    let max = spec["maxReplicaCount"].as_i64().expect("maxReplicaCount");
    let fallback = spec["fallback"]["replicas"].as_i64().expect("replicas");
    assert!(0 < min && min <= fallback && fallback <= max);
    // The target is the application Deployment of deploy/kubernetes/sidecar.yaml.
    let app = object_of_kind(
        &yaml_documents(&read("deploy/kubernetes/sidecar.yaml")),
        "Deployment",
    )
    .clone();
    assert_eq!(spec["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(spec["scaleTargetRef"]["name"], app["metadata"]["name"]);
}

/// The checker rejects each of these broken copies, naming the field.
#[test]
fn the_checker_rejects_broken_scaled_objects() {
    let mutations: [Mutation; 12] = [
        (
            "ignoreNullValues as a YAML boolean",
            "metadata.ignoreNullValues",
            |so| so["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] = json!(false),
        ),
        ("threshold as a YAML number", "metadata.threshold", |so| {
            so["spec"]["triggers"][0]["metadata"]["threshold"] = json!(50)
        }),
        ("threshold not a number", "metadata.threshold", |so| {
            so["spec"]["triggers"][0]["metadata"]["threshold"] = json!("fifty")
        }),
        (
            "ignoreNullValues not a boolean",
            "metadata.ignoreNullValues",
            |so| so["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] = json!("no"),
        ),
        ("metricType outside the enum", "metricType", |so| {
            so["spec"]["triggers"][0]["metricType"] = json!("Average")
        }),
        ("a Value trigger beside a fallback", "metricType", |so| {
            so["spec"]["triggers"][1]["metricType"] = json!("Value")
        }),
        ("fallback replicas as a string", "fallback.replicas", |so| {
            so["spec"]["fallback"]["replicas"] = json!("10")
        }),
        (
            "fallback without failureThreshold",
            "fallback.failureThreshold",
            |so| {
                so["spec"]["fallback"]
                    .as_object_mut()
                    .expect("fallback")
                    .remove("failureThreshold");
            },
        ),
        (
            "scaleTargetRef without a name",
            "scaleTargetRef.name",
            |so| {
                so["spec"]["scaleTargetRef"]
                    .as_object_mut()
                    .expect("scaleTargetRef")
                    .remove("name");
            },
        ),
        (
            "a stabilisation window over an hour",
            "stabilizationWindowSeconds",
            |so| {
                so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                    ["stabilizationWindowSeconds"] = json!(4000)
            },
        ),
        ("maxReplicaCount beyond int32", "maxReplicaCount", |so| {
            so["spec"]["maxReplicaCount"] = json!(3_000_000_000_u64)
        }),
        ("a misspelt field", "fallBack", |so| {
            so["spec"]["fallBack"] = json!({"failureThreshold": 3, "replicas": 6})
        }),
    ];
    let original = scaled_object();
    assert!(scaled_object_errors(&original).is_empty());
    check_mutations(&original, &mutations);
    // The metrics-api scaler's own metadata.
    let metrics_api: [Mutation; 4] = [
        ("no valueLocation", "metadata.valueLocation", |so| {
            so["spec"]["triggers"][0]["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("valueLocation");
        }),
        ("targetValue not a number", "metadata.targetValue", |so| {
            so["spec"]["triggers"][0]["metadata"]["targetValue"] = json!("fifty")
        }),
        ("an unknown format", "metadata.format", |so| {
            so["spec"]["triggers"][1]["metadata"]["format"] = json!("csv")
        }),
        ("url not a URL", "metadata.url", |so| {
            so["spec"]["triggers"][1]["metadata"]["url"] = json!("flowcast:9464")
        }),
    ];
    let original = metrics_api_scaled_object();
    assert!(scaled_object_errors(&original).is_empty());
    check_mutations(&original, &metrics_api);
    // format: prometheus takes a metric selector, not a GJSON path.
    let prometheus_format: [Mutation; 2] = [
        (
            "a GJSON path as a selector",
            "metadata.valueLocation",
            |so| {
                so["spec"]["triggers"][0]["metadata"]["valueLocation"] =
                    json!(crate::keda_metrics_api::PREDICTIVE_LOCATION)
            },
        ),
        (
            "a regex matcher KEDA would read as =",
            "metadata.valueLocation",
            |so| {
                so["spec"]["triggers"][0]["metadata"]["valueLocation"] =
                    json!("flowcast_forecast_upper_requests_per_second{series=~\"api|web\"}")
            },
        ),
    ];
    let original = metrics_api_prometheus_scaled_object();
    assert!(scaled_object_errors(&original).is_empty());
    check_mutations(&original, &prometheus_format);
}

type Mutation = (&'static str, &'static str, fn(&mut Value));

/// Each mutation of `original` is rejected on its field.
fn check_mutations(original: &Value, mutations: &[Mutation]) {
    for &(what, field, mutate) in mutations {
        let mut broken = original.clone();
        mutate(&mut broken);
        assert_ne!(&broken, original, "{what}: the mutation changed nothing");
        let errors = scaled_object_errors(&broken);
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{what}: not rejected on {field}; errors: {errors:?}"
        );
    }
}
