//! The @connections management API for backends of managed WebSocket APIs, compatible with AWS
//! SDK `apigatewaymanagementapi` clients: `POST /@connections/{id}` sends the body as a frame,
//! `GET` describes the connection, `DELETE` closes it (also under a stage prefix,
//! `/{stage}/@connections/{id}`). Served on its own listener, authenticated with SigV4
//! (service `execute-api`, any region) against the API's `connectionsApi` access keys.
//!
//! Cross-replica: a connection id carries its owner's connections-listener address
//! ([`crate::websocket::ConnectionId`]). A call for a connection this replica does not hold is
//! authenticated here, then forwarded unchanged (same method, path, headers, signed body) to
//! the owner, which authenticates it again against the connection's own API — the signature is
//! the only credential, and it never leaves the request it signs.

mod forward;
mod handler;
mod signature;

pub use handler::serve;
