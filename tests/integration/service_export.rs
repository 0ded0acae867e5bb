//! ServiceExports end to end: cross-namespace access only through an export that allows the API,
//! upstream mutual TLS from Secrets, a DNS name, least-request and consistent-hash balancing, and
//! outlier ejection — the real binary, real backends.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::support::*;

fn export_yaml(name: &str, spec_body: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: ServiceExport\nmetadata: {{name: {name}, namespace: orders-team}}\n\
         spec:\n{spec_body}"
    )
}

fn export_route(name: &str, path: &str, export: &str) -> String {
    route_yaml(
        "shop",
        name,
        "shop",
        &format!(
            "  match: {{path: {path}}}\n  integration: {{serviceExport: {{name: {export}, namespace: orders-team}}}}\n"
        ),
    )
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn cross_namespace_access_only_through_an_export_that_allows_the_api() {
    let first = Backend::start("orders-1").await;
    let second = Backend::start("orders-2").await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write("service.yaml", &service_yaml("orders-team", "orders", 8080, &[first.addr]));
    m.write(
        "exports.yaml",
        &[
            export_yaml(
                "orders",
                "  service: {name: orders, port: 8080}\n  allowedApis: [{namespace: shop, name: shop}]\n",
            ),
            export_yaml(
                "admin-only",
                "  service: {name: orders, port: 8080}\n  allowedApis: [{namespace: shop, name: admin}]\n",
            ),
        ]
        .join("---\n"),
    );
    m.write(
        "routes.yaml",
        &[
            export_route("orders", "/orders", "orders"),
            export_route("sneaky", "/sneaky", "admin-only"),
            // A Service reference always resolves in the Route's own namespace: no way around.
            route_yaml(
                "shop",
                "direct",
                "shop",
                "  match: {path: /direct}\n  integration: {service: {name: orders, port: 8080}}\n",
            ),
        ]
        .join("---\n"),
    );
    let gateway = Tollgate::start(m.path()).await;
    let client = client();

    let (status, body) = get_json(&client, &gateway.url("/orders")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server"], "orders-1");
    assert_eq!(body["path"], "/orders");
    let sneaky = client.get(gateway.url("/sneaky")).send().await.unwrap();
    assert_eq!(sneaky.status(), 404, "a Route the export does not allow is not served");
    let direct = client.get(gateway.url("/direct")).send().await.unwrap();
    assert_eq!(direct.status(), 503, "shop/orders does not exist: no cross-namespace Service reference");

    // The refusal is visible in /config and in `tollgate validate`, naming the field and the fix.
    let fix = "ServiceExport orders-team/admin-only does not allow GatewayAPI shop/shop: add {namespace: shop, \
               name: shop} to the export's spec.allowedApis";
    let config = client.get(gateway.admin_url("/config")).send().await.unwrap().text().await.unwrap();
    assert!(config.contains(fix), "{config}");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).arg("validate").arg(m.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Route/shop/sneaky: spec.integration.serviceExport: {fix}")),
        "{stdout}"
    );

    // The exported Service's endpoints keep following its EndpointSlices.
    m.write("service.yaml", &service_yaml("orders-team", "orders", 8080, &[second.addr]));
    eventually("traffic follows the new endpoint", || async {
        get_json(&client, &gateway.url("/orders")).await.1["server"] == "orders-2"
    })
    .await;
}

#[tokio::test]
async fn upstream_mutual_tls_with_ca_and_client_certificate_from_secrets() {
    let pki = TestPki::new();
    let (addr, _task) = mtls_backend("secure", &pki).await;
    let (client_cert, client_key) = pki.client_leaf("gateway", "tollgate");
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write(
        "secrets.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: backend-ca, namespace: orders-team}}\n\
             stringData:\n  ca.crt: |\n{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: gw-client, \
             namespace: orders-team}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&pki.ca_pem),
            indent(&client_cert),
            indent(&client_key)
        ),
    );
    let target = format!("  external: {{addresses: [\"{addr}\"]}}\n  allowedApis: [{{namespace: shop}}]\n");
    m.write(
        "exports.yaml",
        &[
            export_yaml(
                "mutual",
                &format!(
                    "{target}  tls: {{sni: localhost, caCertificateRef: {{name: backend-ca}}, \
                     clientCertificateRef: {{name: gw-client}}}}\n"
                ),
            ),
            export_yaml(
                "no-client-cert",
                &format!("{target}  tls: {{sni: localhost, caCertificateRef: {{name: backend-ca}}}}\n"),
            ),
            export_yaml(
                "untrusted",
                &format!("{target}  tls: {{sni: localhost, clientCertificateRef: {{name: gw-client}}}}\n"),
            ),
        ]
        .join("---\n"),
    );
    m.write(
        "routes.yaml",
        &[
            export_route("mutual", "/mutual", "mutual"),
            export_route("no-client-cert", "/no-client-cert", "no-client-cert"),
            export_route("untrusted", "/untrusted", "untrusted"),
        ]
        .join("---\n"),
    );
    let gateway = Tollgate::start(m.path()).await;
    let client = client();

    let (status, body) = get_json(&client, &gateway.url("/mutual")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server"], "secure");
    let refused = client.get(gateway.url("/no-client-cert")).send().await.unwrap();
    assert_eq!(refused.status(), 502, "the backend requires a client certificate");
    let untrusted = client.get(gateway.url("/untrusted")).send().await.unwrap();
    assert_eq!(untrusted.status(), 502, "the test CA is not a public root");

    // The private key never shows in /config.
    let config = client.get(gateway.admin_url("/config")).send().await.unwrap().text().await.unwrap();
    assert!(!config.contains("PRIVATE KEY"), "{config}");
}

#[tokio::test]
async fn a_dns_name_is_resolved_by_the_proxy_and_names_the_host() {
    let backend = Backend::start("named").await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write(
        "export.yaml",
        &export_yaml(
            "named",
            &format!(
                "  external: {{dnsName: localhost, port: {}}}\n  allowedApis: [{{namespace: shop}}]\n",
                backend.addr.port()
            ),
        ),
    );
    m.write("route.yaml", &export_route("named", "/named", "named"));
    let gateway = Tollgate::start(m.path()).await;
    let (status, body) = get_json(&client(), &gateway.url("/named")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server"], "named");
    assert_eq!(body["headers"]["host"], format!("localhost:{}", backend.addr.port()));
}

/// A backend that holds every request until released, counting arrivals.
struct Gated {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    _task: tokio::task::JoinHandle<()>,
}

async fn gated_backend() -> Gated {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let counter = Arc::clone(&arrived);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let counter = Arc::clone(&counter);
            let released = released.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut released = released.clone();
                    async move {
                        let _ = released.wait_for(|r| *r).await;
                        let mut r =
                            hyper::Response::new(Full::new(Bytes::from_static(b"{\"server\":\"slow\"}")));
                        r.headers_mut().insert("x-backend", "slow".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Gated { addr, arrived, release, _task: task }
}

#[tokio::test]
async fn least_request_sends_new_requests_to_the_idle_endpoint() {
    let slow = gated_backend().await;
    let fast = Backend::start("fast").await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write("service.yaml", &service_yaml("orders-team", "orders", 8080, &[slow.addr, fast.addr]));
    m.write(
        "export.yaml",
        &export_yaml(
            "orders",
            "  service: {name: orders, port: 8080}\n  allowedApis: [{namespace: shop}]\n  \
             loadBalancing: {policy: LeastRequest}\n",
        ),
    );
    m.write("route.yaml", &export_route("orders", "/orders", "orders"));
    let gateway = Tollgate::start(m.path()).await;
    let client = client();
    let mut held = Vec::new();
    for _ in 0..10 {
        let before = slow.arrived.load(Ordering::SeqCst);
        let request = tokio::spawn(client.get(gateway.url("/orders")).send());
        // Wait until the request is answered (fast) or has reached the slow endpoint.
        eventually("the request lands", || async {
            request.is_finished() || slow.arrived.load(Ordering::SeqCst) > before
        })
        .await;
        if request.is_finished() {
            let response = request.await.unwrap().unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-backend"], "fast");
        } else {
            held.push(request);
        }
    }
    // Once the slow endpoint holds a request, the idle one gets every new request (round robin
    // would have sent it every other one).
    assert!(slow.arrived.load(Ordering::SeqCst) <= 1, "slow got {}", slow.arrived.load(Ordering::SeqCst));
    assert!(fast.hits() >= 9, "fast got {}", fast.hits());
    slow.release.send(true).unwrap();
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
}

#[tokio::test]
async fn consistent_hash_sends_each_key_to_one_endpoint() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write("service.yaml", &service_yaml("orders-team", "orders", 8080, &addrs));
    m.write(
        "export.yaml",
        &export_yaml(
            "orders",
            "  service: {name: orders, port: 8080}\n  allowedApis: [{namespace: shop}]\n  \
             loadBalancing: {policy: ConsistentHash, hashOn: header.x-user}\n",
        ),
    );
    m.write("route.yaml", &export_route("orders", "/orders", "orders"));
    let gateway = Tollgate::start(m.path()).await;
    let client = client();
    let mut used = std::collections::BTreeSet::new();
    for user in 0..12 {
        let mut servers = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let response = client
                .get(gateway.url("/orders"))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            servers.insert(response.headers()["x-backend"].to_str().unwrap().to_string());
        }
        assert_eq!(servers.len(), 1, "user-{user} went to {servers:?}");
        used.extend(servers);
    }
    assert!(used.len() >= 2, "keys spread over the endpoints: {used:?}");
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_for_the_ejection_time_then_returns() {
    let good = Backend::start("good").await;
    let bad = Backend::start_with_status("bad", Some(500)).await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write("service.yaml", &service_yaml("orders-team", "orders", 8080, &[good.addr, bad.addr]));
    m.write(
        "export.yaml",
        &export_yaml(
            "orders",
            "  service: {name: orders, port: 8080}\n  allowedApis: [{namespace: shop}]\n  \
             outlierDetection: {consecutiveErrors: 2, ejectionTime: 2s}\n",
        ),
    );
    m.write("route.yaml", &export_route("orders", "/orders", "orders"));
    let gateway = Tollgate::start(m.path()).await;
    let client = client();
    let send = || async { client.get(gateway.url("/orders")).send().await.unwrap().status().as_u16() };

    // Round robin alternates until the bad endpoint has failed twice in a row.
    let mut sent = 0;
    while bad.hits() < 2 {
        send().await;
        sent += 1;
        assert!(sent < 20, "the bad endpoint never got traffic");
    }
    let ejected_at = tokio::time::Instant::now();
    for _ in 0..10 {
        let status = send().await;
        if ejected_at.elapsed() >= Duration::from_millis(1500) {
            break; // Too slow a machine to tell; the ejection may be over.
        }
        assert_eq!(status, 200, "only the good endpoint serves while the bad one is ejected");
        assert_eq!(bad.hits(), 2);
    }
    let metrics = client.get(gateway.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let ejections = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("tollgate_upstream_ejections_total{backend=\"export:orders-team/orders\"} ")
        })
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(ejections >= Some(1), "{metrics}");
    // After the ejection time the endpoint gets traffic again.
    tokio::time::sleep_until(ejected_at + Duration::from_millis(2100)).await;
    eventually("the ejected endpoint returns", || async {
        send().await;
        bad.hits() > 2
    })
    .await;
}
