//! HTTP/2 (h2c and TLS with ALPN), TLS termination with SNI certificate choice.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

struct Setup {
    gateway: Tollgate,
    pki: TestPki,
    _backend: Backend,
    _m: Manifests,
}

async fn setup() -> Setup {
    let backend = Backend::start("b").await;
    let pki = TestPki::new();
    let m = Manifests::new();
    let api = |name: &str, host: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  \
             hostnames: [{host}]\n  tls: {{certificateRefs: [{{name: {name}-cert}}]}}\n"
        )
    };
    m.write(
        "a.yaml",
        &format!("{}---\n{}", api("a", "a.tls.test"), pki.secret_yaml("t", "a-cert", &["a.tls.test"])),
    );
    m.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            api("b", "\"*.b.tls.test\""),
            pki.secret_yaml("t", "b-cert", &["*.b.tls.test"])
        ),
    );
    let routes = [
        route_yaml(
            "t",
            "who-a",
            "a",
            "  match: {path: /who}\n  integration: {mock: {status: 200, body: a}}\n",
        ),
        route_yaml(
            "t",
            "who-b",
            "b",
            "  match: {path: /who}\n  integration: {mock: {status: 200, body: b}}\n",
        ),
        route_yaml(
            "t",
            "echo",
            "a",
            "  match: {path: /echo}\n  integration: {service: {name: echo, port: 80}}\n",
        ),
    ]
    .join("---\n");
    m.write("routes.yaml", &routes);
    m.write("svc.yaml", &service_yaml("t", "echo", 80, &[backend.addr]));
    let gateway = Tollgate::start(m.path()).await;
    Setup { gateway, pki, _backend: backend, _m: m }
}

fn tls_client(s: &Setup, http2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(s.pki.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("a.tls.test", s.gateway.tls)
        .resolve("x.b.tls.test", s.gateway.tls)
        .resolve("unknown.test", s.gateway.tls);
    if !http2 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_negotiates_http2() {
    let s = setup().await;
    let port = s.gateway.tls.port();
    let c = tls_client(&s, true);
    let a = c.get(format!("https://a.tls.test:{port}/who")).send().await.unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(a.version(), reqwest::Version::HTTP_2, "ALPN h2");
    assert_eq!(a.text().await.unwrap(), "a");
    let b = c.get(format!("https://x.b.tls.test:{port}/who")).send().await.unwrap();
    assert_eq!(b.text().await.unwrap(), "b", "wildcard certificate for *.b.tls.test");

    let h1 = tls_client(&s, false).get(format!("https://a.tls.test:{port}/echo")).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    let body: Value = h1.json().await.unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");

    let unknown = c.get(format!("https://unknown.test:{port}/who")).send().await;
    assert!(unknown.is_err(), "no certificate for an unknown SNI name: the handshake fails");
}

#[tokio::test]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let s = setup().await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .http2_prior_knowledge()
        .resolve("a.tls.test", s.gateway.http)
        .build()
        .unwrap();
    let r = c.get(format!("http://a.tls.test:{}/echo", s.gateway.http.port())).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], "HTTP/1.1", "upstream requests are HTTP/1.1");
    assert_eq!(
        body["headers"]["host"],
        format!("a.tls.test:{}", s.gateway.http.port()),
        ":authority becomes Host"
    );
}

#[tokio::test]
async fn curl_speaks_to_the_gateway() {
    // The same checks with curl, the client most users start with.
    let s = setup().await;
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(["--resolve", &format!("a.tls.test:{}:127.0.0.1", s.gateway.http.port())])
        .arg(format!("http://a.tls.test:{}/who", s.gateway.http.port()))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    let ca = s._m.write("ca.pem.txt", &s.pki.ca_pem);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("a.tls.test:{}:127.0.0.1", s.gateway.tls.port())])
        .arg(format!("https://a.tls.test:{}/who", s.gateway.tls.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a", "{}", String::from_utf8_lossy(&out.stderr));
}
