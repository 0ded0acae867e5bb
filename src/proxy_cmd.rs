//! `tollgate proxy`: serve traffic from snapshots the controller streams; ready after the first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tollgate_proxy::subscribe::{SubscribeSettings, Subscriber};

use crate::ProxyArgs;
use crate::serve::{build_gateway, drain_on_signal, spawn_listeners};

/// Runs until SIGTERM / SIGINT, then drains.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let gateway = build_gateway(&args.serve)?;
    let ca_pem = match &args.controller_ca {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let controller = args.controller.parse().with_context(|| format!("--controller {}", args.controller))?;
    let name = args
        .name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("proxy-{}", std::process::id()));
    let settings = SubscribeSettings {
        controller,
        fleet: args.fleet.clone(),
        proxy: name,
        token_file: args.token_file.clone(),
        ca_pem,
        idle_timeout: args.controller_idle_timeout,
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(10),
    };
    let view_gateway = Arc::clone(&gateway);
    // The newest version whose `/config` view was set, so that a slow view of an older snapshot
    // never replaces a newer one.
    let view_version = Arc::new(Mutex::new(0u64));
    let on_apply = Arc::new(move |snapshot: &Arc<tollgate_ir::Snapshot>| {
        // Building the view of 10,000 routes takes longer than applying them: do it off the
        // subscription, so that the applied version is reported (and served) without waiting.
        let (snapshot, gateway, latest) =
            (Arc::clone(snapshot), Arc::clone(&view_gateway), Arc::clone(&view_version));
        tokio::task::spawn_blocking(move || {
            let mut view = tollgate_controller::view::config_view(&snapshot, &[], None);
            // The canaries' weights as served (phase and decisions are in the GatewayAPI's status).
            let canaries =
                tollgate_controller::canary::Analyzer::new(tollgate_controller::canary::SystemClock)
                    .view(&snapshot);
            if let Some(object) = view.as_object_mut() {
                object.insert("canaries".into(), canaries);
            }
            let mut latest = latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if snapshot.version >= *latest {
                *latest = snapshot.version;
                gateway.set_config_view(view);
            }
        });
    });
    let subscriber =
        Subscriber::new(settings, Arc::clone(&gateway), on_apply).context("setting up the subscription")?;

    let settings = args.serve.server_settings();
    let (stop, shutdown) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(subscriber.run(shutdown.clone()));
    tracing::info!(fleet = %args.fleet, "proxy starting; not ready until the first snapshot");
    spawn_listeners(&mut tasks, &gateway, &args.serve, &shutdown).await?;
    drain_on_signal(tasks, stop, &gateway, settings.drain_timeout).await;
    Ok(())
}
