//! `tollgate proxy`: serve traffic from snapshots the controller streams; ready after the first.

use std::sync::Arc;
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
    let on_apply = Arc::new(move |snapshot: &Arc<tollgate_ir::Snapshot>| {
        // The view of 10,000 routes costs more than applying them, and endpoint updates come as
        // often as pods change: built when `/config` is read, for the snapshot served then.
        let snapshot = Arc::clone(snapshot);
        view_gateway.defer_config_view(Box::new(move || {
            let mut view = tollgate_controller::view::config_view(&snapshot, &[], None);
            // The canaries' weights as served (phase and decisions are in the GatewayAPI's status).
            let canaries =
                tollgate_controller::canary::Analyzer::new(tollgate_controller::canary::SystemClock)
                    .view(&snapshot);
            if let Some(object) = view.as_object_mut() {
                object.insert("canaries".into(), canaries);
            }
            view
        }));
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
