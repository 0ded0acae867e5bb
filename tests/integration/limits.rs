//! Request limits: body size (413), header size (431).

use reqwest::StatusCode;

use crate::support::*;

async fn setup() -> (Tollgate, Backend, Manifests) {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: l, namespace: l}\nspec:\n  \
         limits: {maxRequestBodyBytes: 1000}\n",
    );
    m.write(
        "routes.yaml",
        &[
            route_yaml("l", "up", "l", "  match: {path: /up}\n  integration: {service: {name: b, port: 80}}\n"),
            route_yaml(
                "l",
                "up-retry",
                "l",
                "  match: {path: /up-retry}\n  integration:\n    service: {name: b, port: 80}\n    retries: {attempts: 1, on: [connect-failure]}\n",
            ),
        ]
        .join("---\n"),
    );
    m.write("svc.yaml", &service_yaml("l", "b", 80, &[backend.addr]));
    let gateway = Tollgate::start_with(m.path(), &["--max-header-bytes", "16384"]).await;
    (gateway, backend, m)
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (g, backend, _m) = setup().await;
    let ok = client().post(g.url("/up")).body("x".repeat(1000)).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // Announced by Content-Length: refused before anything is forwarded.
    let big = client().post(g.url("/up")).body("x".repeat(1001)).send().await.unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = big.json().await.unwrap();
    assert_eq!(body["message"], "Request body exceeds the limit of 1000 bytes");
    assert_eq!(backend.hits(), 1);

    // Chunked (no Content-Length), buffered because the route retries.
    let chunked = format!(
        "POST /up-retry HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2000)
    );
    let (status, text) = raw_request(g.http, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(backend.hits(), 1, "nothing reached the backend");
}

#[tokio::test]
async fn streamed_chunked_body_over_the_limit_is_cut_off() {
    let (g, _backend, _m) = setup().await;
    let chunked = format!(
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2000)
    );
    let (status, text) = raw_request(g.http, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (g, backend, _m) = setup().await;
    let r = client().get(g.url("/up")).header("x-big", "z".repeat(20_000)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(backend.hits(), 0);
}
