//! Distribution: the server proxies subscribe to, who is connected, and how they authenticate.
//!
//! ```text
//!  Publisher ──watch──► subscription task per proxy ──frames──► proxy
//!                                  │                                │
//!                             Sessions ◄──── POST applied version ──┘
//!                                  └──► status (proxies per API) and metrics
//! ```

pub mod auth;
pub mod server;
pub mod sessions;

pub use auth::{Authenticator, Identity};
pub use server::{DistributionServer, server_tls};
pub use sessions::Sessions;
