//! CORS (preflight at the gateway, headers on real responses, wildcard vs credentials), request
//! validation and transforms, with exact bodies.

use reqwest::StatusCode;

use crate::support::*;

fn cors_api(name: &str, cors: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: {name}, namespace: c}}\nspec:\n  \
         hostnames: [{name}.example]\n  cors: {cors}\n"
    )
}

#[tokio::test]
async fn cors_preflight_and_response_headers() {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &[
            cors_api(
                "creds",
                "{allowOrigins: [\"https://shop.example\", \"https://*.shop.example\"], allowHeaders: [authorization], \
                 exposeHeaders: [x-request-id], maxAge: 10m, allowCredentials: true}",
            ),
            cors_api("open", "{allowOrigins: [\"*\"]}"),
        ]
        .join("---\n"),
    );
    m.write(
        "routes.yaml",
        &[
            route_yaml("c", "orders", "creds", "  match: {methods: [GET, POST], path: /orders}\n  integration: {service: {name: b, port: 80}}\n"),
            route_yaml("c", "public", "open", "  match: {methods: [GET], path: /p}\n  integration: {service: {name: b, port: 80}}\n"),
        ]
        .join("---\n"),
    );
    m.write("svc.yaml", &service_yaml("c", "b", 80, &[backend.addr]));
    let g = Tollgate::start(m.path()).await;
    let c = client();
    let preflight = |host: &'static str, path: &'static str, origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, g.url(path))
            .header("host", host)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let r = preflight("creds.example", "/orders", "https://app.shop.example").await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.shop.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "authorization");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(backend.hits(), 0, "answered at the gateway");
    let r = preflight("creds.example", "/orders", "https://evil.example").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let real = c
        .get(g.url("/orders"))
        .header("host", "creds.example")
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), StatusCode::OK);
    assert_eq!(real.headers()["access-control-allow-origin"], "https://shop.example");
    assert_eq!(real.headers()["access-control-allow-credentials"], "true");
    assert_eq!(real.headers()["access-control-expose-headers"], "x-request-id");
    assert_eq!(real.headers()["vary"], "Origin");

    // Wildcard without credentials: `*`, and no credentials header.
    let open = c
        .get(g.url("/p"))
        .header("host", "open.example")
        .header("origin", "https://any.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.headers()["access-control-allow-origin"], "*");
    assert!(open.headers().get("access-control-allow-credentials").is_none());
    let r = c
        .request(reqwest::Method::OPTIONS, g.url("/p"))
        .header("host", "open.example")
        .header("origin", "https://any.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.headers()["access-control-allow-origin"].to_str().unwrap()),
        (StatusCode::NO_CONTENT, "*")
    );
}

#[tokio::test]
async fn wildcard_with_credentials_is_rejected_by_validate() {
    let m = Manifests::new();
    m.write("api.yaml", &cors_api("x", "{allowOrigins: [\"*\"], allowCredentials: true}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("validate")
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("allowCredentials: true cannot be combined with allowOrigins '*'"), "{text}");
}

async fn setup_validation() -> (Tollgate, Backend, Manifests) {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: v, namespace: v}\nspec:\n  stages:\n  \
         - {name: prod, variables: {tier: gold}}\n",
    );
    m.write(
        "routes.yaml",
        &[
            route_yaml(
                "v",
                "search",
                "v",
                "  match: {methods: [GET], path: \"/items/{id}\"}\n  validation: {requiredQuery: [page], requiredHeaders: [x-version]}\n  \
                 transform:\n    request:\n      setHeaders: {x-tier: \"${stageVariables.tier}\", x-item: \"item-${request.path.id}\"}\n      \
                 removeHeaders: [cookie]\n      setQuery: {user: \"${request.header.x-user}\"}\n      removeQuery: [debug]\n    \
                 response: {removeHeaders: [x-backend], setHeaders: {x-req: \"${context.requestId}\"}}\n  integration: {service: {name: b, port: 80}}\n",
            ),
            route_yaml(
                "v",
                "create",
                "v",
                "  match: {methods: [POST], path: /items}\n  validation:\n    bodySchema: {type: object, required: [qty], properties: {qty: {type: integer, minimum: 1}}}\n  \
                 transform:\n    request: {body: '{\"order\": ${request.body}, \"qty\": ${request.body.qty}, \"by\": \"${request.header.x-user}\"}'}\n  \
                 integration: {service: {name: b, port: 80}}\n",
            ),
        ]
        .join("---\n"),
    );
    m.write("svc.yaml", &service_yaml("v", "b", 80, &[backend.addr]));
    let g = Tollgate::start(m.path()).await;
    (g, backend, m)
}

async fn error_body(r: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = r.status();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["requestId"], id.as_str());
    (status, body["message"].clone())
}

#[tokio::test]
async fn validation_errors_name_the_parameter_or_pointer() {
    let (g, backend, _m) = setup_validation().await;
    let c = client();
    let r = c.get(g.url("/items/7")).header("x-version", "2").send().await.unwrap();
    assert_eq!(
        error_body(r).await,
        (StatusCode::BAD_REQUEST, "Bad Request: Missing required query parameter: page".into())
    );
    let r = c.get(g.url("/items/7?page=1")).send().await.unwrap();
    assert_eq!(
        error_body(r).await,
        (StatusCode::BAD_REQUEST, "Bad Request: Missing required header: x-version".into())
    );
    let r = c.post(g.url("/items")).body(r#"{"qty": "two"}"#).send().await.unwrap();
    assert_eq!(
        error_body(r).await,
        (
            StatusCode::BAD_REQUEST,
            r#"Bad Request: Invalid request body at /qty: "two" is not of type "integer""#.into()
        )
    );
    let r = c.post(g.url("/items")).body("{}").send().await.unwrap();
    assert_eq!(
        error_body(r).await,
        (
            StatusCode::BAD_REQUEST,
            r#"Bad Request: Invalid request body at /: "qty" is a required property"#.into()
        )
    );
    let r = c.post(g.url("/items")).body("not json").send().await.unwrap();
    assert_eq!(
        error_body(r).await,
        (StatusCode::BAD_REQUEST, "Bad Request: Invalid request body: not valid JSON".into())
    );
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn transforms_change_headers_query_body_and_response() {
    let (g, _backend, _m) = setup_validation().await;
    let c = client();
    let r = c
        .get(g.url("/items/7?page=1&debug=true&user=forged"))
        .header("x-version", "2")
        .header("x-user", "ann")
        .header("cookie", "secret=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["x-req"], id.as_str());
    assert!(r.headers().get("x-backend").is_none(), "removed from the response");
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-tier"], "gold");
    assert_eq!(seen["headers"]["x-item"], "item-7");
    assert!(seen["headers"].get("cookie").is_none());
    assert_eq!(seen["query"], "page=1&user=ann");

    let r = c.post(g.url("/items")).header("x-user", "a\"b").body(r#"{"qty": 3}"#).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let seen: serde_json::Value = r.json().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"order": {"qty": 3}, "qty": 3, "by": "a\"b"}));
    assert_eq!(seen["headers"]["content-type"], "application/json");
}
