//! Backends on addresses of their own: a network namespace per backend, joined to the host by a
//! veth pair on a private /30, with `tollgate echo` running inside.
//!
//! A real API server refuses loopback (and link-local) addresses in EndpointSlices, so local-mode
//! backends cannot listen on 127.0.0.1 the way standalone tests do. The addresses come from
//! 198.18.0.0/15 (RFC 2544, reserved for benchmarking: never routed, unlikely to clash with a
//! cluster's pod or service ranges); override the first two octets' /16 with `E2E_NETNS_PREFIX`
//! (e.g. `10.213`). Needs root and iproute2 (`ip netns`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;

/// Port every echo backend listens on inside its namespace.
pub const ECHO_PORT: u16 = 9090;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether namespaces can be created here: root and a working `ip`. Prints why not.
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        eprintln!("skipped: network namespaces need root");
        return false;
    }
    // Root in a container may still lack CAP_SYS_ADMIN / CAP_NET_ADMIN: try it.
    let probe = format!("tge2e-probe-{}", std::process::id());
    let quiet = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(&["netns", "add", &probe]) {
        eprintln!(
            "skipped: cannot create network namespaces here (`ip netns add` failed or iproute2 is missing)"
        );
        return false;
    }
    let veth = quiet(&[
        "netns", "exec", &probe, "ip", "link", "add", "tgprobe0", "type", "veth", "peer", "name", "tgprobe1",
    ]);
    let _ = quiet(&["netns", "del", &probe]);
    if !veth {
        eprintln!("skipped: cannot create veth pairs here");
    }
    veth
}

/// One network namespace with an echo backend in it. Dropping it stops the backend and removes
/// the namespace and both ends of the veth pair.
pub struct NetnsBackend {
    namespace: String,
    host_link: String,
    /// The host's end of the pair.
    pub host_address: Ipv4Addr,
    /// The backend's address (inside the namespace).
    pub address: Ipv4Addr,
    child: Option<std::process::Child>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out =
        Command::new("ip").args(args).output().with_context(|| format!("running ip {}", args.join(" ")))?;
    anyhow::ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn prefix() -> anyhow::Result<(u8, u8)> {
    let text = std::env::var("E2E_NETNS_PREFIX").unwrap_or_else(|_| "198.18".into());
    let mut parts = text.split('.').map(str::parse::<u8>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => Ok((a, b)),
        _ => anyhow::bail!("E2E_NETNS_PREFIX={text:?}: expected two octets such as 198.18"),
    }
}

impl NetnsBackend {
    /// Creates the namespace and the veth pair, and starts `binary echo --name NAME` inside,
    /// listening on `address:ECHO_PORT`. Returns once the backend accepts connections.
    pub async fn start(binary: &Path, name: &str) -> anyhow::Result<NetnsBackend> {
        let (a, b) = prefix()?;
        // A /30 per backend: .1 on the host, .2 in the namespace. The index mixes in the pid so
        // concurrent runs on one machine are unlikely to pick the same subnet.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let index = (std::process::id().wrapping_mul(97).wrapping_add(n)) % 16384;
        let (third, fourth) = ((index / 64) as u8, ((index % 64) * 4) as u8);
        let tag = format!("{:x}{n:x}", std::process::id() % 0xfffff);
        let mut backend = NetnsBackend {
            namespace: format!("tge2e-{tag}"),
            host_link: format!("tgh{tag}"),
            host_address: Ipv4Addr::new(a, b, third, fourth + 1),
            address: Ipv4Addr::new(a, b, third, fourth + 2),
            child: None,
        };
        // Any failure from here on is cleaned up by Drop.
        let ns_link = format!("tgn{tag}");
        let ns = backend.namespace.clone();
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &backend.host_link, "type", "veth", "peer", "name", &ns_link])?;
        ip(&["link", "set", &ns_link, "netns", &ns])?;
        ip(&["addr", "add", &format!("{}/30", backend.host_address), "dev", &backend.host_link])?;
        ip(&["link", "set", &backend.host_link, "up"])?;
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{}/30", backend.address),
            "dev",
            &ns_link,
        ])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_link, "up"])?;
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(binary)
            .args([
                "echo",
                "--listen",
                &SocketAddr::from((backend.address, ECHO_PORT)).to_string(),
                "--name",
                name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tollgate echo in the namespace")?;
        backend.child = Some(child);
        let addr = backend.socket_addr();
        crate::eventually(
            &format!("echo backend {name} on {addr}"),
            Duration::from_secs(20),
            || async move {
                Ok(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(drop))
            },
        )
        .await?;
        Ok(backend)
    }

    /// Where the backend listens.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.address, ECHO_PORT))
    }

    /// The namespace's name (for `ip netns` diagnostics).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The host end of the veth pair.
    pub fn host_link(&self) -> &str {
        &self.host_link
    }
}

impl Drop for NetnsBackend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace destroys its end of the pair and with it the host end, but
        // asynchronously; delete the host end explicitly so the cleanup is done when drop returns.
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).stderr(Stdio::null()).status();
    }
}
