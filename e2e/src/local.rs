//! `E2E_MODE=local`: the controller and proxies as local processes of the `tollgate` binary,
//! talking to the cluster from `KUBECONFIG` and to each other over TLS on 127.0.0.1.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A process of the binary, stopped (SIGKILL) and reaped on drop.
pub struct Process {
    name: String,
    child: Option<Child>,
}

impl Process {
    fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Process> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process { name: name.to_string(), child: Some(child) })
    }

    /// Sends SIGTERM (graceful drain) and waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else { return Ok(()) };
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.name);
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("{} did not exit within {limit:?} of SIGTERM", self.name)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (bound, then released; good enough for a test run).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The controller, its certificate and the token proxies present.
pub struct LocalControlPlane {
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// Subscription endpoint.
    pub serve: SocketAddr,
    /// Admin endpoint.
    pub admin: SocketAddr,
    controller: Process,
    fleet: String,
}

/// One local proxy.
pub struct LocalProxy {
    /// Plain HTTP listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The process.
    pub process: Process,
}

impl LocalControlPlane {
    /// Starts a controller that watches only `namespace` (so parallel tests, and an installed
    /// controller, never fight over the same objects' status), leader of its own Lease there.
    pub async fn start(binary: &Path, namespace: &str, fleet: &str) -> anyhow::Result<LocalControlPlane> {
        let dir = tempfile::tempdir()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "tollgate e2e CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.path().join("ca.crt"), issuer.pem())?;
        std::fs::write(dir.path().join("tls.crt"), cert.pem())?;
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem())?;
        std::fs::write(dir.path().join("token"), uuid::Uuid::new_v4().simple().to_string())?;
        let (serve, admin) = (free_port()?, free_port()?);
        let mut command = Command::new(binary);
        command
            .arg("controller")
            .arg(format!("--serve={serve}"))
            .arg(format!("--admin={admin}"))
            .arg(format!("--namespaces={namespace}"))
            .arg(format!("--lease-namespace={namespace}"))
            .arg("--lease-name=tollgate-e2e")
            .arg(format!("--identity=e2e-{}", std::process::id()))
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .arg("--proxy-token-file")
            .arg(dir.path().join("token"))
            .env("TOLLGATE_LOG", std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()));
        let controller = Process::spawn("controller", &mut command, &dir.path().join("controller.log"))?;
        let plane = LocalControlPlane {
            dir,
            binary: binary.to_path_buf(),
            serve,
            admin,
            controller,
            fleet: fleet.to_string(),
        };
        plane.wait_ready(admin, "controller").await?;
        Ok(plane)
    }

    async fn wait_ready(&self, admin: SocketAddr, what: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let url = format!("http://{admin}/readyz");
        let result = crate::eventually(&format!("{what} /readyz"), crate::WAIT, || {
            let (client, url) = (client.clone(), url.clone());
            async move { Ok(client.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(drop)) }
        })
        .await;
        result.with_context(|| format!("{what} log:\n{}", self.log_tail(what)))
    }

    /// Starts a proxy of this plane's fleet; returns once it is ready (has a snapshot).
    pub async fn start_proxy(&self, index: usize) -> anyhow::Result<LocalProxy> {
        let (listen, admin) = (free_port()?, free_port()?);
        let name = format!("proxy-{index}");
        let mut command = Command::new(&self.binary);
        command
            .arg("proxy")
            .arg(format!("--controller=https://localhost:{}", self.serve.port()))
            .arg("--controller-ca")
            .arg(self.dir.path().join("ca.crt"))
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .arg(format!("--fleet={}", self.fleet))
            .arg(format!("--name={name}"))
            .arg(format!("--listen={listen}"))
            .arg(format!("--admin={admin}"))
            .arg("--drain-timeout=10s")
            .arg("--access-log=off")
            .env("TOLLGATE_LOG", std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()));
        let process = Process::spawn(&name, &mut command, &self.dir.path().join(format!("{name}.log")))?;
        self.wait_ready(admin, &name).await?;
        Ok(LocalProxy { listen, admin, process })
    }

    /// The last lines of a process's log (`controller`, `proxy-N`), for failure messages.
    pub fn log_tail(&self, what: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{what}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the controller now.
    pub fn stop(&mut self) {
        drop(std::mem::replace(&mut self.controller, Process { name: "stopped".into(), child: None }));
    }
}
