//! End-to-end tests: the real `tollgate` binary in standalone mode, real loopback backends, real
//! HTTP/1.1, HTTP/2 and TLS clients. Every test binds random ports on 127.0.0.1 and is bounded in
//! time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

mod admin;
mod lifecycle;
mod limits;
mod protocols;
mod proxying;
mod routing;
mod validate;
