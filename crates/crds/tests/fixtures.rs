//! The DESIGN.md examples (and variants) deserialize, pass the CEL rules, and round-trip without
//! gaining fields.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fmt::Debug;
use std::path::Path;

use pretty_assertions::assert_eq;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tollgate_crds::{Authorizer, GatewayAPI, Route, ServiceExport, UsagePlan};

fn documents(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

/// Removes empty lists and maps (the types omit them on output), recursively.
fn prune_empty(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), prune_empty(v)))
                .filter(|(_, v)| !matches!(v, Value::Object(m) if m.is_empty()))
                .filter(|(_, v)| !matches!(v, Value::Array(a) if a.is_empty()))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(prune_empty).collect()),
        other => other.clone(),
    }
}

/// Numbers compare by value (`10000` in YAML comes back as `10000.0` from an `f64` field).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        _ => a == b,
    }
}

/// Every key of `output` also appears, at the same place, in `input`.
fn no_new_fields(output: &Value, input: &Value, path: &str) {
    match (output, input) {
        (Value::Object(out), Value::Object(inp)) => {
            for (k, v) in out {
                let at = format!("{path}.{k}");
                let original = inp.get(k).unwrap_or_else(|| panic!("serializing added the field {at}"));
                no_new_fields(v, original, &at);
            }
        }
        (Value::Array(out), Value::Array(inp)) => {
            for (i, (v, w)) in out.iter().zip(inp).enumerate() {
                no_new_fields(v, w, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn round_trip<K>(file: &str) -> Vec<K>
where
    K: DeserializeOwned + Serialize + PartialEq + Debug + kube::CustomResourceExt,
{
    let docs = documents(file);
    assert!(!docs.is_empty(), "{file} holds no documents");
    docs.into_iter()
        .map(|input| {
            let object: K =
                serde_json::from_value(input.clone()).unwrap_or_else(|e| panic!("{file}: {e}\n{input:#}"));
            let output = serde_json::to_value(&object).unwrap();
            no_new_fields(&output, &input, "");
            // Equal up to the empty collections the types omit (and a kept `matchLabels: {}`).
            let (expected, got) = (prune_empty(&input), prune_empty(&output));
            assert!(
                same(&got, &expected),
                "{file}: round trip changed the object\n--- input\n{expected:#}\n--- output\n{got:#}"
            );
            let again: K = serde_json::from_value(output).unwrap();
            assert_eq!(again, object);
            // The apiserver's CEL rules accept every fixture.
            kube::core::cel::validate_cel(&object).unwrap_or_else(|e| panic!("{file}: {e}"));
            object
        })
        .collect()
}

#[test]
fn gateway_api_examples_round_trip() {
    let apis = round_trip::<GatewayAPI>("gatewayapi.yaml");
    let shop = &apis[0];
    assert_eq!(shop.spec.stages[0].canary.as_ref().unwrap().weight, 10.0);
    assert_eq!(shop.spec.limits.as_ref().unwrap().max_request_body_bytes, Some(10_485_760));
    assert_eq!(shop.fleet(), "default");
    assert_eq!(apis[1].protocol(), tollgate_crds::Protocol::WebSocket);
    assert_eq!(apis[1].fleet(), "edge");
}

#[test]
fn route_examples_round_trip() {
    use tollgate_crds::IntegrationTarget;
    let routes = round_trip::<Route>("route.yaml");
    let target = |i: usize| routes[i].spec.integration.as_ref().unwrap().target().unwrap();
    assert!(matches!(target(0), IntegrationTarget::Service(s) if s.port == 8080));
    assert!(matches!(target(1), IntegrationTarget::ServiceExport(e) if e.name == "orders"));
    assert!(matches!(target(2), IntegrationTarget::Url("https://legacy.example/orders")));
    assert!(matches!(target(3), IntegrationTarget::Mock(m) if m.status == Some(200)));
    assert_eq!(routes[0].api_namespace(), Some("shop"));
    let retries = routes[0].spec.integration.as_ref().unwrap().retries.as_ref().unwrap();
    assert_eq!(retries.on, ["connect-failure", "503"]);
    assert!(routes[4].spec.integration.is_none());
}

#[test]
fn authorizer_examples_round_trip() {
    use tollgate_crds::AuthorizerMechanism as M;
    let authorizers = round_trip::<Authorizer>("authorizer.yaml");
    let kinds: Vec<&str> = authorizers
        .iter()
        .map(|a| match a.spec.mechanism().unwrap() {
            M::Jwt(_) => "jwt",
            M::External(_) => "external",
            M::SigV4(_) => "sigv4",
        })
        .collect();
    assert_eq!(kinds, ["jwt", "external", "sigv4", "jwt", "jwt"]);
}

#[test]
fn usage_plan_examples_round_trip() {
    let plans = round_trip::<UsagePlan>("usageplan.yaml");
    assert!(plans[0].api_stage("shop", "shop", "prod").is_some());
    assert!(plans[0].api_stage("other", "shop", "prod").is_none());
    assert_eq!(plans[0].spec.quota.as_ref().unwrap().period, tollgate_crds::QuotaPeriod::Day);
}

#[test]
fn service_export_examples_round_trip() {
    use tollgate_crds::ExportTarget;
    let exports = round_trip::<ServiceExport>("serviceexport.yaml");
    assert!(matches!(exports[0].spec.target(), Ok(ExportTarget::Service(_))));
    assert!(matches!(exports[1].spec.target(), Ok(ExportTarget::External(_))));
    assert!(exports[0].spec.allows("shop", "shop"));
    assert!(!exports[0].spec.allows("shop", "other"));
    assert!(exports[1].spec.allows("shop", "anything"));
    assert!(!exports[2].spec.allows("shop", "shop"));
}

#[test]
fn one_of_errors_name_the_choices() {
    let route: Route = serde_json::from_value(serde_json::json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"apiRef": {"name": "a"}, "match": {"path": "/"},
                 "integration": {"url": "http://a", "mock": {}}}
    }))
    .unwrap();
    let err = route.spec.integration.unwrap().target().unwrap_err();
    assert_eq!(err.found, 2);
    assert_eq!(err.to_string(), "integration: set exactly one of service, serviceExport, url, mock; found 2");
}
