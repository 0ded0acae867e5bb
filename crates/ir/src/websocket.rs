//! WebSocket settings of the Snapshot: managed WebSocket APIs (route selection, limits, who may
//! call the @connections management API) and the timeouts of passed-through connections.

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::auth::AccessKey;

/// The route key of the Route invoked when a client connects (it may refuse the connection).
pub const CONNECT: &str = "$connect";
/// The route key of the Route invoked once when a connection ends.
pub const DISCONNECT: &str = "$disconnect";
/// The route key of the Route that receives messages no other route key matches.
pub const DEFAULT: &str = "$default";

/// A managed WebSocket API (`protocol: WebSocket`): the proxy holds the client connection and
/// invokes the Route whose route key a message selects.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketApi {
    /// The JSON path, into text messages, of the route key (`["action"]` for
    /// `$request.body.action`).
    pub route_selection: Vec<String>,
    /// Frame and message sizes, idle timeout and lifetime of client connections.
    pub limits: WebSocketLimits,
    /// Access keys whose SigV4 signatures the @connections management API accepts for this API's
    /// connections. Empty: nobody may call it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections_keys: Vec<AccessKey>,
}

/// Limits of a managed WebSocket API's client connections.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketLimits {
    /// Largest frame a client may send.
    pub max_frame_bytes: u64,
    /// Largest message (all frames together) a client may send.
    pub max_message_bytes: u64,
    /// Time without a message in either direction after which the connection is closed.
    pub idle_timeout: Millis,
    /// Time after which a connection is closed, however busy.
    pub max_connection_duration: Millis,
}

impl Default for WebSocketLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 32 * 1024,
            max_message_bytes: 128 * 1024,
            idle_timeout: Millis(600_000),
            max_connection_duration: Millis(7_200_000),
        }
    }
}

/// Timeouts of a WebSocket connection an HTTP Route passes through to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Passthrough {
    /// Time without a byte in either direction after which the connection is closed.
    pub idle_timeout: Millis,
    /// Time after which the connection is closed, however busy.
    pub max_connection_duration: Millis,
}

impl Default for Passthrough {
    fn default() -> Self {
        Self { idle_timeout: Millis(600_000), max_connection_duration: Millis(7_200_000) }
    }
}
