//! The Hub: this replica's live WebSocket connections by id, the @connections credentials of
//! each WebSocket API, and the drain signal every session watches.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tollgate_ir as ir;

use super::id::ConnectionId;
use super::metrics::WebSocketMetrics;

/// What a @connections call asks a session to do.
#[derive(Debug)]
pub enum Outbound {
    /// Send this data as a frame (text when it is UTF-8, binary otherwise).
    Data(Bytes),
    /// Close the connection (status 1000).
    Close,
}

/// Why an outbound message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection is gone (or ending).
    #[error("the connection is gone")]
    Gone,
    /// The client does not read fast enough: its queue is full.
    #[error("the connection's send queue is full")]
    Full,
}

/// One live managed connection, as the @connections API sees it.
pub struct Connection {
    /// The connection id.
    pub id: ConnectionId,
    /// `namespace/name` of the GatewayAPI.
    pub api: Arc<str>,
    /// Stage name.
    pub stage: Arc<str>,
    /// When the client connected.
    pub connected_at: time::OffsetDateTime,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The client's `User-Agent`, if it sent one.
    pub user_agent: Option<String>,
    last_active_ms: AtomicI64,
    outbound: mpsc::Sender<Outbound>,
}

impl Connection {
    /// A connection record and the receiving end of its outbound queue.
    pub fn new(
        id: ConnectionId,
        api: Arc<str>,
        stage: Arc<str>,
        source_ip: IpAddr,
        user_agent: Option<String>,
    ) -> (Arc<Connection>, mpsc::Receiver<Outbound>) {
        // Small: a push waits for nobody; a client that cannot keep up gets 429s, not memory.
        let (tx, rx) = mpsc::channel(64);
        let now = time::OffsetDateTime::now_utc();
        let connection = Connection {
            id,
            api,
            stage,
            connected_at: now,
            source_ip,
            user_agent,
            last_active_ms: AtomicI64::new(unix_ms(now)),
            outbound: tx,
        };
        (Arc::new(connection), rx)
    }

    /// Records activity (a message either way) now.
    pub fn touch(&self) {
        self.last_active_ms.store(unix_ms(time::OffsetDateTime::now_utc()), Ordering::Relaxed);
    }

    /// When the last message crossed the connection.
    pub fn last_active(&self) -> time::OffsetDateTime {
        let ms = self.last_active_ms.load(Ordering::Relaxed);
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(self.connected_at)
    }

    /// Queues a message for the client.
    pub fn send(&self, message: Outbound) -> Result<(), SendError> {
        self.outbound.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Gone,
        })
    }
}

fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Access keys of one API's @connections API, by access key id.
pub type ConnectionsKeys = Arc<Vec<ir::auth::AccessKey>>;

/// This replica's WebSocket state. One per process; outlives configuration swaps.
pub struct Hub {
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    keys: arc_swap::ArcSwap<HashMap<String, ConnectionsKeys>>,
    owner: OnceLock<SocketAddr>,
    /// WebSocket metrics.
    pub metrics: WebSocketMetrics,
    drain: watch::Sender<bool>,
    active: watch::Sender<usize>,
}

impl Hub {
    /// An empty hub whose metrics go to `metrics`.
    pub fn new(metrics: &crate::metrics::Metrics) -> Arc<Hub> {
        Arc::new(Hub {
            connections: Mutex::new(HashMap::new()),
            keys: arc_swap::ArcSwap::from_pointee(HashMap::new()),
            owner: OnceLock::new(),
            metrics: WebSocketMetrics::new(metrics),
            drain: watch::Sender::new(false),
            active: watch::Sender::new(0),
        })
    }

    /// Records the address other replicas reach this replica's connections listener at; new
    /// connection ids carry it. Set once, when the listener starts.
    pub fn set_owner(&self, address: SocketAddr) {
        let _ = self.owner.set(address);
    }

    /// This replica's connections-listener address, if it has one.
    pub fn owner(&self) -> Option<SocketAddr> {
        self.owner.get().copied()
    }

    /// Takes the @connections credentials of every WebSocket API of `snapshot`.
    pub fn configure(&self, snapshot: &ir::Snapshot) {
        let table: HashMap<String, ConnectionsKeys> = snapshot
            .apis
            .iter()
            .filter_map(|api| {
                let ws = api.web_socket.as_ref()?;
                Some((api.key.to_string(), Arc::new(ws.connections_keys.clone())))
            })
            .collect();
        self.keys.store(Arc::new(table));
    }

    /// The access keys that may manage connections of `api`.
    pub fn keys_for(&self, api: &str) -> ConnectionsKeys {
        self.keys.load().get(api).cloned().unwrap_or_default()
    }

    /// Every access key of every WebSocket API (for calls about connections of other replicas,
    /// authenticated before they are forwarded).
    pub fn all_keys(&self) -> Vec<ir::auth::AccessKey> {
        let table = self.keys.load();
        let mut all: Vec<ir::auth::AccessKey> = table.values().flat_map(|k| k.iter().cloned()).collect();
        all.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
        all.dedup_by(|a, b| a.access_key_id == b.access_key_id);
        all
    }

    /// Registers a live connection.
    pub fn insert(&self, connection: Arc<Connection>) {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(connection.id.as_str().to_string(), connection);
    }

    /// Removes a connection; `true` when it was registered.
    pub fn remove(&self, id: &ConnectionId) -> bool {
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(id.as_str()).is_some()
    }

    /// A live connection of this replica.
    pub fn get(&self, id: &str) -> Option<Arc<Connection>> {
        let map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).cloned()
    }

    /// Live managed connections on this replica.
    pub fn len(&self) -> usize {
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no managed connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A guard counting one open connection of `kind` (`managed`, `passthrough`) until dropped.
    pub fn open(self: &Arc<Self>, kind: &'static str) -> SessionGuard {
        self.active.send_modify(|n| *n += 1);
        self.metrics.connections.with_label_values(&[kind]).inc();
        self.metrics.connects.with_label_values(&[kind]).inc();
        SessionGuard { hub: Arc::clone(self), kind }
    }

    /// A receiver that flips to `true` when draining starts.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Starts draining: every session closes (managed ones with status 1001 and their
    /// `$disconnect`), then waits up to `timeout` for them to finish.
    pub async fn drain(&self, timeout: Duration) {
        self.drain.send_replace(true);
        let mut active = self.active.subscribe();
        if tokio::time::timeout(timeout, active.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!(open = *self.active.borrow(), "WebSocket drain timed out");
        }
    }
}

/// Counts one open connection; dropping it records the end.
pub struct SessionGuard {
    hub: Arc<Hub>,
    kind: &'static str,
}

impl SessionGuard {
    /// Records why the connection ended (call once, before dropping).
    pub fn ended(&self, reason: &'static str) {
        self.hub.metrics.disconnects.with_label_values(&[self.kind, reason]).inc();
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.hub.metrics.connections.with_label_values(&[self.kind]).dec();
        self.hub.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}
