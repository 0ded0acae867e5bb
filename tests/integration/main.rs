//! End-to-end tests: the real `tollgate` binary in standalone mode, real loopback backends, real
//! HTTP/1.1, HTTP/2 and TLS clients. Every test binds random ports on 127.0.0.1 and is bounded in
//! time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod admin;
mod auth_attacks;
mod auth_external;
mod auth_jwt;
mod auth_mtls;
mod auth_policy;
mod auth_sigv4;
mod auth_support;
mod canary;
mod distribution;
mod lifecycle;
mod limits;
mod protocols;
mod proxying;
mod redis;
mod routing;
mod service_export;
mod traffic_cache;
mod traffic_http;
mod traffic_plans;
mod traffic_throttle;
mod upstream_h1;
mod validate;
mod websocket;
