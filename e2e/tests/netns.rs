//! The network-namespace backends of local mode, which need no API server: run here whenever the
//! machine allows (root and iproute2), and skip with a message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

use tollgate_e2e::netns::{self, NetnsBackend};

fn namespace_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", name]).output().unwrap().status.success()
}

#[tokio::test]
async fn echo_backends_in_network_namespaces_are_reachable_on_their_own_addresses_and_cleaned_up() {
    if !netns::available() {
        return;
    }
    let binary = tollgate_e2e::binary::tollgate().unwrap();
    let a = NetnsBackend::start(&binary, "netns-a").await.unwrap();
    let b = NetnsBackend::start(&binary, "netns-b").await.unwrap();

    // Addresses an API server accepts in an EndpointSlice: not loopback, not link-local, and
    // one per backend.
    for backend in [&a, &b] {
        assert!(!backend.address.is_loopback() && !backend.address.is_link_local(), "{}", backend.address);
        assert!(
            backend.address.is_private()
                || backend.address.octets()[..2] == [198, 18]
                || backend.address.octets()[..2] == [198, 19]
        );
        assert!(namespace_exists(backend.namespace()), "{} missing", backend.namespace());
        assert!(link_exists(backend.host_link()));
    }
    assert_ne!(a.address, b.address);

    // Reached from the host over the veth pair, each answering as itself.
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build().unwrap();
    for (backend, name) in [(&a, "netns-a"), (&b, "netns-b")] {
        let reply = client.get(format!("http://{}/hello?x=1", backend.socket_addr())).send().await.unwrap();
        assert_eq!(reply.status(), 200);
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["server"], name, "{body}");
        assert_eq!(body["path"], "/hello");
        assert_eq!(body["query"], "x=1");
    }

    // Dropping a backend removes its namespace and both ends of the pair, and the address goes
    // dark; the other backend is untouched.
    let (ns, link, addr) = (a.namespace().to_string(), a.host_link().to_string(), a.socket_addr());
    drop(a);
    assert!(!namespace_exists(&ns), "namespace {ns} left behind");
    assert!(!link_exists(&link), "link {link} left behind");
    // (Some networks accept any TCP connection on the default route, so ask for an answer.)
    let gone = client.get(format!("http://{addr}/hello")).send().await;
    let answered_as_a = match gone {
        Ok(reply) => reply.text().await.unwrap_or_default().contains("netns-a"),
        Err(_) => false,
    };
    assert!(!answered_as_a, "{addr} still answers as netns-a after cleanup");
    let reply = client.get(format!("http://{}/still", b.socket_addr())).send().await.unwrap();
    assert_eq!(reply.status(), 200);
}
