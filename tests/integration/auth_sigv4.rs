//! SigV4 with signatures made by a real AWS SDK signer (botocore, from Python): header form,
//! presigned URLs, tampered body, wrong secret, stale date, wrong scope.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::auth_support::*;
use crate::support::*;

const AK: &str = "AKIDTOLLGATETEST01";
const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzTESTKEY";

/// Signs with botocore; returns `{url, headers}` to send.
fn botocore_sign(args: Value) -> Value {
    let script = r#"
import datetime, json, sys
import botocore.auth
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
a = json.loads(sys.argv[1])
if a.get("skew_minutes"):
    real = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *x, **k: real(*x, **k) - datetime.timedelta(minutes=a["skew_minutes"])
req = AWSRequest(method=a["method"], url=a["url"], data=a.get("body", "").encode(), headers=a.get("headers", {}))
creds = Credentials(a["ak"], a["sk"])
if a.get("presign"):
    SigV4QueryAuth(creds, a.get("service", "execute-api"), a["region"], expires=a.get("expires", 300)).add_auth(req)
else:
    SigV4Auth(creds, a.get("service", "execute-api"), a["region"]).add_auth(req)
print(json.dumps({"url": req.url, "headers": dict(req.headers.items())}))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &args.to_string()])
        .output()
        .expect("python3 with botocore (installed by .ci/run)");
    assert!(out.status.success(), "botocore failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Setup {
    gateway: Tollgate,
    backend: Backend,
    _m: Manifests,
}

async fn setup() -> Setup {
    let backend = Backend::start("app").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &format!(
            "{}---\napiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: iam, namespace: t}}\nspec:\n  \
             sigv4: {{region: eu-west-1, credentialSelector: {{matchLabels: {{team: partners}}}}}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: partner-a, namespace: t, labels: {{team: partners}}}}\n\
             type: tollgate.dev/access-key\nstringData: {{accessKeyId: {AK}, secretAccessKey: \"{SK}\"}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: other, namespace: t, labels: {{team: other}}}}\n\
             type: tollgate.dev/access-key\nstringData: {{accessKeyId: AKIDOTHER, secretAccessKey: other-secret}}\n---\n{}",
            simple_api("t", "shop"),
            route_yaml("t", "orders", "shop", "  match: {path: \"/orders/{id+}\"}\n  authorization: {authorizerRef: {name: iam}}\n  integration: {service: {name: app, port: 80}}\n"),
        ),
    );
    m.write("svc.yaml", &service_yaml("t", "app", 80, &[backend.addr]));
    let gateway = Tollgate::start(m.path()).await;
    Setup { gateway, backend, _m: m }
}

async fn send(method: &str, signed: &Value, body: &str) -> (StatusCode, Value) {
    let mut request = client().request(method.parse().unwrap(), signed["url"].as_str().unwrap());
    for (name, value) in signed["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let response = request.body(body.to_string()).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn sign(s: &Setup, method: &str, path: &str, body: &str, extra: Value) -> Value {
    let mut args = json!({"method": method, "url": s.gateway.url(path), "body": body, "ak": AK, "sk": SK,
        "region": "eu-west-1", "headers": {"content-type": "application/json"}});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    botocore_sign(args)
}

#[tokio::test]
async fn botocore_signed_requests_are_accepted() {
    let s = setup().await;
    let body = r#"{"item": 1, "note": "a b"}"#;
    let signed = sign(&s, "POST", "/orders/a%20b/7?z=1&a=x%2Fy&a=2", body, json!({}));
    let (status, echoed) = send("POST", &signed, body).await;
    assert_eq!(status, StatusCode::OK, "{echoed}");
    assert_eq!(echoed["body"], body);
    let signed = sign(&s, "GET", "/orders/list", "", json!({}));
    assert_eq!(send("GET", &signed, "").await.0, StatusCode::OK);
    let line = s.gateway.wait_for_log(|l| l["route"] == "t/orders" && l["status"] == 200).await;
    assert_eq!(line["principal"], AK);
    // The secret never shows in /config.
    let config = client().get(s.gateway.admin_url("/config")).send().await.unwrap().text().await.unwrap();
    assert!(!config.contains(SK), "the secret access key leaked into /config");
}

#[tokio::test]
async fn tampered_body_is_refused() {
    let s = setup().await;
    let signed = sign(&s, "POST", "/orders/1", r#"{"amount": 1}"#, json!({}));
    let (status, body) = send("POST", &signed, r#"{"amount": 1000}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Tampered path and query too.
    let signed = sign(&s, "GET", "/orders/1?a=1", "", json!({}));
    let mut moved = signed.clone();
    moved["url"] = json!(s.gateway.url("/orders/2?a=1"));
    assert_eq!(send("GET", &moved, "").await.0, StatusCode::FORBIDDEN);
    moved["url"] = json!(s.gateway.url("/orders/1?a=2"));
    assert_eq!(send("GET", &moved, "").await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.backend.hits(), 0);
}

#[tokio::test]
async fn wrong_secret_unknown_key_and_wrong_scope_are_refused() {
    let s = setup().await;
    let signed = sign(&s, "GET", "/orders/1", "", json!({"sk": "not-the-secret"}));
    assert_eq!(send("GET", &signed, "").await.0, StatusCode::FORBIDDEN);
    // A key whose Secret the credentialSelector does not select.
    let signed = sign(&s, "GET", "/orders/1", "", json!({"ak": "AKIDOTHER", "sk": "other-secret"}));
    assert_eq!(send("GET", &signed, "").await.0, StatusCode::FORBIDDEN);
    let signed = sign(&s, "GET", "/orders/1", "", json!({"region": "us-east-1"}));
    assert_eq!(send("GET", &signed, "").await.0, StatusCode::FORBIDDEN);
    let signed = sign(&s, "GET", "/orders/1", "", json!({"service": "s3"}));
    assert_eq!(send("GET", &signed, "").await.0, StatusCode::FORBIDDEN);
    // Unsigned: 401.
    assert_eq!(
        client().get(s.gateway.url("/orders/1")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.backend.hits(), 0);
    assert!(
        metric(
            &s.gateway,
            "tollgate_auth_denied_total",
            &["authorizer=\"t/iam\"", "reason=\"bad_signature\""]
        )
        .await
            >= 1.0
    );
    assert!(
        metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"unknown_access_key\""]).await >= 1.0
    );
}

#[tokio::test]
async fn stale_date_is_refused() {
    let s = setup().await;
    let signed = sign(&s, "GET", "/orders/1", "", json!({"skew_minutes": 10}));
    let (status, body) = send("GET", &signed, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"stale_signature\""]).await >= 1.0);
    // Four minutes off is within the allowed skew.
    let signed = sign(&s, "GET", "/orders/1", "", json!({"skew_minutes": 4}));
    assert_eq!(send("GET", &signed, "").await.0, StatusCode::OK);
}

#[tokio::test]
async fn presigned_urls_work_until_they_expire() {
    let s = setup().await;
    let presigned = sign(
        &s,
        "GET",
        "/orders/report?format=csv",
        "",
        json!({"presign": true, "expires": 300, "headers": {}}),
    );
    let url = presigned["url"].as_str().unwrap().to_string();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Tampering with any parameter breaks it.
    let response = client().get(url.replace("format=csv", "format=pdf")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Signed 20 minutes ago with a 5-minute lifetime: expired.
    let old = sign(
        &s,
        "GET",
        "/orders/report",
        "",
        json!({"presign": true, "expires": 300, "skew_minutes": 20, "headers": {}}),
    );
    let response = client().get(old["url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(metric(&s.gateway, "tollgate_auth_denied_total", &["reason=\"expired\""]).await >= 1.0);
}
