//! The response cache: no cross-caller leaks, shared routes, key parameters, upstream
//! Cache-Control, client refresh, TTL, stage isolation.

use reqwest::StatusCode;

use crate::support::*;
use crate::traffic_plans::{ALICE, CAROL, plan_manifests};

async fn get(g: &Tollgate, path: &str, key: &str, extra: &[(&str, &str)]) -> (String, String) {
    let mut request = client().get(g.url(path)).header("x-api-key", key);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cache = r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (cache, r.text().await.unwrap())
}

#[tokio::test]
async fn one_callers_response_never_reaches_another() {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    plan_manifests(&m, &backend, "", "");
    let g = Tollgate::start(m.path()).await;
    let (cache, alice) = get(&g, "/keyed", ALICE, &[]).await;
    assert_eq!(cache, "miss");
    assert!(alice.contains(ALICE), "the backend saw alice's key: {alice}");
    let (cache, again) = get(&g, "/keyed", ALICE, &[]).await;
    assert_eq!((cache.as_str(), again.as_str()), ("hit", alice.as_str()));
    assert_eq!(backend.hits(), 1);
    // Carol asks for the same URL: she gets her own answer, never alice's.
    let (cache, carol) = get(&g, "/keyed", CAROL, &[]).await;
    assert_eq!(cache, "miss");
    assert!(carol.contains(CAROL) && !carol.contains(ALICE), "{carol}");
    assert_eq!(get(&g, "/keyed", CAROL, &[]).await.1, carol);
    assert_eq!(get(&g, "/keyed", ALICE, &[]).await.1, alice);
    assert_eq!(backend.hits(), 2);
    let metrics = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            r#"tollgate_cache_requests_total{api="shop/shop",result="hit",route="shop/keyed",stage="prod"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn shared_routes_share_entries_and_key_parameters_split_them() {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    plan_manifests(&m, &backend, "", "  cache: {shared: true, keyParameters: [query.page]}\n");
    let g = Tollgate::start(m.path()).await;
    assert_eq!(get(&g, "/keyed?page=1&x=1", ALICE, &[]).await.0, "miss");
    assert_eq!(get(&g, "/keyed?page=1&x=2", CAROL, &[]).await.0, "hit", "shared, and x is not in the key");
    assert_eq!(get(&g, "/keyed?page=2", CAROL, &[]).await.0, "miss");
    // A client cannot flush a shared entry.
    assert_eq!(get(&g, "/keyed?page=2", ALICE, &[("cache-control", "max-age=0")]).await.0, "hit");
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn client_refresh_ttl_and_upstream_cache_control() {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    plan_manifests(&m, &backend, "", "  cache: {ttl: 1s}\n");
    m.write(
        "more.yaml",
        &[
            route_yaml(
                "shop",
                "private",
                "shop",
                "  match: {path: /private}\n  integration: {mock: {status: 200, headers: {cache-control: private}, body: p}}\n",
            ),
            route_yaml(
                "shop",
                "nostore",
                "shop",
                "  match: {path: /nostore}\n  integration: {mock: {status: 200, headers: {cache-control: no-store}, body: n}}\n",
            ),
            route_yaml("shop", "public", "shop", "  match: {path: /public}\n  integration: {mock: {status: 200, body: ok}}\n"),
        ]
        .join("---\n"),
    );
    let g = Tollgate::start(m.path()).await;
    assert_eq!(get(&g, "/keyed", ALICE, &[]).await.0, "miss");
    assert_eq!(get(&g, "/keyed", ALICE, &[]).await.0, "hit");
    // Alice may refresh her own entry.
    assert_eq!(get(&g, "/keyed", ALICE, &[("cache-control", "no-cache")]).await.0, "miss");
    assert_eq!(backend.hits(), 2);
    eventually("the entry expires after its 1s ttl", || async {
        get(&g, "/keyed", ALICE, &[]).await.0 == "miss"
    })
    .await;
    for path in ["/private", "/nostore"] {
        assert_eq!(get(&g, path, ALICE, &[]).await.0, "miss");
        assert_eq!(get(&g, path, ALICE, &[]).await.0, "miss", "{path} is never stored");
    }
    assert_eq!(get(&g, "/public", ALICE, &[]).await.0, "miss");
    assert_eq!(get(&g, "/public", ALICE, &[]).await.0, "hit");
    let r = client().post(g.url("/public")).send().await.unwrap();
    assert!(r.headers().get("x-cache").is_none(), "POST is not cached");
}

#[tokio::test]
async fn stages_have_separate_caches() {
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: s, namespace: s}\nspec:\n  stages:\n  \
         - {name: prod, variables: {v: prod}, cache: {enabled: true}}\n  - {name: dev, basePath: /dev, variables: {v: dev}, cache: {enabled: true}}\n",
    );
    m.write(
        "routes.yaml",
        &route_yaml(
            "s",
            "r",
            "s",
            "  match: {path: /x}\n  integration: {mock: {status: 200, body: same}}\n  transform: {response: {setHeaders: {x-stage: \"${stageVariables.v}\"}}}\n",
        ),
    );
    let g = Tollgate::start(m.path()).await;
    let c = client();
    let prod = c.get(g.url("/x")).send().await.unwrap();
    assert_eq!(
        (prod.headers()["x-cache"].to_str().unwrap(), prod.headers()["x-stage"].to_str().unwrap()),
        ("miss", "prod")
    );
    let dev = c.get(g.url("/dev/x")).send().await.unwrap();
    assert_eq!(
        (dev.headers()["x-cache"].to_str().unwrap(), dev.headers()["x-stage"].to_str().unwrap()),
        ("miss", "dev")
    );
    let prod = c.get(g.url("/x")).send().await.unwrap();
    assert_eq!(
        (prod.headers()["x-cache"].to_str().unwrap(), prod.headers()["x-stage"].to_str().unwrap()),
        ("hit", "prod")
    );
}
