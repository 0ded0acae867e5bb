//! Tollgate's control plane: read objects, compile them into a Snapshot, report what is wrong.
//!
//! ```text
//!  folder of manifests ──► load ──► Inputs ──► compile (pure) ──► Snapshot ──► proxy
//!   (or the Kubernetes API)                        │
//!                                                  └──► ObjectReport per object (conditions,
//!                                                       diagnostics) ──► status / validate / /config
//! ```

pub mod compile;
pub mod diagnostics;
pub mod fingerprint;
pub mod inputs;
pub mod load;
pub mod view;

pub use compile::{Compiled, compile};
pub use diagnostics::ObjectReport;
pub use inputs::{Inputs, Kind, Object};
