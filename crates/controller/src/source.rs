//! Where objects come from — a manifest folder or the Kubernetes API — behind one interface:
//! a source keeps every object in memory and marks which kinds changed; the reconcile loop takes
//! the marks, waits for the burst to settle, and reads the objects.

pub mod folder;
pub mod kube;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use crate::inputs::Kind;
use crate::load::Loaded;

/// A source of objects.
pub trait Source: Send + Sync + 'static {
    /// Every object as of now, or `None` until every store has synced at least once (a partial
    /// view after a restart would drop routes).
    fn current(&self) -> Option<Arc<Loaded>>;

    /// The last error reading the source, while it keeps its last good objects (for `/config`).
    fn last_error(&self) -> Option<String> {
        None
    }
}

/// The kinds that changed since the reconcile loop last looked, and a wake-up for it.
#[derive(Clone, Default)]
pub struct Changes {
    inner: Arc<ChangesInner>,
}

#[derive(Default)]
struct ChangesInner {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Default)]
struct Pending {
    kinds: BTreeSet<Kind>,
    first_seen: Option<Instant>,
}

/// What changed, as taken by the reconcile loop.
#[derive(Debug, Default, Clone)]
pub struct ChangeSet {
    /// The kinds with at least one added, modified or deleted object.
    pub kinds: BTreeSet<Kind>,
    /// When the first of these changes was seen (start of the propagation delay).
    pub first_seen: Option<Instant>,
}

impl ChangeSet {
    /// Whether only endpoints changed: the cheap path applies.
    pub fn endpoints_only(&self) -> bool {
        !self.kinds.is_empty() && self.kinds.iter().all(|k| *k == Kind::EndpointSlice)
    }
}

impl Changes {
    /// Records a change of `kind` and wakes the reconcile loop.
    pub fn mark(&self, kind: Kind) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.kinds.insert(kind);
            pending.first_seen.get_or_insert_with(Instant::now);
        }
        self.inner.notify.notify_one();
    }

    /// Takes the changes recorded so far.
    pub fn take(&self) -> ChangeSet {
        match self.inner.pending.lock() {
            Ok(mut pending) => {
                let taken = std::mem::take(&mut *pending);
                ChangeSet { kinds: taken.kinds, first_seen: taken.first_seen }
            }
            Err(_) => ChangeSet::default(),
        }
    }

    /// Waits for the next change (returns at once if one arrived since the last wait).
    pub async fn changed(&self) {
        self.inner.notify.notified().await;
    }
}
