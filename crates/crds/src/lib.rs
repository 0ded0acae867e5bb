//! Tollgate's Kubernetes API: the custom resources of group `tollgate.dev`, version `v1alpha1`.
//!
//! Placeholder while the other kinds are written.

#![allow(missing_docs)]
pub mod common;
pub mod gateway_api;
