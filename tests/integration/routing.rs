//! Host → API → stage → route: mocks, services, URLs, 404/405, stages, precedence, normalization.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

struct Shop {
    gateway: Tollgate,
    prod: Backend,
    dev: Backend,
    legacy: Backend,
    _manifests: Manifests,
}

async fn shop() -> Shop {
    let prod = Backend::start("prod").await;
    let dev = Backend::start("dev").await;
    let legacy = Backend::start("legacy").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: shop, namespace: shop}\nspec:\n  \
         hostnames: [api.shop.test]\n  stages:\n  - name: prod\n    variables: {svc: orders}\n  - name: dev\n    \
         basePath: /dev\n    variables: {svc: orders-dev}\n  - name: beta\n    hostnames: [beta.shop.test]\n    \
         variables: {svc: orders-dev}\n",
    );
    let mut routes = String::new();
    routes += &route_yaml(
        "shop",
        "health",
        "shop",
        "  match: {methods: [GET], path: /health}\n  integration:\n    mock: {status: 200, headers: {content-type: application/json}, body: '{\"ok\":true}'}\n",
    );
    routes += "---\n";
    routes += &route_yaml(
        "shop",
        "get-order",
        "shop",
        "  match: {methods: [GET], path: '/orders/{id}'}\n  integration:\n    service: {name: '${stageVariables.svc}', port: 8080}\n    path: '/v1/orders/{id}'\n",
    );
    routes += "---\n";
    routes += &route_yaml(
        "shop",
        "create-order",
        "shop",
        "  match: {methods: [POST], path: /orders}\n  integration:\n    service: {name: '${stageVariables.svc}', port: 8080}\n",
    );
    routes += "---\n";
    routes += &route_yaml(
        "shop",
        "legacy",
        "shop",
        &format!(
            "  match: {{path: '/legacy/{{rest+}}'}}\n  integration:\n    url: http://{}/base\n    path: '/x/{{rest}}'\n",
            legacy.addr
        ),
    );
    routes += "---\n";
    routes += &route_yaml(
        "shop",
        "item-special",
        "shop",
        "  match: {methods: [GET], path: /items/special}\n  integration: {mock: {status: 200, body: special}}\n",
    );
    routes += "---\n";
    routes += &route_yaml(
        "shop",
        "item-any",
        "shop",
        "  match: {methods: [GET], path: '/items/{id}'}\n  integration: {mock: {status: 200, body: param}}\n",
    );
    m.write("routes.yaml", &routes);
    m.write(
        "services.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("shop", "orders", 8080, &[prod.addr]),
            service_yaml("shop", "orders-dev", 8080, &[dev.addr])
        ),
    );
    let gateway = Tollgate::start(m.path()).await;
    Shop { gateway, prod, dev, legacy, _manifests: m }
}

fn host_client(gateway: &Tollgate) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .resolve("api.shop.test", gateway.http)
        .resolve("beta.shop.test", gateway.http)
        .resolve("other.test", gateway.http)
        .build()
        .unwrap()
}

fn url(gateway: &Tollgate, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", gateway.http.port())
}

#[tokio::test]
async fn mock_route_answers_at_the_gateway() {
    let s = shop().await;
    let r = host_client(&s.gateway).get(url(&s.gateway, "api.shop.test", "/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.unwrap(), "{\"ok\":true}");
}

#[tokio::test]
async fn unknown_routes_hosts_and_methods_get_json_errors() {
    let s = shop().await;
    let c = host_client(&s.gateway);

    let r = c.get(url(&s.gateway, "api.shop.test", "/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/json");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"message": "Not Found", "requestId": id}));

    let r = c.get(url(&s.gateway, "other.test", "/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a host no API claims");

    let r = c.delete(url(&s.gateway, "api.shop.test", "/orders/1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Method Not Allowed");
    assert_eq!(s.prod.hits(), 0);
}

#[tokio::test]
async fn stages_by_base_path_and_hostname_use_their_own_variables() {
    let s = shop().await;
    let c = host_client(&s.gateway);

    let prod: Value =
        c.get(url(&s.gateway, "api.shop.test", "/orders/7?x=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(prod["server"], "prod");
    assert_eq!(prod["path"], "/v1/orders/7");
    assert_eq!(prod["query"], "x=1");

    let dev: Value =
        c.get(url(&s.gateway, "api.shop.test", "/dev/orders/8")).send().await.unwrap().json().await.unwrap();
    assert_eq!(dev["server"], "dev");
    assert_eq!(dev["path"], "/v1/orders/8");

    let post: Value = c
        .post(url(&s.gateway, "api.shop.test", "/dev/orders"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(post["server"], "dev");
    assert_eq!(post["path"], "/orders", "no rewrite: the path after the base path");
    assert_eq!(post["body"], "{}");

    let beta: Value =
        c.get(url(&s.gateway, "beta.shop.test", "/orders/9")).send().await.unwrap().json().await.unwrap();
    assert_eq!(beta["server"], "dev", "stage beta chosen by hostname");
    assert_eq!(s.dev.hits(), 3);
    assert_eq!(s.prod.hits(), 1);
}

#[tokio::test]
async fn url_integration_with_greedy_parameter_and_rewrite() {
    let s = shop().await;
    let c = host_client(&s.gateway);
    let r = c.get(url(&s.gateway, "api.shop.test", "/legacy/a/b/c.txt?q=%20x")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["server"], "legacy");
    assert_eq!(body["path"], "/base/x/a/b/c.txt");
    assert_eq!(body["query"], "q=%20x");
    assert_eq!(body["headers"]["host"], s.legacy.addr.to_string(), "url integrations send the URL's host");
    assert_eq!(body["headers"]["x-forwarded-host"], format!("api.shop.test:{}", s.gateway.http.port()));
}

#[tokio::test]
async fn literal_segments_beat_parameters() {
    let s = shop().await;
    let c = host_client(&s.gateway);
    let special =
        c.get(url(&s.gateway, "api.shop.test", "/items/special")).send().await.unwrap().text().await.unwrap();
    assert_eq!(special, "special");
    let param =
        c.get(url(&s.gateway, "api.shop.test", "/items/other")).send().await.unwrap().text().await.unwrap();
    assert_eq!(param, "param");
}

#[tokio::test]
async fn paths_are_normalized_before_matching() {
    let s = shop().await;
    for path in ["/dev/../orders/5", "/%6Frders/5", "//orders//5", "/./orders/5", "/dev/%2e%2e/orders/5"] {
        let (status, text) = raw_get(s.gateway.http, "api.shop.test", path).await;
        assert_eq!(status, 200, "{path}: {text}");
        let body = raw_json(&text);
        assert_eq!(body["server"], "prod", "{path} must reach the prod stage, not dev");
        assert_eq!(body["path"], "/v1/orders/5", "{path}");
    }
    let (status, text) = raw_get(s.gateway.http, "api.shop.test", "/orders/%zz").await;
    assert_eq!(status, 400, "invalid percent-encoding: {text}");
    assert!(raw_json(&text)["message"].as_str().unwrap().starts_with("Bad Request"), "{text}");
}
