//! `tollgate standalone`: compile a manifest folder, serve it, reload it when it changes.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tollgate_controller::canary::{Analyzer, SystemClock};
use tollgate_controller::fingerprint::Fingerprint;
use tollgate_controller::load_cache::LoadCache;
use tollgate_controller::{compile, load, view};
use tollgate_proxy::{Gateway, server};

use crate::StandaloneArgs;
use crate::serve::{build_gateway, drain_on_signal, spawn_listeners};

/// Runs until SIGTERM / SIGINT, then drains.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let gateway = build_gateway(&args.serve)?;

    // The first load must succeed: there is no last good configuration to fall back to.
    let mut reloader = Reloader::new(args.manifests.clone(), Arc::clone(&gateway));
    reloader.reload().with_context(|| format!("loading manifests from {}", args.manifests.display()))?;

    let settings = args.serve.server_settings();
    let (stop, shutdown) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    spawn_listeners(&mut tasks, &gateway, &args.serve, &shutdown).await?;

    // The folder is read and compiled on a thread of its own, not on the runtime: reading files
    // blocks, and compiling a large folder takes milliseconds to seconds, during which a runtime
    // worker would serve no request (with `--workers 1`, none at all).
    let (stop_reloading, reload_stopped) = mpsc::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let interval = args.serve.reload_interval;
    std::thread::Builder::new()
        .name("tollgate-reload".into())
        .spawn(move || {
            // Applying a configuration may start tasks (health checks, pools): on this runtime.
            let _runtime = runtime.enter();
            reloader.run(interval, &reload_stopped);
        })
        .context("starting the manifest reload thread")?;
    let mut reload_shutdown = shutdown.clone();
    tasks.spawn(async move {
        server::stopped(&mut reload_shutdown).await;
        drop(stop_reloading);
    });

    drain_on_signal(tasks, stop, &gateway, settings.drain_timeout).await;
    Ok(())
}

/// How often the in-process canary analysis takes the local counts and checks its intervals.
const CANARY_TICK: Duration = Duration::from_millis(200);

/// Reloads the folder when its fingerprint changes; keeps the last good configuration when a
/// reload fails. Runs the canary analysis in-process: its effective weights are handed to compile
/// as the GatewayAPIs' status (as the controller does through the API server).
struct Reloader {
    dir: PathBuf,
    gateway: Arc<Gateway>,
    fingerprint: Option<Fingerprint>,
    version: u64,
    content_hash: String,
    loaded: Option<load::Loaded>,
    /// Parsed files: a change re-parses only the files that changed.
    cache: LoadCache,
    canary: Analyzer<SystemClock>,
}

impl Reloader {
    fn new(dir: PathBuf, gateway: Arc<Gateway>) -> Reloader {
        Reloader {
            dir,
            gateway,
            fingerprint: None,
            version: 0,
            content_hash: String::new(),
            loaded: None,
            cache: LoadCache::new(),
            canary: Analyzer::new(SystemClock),
        }
    }

    /// Checks the folder every `interval` and runs the canary analysis every [`CANARY_TICK`]
    /// until `stop` is signalled (a message, or its sender dropped). A tick that runs late delays
    /// the next one; none is made up for.
    fn run(mut self, interval: Duration, stop: &mpsc::Receiver<()>) {
        let mut next_poll = Instant::now() + interval;
        let mut next_canary = Instant::now() + CANARY_TICK;
        loop {
            let wait = next_poll.min(next_canary).saturating_duration_since(Instant::now());
            if !matches!(stop.recv_timeout(wait), Err(mpsc::RecvTimeoutError::Timeout)) {
                return;
            }
            let now = Instant::now();
            if now >= next_poll {
                self.survive_panic("reloading the manifests", Reloader::poll);
                next_poll = Instant::now() + interval;
            }
            if now >= next_canary {
                self.survive_panic("the canary analysis", Reloader::canary_tick);
                next_canary = Instant::now() + CANARY_TICK;
            }
        }
    }

    /// Runs one step of the loop. A panic in it (a bug, in the loader, the compiler or the
    /// analysis) is logged, counted and shown in `/config` like a failed reload, and the loop goes
    /// on: the last good configuration keeps serving and the next change to the folder is loaded.
    fn survive_panic(&mut self, step: &str, run: impl FnOnce(&mut Reloader)) {
        let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| run(self))) else {
            return;
        };
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(step, panic = %message, "panicked; still serving the last good configuration");
        // The parse cache may hold half an update: the next reload reads every file again.
        self.cache = LoadCache::new();
        // Not the message: it is whatever the bug put there, and `/config` is served to anyone
        // who can reach the admin port. The log has it.
        self.record_error(format!("{step} panicked (a bug in Tollgate; the message is in the log)"));
    }

    /// Counts a failed reload and shows its error in `/config`, next to the configuration that
    /// keeps serving (the next successful reload replaces the view, and with it the error).
    fn record_error(&self, error: String) {
        self.gateway.metrics().config_errors.inc();
        let mut current = (*self.gateway.config_view()).clone();
        if let Some(object) = current.as_object_mut() {
            object.insert("lastError".into(), serde_json::Value::String(error));
        }
        self.gateway.set_config_view(current);
    }

    /// Feeds the local per-track counts to the analysis; recompiles when a weight changed.
    fn canary_tick(&mut self) {
        let reports = self.gateway.metrics().drain_track_stats();
        self.canary.record(&reports);
        let decisions = self.canary.tick();
        if decisions.is_empty() {
            return;
        }
        for (id, decision) in &decisions {
            if decision.verdict.is_step() {
                tracing::warn!(api = %id.api, stage = %id.stage, verdict = decision.verdict.reason(), weight = decision.weight.percent(), "{}", decision.message);
            } else {
                tracing::info!(api = %id.api, stage = %id.stage, verdict = decision.verdict.reason(), weight = decision.weight.percent(), "{}", decision.message);
            }
        }
        self.compile_and_apply();
    }

    fn poll(&mut self) {
        match Fingerprint::of(&self.dir) {
            Ok(fingerprint) if Some(&fingerprint) == self.fingerprint.as_ref() => {}
            Ok(_) | Err(_) => {
                if let Err(error) = self.reload() {
                    tracing::error!(error = %format!("{error:#}"), "reload failed; still serving the last good configuration");
                }
            }
        }
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        // Fingerprint before reading, so a write that lands during the read triggers another reload.
        let fingerprint = Fingerprint::of(&self.dir).ok();
        let loaded = match self.cache.load_dir(&self.dir) {
            Ok(loaded) => loaded,
            Err(error) => {
                self.fingerprint = fingerprint;
                self.record_error(error.to_string());
                return Err(error.into());
            }
        };
        self.fingerprint = fingerprint;
        let files = loaded.files.len();
        self.loaded = Some(loaded);
        if let Some(compiled) = self.compile_and_apply() {
            log_reports(&self.dir, &compiled.reports);
            tracing::debug!(files, "manifests read");
        }
        Ok(())
    }

    /// Compiles what was loaded with the analysis' weights, applies it when it changed, and
    /// refreshes `/config`.
    fn compile_and_apply(&mut self) -> Option<compile::Compiled> {
        let loaded = self.loaded.as_mut()?;
        let statuses = self.canary.statuses();
        for api in &mut loaded.inputs.gateway_apis {
            let key = api.key();
            let stages: Vec<tollgate_crds::StageStatus> = statuses
                .iter()
                .filter(|(id, _)| id.api == key)
                .map(|(id, status)| tollgate_crds::StageStatus {
                    name: id.stage.clone(),
                    canary: Some(status.clone()),
                })
                .collect();
            api.object.status.get_or_insert_with(Default::default).stages = stages;
        }
        let mut compiled = compile::compile_loaded(loaded);
        self.canary.sync(&compiled.snapshot, |_| None);
        if compiled.snapshot.content_hash != self.content_hash || self.version == 0 {
            self.version += 1;
            self.content_hash = compiled.snapshot.content_hash.clone();
            compiled.snapshot.version = self.version;
            self.gateway.apply(&compiled.snapshot);
            tracing::info!(
                version = self.version,
                apis = compiled.snapshot.apis.len(),
                files = loaded.files.len(),
                "configuration loaded"
            );
        } else {
            compiled.snapshot.version = self.version;
        }
        let mut config = view::config_view(&compiled.snapshot, &compiled.reports, None);
        if let Some(object) = config.as_object_mut() {
            object.insert("canaries".into(), self.canary.view(&compiled.snapshot));
        }
        self.gateway.set_config_view(config);
        Some(compiled)
    }
}

fn log_reports(dir: &Path, reports: &[tollgate_controller::ObjectReport]) {
    for report in reports {
        for d in &report.diagnostics {
            let file = report.file.as_deref().map(|f| f.strip_prefix(dir).unwrap_or(f).display().to_string());
            let object = format!("{}/{}", report.kind, report.key);
            match d.severity {
                tollgate_controller::diagnostics::Severity::Error => {
                    tracing::warn!(file, object, field = %d.field, reason = d.reason, "{}", d.message)
                }
                tollgate_controller::diagnostics::Severity::Warning => {
                    tracing::info!(file, object, field = %d.field, reason = d.reason, "{}", d.message)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proxy::access_log::AccessLog;
    use tollgate_proxy::metrics::Metrics;
    use tollgate_proxy::upstream::{UpstreamClient, UpstreamSettings};

    const API: &str = "apiVersion: tollgate.dev/v1alpha1
kind: GatewayAPI
metadata: {name: shop, namespace: shop}
spec:
  stages: [{name: prod}]
";

    fn mock_route(name: &str, path: &str) -> String {
        format!(
            "apiVersion: tollgate.dev/v1alpha1
kind: Route
metadata: {{name: {name}, namespace: shop}}
spec:
  apiRef: {{name: shop}}
  match: {{methods: [GET], path: {path}}}
  integration: {{mock: {{status: 200, body: ok}}}}
"
        )
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
    }

    fn gateway() -> Arc<Gateway> {
        let metrics = Metrics::new().unwrap_or_else(|e| panic!("{e}"));
        let client = UpstreamClient::new(&UpstreamSettings::default()).unwrap_or_else(|e| panic!("{e}"));
        Gateway::new(client, Arc::clone(&metrics), AccessLog::disabled(metrics))
    }

    #[test]
    fn a_panic_while_reloading_is_reported_and_the_next_change_still_loads() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let runtime = runtime.unwrap_or_else(|e| panic!("{e}"));
        let _entered = runtime.enter();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write(dir.path(), "api.yaml", API);
        write(dir.path(), "health.yaml", &mock_route("health", "/health"));
        let gateway = gateway();
        let mut reloader = Reloader::new(dir.path().to_path_buf(), Arc::clone(&gateway));
        reloader.reload().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(gateway.config_view()["version"], 1);

        // A bug in a step: the loop survives it, says so, and keeps the configuration serving.
        reloader.survive_panic("reloading the manifests", |_| panic!("compiler bug at route 7"));
        let view = gateway.config_view();
        assert_eq!(
            view["lastError"],
            "reloading the manifests panicked (a bug in Tollgate; the message is in the log)"
        );
        assert_eq!(view["version"], 1, "the last good configuration is still the one shown");
        assert_eq!(gateway.metrics().config_errors.get(), 1);
        assert!(gateway.is_ready(), "the last good configuration still serves");

        // The next change to the folder is picked up by the same loop.
        write(dir.path(), "orders.yaml", &mock_route("orders", "/orders"));
        reloader.survive_panic("reloading the manifests", Reloader::poll);
        let view = gateway.config_view();
        assert_eq!(view["version"], 2, "{view}");
        assert!(view["lastError"].is_null(), "a successful reload clears the error: {view}");
        assert_eq!(gateway.metrics().config_errors.get(), 1);
    }
}
