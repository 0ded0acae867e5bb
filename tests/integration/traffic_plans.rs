//! API keys and usage plans: key checks (403), per-key throttles, quotas that survive a restart
//! (Redis and `--state-dir`), `/usage`.

use reqwest::StatusCode;

use crate::redis::RedisServer;
use crate::support::*;

pub const ALICE: &str = "alice-0123456789abcdef";
pub const BOB: &str = "bob-0123456789abcdef";
pub const CAROL: &str = "carol-0123456789abcdef";

/// An API with one stage, a keyed route (`/keyed`, echoing backend `b`), the plan `gold` with
/// keys alice and carol (`quota`, `throttle` as given) and bob's disabled key.
pub fn plan_manifests(m: &Manifests, backend: &Backend, plan_extra: &str, route_extra: &str) {
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: shop, namespace: shop}\nspec:\n  \
         stages:\n  - name: prod\n    cache: {enabled: true, ttl: 60s}\n",
    );
    m.write(
        "routes.yaml",
        &route_yaml(
            "shop",
            "keyed",
            "shop",
            &format!(
                "  match: {{methods: [GET], path: /keyed}}\n  apiKeyRequired: true\n{route_extra}  integration: {{service: {{name: b, port: 80}}}}\n"
            ),
        ),
    );
    m.write("svc.yaml", &service_yaml("shop", "b", 80, &[backend.addr]));
    let key = |name: &str, value: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: shop, labels: {{plan: gold}}{extra}}}\n\
             type: tollgate.dev/api-key\nstringData: {{key: {value}}}\n"
        )
    };
    m.write(
        "keys.yaml",
        &[
            key("alice", ALICE, ""),
            key("bob", BOB, ", annotations: {tollgate.dev/disabled: \"true\"}"),
            key("carol", CAROL, ""),
        ]
        .join("---\n"),
    );
    m.write(
        "plan.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: UsagePlan\nmetadata: {{name: gold, namespace: shop}}\nspec:\n  \
             apiStages: [{{api: shop, stage: prod}}]\n  keySelector: {{matchLabels: {{plan: gold}}}}\n{plan_extra}"
        ),
    );
}

async fn get(g: &Tollgate, key: Option<&str>) -> reqwest::Response {
    let mut request = client().get(g.url("/keyed"));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn missing_unknown_and_disabled_keys_get_403() {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    plan_manifests(&m, &backend, "", "");
    let g = Tollgate::start(m.path()).await;
    for key in [None, Some("nope-0123456789abcdef"), Some(BOB), Some("")] {
        let r = get(&g, key).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{key:?}");
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"message": "Forbidden", "requestId": id}));
    }
    assert_eq!(backend.hits(), 0);
    let ok = get(&g, Some(ALICE)).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let line = g.wait_for_log(|l| l["status"] == 200).await;
    assert_eq!(line["apiKeyId"], "shop/alice", "{line}");
    let denied = g.wait_for_log(|l| l["status"] == 403 && l["error"] == "api_key_disabled").await;
    assert_eq!(denied["route"], "shop/keyed");
    // The key itself appears nowhere: not in logs, not in /config.
    let config = client().get(g.admin_url("/config")).send().await.unwrap().text().await.unwrap();
    for text in [config, g.stderr(), format!("{:?}", g.access_log())] {
        assert!(!text.contains(ALICE) && !text.contains(BOB));
    }
}

#[tokio::test]
async fn plan_throttle_is_per_key() {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    plan_manifests(&m, &backend, "  throttle: {rate: 0.01, burst: 2}\n", "");
    let g = Tollgate::start(m.path()).await;
    assert_eq!(get(&g, Some(ALICE)).await.status(), StatusCode::OK);
    assert_eq!(get(&g, Some(ALICE)).await.status(), StatusCode::OK);
    let refused = get(&g, Some(ALICE)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(get(&g, Some(CAROL)).await.status(), StatusCode::OK, "carol has her own bucket");
}

async fn exhaust_and_restart(extra: &[&str]) {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    plan_manifests(&m, &backend, "  quota: {limit: 3, period: DAY}\n", "");
    let mut g = Tollgate::start_with(m.path(), extra).await;
    for used in 1..=3 {
        let r = get(&g, Some(ALICE)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-quota-limit"], "3");
        assert_eq!(r.headers()["x-quota-remaining"], (3 - used).to_string().as_str());
    }
    let refused = get(&g, Some(ALICE)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["x-quota-remaining"], "0");
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["message"], "Limit Exceeded");
    assert_eq!(get(&g, Some(CAROL)).await.status(), StatusCode::OK, "carol's quota is her own");

    g.terminate();
    assert!(g.wait_exit().await, "clean exit; stderr:\n{}", g.stderr());
    drop(g);
    let g = Tollgate::start_with(m.path(), extra).await;
    let refused = get(&g, Some(ALICE)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "the count survived the restart");
    let usage: serde_json::Value =
        client().get(g.admin_url("/usage?plan=shop/gold")).send().await.unwrap().json().await.unwrap();
    let keys = usage["keys"].as_array().unwrap();
    let alice = keys.iter().find(|k| k["keyId"] == "shop/alice").unwrap();
    assert_eq!((alice["used"].as_u64(), alice["remaining"].as_u64()), (Some(3), Some(0)), "{usage}");
    let carol = keys.iter().find(|k| k["keyId"] == "shop/carol").unwrap();
    assert_eq!(carol["used"], 1);
    assert_eq!(usage["quota"], serde_json::json!({"limit": 3, "period": "DAY"}));
    assert_eq!(
        client().get(g.admin_url("/usage?plan=shop/none")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn quota_survives_a_restart_with_state_dir() {
    let state = tempfile::tempdir().unwrap();
    exhaust_and_restart(&["--state-dir", state.path().to_str().unwrap()]).await;
}

#[tokio::test]
async fn quota_survives_a_restart_with_redis() {
    let redis = RedisServer::start().await;
    exhaust_and_restart(&["--redis", &redis.url()]).await;
}
