//! Tollgate's data plane: runtime tables built from a Snapshot and the HTTP request pipeline.
//!
//! ```text
//!  Snapshot ──► Runtime::build (off the hot path) ──► ArcSwap<Runtime> ──► Gateway::handle
//!                 host table, stages, route tables,        │                 (pipeline, one
//!                 per-route policy, backends, certs        │                  Arc per request)
//!                                                          └──► RuntimeCertResolver (SNI)
//! ```
//! `server` accepts connections (HTTP/1.1, h2c, TLS with ALPN) and hands requests to
//! [`gateway::Gateway`]; `admin` serves health, readiness, metrics and the redacted config view;
//! `websocket` holds WebSocket passthrough and managed WebSocket sessions, `connections` the
//! @connections management API for them.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod canary;
pub mod config_view;
pub mod connections;
pub mod context;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod metrics;
pub use tollgate_ir::path as normalize;
pub mod observe;
pub mod rewrite;
pub mod router;
pub mod runtime;
pub mod server;
pub mod subscribe;
pub mod tls;
pub mod traffic;
pub mod upstream;
pub mod websocket;

pub use gateway::{ConnInfo, Gateway};
pub use server::{ServerSettings, serve};
