//! Hot reload, broken files, in-flight requests across reloads, graceful shutdown.

use std::io::Write;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

fn mock_route(name: &str, path: &str, body: &str) -> String {
    route_yaml(
        "r",
        name,
        "r",
        &format!("  match: {{path: {path}}}\n  integration: {{mock: {{status: 200, body: {body}}}}}\n"),
    )
}

#[tokio::test]
async fn folder_changes_are_served_within_a_second_and_broken_files_keep_the_last_good_config() {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("r", "r"));
    m.write("a.yaml", &mock_route("a", "/a", "one"));
    let g = Tollgate::start(m.path()).await;
    let c = client();
    assert_eq!(c.get(g.url("/a")).send().await.unwrap().text().await.unwrap(), "one");
    assert_eq!(c.get(g.url("/b")).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    // A new file and a changed file.
    let written = std::time::Instant::now();
    m.write("b.yaml", &mock_route("b", "/b", "two"));
    m.write("a.yaml", &mock_route("a", "/a", "uno"));
    eventually("the new route is served", || async {
        c.get(g.url("/b")).send().await.map(|r| r.status() == StatusCode::OK).unwrap_or(false)
    })
    .await;
    eprintln!("reload visible after {:?}", written.elapsed());
    assert_eq!(c.get(g.url("/a")).send().await.unwrap().text().await.unwrap(), "uno");
    let version = |cfg: &Value| cfg["version"].as_u64().unwrap();
    let before: Value = c.get(g.admin_url("/config")).send().await.unwrap().json().await.unwrap();

    // A broken file: reported, and the previous configuration keeps serving.
    m.write("b.yaml", "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {name: b\n  oops: [\n");
    eventually("the error is reported in /config", || async {
        let cfg: Value = c.get(g.admin_url("/config")).send().await.unwrap().json().await.unwrap();
        cfg["lastError"].as_str().is_some_and(|e| e.contains("b.yaml"))
    })
    .await;
    assert_eq!(
        c.get(g.url("/b")).send().await.unwrap().text().await.unwrap(),
        "two",
        "last good config serves"
    );
    let after: Value = c.get(g.admin_url("/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(version(&after), version(&before));
    let metrics = c.get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tollgate_config_errors_total 1"), "{metrics}");
    assert!(g.stderr().contains("reload failed"), "{}", g.stderr());

    // Fixed again: served, error cleared.
    m.write("b.yaml", &mock_route("b", "/b", "three"));
    eventually("the fixed file is served", || async {
        c.get(g.url("/b")).send().await.unwrap().text().await.unwrap() == "three"
    })
    .await;
    let fixed: Value = c.get(g.admin_url("/config")).send().await.unwrap().json().await.unwrap();
    assert!(fixed["lastError"].is_null());
    assert!(version(&fixed) > version(&after));

    // One object that does not match its schema: that object is left out and rejected, the rest
    // of the folder (here a new route in the same file) is loaded.
    m.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            route_yaml(
                "r",
                "b",
                "r",
                "  match: {methods: [GETT], path: /b}\n  integration: {mock: {status: 200}}\n"
            ),
            mock_route("c", "/c", "five")
        ),
    );
    eventually("the rest of the file is served", || async {
        c.get(g.url("/c")).send().await.map(|r| r.status() == StatusCode::OK).unwrap_or(false)
    })
    .await;
    assert_eq!(c.get(g.url("/b")).send().await.unwrap().status(), StatusCode::NOT_FOUND, "left out");
    let cfg: Value = c.get(g.admin_url("/config")).send().await.unwrap().json().await.unwrap();
    assert!(cfg["lastError"].is_null(), "{cfg}");
    let b =
        cfg["objects"].as_array().unwrap().iter().find(|o| o["kind"] == "Route" && o["name"] == "b").unwrap();
    assert!(b.to_string().contains("spec.match.methods[0]"), "{b}");

    // Removing a file removes its routes.
    std::fs::remove_file(m.path().join("b.yaml")).unwrap();
    eventually("the removed route is gone", || async {
        c.get(g.url("/b")).send().await.unwrap().status() == StatusCode::NOT_FOUND
    })
    .await;
}

/// An API whose `/delay/{ms}` route reaches a backend that answers after `ms` milliseconds.
async fn slow_backend_manifests() -> (Manifests, Backend) {
    let backend = Backend::start("slow").await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("r", "r"));
    m.write(
        "slow.yaml",
        &format!(
            "{}---\n{}",
            route_yaml(
                "r",
                "slow",
                "r",
                "  match: {path: '/delay/{ms}'}\n  integration: {service: {name: s, port: 80}}\n"
            ),
            service_yaml("r", "s", 80, &[backend.addr])
        ),
    );
    (m, backend)
}

#[tokio::test]
async fn in_flight_requests_finish_across_a_reload() {
    let (m, _backend) = slow_backend_manifests().await;
    let g = Tollgate::start(m.path()).await;
    let url = g.url("/delay/1500");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    m.write("other.yaml", &mock_route("other", "/other", "x"));
    let c = client();
    eventually("the reload happened", || async {
        c.get(g.url("/other")).send().await.map(|r| r.status() == StatusCode::OK).unwrap_or(false)
    })
    .await;
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        StatusCode::OK,
        "the request that started before the reload"
    );
}

/// Reading and compiling the folder happens beside the traffic, not in its way: a reload stuck
/// on a file that does not come (a named pipe nobody writes yet, standing in for a slow disk or a
/// huge folder) leaves a single-worker gateway serving, and ends when the file arrives.
#[tokio::test]
async fn a_slow_reload_does_not_stop_the_traffic() {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("r", "r"));
    m.write("a.yaml", &mock_route("a", "/a", "one"));
    let g = Tollgate::start_with(m.path(), &["--workers", "1"]).await;
    let c = client();
    assert_eq!(c.get(g.url("/a")).send().await.unwrap().text().await.unwrap(), "one");

    let pipe = m.path().join("slow.yaml");
    let made = std::process::Command::new("mkfifo").arg(&pipe).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", pipe.display());
    // Opening the write side returns once the reload has opened the read side; the reload then
    // waits for the file's bytes. On a thread of its own, not the runtime's blocking pool: should
    // the reload never open the pipe, this open never returns, and the test must still end.
    let (opened, open_result) = tokio::sync::oneshot::channel();
    let write_side = pipe.clone();
    std::thread::spawn(move || {
        let _ = opened.send(std::fs::OpenOptions::new().write(true).open(write_side));
    });
    let mut writer = tokio::time::timeout(WAIT, open_result)
        .await
        .expect("the reload opens the new file")
        .expect("the opening thread reports")
        .expect("open the pipe for writing");

    let answer = c.get(g.url("/a")).send().await.expect("served while the reload waits");
    assert_eq!(answer.text().await.unwrap(), "one");
    let ready = c.get(g.admin_url("/readyz")).send().await.expect("admin answers while the reload waits");
    assert_eq!(ready.status(), StatusCode::OK);

    writer.write_all(mock_route("slow", "/slow", "late").as_bytes()).unwrap();
    drop(writer);
    eventually("the reload that waited is applied", || async {
        c.get(g.url("/slow")).send().await.unwrap().status() == StatusCode::OK
    })
    .await;
    assert_eq!(c.get(g.url("/slow")).send().await.unwrap().text().await.unwrap(), "late");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let (m, _backend) = slow_backend_manifests().await;
    let mut g = Tollgate::start(m.path()).await;
    let url = g.url("/delay/1000");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.terminate();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        StatusCode::OK,
        "in-flight request completes during the drain"
    );
    assert!(g.wait_exit().await, "exits cleanly after draining");
    assert!(std::net::TcpStream::connect(g.http).is_err(), "no longer accepting");
    assert!(g.stderr().contains("shutting down"), "{}", g.stderr());
}

/// An idle keep-alive connection must not hold the drain up for its whole timeout (25 s, longer
/// than `WAIT`): the gateway closes it when the drain starts, and a request in flight on another
/// connection is answered with `Connection: close`.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_and_ends_busy_ones_after_their_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (m, _backend) = slow_backend_manifests().await;
    let mut g = Tollgate::start(m.path()).await;
    let request = b"GET /delay/0 HTTP/1.1\r\nHost: r.example\r\n\r\n";
    let mut idle = tokio::net::TcpStream::connect(g.http).await.unwrap();
    idle.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(WAIT, idle.read(&mut answer)).await.expect("answered").unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..read]));
    let mut busy = tokio::net::TcpStream::connect(g.http).await.unwrap();
    busy.write_all(b"GET /delay/1000 HTTP/1.1\r\nHost: r.example\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.terminate();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok_and(|read| read.is_ok()), "the idle connection is closed by the drain");
    let mut busy_answer = Vec::new();
    tokio::time::timeout(WAIT, busy.read_to_end(&mut busy_answer))
        .await
        .expect("answered, then closed")
        .unwrap();
    let busy_answer = String::from_utf8_lossy(&busy_answer).to_ascii_lowercase();
    assert!(busy_answer.starts_with("http/1.1 200"), "{busy_answer}");
    assert!(busy_answer.contains("connection: close"), "{busy_answer}");
    assert!(g.wait_exit().await, "exits once both connections are done");
}

#[tokio::test]
async fn a_folder_that_does_not_load_at_start_is_a_clear_error() {
    let m = Manifests::new();
    m.write("bad.yaml", "kind: [\n");
    let mut g = Tollgate::spawn(m.path(), &[]);
    assert!(!g.wait_exit().await, "exits with an error");
    let stderr = g.stderr();
    assert!(stderr.contains("bad.yaml") && stderr.contains("invalid YAML"), "{stderr}");
}
