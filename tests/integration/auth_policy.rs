//! Resource policies: allow and deny CIDRs on the client address, with X-Forwarded-For believed
//! only from trusted proxies.

use reqwest::StatusCode;

use crate::auth_support::*;
use crate::support::*;

async fn status(g: &Tollgate, host: &str, xff: Option<&str>) -> StatusCode {
    let mut request = client().get(g.url("/x")).header("host", host);
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn allow_and_deny_with_trusted_proxies() {
    let m = Manifests::new();
    let api = |name: &str, policy: &str| {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: {name}, namespace: t}}\n\
             spec: {{hostnames: [{name}.test], policy: {policy}}}\n---\n{}",
            route_yaml(
                "t",
                &format!("{name}-r"),
                name,
                "  match: {path: /x}\n  integration: {mock: {status: 200, body: ok}}\n"
            )
        )
    };
    m.write(
        "apis.yaml",
        &[
            // Behind a load balancer at 127.0.0.1: clients from 203.0.113.0/24 only, one of them banned.
            api(
                "lb",
                "{allowCidrs: [203.0.113.0/24], denyCidrs: [203.0.113.66], trustedProxies: [127.0.0.1/32]}",
            ),
            // No trusted proxies: X-Forwarded-For is never believed.
            api("direct", "{allowCidrs: [203.0.113.0/24]}"),
            // Loopback denied outright.
            api("deny", "{denyCidrs: [127.0.0.0/8]}"),
            api("open", "{allowCidrs: [127.0.0.1]}"),
        ]
        .join("---\n"),
    );
    let g = Tollgate::start(m.path()).await;
    assert_eq!(
        status(&g, "lb.test", None).await,
        StatusCode::FORBIDDEN,
        "the proxy itself is not an allowed client"
    );
    assert_eq!(status(&g, "lb.test", Some("203.0.113.9")).await, StatusCode::OK);
    assert_eq!(status(&g, "lb.test", Some("203.0.113.66")).await, StatusCode::FORBIDDEN, "deny wins");
    // The client forges an allowed address to the left; the proxy appended the real one.
    assert_eq!(status(&g, "lb.test", Some("203.0.113.9, 198.51.100.7")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&g, "lb.test", Some("198.51.100.7, 203.0.113.9")).await, StatusCode::OK);
    assert_eq!(status(&g, "lb.test", Some("garbage")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&g, "direct.test", Some("203.0.113.9")).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&g, "deny.test", None).await, StatusCode::FORBIDDEN);
    assert_eq!(status(&g, "open.test", None).await, StatusCode::OK);
    let response = client().get(g.url("/x")).header("host", "deny.test").send().await.unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().starts_with("Forbidden"), "{body}");
    assert!(
        metric(&g, "tollgate_auth_denied_total", &["api=\"t/lb\"", "reason=\"source_denied\""]).await >= 4.0
    );
    g.wait_for_log(|l| l["api"] == "t/deny" && l["status"] == 403 && l["error"] == "source_denied").await;
}
