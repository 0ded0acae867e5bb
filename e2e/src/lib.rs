//! End-to-end suite: Tollgate against a real Kubernetes API server.
//!
//! ```text
//!  KUBECONFIG ──► API server ◄── CRDs, GatewayAPIs, Routes, Secrets, Services, EndpointSlices
//!                    ▲   │
//!        status ─────┘   ▼ watch
//!                 tollgate controller ──snapshots──► tollgate proxy ──► echo backends
//!                                                        ▲
//!                                      test client ──────┘ (the proxy Service, or 127.0.0.1)
//! ```
//!
//! Two modes, chosen by `E2E_MODE`:
//! - `cluster` (default): the chart is installed (see `e2e/kind.sh`); backends are Deployments of
//!   the tollgate image's `echo` subcommand; traffic goes through the proxy Service
//!   (`E2E_GATEWAY_URL`, or the Service's load-balancer / node port).
//! - `local`: the controller and the proxies run as local processes of the `tollgate` binary;
//!   backends run in network namespaces on private addresses ([`netns`]), because the API server
//!   refuses loopback addresses in EndpointSlices.
//!
//! Every test that needs a cluster is `#[ignore]`d and also skips (with `skipped: no cluster`)
//! when `KUBECONFIG` is not set, so `cargo test --workspace` never touches whatever cluster a
//! developer's default kubeconfig points at. Run them with
//! `KUBECONFIG=… cargo test -p tollgate-e2e -- --ignored --test-threads 1`.

pub mod binary;
pub mod gateway;
pub mod k8s;
pub mod local;
pub mod netns;
pub mod suite;

use std::time::Duration;

/// How long any one wait may take (pods starting, status converging, traffic changing).
pub const WAIT: Duration = Duration::from_secs(120);

/// Where the controller and proxies run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Installed in the cluster (Helm chart); backends are pods.
    Cluster,
    /// Local processes; backends in network namespaces.
    Local,
}

impl Mode {
    /// From `E2E_MODE` (`cluster` or `local`; default `cluster`).
    pub fn from_env() -> anyhow::Result<Mode> {
        match std::env::var("E2E_MODE").as_deref() {
            Err(_) | Ok("") | Ok("cluster") => Ok(Mode::Cluster),
            Ok("local") => Ok(Mode::Local),
            Ok(other) => anyhow::bail!("E2E_MODE={other:?}: expected `cluster` or `local`"),
        }
    }
}

/// Whether a cluster was configured for this run; prints why not.
///
/// Only an explicit `KUBECONFIG` counts: the suite creates namespaces and (in local mode) CRDs,
/// which must never happen by accident against a default context.
pub fn cluster_configured() -> bool {
    match std::env::var_os("KUBECONFIG") {
        Some(path) if !path.is_empty() => true,
        _ => {
            eprintln!("skipped: no cluster (set KUBECONFIG to run the end-to-end suite)");
            false
        }
    }
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(error) => error.context(format!("timed out after {limit:?} waiting for {what}")),
                None => anyhow::anyhow!("timed out after {limit:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
