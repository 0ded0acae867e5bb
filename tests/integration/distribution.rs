//! Controller → proxy distribution with the folder source: a real controller process, two real
//! proxy processes, TLS with a test CA, a shared token.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::*;

const TOKEN: &str = "a-shared-token-of-enough-length";

/// Certificates and the token, outside the manifest folder.
struct Credentials {
    dir: tempfile::TempDir,
}

impl Credentials {
    fn new(token: &str) -> Credentials {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let (cert, key) = pki.leaf(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem).unwrap();
        std::fs::write(dir.path().join("token"), token).unwrap();
        Credentials { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A child process with its stderr collected.
struct Process {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn spawn(args: &[String]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("TOLLGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tollgate");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let stream = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Process { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Controller {
    process: Process,
    serve: SocketAddr,
    admin: SocketAddr,
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

impl Controller {
    fn spawn(manifests: &Path, creds: &Credentials, serve: SocketAddr) -> Controller {
        let admin = addr();
        let args: Vec<String> = vec![
            "controller".into(),
            "--manifests".into(),
            manifests.display().to_string(),
            "--serve".into(),
            serve.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--tls-cert".into(),
            creds.path("tls.crt").display().to_string(),
            "--tls-key".into(),
            creds.path("tls.key").display().to_string(),
            "--proxy-token-file".into(),
            creds.path("token").display().to_string(),
            "--reload-interval".into(),
            "20ms".into(),
            "--debounce".into(),
            "10ms".into(),
            "--keepalive".into(),
            "1s".into(),
        ];
        Controller { process: Process::spawn(&args), serve, admin }
    }

    async fn config(&self) -> serde_json::Value {
        let url = format!("http://{}/config", self.admin);
        match client().get(url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        match client().get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

struct Proxy {
    process: Process,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Proxy {
    fn spawn(controller: SocketAddr, creds: &Credentials, token_file: &Path, name: &str) -> Proxy {
        let (http, admin) = (addr(), addr());
        let args: Vec<String> = vec![
            "proxy".into(),
            "--controller".into(),
            format!("https://{controller}"),
            "--controller-ca".into(),
            creds.path("ca.crt").display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--name".into(),
            name.into(),
            "--fleet".into(),
            "default".into(),
            "--listen".into(),
            http.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--controller-idle-timeout".into(),
            "3s".into(),
            "--access-log".into(),
            "off".into(),
        ];
        Proxy { process: Process::spawn(&args), http, admin }
    }

    async fn ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.admin);
        client().get(url).send().await.is_ok_and(|r| r.status() == StatusCode::OK)
    }

    async fn get(&self, path: &str) -> Option<(StatusCode, String)> {
        let r = client().get(format!("http://{}{path}", self.http)).send().await.ok()?;
        let status = r.status();
        Some((status, r.text().await.ok()?))
    }

    /// The admin port's `/config`, as text.
    async fn config(&self) -> String {
        let url = format!("http://{}/config", self.admin);
        match client().get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn serves(&self, path: &str, body: &str) -> bool {
        self.get(path).await.is_some_and(|(s, b)| s == StatusCode::OK && b == body)
    }
}

fn mock_route(name: &str, path: &str, body: &str) -> String {
    route_yaml(
        "shop",
        name,
        "shop",
        &format!("  match: {{path: {path}}}\n  integration: {{mock: {{status: 200, body: {body}}}}}\n"),
    )
}

#[tokio::test]
async fn two_proxies_follow_the_controller_keep_serving_without_it_and_resync_after_a_restart() {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write("one.yaml", &mock_route("one", "/one", "one"));
    let creds = Credentials::new(TOKEN);
    let serve = addr();

    // Proxies started before the controller are not ready: they have no configuration.
    let proxies = [
        Proxy::spawn(serve, &creds, &creds.path("token"), "proxy-a"),
        Proxy::spawn(serve, &creds, &creds.path("token"), "proxy-b"),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in &proxies {
        assert!(!p.ready().await, "a proxy without a snapshot must not be ready");
    }

    let mut controller = Controller::spawn(m.path(), &creds, serve);
    for p in &proxies {
        eventually("proxy ready after its first snapshot", || p.ready()).await;
        assert!(p.serves("/one", "one").await, "stderr: {}", p.process.stderr());
    }

    // A file change reaches both proxies.
    m.write("two.yaml", &mock_route("two", "/two", "two"));
    for p in &proxies {
        eventually("both proxies serve the new route", || p.serves("/two", "two")).await;
    }

    // The controller knows both proxies applied its latest version.
    eventually("controller sees both proxies up to date", || async {
        let config = controller.config().await;
        let progress = &config["apiProgress"]["shop/shop"];
        progress["connected"] == 2 && progress["upToDate"] == 2
    })
    .await;
    let metrics = controller.metrics().await;
    assert!(metrics.contains("tollgate_controller_connected_proxies{fleet=\"default\""), "{metrics}");
    assert!(metrics.contains("tollgate_controller_propagation_seconds_count"), "{metrics}");
    assert!(metrics.contains("tollgate_controller_compile_duration_seconds_count"), "{metrics}");

    // Without the controller, proxies keep serving the last snapshot, past their idle timeout.
    controller.process.kill();
    for p in &proxies {
        eventually("the proxy notices the controller is gone", || async {
            p.process.stderr().contains("subscription lost")
        })
        .await;
        assert!(p.serves("/two", "two").await);
        assert!(p.ready().await, "a proxy keeps its readiness while the controller is away");
    }

    // A change made while the controller is down arrives once it is back.
    m.write("three.yaml", &mock_route("three", "/three", "three"));
    std::fs::remove_file(m.path().join("one.yaml")).unwrap();
    let _controller = Controller::spawn(m.path(), &creds, serve);
    for p in &proxies {
        eventually("proxies resync after the controller restarts", || p.serves("/three", "three")).await;
        eventually("a removed route is gone", || async {
            p.get("/one").await.is_some_and(|(s, _)| s == StatusCode::NOT_FOUND)
        })
        .await;
    }
}

#[tokio::test]
async fn a_proxy_with_a_wrong_token_gets_nothing_and_stays_unready() {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write("one.yaml", &mock_route("one", "/one", "one"));
    let creds = Credentials::new(TOKEN);
    let wrong = creds.path("wrong-token");
    std::fs::write(&wrong, "not-the-token-at-all-nope").unwrap();
    let controller = Controller::spawn(m.path(), &creds, addr());
    let proxy = Proxy::spawn(controller.serve, &creds, &wrong, "intruder");
    eventually("the controller refuses the subscription", || async {
        controller.process.stderr().contains("subscription refused")
    })
    .await;
    eventually("the proxy logs the refusal", || async { proxy.process.stderr().contains("401") }).await;
    assert!(!proxy.ready().await);
    assert_eq!(controller.config().await["proxies"], serde_json::json!([]));
}

#[tokio::test]
async fn endpoint_changes_take_the_cheap_path() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write(
        "route.yaml",
        &route_yaml(
            "shop",
            "orders",
            "shop",
            "  match: {path: /orders}\n  integration: {service: {name: orders, port: 80}}\n",
        ),
    );
    m.write("svc.yaml", &service_yaml("shop", "orders", 80, &[a.addr]));
    // The same Service behind a ServiceExport (from another namespace's point of view: the export
    // lives with the Service and allows the API): its endpoints follow the same cheap path.
    m.write(
        "export.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: ServiceExport\nmetadata: {name: orders, namespace: shop}\n\
         spec:\n  service: {name: orders, port: 80}\n  allowedApis: [{namespace: shop, name: shop}]\n\
         ---\n",
    );
    m.write(
        "exported.yaml",
        &route_yaml(
            "shop",
            "exported",
            "shop",
            "  match: {path: /exported}\n  integration: {serviceExport: {name: orders, namespace: shop}}\n",
        ),
    );
    let creds = Credentials::new(TOKEN);
    let controller = Controller::spawn(m.path(), &creds, addr());
    let proxy = Proxy::spawn(controller.serve, &creds, &creds.path("token"), "p");
    eventually("proxy ready", || proxy.ready()).await;
    let server =
        |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["server"].clone();
    for path in ["/orders", "/exported"] {
        let (status, body) = proxy.get(path).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(server(&body), "a", "{path}");
    }
    let config = proxy.config().await;
    assert!(config.contains(&a.addr.to_string()) && !config.contains(&b.addr.to_string()), "{config}");

    // Only the EndpointSlice changes: no compile, an endpoint update.
    m.write("svc.yaml", &service_yaml("shop", "orders", 80, &[b.addr]));
    for path in ["/orders", "/exported"] {
        eventually("requests reach the new endpoint", || async {
            proxy.get(path).await.is_some_and(|(_, body)| server(&body) == "b")
        })
        .await;
    }
    // The proxy's `/config` is built when read: it shows the endpoints served now.
    let config = proxy.config().await;
    assert!(config.contains(&b.addr.to_string()) && !config.contains(&a.addr.to_string()), "{config}");
    // A proxy that connects now gets the patched snapshot in full (encoded on its demand).
    let late = Proxy::spawn(controller.serve, &creds, &creds.path("token"), "late");
    eventually("the late proxy ready", || late.ready()).await;
    for path in ["/orders", "/exported"] {
        let (status, body) = late.get(path).await.unwrap();
        assert_eq!((status, server(&body)), (StatusCode::OK, "b".into()), "{path}: {body}");
    }
    let metrics = controller.metrics().await;
    assert!(
        metrics.contains("tollgate_controller_reconciles_total{kind=\"endpoints\",result=\"published\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_controller_propagation_seconds_count{kind=\"endpoints\"}"),
        "{metrics}"
    );
}

/// Apply-to-served latency: a file change until both proxies answer the new route. A benchmark,
/// not a test (never asserts time): `cargo test --release --test integration -- --ignored
/// --nocapture propagation`.
#[tokio::test]
#[ignore = "benchmark; run explicitly"]
async fn propagation_latency_with_10_and_10000_routes() {
    for routes in [10usize, 10_000] {
        let m = Manifests::new();
        m.write("api.yaml", &simple_api("shop", "shop"));
        let mut text = String::new();
        for i in 0..routes {
            text.push_str(&mock_route(&format!("r{i}"), &format!("/r/{i}"), "x"));
            text.push_str("---\n");
        }
        m.write("routes.yaml", &text);
        let creds = Credentials::new(TOKEN);
        let controller = Controller::spawn(m.path(), &creds, addr());
        let proxies = [
            Proxy::spawn(controller.serve, &creds, &creds.path("token"), "a"),
            Proxy::spawn(controller.serve, &creds, &creds.path("token"), "b"),
        ];
        for p in &proxies {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !p.ready().await {
                assert!(Instant::now() < deadline, "{}", p.process.stderr());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut samples = Vec::new();
        for round in 0..5 {
            let path = format!("/new/{round}");
            let written = Instant::now();
            m.write(&format!("new-{round}.yaml"), &mock_route(&format!("new-{round}"), &path, "new"));
            for p in &proxies {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !p.serves(&path, "new").await {
                    assert!(Instant::now() < deadline);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            samples.push(written.elapsed());
        }
        samples.sort();
        eprintln!(
            "propagation with {routes} routes: min {:?}, median {:?}, max {:?}",
            samples[0],
            samples[samples.len() / 2],
            samples[samples.len() - 1]
        );
        eprintln!(
            "{}",
            controller
                .metrics()
                .await
                .lines()
                .filter(|l| l.contains("compile_duration_seconds_sum")
                    || l.contains("compile_duration_seconds_count"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The cost of one endpoint update at 10,000 Routes over 100 Services: a Service's endpoints
/// change until both proxies send to the new one, and each proxy's CPU time meanwhile. A
/// benchmark, not a test (never asserts time): `cargo test --release --test integration --
/// --ignored --nocapture endpoint_update_cost`.
#[tokio::test]
#[ignore = "benchmark; run explicitly"]
async fn endpoint_update_cost_with_10000_routes() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    let mut routes = String::new();
    for i in 0..10_000 {
        let body = format!(
            "  match: {{path: /r/{i}}}\n  integration: {{service: {{name: svc-{}, port: 80}}}}\n",
            i % 100
        );
        routes.push_str(&route_yaml("shop", &format!("r{i}"), "shop", &body));
        routes.push_str("---\n");
    }
    m.write("routes.yaml", &routes);
    for s in 0..100 {
        m.write(&format!("svc-{s}.yaml"), &service_yaml("shop", &format!("svc-{s}"), 80, &[a.addr]));
    }
    let creds = Credentials::new(TOKEN);
    let controller = Controller::spawn(m.path(), &creds, addr());
    let proxies = [
        Proxy::spawn(controller.serve, &creds, &creds.path("token"), "a"),
        Proxy::spawn(controller.serve, &creds, &creds.path("token"), "b"),
    ];
    let server =
        |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["server"].clone();
    for p in &proxies {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !p.get("/r/0").await.is_some_and(|(_, body)| server(&body) == "a") {
            assert!(Instant::now() < deadline, "{}", p.process.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Settle: the first snapshot's `/config` views are built in the background.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = |p: &Proxy| cpu_time(p.process.child.id());
    let (mut latency, mut cpu_used, mut controller_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        let (to, name) = if round % 2 == 0 { (b.addr, "b") } else { (a.addr, "a") };
        let before: Vec<Duration> = proxies.iter().map(cpu).collect();
        let controller_before = cpu_time(controller.process.child.id());
        let written = Instant::now();
        m.write("svc-0.yaml", &service_yaml("shop", "svc-0", 80, &[to]));
        for p in &proxies {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !p.get("/r/0").await.is_some_and(|(_, body)| server(&body) == name) {
                assert!(Instant::now() < deadline, "{}", p.process.stderr());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        latency.push(written.elapsed());
        // Work done after the switch (the `/config` view) counts too.
        tokio::time::sleep(Duration::from_millis(700)).await;
        for (p, before) in proxies.iter().zip(before) {
            cpu_used.push(cpu(p).saturating_sub(before));
        }
        controller_cpu.push(cpu_time(controller.process.child.id()).saturating_sub(controller_before));
    }
    latency.sort();
    cpu_used.sort();
    controller_cpu.sort();
    let mid = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "endpoint update at 10,000 routes: served by both proxies after min {:?}, median {:?}, max {:?}; \
         proxy CPU per update (incl. ~0.7 s idle) min {:?}, median {:?}, max {:?}; \
         controller CPU per update (the folder's reload included) min {:?}, median {:?}, max {:?}",
        latency[0],
        mid(&latency),
        latency[latency.len() - 1],
        cpu_used[0],
        mid(&cpu_used),
        cpu_used[cpu_used.len() - 1],
        controller_cpu[0],
        mid(&controller_cpu),
        controller_cpu[controller_cpu.len() - 1]
    );
}

/// User plus system CPU time of a process (Linux `/proc/PID/stat`; clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): the first is field 3 (state), so
    // utime and stime (fields 14 and 15) are the 12th and 13th.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

/// Canary evidence without an analysis: every proxy reports its per-track counts and the
/// controller adds them up for the whole fleet (`/config` and its metrics).
#[tokio::test]
async fn canary_evidence_is_added_up_across_the_fleet() {
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: shop, namespace: shop}\nspec:\n  \
         stages:\n  - name: prod\n    canary: {weight: 50, routeSelector: {matchLabels: {release: v2}}}\n",
    );
    m.write("v1.yaml", &mock_route("orders-v1", "/orders", "v1"));
    m.write(
        "v2.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {name: orders-v2, namespace: shop, labels: \
         {release: v2}}\nspec:\n  apiRef: {name: shop}\n  match: {path: /orders}\n  integration: {mock: {status: 200, \
         body: v2}}\n",
    );
    let creds = Credentials::new(TOKEN);
    let controller = Controller::spawn(m.path(), &creds, addr());
    let proxies = [
        Proxy::spawn(controller.serve, &creds, &creds.path("token"), "a"),
        Proxy::spawn(controller.serve, &creds, &creds.path("token"), "b"),
    ];
    let mut seen = std::collections::BTreeMap::new();
    for p in &proxies {
        eventually("proxy ready", || p.ready()).await;
        for _ in 0..40 {
            let (status, body) = p.get("/orders").await.unwrap();
            assert_eq!(status, StatusCode::OK);
            *seen.entry(body).or_insert(0u64) += 1;
        }
    }
    assert_eq!(seen.len(), 2, "both tracks served at weight 50: {seen:?}");
    // Reports travel every second; the controller's totals reach all 80 requests.
    let tracks = |config: &serde_json::Value, track: &str| {
        config["canaryEvidence"]
            .as_array()
            .and_then(|all| all.iter().find(|t| t["track"] == track && t["stage"] == "prod"))
            .and_then(|t| t["requests"].as_u64())
            .unwrap_or(0)
    };
    eventually("the controller counts every request of both proxies", || async {
        let config = controller.config().await;
        tracks(&config, "stable") + tracks(&config, "canary") == 80
    })
    .await;
    let config = controller.config().await;
    assert_eq!(tracks(&config, "canary"), seen.get("v2").copied().unwrap_or(0), "{config}");
    let metrics = controller.metrics().await;
    assert!(
        metrics.contains(&format!(
            "tollgate_controller_canary_requests_total{{api=\"shop/shop\",stage=\"prod\",track=\"canary\"}} {}",
            seen.get("v2").copied().unwrap_or(0)
        )),
        "{metrics}"
    );
}
