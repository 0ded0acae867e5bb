//! The whole path against a real API server: objects applied with server-side apply, status
//! written back by the controller, traffic through the proxies to real backends.
//!
//! Every test is `#[ignore]`d (it creates namespaces and, in local mode, CRDs) and skips when
//! `KUBECONFIG` is unset. Run with:
//!
//! ```sh
//! KUBECONFIG=~/.kube/config cargo test -p tollgate-e2e --test cluster -- --ignored --test-threads 1
//! E2E_MODE=local KUBECONFIG=… cargo test -p tollgate-e2e --test cluster -- --ignored --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use tollgate_e2e::suite::Suite;
use tollgate_e2e::{Mode, gateway, k8s};

macro_rules! suite {
    ($name:expr) => {
        match Suite::start($name).await.unwrap() {
            Some(suite) => suite,
            None => return,
        }
    };
}

fn route(name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}}}\nspec:\n  apiRef: {{name: shop}}\n{body}"
    )
}

/// How many proxies may each count on their own (local throttles and quotas without Redis).
async fn proxy_replicas(s: &Suite) -> usize {
    match s.mode {
        Mode::Local => 1, // requests go to the first local proxy only
        Mode::Cluster => {
            let ns = std::env::var("E2E_RELEASE_NAMESPACE").unwrap_or_else(|_| "tollgate-system".into());
            let selector = format!("app.kubernetes.io/component=proxy,tollgate.dev/fleet={}", s.fleet);
            k8s::ready_pods(&s.client, &ns, &selector).await.unwrap().len().max(1)
        }
    }
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored"]
async fn routing_status_conditions_and_no_drift() {
    let mut s = suite!("routing");
    s.backend("orders").await.unwrap();
    let yaml = s.api_yaml("    variables: {ordersService: orders}\n")
        + &route(
            "health",
            "  match: {methods: [GET], path: /health}\n  integration: {mock: {status: 200, body: '{\"status\":\"ok\"}'}}\n",
        )
        + &route(
            "get-order",
            "  match: {methods: [GET, HEAD], path: '/orders/{id}'}\n  integration:\n    service: {name: '${stageVariables.ordersService}', port: 8080}\n    path: '/v1/orders/{id}'\n",
        );
    s.apply(&yaml).await.unwrap();

    // Status: positive conditions for the current generation, written by the controller.
    let api = k8s::wait_condition(&s.client, "GatewayAPI", &s.namespace, "shop", "Accepted").await.unwrap();
    k8s::wait_condition(&s.client, "GatewayAPI", &s.namespace, "shop", "Programmed").await.unwrap();
    for name in ["health", "get-order"] {
        for condition in ["Accepted", "ResolvedRefs", "Programmed"] {
            k8s::wait_condition(&s.client, "Route", &s.namespace, name, condition).await.unwrap();
        }
    }

    let g = s.gateway().unwrap();
    let health = g.get_until("/health served", "/health", &[], |r| r.status == 200).await.unwrap();
    assert_eq!(health.body, r#"{"status":"ok"}"#);
    let order = g.get_until("/orders/42 proxied", "/orders/42", &[], |r| r.status == 200).await.unwrap();
    let echo = order.json().unwrap();
    assert_eq!(
        (echo["server"].as_str(), echo["path"].as_str()),
        (Some("orders"), Some("/v1/orders/42")),
        "{echo}"
    );
    assert_eq!(g.get("/nope").await.unwrap().status, 404);
    let wrong_method = g.send("DELETE", "/orders/1", &[]).await.unwrap();
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.header("allow").contains("GET"), "{:?}", wrong_method.headers);

    // GitOps: nobody but the applier owns spec fields; the controller only writes status.
    let api = k8s::get(&s.client, "tollgate.dev/v1alpha1", "GatewayAPI", Some(&s.namespace), "shop")
        .await
        .unwrap()
        .unwrap_or(api);
    assert_eq!(k8s::spec_managers(&api), [k8s::MANAGER], "{:?}", api.metadata.managed_fields);
    assert_eq!(api.data["spec"]["stages"][0]["variables"]["ordersService"], "orders");
    assert!(
        api.data["spec"].get("protocol").is_none(),
        "the controller must not default spec fields: {}",
        api.data["spec"]
    );
    let conditions = api.data["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().all(|c| c["lastTransitionTime"].is_string() && c["reason"].is_string()));
    s.finish().await.unwrap();
}

/// An ES256 key pair: the signing key and its JSON Web Key Set.
fn es256() -> (jsonwebtoken::EncodingKey, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw(); // 0x04 || X || Y
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e2e", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    (jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(), jwks.to_string())
}

fn token(key: &jsonwebtoken::EncodingKey, audience: &str, expires_in: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("e2e".into());
    let claims = serde_json::json!({"iss": "https://idp.e2e.test", "aud": audience, "sub": "alice",
        "iat": now, "exp": now + expires_in});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored"]
async fn jwt_authorizer() {
    let mut s = suite!("jwt");
    s.backend("orders").await.unwrap();
    let (key, jwks) = es256();
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: idp-jwks}}\nstringData:\n  jwks.json: '{jwks}'\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: idp}}\nspec:\n  jwt:\n    \
         issuer: https://idp.e2e.test\n    audiences: [shop]\n    jwksSecretRef: {{name: idp-jwks}}\n    \
         claimsToHeaders: {{sub: x-user-id}}\n---\n{}{}",
        s.api_yaml(""),
        route(
            "me",
            "  match: {path: /me}\n  authorization: {authorizerRef: {name: idp}}\n  integration: {service: {name: orders, port: 8080}}\n"
        )
    );
    s.apply(&yaml).await.unwrap();
    k8s::wait_condition(&s.client, "Route", &s.namespace, "me", "Programmed").await.unwrap();
    let g = s.gateway().unwrap();
    g.get_until("/me requires a token", "/me", &[], |r| r.status == 401).await.unwrap();
    let good = format!("Bearer {}", token(&key, "shop", 300));
    let ok = g.send("GET", "/me", &[("authorization", &good)]).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json().unwrap()["headers"]["x-user-id"], "alice");
    for bad in [token(&key, "other", 300), token(&key, "shop", -600), "not.a.jwt".into()] {
        let r = g.send("GET", "/me", &[("authorization", &format!("Bearer {bad}"))]).await.unwrap();
        assert_eq!(r.status, 401, "{bad}: {}", r.body);
    }
    s.finish().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored"]
async fn api_key_quota_and_throttle() {
    let mut s = suite!("plans");
    s.backend("orders").await.unwrap();
    const KEY: &str = "e2e-key-0123456789abcdef0123";
    const QUOTA: usize = 5;
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: alice, labels: {{plan: gold}}}}\ntype: tollgate.dev/api-key\n\
         stringData: {{key: {KEY}}}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: UsagePlan\nmetadata: {{name: gold}}\n\
         spec:\n  apiStages: [{{api: shop, stage: prod}}]\n  quota: {{limit: {QUOTA}, period: DAY}}\n  \
         keySelector: {{matchLabels: {{plan: gold}}}}\n---\n{}{}{}",
        s.api_yaml(""),
        route(
            "keyed",
            "  match: {path: /keyed}\n  apiKeyRequired: true\n  integration: {service: {name: orders, port: 8080}}\n"
        ),
        route(
            "slow",
            "  match: {path: /slow}\n  throttle: {rate: 1, burst: 2}\n  integration: {mock: {status: 200, body: ok}}\n"
        ),
    );
    s.apply(&yaml).await.unwrap();
    k8s::wait_condition(&s.client, "Route", &s.namespace, "keyed", "Programmed").await.unwrap();
    k8s::wait_condition(&s.client, "UsagePlan", &s.namespace, "gold", "Accepted").await.unwrap();
    let g = s.gateway().unwrap();
    g.get_until("/keyed requires a key", "/keyed", &[], |r| r.status == 403).await.unwrap();
    assert_eq!(g.send("GET", "/keyed", &[("x-api-key", "wrong-key-0123456789")]).await.unwrap().status, 403);
    // Without Redis each proxy counts its own quota: between QUOTA and QUOTA × replicas succeed.
    let replicas = proxy_replicas(&s).await;
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..QUOTA * replicas + 3 {
        match g.send("GET", "/keyed", &[("x-api-key", KEY)]).await.unwrap().status {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((QUOTA..=QUOTA * replicas).contains(&ok), "{ok} succeeded, quota {QUOTA} × {replicas} proxies");
    assert!(limited >= 3, "{limited} refused");

    // Route throttle: burst 2 at 1/s — a quick run of requests is cut off with Retry-After.
    let mut refused = None;
    for _ in 0..(2 * replicas + 4) {
        let r = g.get("/slow").await.unwrap();
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the throttle never refused");
    assert!(!refused.header("retry-after").is_empty(), "{:?}", refused.headers);
    s.finish().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored"]
async fn response_cache() {
    let mut s = suite!("cache");
    s.backend("orders").await.unwrap();
    let yaml = s.api_yaml("    cache: {enabled: true, ttl: 60s}\n")
        + &route(
            "cached",
            "  match: {methods: [GET], path: /cached}\n  cache: {ttl: 60s}\n  integration: {service: {name: orders, port: 8080}}\n",
        );
    s.apply(&yaml).await.unwrap();
    k8s::wait_condition(&s.client, "Route", &s.namespace, "cached", "Programmed").await.unwrap();
    let g = s.gateway().unwrap();
    g.get_until("/cached served", "/cached", &[], |r| r.status == 200).await.unwrap();
    // The echo body carries the request id, so a hit is recognisable: same body as a miss.
    let mut misses = Vec::new();
    let mut hit = None;
    for _ in 0..20 {
        let r = g.get("/cached").await.unwrap();
        match r.header("x-cache") {
            "hit" => {
                hit = Some(r);
                break;
            }
            _ => misses.push(r.body),
        }
    }
    let hit = hit.expect("no cache hit in 20 requests");
    assert!(misses.contains(&hit.body), "a hit must replay a stored response");
    s.finish().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored"]
async fn config_change_rolls_out_to_every_proxy() {
    let s = suite!("rollout");
    let version = |v: &str| {
        s.api_yaml("")
            + &route(
                "version",
                &format!(
                    "  match: {{path: /version}}\n  integration: {{mock: {{status: 200, body: {v}}}}}\n"
                ),
            )
    };
    s.apply(&version("v1")).await.unwrap();
    let first = k8s::wait_condition(&s.client, "Route", &s.namespace, "version", "Programmed").await.unwrap();
    for g in s.gateways().unwrap() {
        g.get_until("v1 served", "/version", &[], |r| r.body == "v1").await.unwrap();
    }
    s.apply(&version("v2")).await.unwrap();
    let second =
        k8s::wait_condition(&s.client, "Route", &s.namespace, "version", "Programmed").await.unwrap();
    assert!(second.metadata.generation > first.metadata.generation);
    k8s::wait_condition(&s.client, "GatewayAPI", &s.namespace, "shop", "Programmed").await.unwrap();
    for g in s.gateways().unwrap() {
        // Polled: on a Service, successive requests may reach different proxies.
        g.get_until("v2 served", "/version", &[], |r| r.body == "v2").await.unwrap();
        for _ in 0..10 {
            assert_eq!(g.get("/version").await.unwrap().body, "v2", "a proxy still serves v1");
        }
    }
    s.finish().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored"]
async fn a_proxy_killed_under_traffic_fails_no_request() {
    let mut s = suite!("kill");
    s.backend("orders").await.unwrap();
    let yaml = s.api_yaml("")
        + &route(
            "orders",
            "  match: {path: /orders}\n  integration: {service: {name: orders, port: 8080}}\n",
        );
    s.apply(&yaml).await.unwrap();
    k8s::wait_condition(&s.client, "GatewayAPI", &s.namespace, "shop", "Programmed").await.unwrap();
    for g in s.gateways().unwrap() {
        g.get_until("/orders served", "/orders", &[], |r| r.status == 200).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load =
        tokio::spawn(gateway::load(s.gateways().unwrap(), "/orders".into(), 200, 4, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    match s.mode {
        Mode::Cluster => {
            let ns = std::env::var("E2E_RELEASE_NAMESPACE").unwrap_or_else(|_| "tollgate-system".into());
            let selector = format!("app.kubernetes.io/component=proxy,tollgate.dev/fleet={}", s.fleet);
            let pods = k8s::wait_ready_pods(&s.client, &ns, &selector, 2).await.unwrap();
            k8s::delete_pod(&s.client, &ns, &pods[0]).await.unwrap();
            // The Deployment replaces it; traffic keeps flowing meanwhile.
            tollgate_e2e::eventually("the killed proxy replaced", tollgate_e2e::WAIT, || {
                let (client, ns, selector, killed) =
                    (s.client.clone(), ns.clone(), selector.clone(), pods[0].clone());
                let wanted = pods.len();
                async move {
                    let now = k8s::ready_pods(&client, &ns, &selector).await?;
                    Ok((now.len() >= wanted && !now.contains(&killed)).then_some(()))
                }
            })
            .await
            .unwrap();
        }
        Mode::Local => {
            // SIGTERM: the proxy stops accepting and drains; clients move to the other one.
            let limit = s.drain_limit();
            s.proxies[1].process.terminate(limit).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.unwrap();
    eprintln!("load: {report:?}");
    assert!(report.ok > 20, "{report:?}");
    assert_eq!(report.failed, 0, "requests failed beyond retries: {report:?}");
    s.finish().await.unwrap();
}
