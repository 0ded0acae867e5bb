//! The admin port and the access log.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

async fn setup() -> (Tollgate, Backend, Manifests, TestPki) {
    let backend = Backend::start("b").await;
    let pki = TestPki::new();
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: shop, namespace: shop}\nspec:\n  \
         tls: {certificateRefs: [{name: shop-tls}]}\n  stages: [{name: prod}]\n",
    );
    m.write("tls.yaml", &pki.secret_yaml("shop", "shop-tls", &["localhost"]));
    m.write(
        "routes.yaml",
        &[
            route_yaml("shop", "get-order", "shop", "  match: {methods: [GET], path: '/orders/{id}'}\n  integration: {service: {name: b, port: 80}}\n"),
            route_yaml("shop", "bad", "shop", "  match: {path: 'no-slash'}\n  integration: {mock: {status: 200}}\n"),
        ]
        .join("---\n"),
    );
    m.write("svc.yaml", &service_yaml("shop", "b", 80, &[backend.addr]));
    let gateway = Tollgate::start(m.path()).await;
    (gateway, backend, m, pki)
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (g, _b, _m, _pki) = setup().await;
    let c = client();
    assert_eq!(c.get(g.admin_url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let ready = c.get(g.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(ready.text().await.unwrap().contains("config version 1"));

    assert_eq!(c.get(g.url("/orders/1")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(c.get(g.url("/nope")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    eventually("request metrics are recorded", || async {
        let text = c.get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.contains("status_class=\"4xx\"")
    })
    .await;
    let metrics = c.get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(
        r#"tollgate_requests_total{api="shop/shop",method="GET",route="shop/get-order",stage="prod",status_class="2xx",track="stable"} 1"#
    ), "{metrics}");
    assert!(metrics.contains(
        r#"tollgate_request_duration_seconds_bucket{api="shop/shop",route="shop/get-order",stage="prod""#
    ));
    assert!(metrics.contains(
        r#"tollgate_upstream_duration_seconds_count{api="shop/shop",route="shop/get-order",stage="prod",track="stable"} 1"#
    ));
    assert!(metrics.contains("tollgate_config_version 1"));
    assert!(!metrics.contains("/nope"), "raw paths never become label values");
}

#[tokio::test]
async fn config_shows_objects_and_diagnostics_but_no_secrets() {
    let (g, _b, _m, _pki) = setup().await;
    let text = client().get(g.admin_url("/config")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("PRIVATE KEY"), "private keys never appear in /config");
    let cfg: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["certificates"][0]["secret"], "shop/shop-tls");
    let objects = cfg["objects"].as_array().unwrap();
    let bad = objects.iter().find(|o| o["name"] == "bad").unwrap();
    let accepted = bad["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Accepted").unwrap();
    assert_eq!(accepted["status"], "False");
    assert!(accepted["message"].as_str().unwrap().contains("spec.match.path"), "{accepted}");
    let routes = &cfg["apis"][0]["stages"][0]["routes"];
    assert_eq!(routes.as_array().unwrap().len(), 1, "the broken route is left out, the valid one serves");
}

/// Sends `GET path` with `x-request-id: id`; the response's status.
async fn get_with_request_id(g: &Tollgate, path: &str, id: &str) -> StatusCode {
    client().get(g.url(path)).header("x-request-id", id).send().await.unwrap().status()
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request() {
    let (g, _b, _m, _pki) = setup().await;
    assert_eq!(get_with_request_id(&g, "/orders/42?token=secret", "log-test-1").await, StatusCode::OK);
    let line = g.wait_for_log(|l| l["requestId"] == "log-test-1").await;
    assert_eq!(line["api"], "shop/shop");
    assert_eq!(line["stage"], "prod");
    assert_eq!(line["route"], "shop/get-order");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/orders/42");
    assert_eq!(line["host"], "127.0.0.1", "the Host asked for, without its port");
    assert_eq!(line["status"], 200);
    assert_eq!(line["clientIp"], "127.0.0.1");
    assert!(line["durationMs"].as_f64().unwrap() >= 0.0);
    assert!(line["upstreamMs"].as_f64().is_some());
    assert!(line["bytesSent"].as_u64().unwrap() > 0);
    assert!(!line.to_string().contains("secret"), "the query string is not logged");

    // A path is the client's to choose: a matched route logs it cut, like an unmatched one.
    let long_id = "a".repeat(5000);
    assert_eq!(get_with_request_id(&g, &format!("/orders/{long_id}"), "log-test-long").await, StatusCode::OK);
    let long = g.wait_for_log(|l| l["requestId"] == "log-test-long").await;
    assert_eq!(long["route"], "shop/get-order");
    assert_eq!(long["path"].as_str().unwrap().len(), 2048, "logged paths are cut to 2,048 characters");

    get_with_request_id(&g, "/missing", "log-test-2").await;
    let miss = g.wait_for_log(|l| l["requestId"] == "log-test-2").await;
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["error"], "no_route");
    assert_eq!(miss["host"], "127.0.0.1", "unmatched requests are logged with their host too");
    // The API and stage were found, only no route: the line names them, as the metrics do.
    assert_eq!(miss["api"], "shop/shop");
    assert_eq!(miss["stage"], "prod");
    assert_eq!(miss["route"], "");

    let status = client()
        .delete(g.url("/orders/42"))
        .header("x-request-id", "log-test-3")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let not_allowed = g.wait_for_log(|l| l["requestId"] == "log-test-3").await;
    assert_eq!(not_allowed["status"], 405);
    assert_eq!(not_allowed["error"], "method_not_allowed");
    assert_eq!(not_allowed["api"], "shop/shop");
    assert_eq!(not_allowed["stage"], "prod");

    // The metrics count it under the same API and stage.
    eventually("the 405 is counted under its API and stage", || async {
        let text = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.contains(r#"tollgate_requests_total{api="shop/shop",method="DELETE",route="",stage="prod",status_class="4xx""#)
    })
    .await;
}
