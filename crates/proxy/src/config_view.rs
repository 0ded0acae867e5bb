//! The document served at the admin port's `/config`: set ready-made, or deferred and built on
//! the first read.
//!
//! Why deferred: in proxy mode the document is a view of the whole snapshot (10,000 Routes are
//! tens of megabytes of JSON values), and endpoint updates arrive as often as pods come and go.
//! Building it for every update cost more CPU than everything else a proxy does for one (about
//! 0.4 s per update at 10,000 Routes), for a page that is read now and then. A deferred view is
//! built by the reader who first asks for it; later updates replace the pending one unbuilt. Once
//! built it is kept as text (the JSON tree of 10,000 Routes takes some 70 MB; its text, 10).

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

/// Builds a `/config` document when it is first read.
pub type DeferredView = Box<dyn FnOnce() -> serde_json::Value + Send>;

/// A built document.
enum Document {
    /// As set.
    Tree(Arc<serde_json::Value>),
    /// Built from a deferred view, and rendered.
    Text(Arc<str>),
}

/// The `/config` document, built or pending.
pub struct ConfigView {
    /// The latest built document.
    built: ArcSwap<Document>,
    /// A newer document, not built yet.
    pending: Mutex<Option<DeferredView>>,
    /// Held while a pending document is built: a concurrent reader waits for it instead of
    /// getting the older one.
    building: Mutex<()>,
}

impl ConfigView {
    /// A view serving `initial` until something newer is set.
    pub fn new(initial: serde_json::Value) -> ConfigView {
        ConfigView {
            built: ArcSwap::from_pointee(Document::Tree(Arc::new(initial))),
            pending: Mutex::new(None),
            building: Mutex::new(()),
        }
    }

    /// Serves `view` from now on (a pending one is dropped).
    pub fn set(&self, view: serde_json::Value) {
        let _building = lock(&self.building);
        *lock(&self.pending) = None;
        self.built.store(Arc::new(Document::Tree(Arc::new(view))));
    }

    /// Serves what `build` returns from now on, built when first read (a pending one is dropped
    /// unbuilt).
    pub fn defer(&self, build: DeferredView) {
        *lock(&self.pending) = Some(build);
    }

    /// Drops a pending document unbuilt, and with it what it holds (e.g. a snapshot about to be
    /// changed in place). The built one keeps being served until the next `set` or `defer`.
    pub fn discard_pending(&self) {
        drop(lock(&self.pending).take());
    }

    /// The current document as JSON text (pretty), building a pending one first. May take long
    /// (a large snapshot): call it off the async workers.
    pub fn render(&self) -> Arc<str> {
        match &*self.current() {
            Document::Tree(tree) => serde_json::to_string_pretty(&**tree).unwrap_or_default().into(),
            Document::Text(text) => Arc::clone(text),
        }
    }

    /// The current document, building a pending one first (see [`ConfigView::render`]).
    pub fn get(&self) -> Arc<serde_json::Value> {
        match &*self.current() {
            Document::Tree(tree) => Arc::clone(tree),
            Document::Text(text) => Arc::new(serde_json::from_str(text).unwrap_or_default()),
        }
    }

    fn current(&self) -> Arc<Document> {
        let _building = lock(&self.building);
        let pending = lock(&self.pending).take();
        if let Some(build) = pending {
            let text = serde_json::to_string_pretty(&build()).unwrap_or_default();
            self.built.store(Arc::new(Document::Text(text.into())));
        }
        self.built.load_full()
    }
}

/// Locks `mutex`; a panic while it was held left nothing half-done that matters here.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    #[test]
    fn a_deferred_view_is_built_once_on_the_first_read_and_only_the_latest() {
        let view = ConfigView::new(json!({"version": null}));
        let builds = Arc::new(AtomicUsize::new(0));
        for version in 1..=3 {
            let builds = Arc::clone(&builds);
            view.defer(Box::new(move || {
                builds.fetch_add(1, Ordering::SeqCst);
                json!({"version": version})
            }));
        }
        assert_eq!(builds.load(Ordering::SeqCst), 0, "nothing built before a read");
        let pretty = serde_json::to_string_pretty(&json!({"version": 3})).unwrap();
        assert_eq!(*view.render(), *pretty);
        assert_eq!(*view.get(), json!({"version": 3}));
        assert_eq!(builds.load(Ordering::SeqCst), 1, "only the latest, once");
    }

    #[test]
    fn a_set_view_replaces_a_pending_one_and_discarding_keeps_the_built_one() {
        let view = ConfigView::new(json!({"version": null}));
        view.defer(Box::new(|| json!({"version": 1})));
        view.set(json!({"version": 2}));
        assert_eq!(*view.get(), json!({"version": 2}));
        let held = Arc::new(());
        let in_build = Arc::clone(&held);
        view.defer(Box::new(move || json!({"holds": Arc::strong_count(&in_build)})));
        assert_eq!(Arc::strong_count(&held), 2);
        view.discard_pending();
        assert_eq!(Arc::strong_count(&held), 1, "what the pending view held is released");
        assert_eq!(*view.get(), json!({"version": 2}));
    }
}
