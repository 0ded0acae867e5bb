//! The attack suite: one test per attack on the JWT authorizer and on route matching.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

use crate::auth_jwt::{JwtSetup, get, jwt_setup};
use crate::auth_support::*;
use crate::support::*;

async fn setup() -> (JwtSetup, SigningKey) {
    let key = SigningKey::rsa();
    (jwt_setup(&[&key], "uri").await, key)
}

async fn refused(s: &JwtSetup, token: &str) {
    let before = s.orders.hits();
    let (status, body) = get(s, "/orders/1", Some(token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(s.orders.hits(), before, "a refused request reached the backend");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (s, _) = setup().await;
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(claims(&s.idp.issuer(), "admin", "admin").to_string().as_bytes());
    refused(&s, &format!("{header}.{payload}.")).await;
    refused(&s, &format!("{header}.{payload}")).await;
    let header = b64(br#"{"alg":"None","kid":"rsa-1"}"#);
    refused(&s, &format!("{header}.{payload}.")).await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (s, key) = setup().await;
    let public_pem = key.public_pem.clone().unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let claims = claims(&s.idp.issuer(), "admin", "admin");
    for secret in [public_pem.as_bytes().to_vec(), public_pem.trim().as_bytes().to_vec()] {
        let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        refused(&s, &token).await;
    }
    // The JWK pins RS256: the same RSA key signing PS256 or RS512 is refused too.
    refused(&s, &key.sign_as(Algorithm::PS256, &claims)).await;
    refused(&s, &key.sign_as(Algorithm::RS512, &claims)).await;
    // Same without a kid.
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    refused(&s, &token).await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let (s, key) = setup().await;
    let token = key.sign(&json!({"iss": s.idp.issuer(), "aud": "shop", "sub": "u", "exp": now() - 120}));
    refused(&s, &token).await;
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"expired\""]).await >= 1.0);
    // And a token without exp at all.
    refused(&s, &key.sign(&json!({"iss": s.idp.issuer(), "aud": "shop", "sub": "u"}))).await;
}

#[tokio::test]
async fn not_yet_valid_token_is_refused() {
    let (s, key) = setup().await;
    let token = key.sign(
        &json!({"iss": s.idp.issuer(), "aud": "shop", "sub": "u", "nbf": now() + 600, "exp": now() + 3600}),
    );
    refused(&s, &token).await;
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"not_yet_valid\""]).await >= 1.0);
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let (s, key) = setup().await;
    refused(&s, &key.sign(&claims("https://evil.example", "u", ""))).await;
    refused(&s, &key.sign(&json!({"aud": "shop", "sub": "u", "exp": now() + 60}))).await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let (s, key) = setup().await;
    refused(&s, &key.sign(&json!({"iss": s.idp.issuer(), "aud": "other", "sub": "u", "exp": now() + 60})))
        .await;
    refused(&s, &key.sign(&json!({"iss": s.idp.issuer(), "sub": "u", "exp": now() + 60}))).await;
}

#[tokio::test]
async fn missing_scope_is_forbidden() {
    let (s, key) = setup().await;
    let (status, _) = get(&s, "/admin", Some(&key.sign(&claims(&s.idp.issuer(), "u", "read write")))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A scope that merely contains the required one as a substring does not count.
    let (status, _) = get(&s, "/admin", Some(&key.sign(&claims(&s.idp.issuer(), "u", "superadmin")))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(s.admin.hits(), 0);
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (s, key) = setup().await;
    let token = key.sign(&claims(&s.idp.issuer(), "alice", ""));
    // Verified once (and cached), then the payload is swapped, keeping the signature.
    assert_eq!(get(&s, "/orders/1", Some(&token)).await.0, StatusCode::OK);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64(claims(&s.idp.issuer(), "admin", "admin").to_string().as_bytes());
    refused(&s, &format!("{}.{forged}.{}", parts[0], parts[2])).await;
    // Flipping one signature character too.
    let mut sig = parts[2].to_string();
    let last = sig.pop().unwrap();
    sig.push(if last == 'A' { 'B' } else { 'A' });
    refused(&s, &format!("{}.{}.{sig}", parts[0], parts[1])).await;
}

#[tokio::test]
async fn unknown_kid_flood_does_not_hammer_the_idp() {
    let (s, key) = setup().await;
    assert_eq!(
        get(&s, "/orders/1", Some(&key.sign(&claims(&s.idp.issuer(), "u", "")))).await.0,
        StatusCode::OK
    );
    let before = s.idp.jwks_hits();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("bogus-{i}"));
        let token = jsonwebtoken::encode(&header, &claims(&s.idp.issuer(), "u", ""), &key.encoding).unwrap();
        let url = s.gateway.url("/orders/1");
        tasks.push(tokio::spawn(async move {
            client().get(url).bearer_auth(token).send().await.unwrap().status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let fetched = s.idp.jwks_hits() - before;
    assert!(fetched <= 1, "200 unknown kids caused {fetched} JWKS fetches");
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"unknown_key\""]).await >= 200.0);
}

#[tokio::test]
async fn oversized_token_is_refused() {
    let (s, key) = setup().await;
    let big = "x".repeat(20 * 1024);
    let token =
        key.sign(&json!({"iss": s.idp.issuer(), "aud": "shop", "sub": "u", "exp": now() + 60, "pad": big}));
    refused(&s, &token).await;
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"token_too_large\""]).await >= 1.0);
}

#[tokio::test]
async fn forged_claim_headers_are_stripped() {
    let (s, key) = setup().await;
    // On a public route of the same API the client cannot inject them either.
    let response = client()
        .get(s.gateway.url("/public/x"))
        .header("x-user-id", "admin")
        .header("x-tenant", "evil")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["headers"]["x-user-id"].is_null(), "{body}");
    assert!(body["headers"]["x-tenant"].is_null(), "{body}");
    // On a protected route the values come from the verified token only.
    let token = key.sign(&claims(&s.idp.issuer(), "alice", ""));
    let response = client()
        .get(s.gateway.url("/orders/1"))
        .bearer_auth(&token)
        .header("x-user-id", "admin")
        .header("X-Tenant", "evil")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["headers"]["x-user-id"], "alice");
    assert!(body["headers"]["x-tenant"].is_null(), "the token has no tenant claim: {body}");
}

#[tokio::test]
async fn path_tricks_cannot_reach_a_protected_route_through_a_public_one() {
    let (s, _) = setup().await;
    let tricks = [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "//admin",
        "/public/..//admin",
        "/public/./../admin",
        "/public/%2e%2e%2fadmin",
        "/public/..%2fadmin",
        "/public/..%5cadmin",
        "/public/..\\admin",
        "/ADMIN",
        "/Admin",
        "/%61dmin",
        "/admin/",
        "/admin;public",
        "/admin%00",
        "/public/%252e%252e/admin",
        "/./admin",
        "/public/../orders/1",
    ];
    for path in tricks {
        let (status, text) = raw_get(s.gateway.http, "shop", path).await;
        let backend =
            text.lines().find_map(|l| l.strip_prefix("x-backend: ")).unwrap_or("").trim().to_string();
        assert!(
            backend != "admin" && backend != "orders",
            "{path} reached the protected backend {backend} with status {status}"
        );
        assert!(
            status == 401 || status == 404 || status == 400 || backend == "public",
            "{path}: unexpected {status}: {text}"
        );
    }
    assert_eq!(s.admin.hits(), 0);
    assert_eq!(s.orders.hits(), 0);
}
