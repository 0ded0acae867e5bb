//! Connected proxies: one session per subscription, with the version it last applied, and the
//! per-track counts they report for canary analysis.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tollgate_ir::ObjectKey;
use tollgate_ir::canary::TrackReport;

use crate::metrics::ControllerMetrics;
use crate::publish::Published;

/// One connected proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The fleet it subscribed to.
    pub fleet: String,
    /// Who it authenticated as (a ServiceAccount, or `token`).
    pub identity: String,
    /// The name it gave (its pod name).
    pub proxy: String,
    /// The version it last reported applied (0: none yet).
    pub applied: u64,
}

/// Proxy counts for one GatewayAPI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiProxies {
    /// Connected proxies of the API's fleet.
    pub connected: u32,
    /// Those that applied a version carrying the API's latest generation.
    pub up_to_date: u32,
}

/// Every session of this replica.
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    changed: watch::Sender<u64>,
    metrics: Arc<ControllerMetrics>,
    /// Per-track counts reported since the canary analysis last took them.
    stats: Mutex<Vec<TrackReport>>,
}

/// Most track reports kept between two takes (the analysis takes them several times a second;
/// this bounds memory when it does not run, e.g. on a replica that is not the leader).
const MAX_PENDING_REPORTS: usize = 100_000;

/// Removes its session when dropped (the subscription ended).
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    /// The session id.
    pub id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.sessions.sessions.lock() {
            sessions.remove(&self.id);
        }
        self.sessions.touch();
    }
}

impl Sessions {
    /// No sessions.
    pub fn new(metrics: Arc<ControllerMetrics>) -> Arc<Sessions> {
        Arc::new(Sessions {
            sessions: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            metrics,
            stats: Mutex::default(),
        })
    }

    /// Opens a session.
    pub fn open(self: &Arc<Self>, fleet: &str, identity: &str, proxy: &str) -> SessionGuard {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            fleet: fleet.to_string(),
            identity: identity.to_string(),
            proxy: proxy.to_string(),
            applied: 0,
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(id.clone(), session);
        }
        self.touch();
        SessionGuard { sessions: Arc::clone(self), id }
    }

    /// Records that a session applied `version`; observes the propagation delay when that is the
    /// fleet's current version. `false` when the session is unknown (the proxy should resubscribe).
    pub fn applied(&self, id: &str, version: u64, published: &Published) -> bool {
        let fleet = {
            let Ok(mut sessions) = self.sessions.lock() else { return false };
            let Some(session) = sessions.get_mut(id) else { return false };
            if session.applied == version {
                return true;
            }
            session.applied = version;
            session.fleet.clone()
        };
        if let Some(view) = published.fleet(&fleet)
            && view.version() == version
            && let Some(changed_at) = view.changed_at
        {
            let kind = if view.full_version == version { "full" } else { "endpoints" };
            self.metrics.propagation.with_label_values(&[kind]).observe(changed_at.elapsed().as_secs_f64());
        }
        self.touch();
        true
    }

    /// Keeps the per-track counts a session reported, for the canary analysis. `false` when the
    /// session is unknown.
    pub fn record_stats(&self, id: &str, reports: Vec<TrackReport>) -> bool {
        let known = self.sessions.lock().map(|s| s.contains_key(id)).unwrap_or(false);
        if !known {
            return false;
        }
        let mut pending = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() + reports.len() <= MAX_PENDING_REPORTS {
            pending.extend(reports);
        }
        true
    }

    /// Takes every per-track count reported since the last call.
    pub fn take_stats(&self) -> Vec<TrackReport> {
        std::mem::take(&mut *self.stats.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn touch(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        self.update_gauge();
    }

    fn update_gauge(&self) {
        let Ok(sessions) = self.sessions.lock() else { return };
        let mut counts: BTreeMap<(String, u64), i64> = BTreeMap::new();
        for s in sessions.values() {
            *counts.entry((s.fleet.clone(), s.applied)).or_default() += 1;
        }
        // Reset first: versions come and go, and a label set must disappear with the last proxy.
        self.metrics.connected_proxies.reset();
        for ((fleet, version), n) in counts {
            self.metrics.connected_proxies.with_label_values(&[fleet.as_str(), &version.to_string()]).set(n);
        }
    }

    /// Wakes on every session change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every session, sorted by fleet and proxy name.
    pub fn list(&self) -> Vec<Session> {
        let mut all: Vec<Session> =
            self.sessions.lock().map(|s| s.values().cloned().collect()).unwrap_or_default();
        all.sort_by(|a, b| a.fleet.cmp(&b.fleet).then_with(|| a.proxy.cmp(&b.proxy)));
        all
    }

    /// For every published API: connected proxies of its fleet and how many serve its latest
    /// generation.
    pub fn api_counts(&self, published: &Published) -> BTreeMap<ObjectKey, ApiProxies> {
        let sessions = self.list();
        published
            .apis
            .iter()
            .map(|(key, api)| {
                let fleet: Vec<&Session> = sessions.iter().filter(|s| s.fleet == api.fleet).collect();
                let counts = ApiProxies {
                    connected: u32::try_from(fleet.len()).unwrap_or(u32::MAX),
                    up_to_date: u32::try_from(fleet.iter().filter(|s| s.applied >= api.since).count())
                        .unwrap_or(u32::MAX),
                };
                (key.clone(), counts)
            })
            .collect()
    }
}
