//! WebSocket: passthrough of upgraded connections to backends that speak WebSocket, and managed
//! WebSocket APIs (`protocol: WebSocket`), where the proxy holds the client's connection and
//! invokes Routes chosen by route key.
//!
//! ```text
//!  upgrade request ─► gateway pipeline (policy, throttles, authorization, plans) ─┬─► passthrough:
//!                                                                                 │   101 + byte pipe
//!                                                                                 └─► managed: $connect
//!  session task: frames ─► dispatch (route selection) ─► integration POST ─► reply frame
//!                 ▲                                                          (context headers)
//!                 └── Hub (live connections by id) ◄── @connections API (crate::connections)
//! ```

pub mod dispatch;
pub mod id;
mod messages;
pub mod metrics;
pub mod passthrough;
pub mod registry;
pub mod session;
pub mod stage;
pub mod upgrade;

pub use id::ConnectionId;
pub use registry::Hub;
pub use stage::ManagedStage;
