//! Helpers for the authorization tests: real signing keys (RSA from openssl, EC P-256 and
//! Ed25519), JWTs signed with them, a loopback identity provider serving JWKS and OIDC
//! discovery (counting its hits, able to go down), and a loopback external authorizer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key PEM (RSA only; for the HS256-with-public-key attack).
    pub public_pem: Option<String>,
}

fn openssl(args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (installed by .ci/run)");
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn private_pem(kind: &str) -> String {
    match kind {
        "rsa" => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], None),
        "ec" => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], None),
        "ed" => openssl(&["genpkey", "-algorithm", "ed25519"], None),
        _ => unreachable!(),
    }
}

impl SigningKey {
    /// A fresh key of `kind` (`rsa`, `ec`, `ed`) for `alg`, published under `kid`.
    pub fn generate(kind: &str, alg: Algorithm, kid: &str) -> SigningKey {
        let pem = private_pem(kind);
        let encoding = match kind {
            "rsa" => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            "ec" => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        let public_pem = (kind == "rsa").then(|| openssl(&["pkey", "-pubout"], Some(&pem)));
        SigningKey {
            alg,
            kid: kid.to_string(),
            encoding,
            jwk: serde_json::to_value(jwk).unwrap(),
            public_pem,
        }
    }

    /// A shared 2048-bit RSA key (RS256, kid `rsa-1`); generating RSA keys is slow.
    pub fn rsa() -> SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate("rsa", Algorithm::RS256, "rsa-1")).clone()
    }

    /// Signs `claims` with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// Signs with another algorithm of the same key family (RS256 key used for PS256, ...).
    pub fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Standard claims for `issuer`, audience `shop`, valid for an hour.
pub fn claims(issuer: &str, sub: &str, scope: &str) -> Value {
    json!({"iss": issuer, "aud": "shop", "sub": sub, "scope": scope, "iat": now(), "exp": now() + 3600})
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A loopback identity provider: `/jwks.json` and `/.well-known/openid-configuration`.
pub struct Idp {
    pub addr: SocketAddr,
    pub jwks: Arc<Mutex<Value>>,
    pub jwks_hits: Arc<AtomicUsize>,
    pub discovery_hits: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    pub async fn start(keys: &[&SigningKey]) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Idp {
            addr,
            jwks: Arc::new(Mutex::new(Value::Null)),
            jwks_hits: Arc::default(),
            discovery_hits: Arc::default(),
            down: Arc::default(),
            task: tokio::spawn(async {}),
        };
        idp.publish(keys);
        let (jwks, jwks_hits, discovery_hits, down) =
            (idp.jwks.clone(), idp.jwks_hits.clone(), idp.discovery_hits.clone(), idp.down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (jwks, jwks_hits, discovery_hits, down) =
                    (jwks.clone(), jwks_hits.clone(), discovery_hits.clone(), down.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (jwks, jwks_hits, discovery_hits, down) =
                            (jwks.clone(), jwks_hits.clone(), discovery_hits.clone(), down.clone());
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/jwks.json" => {
                                    jwks_hits.fetch_add(1, Ordering::SeqCst);
                                    if down.load(Ordering::SeqCst) {
                                        (StatusCode::SERVICE_UNAVAILABLE, "down".to_string())
                                    } else {
                                        (StatusCode::OK, jwks.lock().unwrap().to_string())
                                    }
                                }
                                "/.well-known/openid-configuration" => {
                                    discovery_hits.fetch_add(1, Ordering::SeqCst);
                                    let issuer = format!("http://{addr}");
                                    let doc =
                                        json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")});
                                    (StatusCode::OK, doc.to_string())
                                }
                                _ => (StatusCode::NOT_FOUND, String::new()),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let mut idp = idp;
        idp.task.abort();
        idp.task = task;
        idp
    }

    /// The issuer URL (also the OIDC discovery base).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Replaces the published key set.
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.jwks.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback external authorizer. `Authorization` decides: `Bearer good` allows (principal
/// `user-1`, context `{tenant: acme, tier: 2}`), `Bearer bad` denies, `Bearer slow` answers after
/// 3 s, `Bearer boom` answers 500, `Bearer junk` answers non-JSON. It records every request body.
pub struct ExternalAuthz {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub last: Arc<Mutex<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl ExternalAuthz {
    pub async fn start() -> ExternalAuthz {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<AtomicUsize> = Arc::default();
        let last: Arc<Mutex<Value>> = Arc::default();
        let (h, l) = (hits.clone(), last.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (h, l) = (h.clone(), l.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (h, l) = (h.clone(), l.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            *l.lock().unwrap() = doc.clone();
                            let auth = doc["headers"]["authorization"].as_str().unwrap_or("").to_string();
                            let (status, answer) = match auth.as_str() {
                                "Bearer good" => (
                                    200,
                                    json!({"allow": true, "principalId": "user-1", "context": {"tenant": "acme", "tier": 2}})
                                        .to_string(),
                                ),
                                "Bearer bad" => (200, json!({"allow": false}).to_string()),
                                "Bearer slow" => {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                    (200, json!({"allow": true}).to_string())
                                }
                                "Bearer boom" => (500, "oops".to_string()),
                                _ => (200, "not json".to_string()),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(answer)));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ExternalAuthz { addr, hits, last, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for ExternalAuthz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of a Prometheus sample whose line contains every fragment (0 when absent).
pub async fn metric(gateway: &crate::support::Tollgate, name: &str, fragments: &[&str]) -> f64 {
    let text = crate::support::client()
        .get(gateway.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && fragments.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
