//! External authorizers: allow / deny / context headers, result caching by identity source,
//! missing identity source, and failing or slow services (fail closed, counted).

use reqwest::StatusCode;
use serde_json::Value;

use crate::auth_support::*;
use crate::support::*;

struct Setup {
    gateway: Tollgate,
    authz: ExternalAuthz,
    backend: Backend,
    _m: Manifests,
}

async fn setup() -> Setup {
    let authz = ExternalAuthz::start().await;
    let backend = Backend::start("app").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &format!(
            "{}---\napiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: ext, namespace: t}}\nspec:\n  \
             external: {{url: \"http://{}/check\", identitySources: [header.authorization], resultTtl: 60s, timeout: 500ms, \
             contextToHeaders: {{tenant: x-tenant, tier: x-tier}}}}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: nocache, namespace: t}}\nspec:\n  \
             external: {{url: \"http://{}/check\", resultTtl: 0s, timeout: 500ms}}\n",
            simple_api("t", "shop"),
            authz.addr,
            authz.addr
        ),
    );
    m.write(
        "routes.yaml",
        &[
            route_yaml("t", "items", "shop", "  match: {path: \"/items/{id}\"}\n  authorization: {authorizerRef: {name: ext}}\n  integration: {service: {name: app, port: 80}}\n"),
            route_yaml("t", "live", "shop", "  match: {path: /live}\n  authorization: {authorizerRef: {name: nocache}}\n  integration: {service: {name: app, port: 80}}\n"),
        ]
        .join("---\n"),
    );
    m.write("svc.yaml", &service_yaml("t", "app", 80, &[backend.addr]));
    let gateway = Tollgate::start(m.path()).await;
    Setup { gateway, authz, backend, _m: m }
}

async fn call(s: &Setup, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let mut request = client().get(s.gateway.url(path)).header("x-tenant", "forged");
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn allow_passes_principal_and_context_headers() {
    let s = setup().await;
    let (status, body) = call(&s, "/items/9?color=red", Some("Bearer good")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"]["x-tenant"], "acme", "context replaces the client's forged header");
    assert_eq!(body["headers"]["x-tier"], "2");
    let line = s.gateway.wait_for_log(|l| l["route"] == "t/items").await;
    assert_eq!(line["principal"], "user-1");
    // The documented request shape reached the service.
    let sent = s.authz.last.lock().unwrap().clone();
    assert_eq!(sent["type"], "REQUEST");
    assert_eq!(sent["routeKey"], "ANY /items/{id}");
    assert_eq!(sent["method"], "GET");
    assert_eq!(sent["path"], "/items/9");
    assert_eq!(sent["queryStringParameters"]["color"], "red");
    assert_eq!(sent["sourceIp"], "127.0.0.1");
    assert_eq!(sent["identitySource"][0], "Bearer good");
    assert_eq!(sent["requestContext"]["route"], "t/items");
}

#[tokio::test]
async fn deny_is_403_and_results_are_cached_by_identity() {
    let s = setup().await;
    for _ in 0..3 {
        assert_eq!(call(&s, "/items/1", Some("Bearer good")).await.0, StatusCode::OK);
    }
    assert_eq!(s.authz.hits(), 1, "answers are cached by identity source");
    for _ in 0..3 {
        let (status, body) = call(&s, "/items/1", Some("Bearer bad")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert_eq!(s.authz.hits(), 2, "deny answers are cached too");
    assert_eq!(s.backend.hits(), 3);
    // Without identity sources nothing is cached.
    for _ in 0..2 {
        assert_eq!(call(&s, "/live", Some("Bearer good")).await.0, StatusCode::OK);
    }
    assert_eq!(s.authz.hits(), 4);
    assert!(
        metric(&s.gateway, "tollgate_auth_denied_total", &["authorizer=\"t/ext\"", "reason=\"denied\""])
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn missing_identity_source_is_401_without_a_call() {
    let s = setup().await;
    let (status, body) = call(&s, "/items/1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(s.authz.hits(), 0);
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn failing_or_slow_authorizer_fails_closed() {
    let s = setup().await;
    let (status, body) = call(&s, "/items/1", Some("Bearer boom")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body["message"].as_str().unwrap().contains("authorizer"), "{body}");
    let (status, _) = call(&s, "/items/1", Some("Bearer junk")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = call(&s, "/items/1", Some("Bearer slow")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["requestId"].is_string());
    assert_eq!(s.backend.hits(), 0);
    // Errors are not cached: the next call asks again.
    let before = s.authz.hits();
    let _ = call(&s, "/items/1", Some("Bearer boom")).await;
    assert_eq!(s.authz.hits(), before + 1);
    assert!(
        metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"authorizer_timeout\""]).await >= 1.0
    );
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"authorizer_error\""]).await >= 2.0);
    assert!(
        metric(&s.gateway, "tollgate_external_authorizer_calls_total", &["result=\"timeout\""]).await >= 1.0
    );
}

#[tokio::test]
async fn unreachable_authorizer_fails_closed() {
    let s = setup().await;
    let port = free_port();
    s._m.write(
        "api.yaml",
        &format!(
            "{}---\napiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: ext, namespace: t}}\nspec:\n  \
             external: {{url: \"http://127.0.0.1:{port}/check\", identitySources: [header.authorization]}}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: nocache, namespace: t}}\nspec:\n  \
             external: {{url: \"http://127.0.0.1:{port}/check\"}}\n",
            simple_api("t", "shop"),
        ),
    );
    eventually("an unreachable authorizer answers 500", || async {
        call(&s, "/items/1", Some("Bearer good")).await.0 == StatusCode::INTERNAL_SERVER_ERROR
    })
    .await;
    let before = s.backend.hits();
    assert_eq!(call(&s, "/items/2", Some("Bearer good")).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(s.backend.hits(), before);
}
