//! Forwarding: headers, request ids, trace context, retries, timeouts, failing backends.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

struct Setup {
    gateway: Tollgate,
    _dead: tokio::net::TcpSocket,
    ok: Backend,
    failing: Backend,
    _m: Manifests,
}

async fn setup() -> Setup {
    let ok = Backend::start("ok").await;
    let failing = Backend::start_with_status("failing", Some(503)).await;
    let (dead, dead_guard) = dead_address();
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("p", "p"));
    let svc = |name: &str, path: &str, extra: &str| {
        route_yaml(
            "p",
            name,
            "p",
            &format!(
                "  match: {{path: '{path}'}}\n  integration:\n    service: {{name: {name}, port: 80}}\n{extra}"
            ),
        )
    };
    let routes = [
        svc("echo", "/echo/{p+}", ""),
        svc("slow", "/slow/{ms}", "    path: '/delay/{ms}'\n    timeout: 300ms\n"),
        svc("flaky", "/flaky", "    retries: {attempts: 2, on: [connect-failure]}\n"),
        svc("flaky-no-retry", "/flaky-no-retry", ""),
        svc("half", "/half", "    retries: {attempts: 1, on: [\"503\"]}\n"),
        svc("down", "/down", ""),
        svc("empty", "/empty", ""),
        svc("missing", "/missing", ""),
    ]
    .join("---\n");
    m.write("routes.yaml", &routes);
    let services = [
        service_yaml("p", "echo", 80, &[ok.addr]),
        service_yaml("p", "slow", 80, &[ok.addr]),
        service_yaml("p", "flaky", 80, &[dead, ok.addr]),
        service_yaml("p", "flaky-no-retry", 80, &[dead]),
        service_yaml("p", "half", 80, &[failing.addr, ok.addr]),
        service_yaml("p", "down", 80, &[dead]),
        service_yaml("p", "empty", 80, &[]),
    ]
    .join("---\n");
    m.write("services.yaml", &services);
    let gateway = Tollgate::start(m.path()).await;
    Setup { gateway, _dead: dead_guard, ok, failing, _m: m }
}

#[tokio::test]
async fn forwarding_headers_request_id_and_trace_context() {
    let s = setup().await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client()
        .get(s.gateway.url("/echo/a?b=c"))
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "req-abc.123")
        .header("traceparent", trace)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-request-id"], "req-abc.123");
    assert_eq!(r.headers()["x-backend"], "ok");
    assert!(
        !r.headers().contains_key("x-upstream-hop"),
        "headers named by the upstream's Connection are dropped"
    );
    let body: Value = r.json().await.unwrap();
    let h = &body["headers"];
    assert_eq!(body["path"], "/echo/a");
    assert!(h.get("x-hop").is_none(), "hop-by-hop header named in Connection must not be forwarded");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], s.gateway.http.to_string());
    assert_eq!(h["x-request-id"], "req-abc.123");
    let tp = h["traceparent"].as_str().unwrap();
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp != trace, "{tp}");
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(h["host"], s.gateway.http.to_string(), "Host goes upstream as the client sent it");

    assert_eq!(body["repeated"], serde_json::json!([]), "the gateway's fields replace the client's");

    // A request with a body takes hyper's client: the same fields, each once.
    let r = client()
        .post(s.gateway.url("/echo/p"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "req-post")
        .header("traceparent", trace)
        .body("payload")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let h = &body["headers"];
    assert_eq!(body["body"], "payload");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http", "the client's claim is replaced");
    assert_eq!(h["x-request-id"], "req-post");
    assert!(h["traceparent"].as_str().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert_eq!(body["repeated"], serde_json::json!([]), "{body}");

    // `Connection: host` would make Host hop-by-hop; the upstream gets it all the same.
    let r = client().get(s.gateway.url("/echo/h")).header("connection", "host").send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["host"], s.gateway.http.to_string());
}

#[tokio::test]
async fn request_ids_are_generated_and_hostile_ones_replaced() {
    let s = setup().await;
    let r = client().get(s.gateway.url("/echo/x")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["headers"]["x-request-id"], id, "the upstream sees the same id");
    assert!(body["headers"]["traceparent"].as_str().unwrap().starts_with("00-"), "a trace is started");

    let r = client().get(s.gateway.url("/echo/x")).header("x-request-id", "a\"b{c}").send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"], "a\"b{c}");
}

#[tokio::test]
async fn slow_upstream_gets_504_within_the_route_timeout() {
    let s = setup().await;
    let r = client().get(s.gateway.url("/slow/5000")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("300 ms"), "{body}");
    let fast = client().get(s.gateway.url("/slow/1")).send().await.unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
}

/// The requests of one keep-alive connection share a route-timeout timer, left armed at an
/// earlier request's deadline: each request must still get its whole timeout (300 ms here).
#[tokio::test]
async fn each_request_on_a_connection_gets_its_whole_route_timeout() {
    let s = setup().await;
    let one_connection = client();
    let first = one_connection.get(s.gateway.url("/slow/1")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // The timer the first request left fires 150 ms into the second, which needs 200 ms.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let second = one_connection.get(s.gateway.url("/slow/200")).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::OK, "cut at an earlier request's deadline");
    let started = std::time::Instant::now();
    let stalled = one_connection.get(s.gateway.url("/slow/5000")).send().await.unwrap();
    assert_eq!(stalled.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "not before the timeout");
}

#[tokio::test]
async fn connect_failures_are_retried_when_the_route_says_so() {
    let s = setup().await;
    for _ in 0..6 {
        let r = client().get(s.gateway.url("/flaky")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "the dead endpoint is skipped by the retry");
    }
    assert_eq!(s.ok.hits(), 6);
    let r = client().get(s.gateway.url("/flaky-no-retry")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn listed_statuses_are_retried_on_the_next_endpoint() {
    let s = setup().await;
    for _ in 0..4 {
        let r = client().get(s.gateway.url("/half")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(s.failing.hits() >= 1, "round robin reached the failing endpoint");
    assert_eq!(s.ok.hits(), 4);
}

#[tokio::test]
async fn backend_down_no_endpoints_and_missing_service() {
    let s = setup().await;
    let r = client().get(s.gateway.url("/down")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Bad Gateway: the upstream did not answer");
    assert!(body["requestId"].is_string());

    for path in ["/empty", "/missing"] {
        let r = client().get(s.gateway.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().starts_with("Service Unavailable"), "{body}");
        assert!(!body.to_string().contains(":80"), "the backend is not named to the client: {body}");
    }
}

#[tokio::test]
async fn request_bodies_stream_through() {
    let s = setup().await;
    let payload = "x".repeat(200_000);
    let r = client().put(s.gateway.url("/echo/upload")).body(payload.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["method"], "PUT");
    assert_eq!(body["body"].as_str().unwrap().len(), payload.len());
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_trusted_cas() {
    let pki = TestPki::new();
    let (addr, _task) = tls_backend("secure", &pki).await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("p", "p"));
    m.write(
        "routes.yaml",
        &route_yaml(
            "p",
            "secure",
            "p",
            &format!(
                "  match: {{path: '/s/{{rest+}}'}}\n  integration: {{url: 'https://localhost:{}/base'}}\n",
                addr.port()
            ),
        ),
    );
    let ca = m.write("ca.pem.txt", &pki.ca_pem);
    let trusted = Tollgate::start_with(m.path(), &["--upstream-ca", ca.to_str().unwrap()]).await;
    let r = client().get(trusted.url("/s/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["server"], "secure");
    assert_eq!(body["path"], "/base/s/x");
    assert_eq!(body["headers"]["host"], format!("localhost:{}", addr.port()));

    // Without the private CA the upstream's certificate is not trusted: 502, never plaintext.
    let untrusting = Tollgate::start(m.path()).await;
    let r = client().get(untrusting.url("/s/x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    // The client learns only that it was a 502; the log says why, at the default level.
    eventually("the cause of the 502 is logged", || async {
        let log = untrusting.stderr();
        log.contains("upstream request failed") && log.contains("UnknownIssuer")
    })
    .await;
    let r = client().get(untrusting.url("/s/y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        untrusting.stderr().matches("upstream request failed").count(),
        1,
        "one warning per backend per 10 s, not one per request"
    );
}
