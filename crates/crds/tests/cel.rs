//! The CEL rules (`x-kubernetes-validations`) compile, stay within the cost budget, and reject
//! what they should with their message — evaluated client-side with kube's CEL engine.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use kube::CustomResourceExt;
use kube::core::cel::{self, CompiledSchema, ScopeContext};
use serde_json::{Value, json};
use tollgate_crds::{Authorizer, GatewayAPI, Route, ServiceExport, crds};

fn object(kind: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": kind,
        "metadata": {"name": "x", "namespace": "ns"}, "spec": spec,
    })
}

/// Validates `spec` as the spec of `K` and returns the failure messages (empty: accepted).
fn errors<K: CustomResourceExt>(spec: Value) -> Vec<String> {
    let crd = K::crd();
    let schema = serde_json::to_value(
        crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
    )
    .unwrap();
    match cel::Validator::new().validate(&schema, &object(&crd.spec.names.kind, spec), None) {
        Ok(()) => vec![],
        Err(e) => e.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn assert_rejected<K: CustomResourceExt>(spec: Value, message_part: &str) {
    let errs = errors::<K>(spec.clone());
    assert!(
        errs.iter().any(|m| m.contains(message_part)),
        "expected a failure mentioning {message_part:?} for {spec}, got {errs:?}"
    );
}

fn assert_accepted<K: CustomResourceExt>(spec: Value) {
    let errs = errors::<K>(spec.clone());
    assert!(errs.is_empty(), "expected {spec} to be accepted, got {errs:?}");
}

fn walk(node: &CompiledSchema, path: &str, rules: &mut Vec<String>) {
    for (i, rule) in node.validations.iter().enumerate() {
        match rule {
            Ok(compiled) => {
                let text = &compiled.rule.rule;
                let message = compiled.rule.message.as_deref().unwrap_or_default();
                assert!(!message.is_empty(), "{path}: rule {text:?} has no message");
                let warnings = cel::analyze_rule(text, node, ScopeContext::CrdValidation);
                assert!(warnings.is_empty(), "{path}: rule {text:?}: {warnings:?}");
                rules.push(format!("{path}: {text}"));
            }
            Err(e) => panic!("{path}: rule #{i} does not compile: {e}"),
        }
    }
    for (name, child) in &node.properties {
        walk(child, &format!("{path}.{name}"), rules);
    }
    if let Some(items) = &node.items {
        walk(items, &format!("{path}[]"), rules);
    }
    if let Some(values) = &node.additional_properties {
        walk(values, &format!("{path}{{}}"), rules);
    }
}

#[test]
fn every_rule_compiles_has_a_message_and_fits_the_cost_budget() {
    let mut rules = Vec::new();
    for crd in crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap(),
        )
        .unwrap();
        walk(&cel::compile_schema(&schema), &crd.spec.names.kind, &mut rules);
    }
    // Every rule written in the crate shows up here; a new one must get a test below.
    assert_eq!(rules.len(), 14, "{rules:#?}");
}

#[test]
fn route_integration_is_exactly_one_backend() {
    let msg = "set exactly one of service, serviceExport, url or mock";
    let base = |integration: Value| json!({"apiRef": {"name": "a"}, "match": {"path": "/"}, "integration": integration});
    assert_accepted::<Route>(base(json!({"url": "http://a"})));
    assert_rejected::<Route>(base(json!({"timeout": "1s"})), msg);
    assert_rejected::<Route>(base(json!({"url": "http://a", "service": {"name": "s", "port": 80}})), msg);
}

#[test]
fn route_needs_match_or_route_key_and_an_integration() {
    assert_rejected::<Route>(
        json!({"apiRef": {"name": "a"}, "integration": {"url": "http://a"}}),
        "set match (HTTP APIs) or routeKey",
    );
    let msg = "spec.integration is required";
    assert_rejected::<Route>(json!({"apiRef": {"name": "a"}, "match": {"path": "/"}}), msg);
    assert_rejected::<Route>(json!({"apiRef": {"name": "a"}, "routeKey": "$default"}), msg);
    assert_accepted::<Route>(json!({"apiRef": {"name": "a"}, "routeKey": "$connect"}));
    assert_accepted::<Route>(json!({"apiRef": {"name": "a"}, "routeKey": "$disconnect"}));
}

#[test]
fn authorization_type_none_stands_alone() {
    let base = |authorization: Value| {
        json!({"apiRef": {"name": "a"}, "match": {"path": "/"}, "integration": {"url": "http://a"},
               "authorization": authorization})
    };
    let msg = "type None turns authorization off";
    assert_accepted::<Route>(base(json!({"type": "None"})));
    assert_accepted::<Route>(base(json!({"type": "Authorizer", "authorizerRef": {"name": "i"}})));
    assert_rejected::<Route>(base(json!({"type": "None", "authorizerRef": {"name": "i"}})), msg);
    assert_rejected::<Route>(base(json!({"type": "None", "scopes": ["a"]})), msg);
}

#[test]
fn authorizer_is_exactly_one_mechanism() {
    let msg = "set exactly one of jwt, external or sigv4";
    assert_rejected::<Authorizer>(json!({}), msg);
    assert_rejected::<Authorizer>(
        json!({"external": {"url": "http://a"},
               "sigv4": {"region": "r", "credentialSelector": {}}}),
        msg,
    );
}

#[test]
fn jwt_has_at_most_one_key_source() {
    let jwt = |extra: Value| {
        let mut j = json!({"issuer": "https://i", "audiences": ["a"]});
        j.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"jwt": j})
    };
    assert_accepted::<Authorizer>(jwt(json!({})));
    assert_accepted::<Authorizer>(jwt(json!({"discovery": false, "jwksUri": "https://i/jwks"})));
    assert_rejected::<Authorizer>(
        jwt(json!({"jwksUri": "https://i/jwks", "jwksSecretRef": {"name": "s"}})),
        "at most one key source",
    );
    assert_rejected::<Authorizer>(
        jwt(json!({"jwksUri": "https://i/jwks", "discovery": true})),
        "at most one key source",
    );
    assert_rejected::<Authorizer>(jwt(json!({"discovery": false})), "discovery: false needs");
}

#[test]
fn service_export_is_exactly_one_backend() {
    let msg = "set exactly one of service or external";
    assert_rejected::<ServiceExport>(json!({}), msg);
    assert_rejected::<ServiceExport>(
        json!({"service": {"name": "s", "port": 80}, "external": {"dnsName": "a.b", "port": 80}}),
        msg,
    );
}

#[test]
fn external_backend_is_addresses_or_dns_name_with_port() {
    let ext = |e: Value| json!({"external": e});
    assert_accepted::<ServiceExport>(ext(json!({"addresses": ["10.0.0.1:80"]})));
    assert_rejected::<ServiceExport>(ext(json!({})), "set exactly one of addresses or dnsName");
    assert_rejected::<ServiceExport>(
        ext(json!({"addresses": ["10.0.0.1:80"], "dnsName": "a.b", "port": 80})),
        "set exactly one of addresses or dnsName",
    );
    assert_rejected::<ServiceExport>(ext(json!({"dnsName": "a.b"})), "port is required with dnsName");
    assert_rejected::<ServiceExport>(
        ext(json!({"addresses": ["10.0.0.1:80"], "port": 80})),
        "port is required with dnsName",
    );
}

#[test]
fn hash_on_needs_consistent_hash() {
    let lb = |lb: Value| json!({"service": {"name": "s", "port": 80}, "loadBalancing": lb});
    let msg = "hashOn applies only to policy ConsistentHash";
    assert_accepted::<ServiceExport>(lb(json!({"policy": "ConsistentHash", "hashOn": "sourceIp"})));
    assert_rejected::<ServiceExport>(lb(json!({"hashOn": "sourceIp"})), msg);
    assert_rejected::<ServiceExport>(lb(json!({"policy": "RoundRobin", "hashOn": "sourceIp"})), msg);
}

#[test]
fn allowed_routes_selector_goes_with_selector_mode() {
    let msg = "set selector when (and only when) namespaces is Selector";
    let api = |allowed: Value| json!({"allowedRoutes": allowed});
    assert_accepted::<GatewayAPI>(api(json!({"namespaces": "Selector", "selector": {}})));
    assert_accepted::<GatewayAPI>(api(json!({"namespaces": "All"})));
    assert_rejected::<GatewayAPI>(api(json!({"namespaces": "Selector"})), msg);
    assert_rejected::<GatewayAPI>(api(json!({"selector": {}})), msg);
}

#[test]
fn cors_credentials_need_explicit_origins() {
    let msg = "allowCredentials: true cannot be combined with allowOrigins '*'";
    assert_accepted::<GatewayAPI>(json!({"cors": {"allowOrigins": ["*"], "allowCredentials": false}}));
    assert_rejected::<GatewayAPI>(json!({"cors": {"allowOrigins": ["*"], "allowCredentials": true}}), msg);
}

#[test]
fn canary_step_weight_stays_below_max_weight() {
    let api = |analysis: Value| json!({"stages": [{"name": "prod", "canary": {"weight": 1, "analysis": analysis}}]});
    assert_accepted::<GatewayAPI>(api(json!({"stepWeight": 10, "maxWeight": 10})));
    assert_rejected::<GatewayAPI>(
        api(json!({"stepWeight": 20, "maxWeight": 10.5})),
        "stepWeight must not exceed",
    );
}
