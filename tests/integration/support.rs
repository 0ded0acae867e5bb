//! Test harness: start the binary, start backends, write manifests, make clients.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// The most any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// A free port on 127.0.0.1 for a process a test starts.
///
/// Ports are handed out by a counter below the kernel's ephemeral range, so no two calls in this
/// test run return the same port, and neither `bind(0)` nor an outgoing connection elsewhere in
/// the run can take one (both draw from the ephemeral range). Each candidate is checked by
/// binding it. Falls back to a kernel-chosen port if the range below is too small.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_start.saturating_sub(LOW);
    if span < 1_000 {
        return std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    // A different starting point per run, so that a port still in TIME_WAIT from the last run is
    // unlikely to come up first.
    let offset = usize::try_from(std::process::id()).unwrap_or(0).wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % span).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {ephemeral_start}");
}

/// An address where nothing listens, and nothing else can start listening while the guard lives
/// (the port is bound but not listening, so connections are refused).
pub fn dead_address() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// A running `tollgate standalone`.
pub struct Tollgate {
    child: Option<Child>,
    pub http: SocketAddr,
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Tollgate {
    /// Starts the gateway on `dir` and waits until it is ready.
    pub async fn start(dir: &Path) -> Tollgate {
        Self::start_with(dir, &[]).await
    }

    pub async fn start_with(dir: &Path, extra: &[&str]) -> Tollgate {
        // Ports come from `free_port` (bind, read, release): another test can grab one in between.
        // The gateway then exits with "Address already in use"; start it again on new ports.
        let mut attempt = 0;
        loop {
            let mut gateway = Self::spawn(dir, extra);
            match gateway.try_ready().await {
                Ok(()) => return gateway,
                Err(stderr) if stderr.contains("Address already in use") && attempt < 5 => attempt += 1,
                Err(stderr) => panic!("tollgate not ready; stderr:\n{stderr}"),
            }
        }
    }

    /// Waits until `/readyz` answers 200; returns the stderr if the process exits or time runs out.
    async fn try_ready(&mut self) -> Result<(), String> {
        let client = client();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = client.get(self.admin_url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(());
            }
            let exited = self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited || tokio::time::Instant::now() >= deadline {
                // Let the reader thread collect the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the gateway without waiting.
    pub fn spawn(dir: &Path, extra: &[&str]) -> Tollgate {
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["standalone", "--manifests"])
            .arg(dir)
            .args([
                "--listen",
                &http.to_string(),
                "--listen-tls",
                &tls.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--reload-interval", "100ms", "--drain-timeout", "5s"])
            .args(extra)
            .env("TOLLGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tollgate");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().unwrap(), Arc::clone(&stdout));
        collect_lines(child.stderr.take().unwrap(), Arc::clone(&stderr));
        Tollgate { child: Some(child), http, tls, admin, stdout, stderr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits until an access-log line satisfies `predicate`.
    pub async fn wait_for_log(&self, predicate: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(line) = self.access_log().into_iter().find(|l| predicate(l)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no matching access-log line in {:?}",
                self.access_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
    }

    /// Waits for the process to exit (bounded) and returns whether it exited successfully.
    pub async fn wait_exit(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            assert!(tokio::time::Instant::now() < deadline, "tollgate did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn collect_lines(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    });
}

/// An HTTP/1.1 client that ignores proxies from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(WAIT).build().unwrap()
}

/// A manifest folder in a temp dir.
pub struct Manifests {
    pub dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new() -> Manifests {
        Manifests { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (or replaces) a file atomically, so the gateway never reads half of it.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

/// A Service + EndpointSlice pair pointing at `endpoints` (host:port on loopback).
pub fn service_yaml(namespace: &str, name: &str, port: u16, endpoints: &[SocketAddr]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  ports: [{{name: http, port: {port}}}]\n"
    );
    for (i, e) in endpoints.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  \
             namespace: {namespace}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: {}}}]\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
            e.port(),
            e.ip()
        ));
    }
    out
}

/// A loopback backend. Paths: `/status/{code}` answers that status, `/delay/{ms}` waits first,
/// anything else echoes the request as JSON (`server`, `method`, `path`, `query`, `headers`,
/// `body`).
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with_status(name, None).await
    }

    /// A backend that answers every request with `status` (or behaves as described above when
    /// `None`).
    pub async fn start_with_status(name: &str, status: Option<u16>) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = name.into();
        let counter = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let name = Arc::clone(&name);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        answer(req, Arc::clone(&name), status)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    fixed: Option<u16>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let path = match fixed {
        Some(code) => format!("/status/{code}"),
        None => path,
    };
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|s| s.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()) {
        let mut r = Response::new(Full::new(Bytes::from(format!("status {code} from {name}"))));
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        return Ok(r);
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("").to_string())))
        .collect();
    // Names sent more than once (the map above keeps one value per name).
    let repeated: Vec<String> = parts
        .headers
        .keys()
        .filter(|k| parts.headers.get_all(*k).iter().count() > 1)
        .map(|k| k.to_string())
        .collect();
    let doc = serde_json::json!({
        "server": &*name,
        "repeated": repeated,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut r = Response::new(Full::new(Bytes::from(doc.to_string())));
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r.headers_mut().insert("connection", "x-upstream-hop".parse().unwrap());
    r.headers_mut().insert("x-upstream-hop", "drop-me".parse().unwrap());
    Ok(r)
}

/// A minimal GatewayAPI with no hostnames and one `$default` stage.
pub fn simple_api(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{}}\n"
    )
}

/// A Route document.
pub fn route_yaml(namespace: &str, name: &str, api: &str, spec_body: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  apiRef: {{name: {api}}}\n{spec_body}"
    )
}

/// Waits until `check` returns true, polling.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends raw bytes as one HTTP/1.1 request (`Connection: close` is the caller's business) and
/// returns the status code and the whole response text. For requests a well-behaved client would
/// never send (dot segments, odd encodings, huge headers).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await.unwrap().unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await.expect("response within time");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A GET with the given raw path and Host, `Connection: close`.
pub async fn raw_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    raw_request(addr, format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
}

/// The JSON body of a raw response.
pub fn raw_json(text: &str) -> serde_json::Value {
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// A test CA and leaf certificates it issues, as PEM.
pub struct TestPki {
    pub ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Tollgate test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        TestPki { ca_pem: issuer.pem(), issuer }
    }

    /// (certificate PEM, private key PEM) for `names`.
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate PEM, private key PEM) of a client certificate with subject `CN=<cn>, O=<org>`.
    pub fn client_leaf(&self, cn: &str, org: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name.push(rcgen::DnType::OrganizationName, org);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A `kubernetes.io/tls` Secret manifest for `names`.
    pub fn secret_yaml(&self, namespace: &str, name: &str, names: &[&str]) -> String {
        let (cert, key) = self.leaf(names);
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\n\
             stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&cert),
            indent(&key)
        )
    }
}

/// An HTTPS echo backend (same behaviour as [`Backend`]) with a certificate for `localhost` from
/// `pki`.
pub async fn tls_backend(name: &str, pki: &TestPki) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    https_echo(name, pki, false).await
}

/// An HTTPS echo backend like [`tls_backend`] that requires a client certificate issued by
/// `pki` (mutual TLS): a handshake without one fails.
pub async fn mtls_backend(name: &str, pki: &TestPki) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    https_echo(name, pki, true).await
}

async fn https_echo(
    name: &str,
    pki: &TestPki,
    require_client_cert: bool,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    let (cert, key) = pki.leaf(&["localhost"]);
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name: Arc<str> = name.into();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let name = Arc::clone(&name);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = service_fn(move |req| answer(req, Arc::clone(&name), None));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

impl Tollgate {
    /// The gateway process's id (for reading its resident memory in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}
