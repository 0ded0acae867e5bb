//! JWT / OIDC authorizers with real keys (RSA, EC P-256, Ed25519) served by a loopback identity
//! provider: accepted algorithms, scopes, claims to headers, principal in the access log, OIDC
//! discovery, keys from a Secret, key rotation and an identity provider that goes down.

use jsonwebtoken::Algorithm;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::auth_support::*;
use crate::support::*;

pub struct JwtSetup {
    pub gateway: Tollgate,
    pub idp: Idp,
    pub _public: Backend,
    pub admin: Backend,
    pub orders: Backend,
    pub _m: Manifests,
}

/// One API whose defaultAuthorizer is a JWT authorizer on `idp`; `/public/{rest+}` is public,
/// `/admin` needs scope `admin`, `/orders/{id}` any valid token.
pub async fn jwt_setup(keys: &[&SigningKey], key_source: &str) -> JwtSetup {
    let idp = Idp::start(keys).await;
    let (public, admin, orders) =
        (Backend::start("public").await, Backend::start("admin").await, Backend::start("orders").await);
    let m = Manifests::new();
    let source = match key_source {
        "uri" => format!("jwksUri: {}", idp.jwks_uri()),
        "discovery" => "discovery: true".to_string(),
        other => other.to_string(),
    };
    m.write(
        "api.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: shop, namespace: t}}\n\
             spec: {{defaultAuthorizer: {{name: idp}}}}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: idp, namespace: t}}\nspec:\n  \
             jwt: {{issuer: \"{}\", audiences: [shop], {source}, claimsToHeaders: {{sub: x-user-id, tenant: x-tenant}}}}\n",
            idp.issuer()
        ),
    );
    let routes = [
        route_yaml("t", "public", "shop", "  match: {path: \"/public/{rest+}\"}\n  authorization: {type: None}\n  integration: {service: {name: public, port: 80}}\n"),
        route_yaml("t", "admin", "shop", "  match: {path: /admin}\n  authorization: {scopes: [admin]}\n  integration: {service: {name: admin, port: 80}}\n"),
        route_yaml("t", "orders", "shop", "  match: {path: \"/orders/{id}\"}\n  integration: {service: {name: orders, port: 80}}\n"),
    ]
    .join("---\n");
    m.write("routes.yaml", &routes);
    m.write(
        "svc.yaml",
        &[
            service_yaml("t", "public", 80, &[public.addr]),
            service_yaml("t", "admin", 80, &[admin.addr]),
            service_yaml("t", "orders", 80, &[orders.addr]),
        ]
        .join("---\n"),
    );
    let gateway = Tollgate::start(m.path()).await;
    JwtSetup { gateway, idp, _public: public, admin, orders, _m: m }
}

pub async fn get(s: &JwtSetup, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = client().get(s.gateway.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn rsa_ec_and_ed25519_tokens_are_accepted_and_identity_flows() {
    let rsa = SigningKey::rsa();
    let ps = SigningKey::generate("rsa", Algorithm::PS256, "ps-1");
    let ec = SigningKey::generate("ec", Algorithm::ES256, "ec-1");
    let ed = SigningKey::generate("ed", Algorithm::EdDSA, "ed-1");
    let s = jwt_setup(&[&rsa, &ps, &ec, &ed], "uri").await;
    let iss = s.idp.issuer();
    for key in [&rsa, &ps, &ec, &ed] {
        let token = key
            .sign(&json!({"iss": iss, "aud": ["other", "shop"], "sub": format!("user-{}", key.kid),
            "tenant": "acme", "exp": now() + 600}));
        let (status, body) = get(&s, "/orders/7", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{:?}: {body}", key.alg);
        assert_eq!(body["headers"]["x-user-id"], format!("user-{}", key.kid));
        assert_eq!(body["headers"]["x-tenant"], "acme");
        // The token itself still reaches the backend (it is the backend's to use or ignore).
        assert!(body["headers"]["authorization"].as_str().unwrap().starts_with("Bearer "));
    }
    // The principal is logged, never the token.
    let line = s.gateway.wait_for_log(|l| l["principal"] == "user-ec-1").await;
    assert_eq!(line["route"], "t/orders");
    let logs = serde_json::to_string(&s.gateway.access_log()).unwrap();
    assert!(!logs.contains("eyJ"), "a token leaked into the access log");
    // Without a token: 401 with a Bearer challenge and a JSON body.
    let response = client().get(s.gateway.url("/orders/7")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().starts_with("Unauthorized"), "{body}");
    assert!(body["requestId"].is_string());
    assert_eq!(s.orders.hits(), 4);
    // Public route needs nothing.
    assert_eq!(get(&s, "/public/x", None).await.0, StatusCode::OK);
    // Denials are counted by reason.
    assert!(
        metric(
            &s.gateway,
            "tollgate_auth_denied_total",
            &["authorizer=\"t/idp\"", "reason=\"missing_token\""]
        )
        .await
            >= 1.0
    );
    assert!(
        metric(&s.gateway, "tollgate_authorizer_duration_seconds_count", &["authorizer=\"t/idp\""]).await
            >= 4.0
    );
}

#[tokio::test]
async fn scopes_gate_routes_with_403() {
    let rsa = SigningKey::rsa();
    let s = jwt_setup(&[&rsa], "uri").await;
    let iss = s.idp.issuer();
    let reader = rsa.sign(&claims(&iss, "u1", "orders:read"));
    let (status, body) = get(&s, "/admin", Some(&reader)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(s.admin.hits(), 0);
    let admin = rsa.sign(&claims(&iss, "u2", "orders:read admin"));
    assert_eq!(get(&s, "/admin", Some(&admin)).await.0, StatusCode::OK);
    // `scp` arrays work too.
    let scp = rsa.sign(&json!({"iss": iss, "aud": "shop", "sub": "u3", "scp": ["admin"], "exp": now() + 60}));
    assert_eq!(get(&s, "/admin", Some(&scp)).await.0, StatusCode::OK);
    assert!(
        metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"insufficient_scope\""]).await >= 1.0
    );
    // The refused caller is identified in the access log.
    let refused = s.gateway.wait_for_log(|l| l["status"] == 403 && l["principal"] == "u1").await;
    assert_eq!(refused["path"], "/admin");
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys() {
    let ec = SigningKey::generate("ec", Algorithm::ES256, "ec-d");
    let s = jwt_setup(&[&ec], "discovery").await;
    let token = ec.sign(&claims(&s.idp.issuer(), "d1", ""));
    let (status, body) = get(&s, "/orders/1", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.idp.discovery_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(s.idp.jwks_hits(), 1);
    // Cached: no further fetches.
    for i in 0..5 {
        let token = ec.sign(&claims(&s.idp.issuer(), &format!("d{i}"), ""));
        assert_eq!(get(&s, "/orders/1", Some(&token)).await.0, StatusCode::OK);
    }
    assert_eq!(s.idp.jwks_hits(), 1);
}

#[tokio::test]
async fn keys_from_a_secret() {
    let ed = SigningKey::generate("ed", Algorithm::EdDSA, "ed-s");
    let jwks = json!({"keys": [ed.jwk]}).to_string();
    let s = jwt_setup(&[], "jwksSecretRef: {name: idp-keys}").await;
    s._m.write(
        "secret.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: idp-keys, namespace: t}}\nstringData:\n  jwks.json: '{jwks}'\n"),
    );
    let token = ed.sign(&claims(&s.idp.issuer(), "s1", ""));
    eventually("the Secret's keys are served", || async {
        get(&s, "/orders/1", Some(&token)).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(s.idp.jwks_hits(), 0);
}

#[tokio::test]
async fn key_rotation_without_restart() {
    let old = SigningKey::rsa();
    let new = SigningKey::generate("ec", Algorithm::ES256, "ec-new");
    let s = jwt_setup(&[&old], "uri").await;
    let iss = s.idp.issuer();
    let first = old.sign(&claims(&iss, "a", ""));
    assert_eq!(get(&s, "/orders/1", Some(&first)).await.0, StatusCode::OK);
    // The IdP rotates: the new key appears, the old one is removed.
    s.idp.publish(&[&new]);
    let new_token = new.sign(&claims(&iss, "b", ""));
    eventually("a token signed with the new key is accepted", || async {
        get(&s, "/orders/1", Some(&new_token)).await.0 == StatusCode::OK
    })
    .await;
    // Tokens signed with the removed key are refused, even one verified (and cached) before.
    let (status, body) = get(&s, "/orders/1", Some(&old.sign(&claims(&iss, "c", "")))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(get(&s, "/orders/1", Some(&first)).await.0, StatusCode::UNAUTHORIZED);
    assert!(s.idp.jwks_hits() <= 4, "JWKS fetched {} times", s.idp.jwks_hits());
}

#[tokio::test]
async fn idp_down_during_rotation_keeps_cached_keys() {
    let k1 = SigningKey::rsa();
    let k2 = SigningKey::generate("ed", Algorithm::EdDSA, "ed-2");
    let s = jwt_setup(&[&k1], "uri").await;
    let iss = s.idp.issuer();
    assert_eq!(get(&s, "/orders/1", Some(&k1.sign(&claims(&iss, "a", "")))).await.0, StatusCode::OK);
    s.idp.down.store(true, std::sync::atomic::Ordering::SeqCst);
    s.idp.publish(&[&k1, &k2]);
    // A token with a kid the proxy has not seen triggers a refetch, which fails...
    let k2_token = k2.sign(&claims(&iss, "b", ""));
    eventually("the refetch was attempted", || async {
        let (status, _) = get(&s, "/orders/1", Some(&k2_token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        s.idp.jwks_hits() >= 2
    })
    .await;
    // ...and tokens of the cached key (new ones, not from the token cache) keep working.
    for i in 0..3 {
        let (status, body) = get(&s, "/orders/1", Some(&k1.sign(&claims(&iss, &format!("c{i}"), "")))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The IdP comes back: the new key is picked up (after the unknown-kid refetch interval).
    s.idp.down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the new key is accepted once the IdP is back", || async {
        get(&s, "/orders/1", Some(&k2_token)).await.0 == StatusCode::OK
    })
    .await;
}
