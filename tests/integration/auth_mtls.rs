//! mTLS: client certificates from a test CA, `Require` and `Optional` modes chosen per SNI, the
//! certificate subject as principal, and no way around it through another SNI name or the plain
//! listener.

use reqwest::StatusCode;

use crate::support::*;

struct Setup {
    gateway: Tollgate,
    server_pki: TestPki,
    client_pki: TestPki,
    _m: Manifests,
}

async fn setup() -> Setup {
    let server_pki = TestPki::new();
    let client_pki = TestPki::new();
    let m = Manifests::new();
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let api = |name: &str, validation: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  \
             hostnames: [{name}.test]\n  tls: {{certificateRefs: [{{name: {name}-cert}}]{validation}}}\n---\n{}---\n{}",
            server_pki.secret_yaml("t", &format!("{name}-cert"), &[&format!("{name}.test")]),
            route_yaml(
                "t",
                &format!("{name}-who"),
                name,
                "  match: {path: /who}\n  integration: {mock: {status: 200, body: ok}}\n"
            ),
        )
    };
    m.write(
        "apis.yaml",
        &[
            api("strict", ", clientValidation: {caCertificateRef: {name: partners-ca}}"),
            api("relaxed", ", clientValidation: {caCertificateRef: {name: partners-ca}, mode: Optional}"),
            api("plain", ""),
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: partners-ca, namespace: t}}\nstringData:\n  ca.crt: |\n{}",
                indent(&client_pki.ca_pem)
            ),
        ]
        .join("---\n"),
    );
    let gateway = Tollgate::start(m.path()).await;
    Setup { gateway, server_pki, client_pki, _m: m }
}

fn tls_client(s: &Setup, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(s.server_pki.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("strict.test", s.gateway.tls)
        .resolve("relaxed.test", s.gateway.tls)
        .resolve("plain.test", s.gateway.tls);
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn url(s: &Setup, host: &str) -> String {
    format!("https://{host}:{}/who", s.gateway.tls.port())
}

#[tokio::test]
async fn require_mode_needs_a_certificate_from_the_ca() {
    let s = setup().await;
    let partner = s.client_pki.client_leaf("partner-a", "Partners");
    let with_cert = tls_client(&s, Some(partner));
    let response = with_cert.get(url(&s, "strict.test")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let line = s.gateway.wait_for_log(|l| l["api"] == "t/strict" && l["status"] == 200).await;
    let principal = line["principal"].as_str().unwrap();
    assert!(principal.contains("CN=partner-a") && principal.contains("O=Partners"), "{principal}");
    // No certificate: the handshake is refused.
    assert!(tls_client(&s, None).get(url(&s, "strict.test")).send().await.is_err());
    // A certificate from another CA (the server CA issues client-looking certs too): refused.
    let stranger = s.server_pki.client_leaf("stranger", "Elsewhere");
    assert!(tls_client(&s, Some(stranger)).get(url(&s, "strict.test")).send().await.is_err());
}

#[tokio::test]
async fn optional_mode_verifies_when_presented() {
    let s = setup().await;
    let anonymous = tls_client(&s, None).get(url(&s, "relaxed.test")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    let partner = s.client_pki.client_leaf("partner-b", "Partners");
    let response = tls_client(&s, Some(partner)).get(url(&s, "relaxed.test")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let line = s.gateway.wait_for_log(|l| l["api"] == "t/relaxed" && l["principal"].is_string()).await;
    assert!(line["principal"].as_str().unwrap().contains("CN=partner-b"));
    // A certificate that does not verify is refused even in Optional mode.
    let stranger = s.server_pki.client_leaf("stranger", "Elsewhere");
    assert!(tls_client(&s, Some(stranger)).get(url(&s, "relaxed.test")).send().await.is_err());
    // APIs without client validation never ask.
    assert_eq!(
        tls_client(&s, None).get(url(&s, "plain.test")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn no_way_around_through_another_sni_or_the_plain_listener() {
    let s = setup().await;
    // TLS to plain.test (no client certificate asked), then HTTP/1.1 with Host: strict.test.
    let http1 = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(s.server_pki.ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("plain.test", s.gateway.tls)
        .http1_only()
        .build()
        .unwrap();
    let response = http1.get(url(&s, "plain.test")).header("host", "strict.test").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // The plain-HTTP listener.
    let (status, text) = raw_get(s.gateway.http, "strict.test", "/who").await;
    assert_eq!(status, 403, "{text}");
    assert!(raw_json(&text)["message"].as_str().unwrap().contains("client certificate"));
    // Optional-mode APIs stay reachable without one.
    assert_eq!(raw_get(s.gateway.http, "relaxed.test", "/who").await.0, 200);
}
