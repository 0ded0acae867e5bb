//! Tollgate's control plane: read objects, compile them into a Snapshot, report what is wrong.
//!
//! ```text
//!  folder of manifests ──► load ──► Inputs ──► compile (pure) ──► Snapshot ──► proxy
//!   (or the Kubernetes API)                        │
//!                                                  └──► ObjectReport per object (conditions,
//!                                                       diagnostics) ──► status / validate / /config
//! ```

pub mod admin;
pub mod canary;
pub mod compile;
pub mod debounce;
pub mod diagnostics;
pub mod distribute;
pub mod fingerprint;
pub mod inputs;
pub mod leader;
pub mod load;
pub mod load_cache;
pub mod metrics;
pub mod publish;
pub mod reconcile;
pub mod replica_lease;
pub mod replicas;
pub mod source;
pub mod status;
pub mod tls_reload;
pub mod view;

pub use compile::{Compiled, compile};
pub use diagnostics::ObjectReport;
pub use inputs::{Inputs, Kind, Object};
/// The kube client crate, for the binary that wires the controller.
pub use kube;

/// Resolves once a shutdown signal (a `watch` flipping to `true`) has fired, or its sender is gone.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
