//! `tollgate proxy`: serve traffic from snapshots the controller streams; ready after the first.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tollgate_proxy::subscribe::{SubscribeSettings, Subscriber};
use tollgate_proxy::{ServerSettings, admin, server, tls};

use crate::ProxyArgs;
use crate::standalone::{bind, build_gateway, wait_for_signal};

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
    let on_apply = Arc::new(move |snapshot: &tollgate_ir::Snapshot| {
        view_gateway.set_config_view(tollgate_controller::view::config_view(snapshot, &[], None));
    });
    let subscriber =
        Subscriber::new(settings, Arc::clone(&gateway), on_apply).context("setting up the subscription")?;

    let settings = ServerSettings {
        max_header_bytes: args.serve.max_header_bytes,
        header_read_timeout: args.serve.header_read_timeout,
        drain_timeout: args.serve.drain_timeout,
        ..ServerSettings::default()
    };
    let (stop, shutdown) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(subscriber.run(shutdown.clone()));
    let listener = bind(args.listen).await?;
    tracing::info!(address = %args.listen, fleet = %args.fleet, "serving HTTP (HTTP/1.1, h2c); not ready until the first snapshot");
    tasks.spawn(server::serve(listener, None, Arc::clone(&gateway), settings.clone(), shutdown.clone()));
    if let Some(address) = args.listen_tls {
        let listener = bind(address).await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(gateway.runtime_slot()));
        tracing::info!(%address, "serving HTTPS (HTTP/1.1, HTTP/2 by ALPN)");
        tasks.spawn(server::serve(
            listener,
            Some(acceptor),
            Arc::clone(&gateway),
            settings.clone(),
            shutdown.clone(),
        ));
    }
    let admin_listener = bind(args.admin).await?;
    tracing::info!(address = %args.admin, "serving admin (/healthz /readyz /metrics /config)");
    tasks.spawn(admin::serve_admin(admin_listener, Arc::clone(&gateway), None, shutdown.clone()));

    wait_for_signal().await;
    tracing::info!(drain = ?settings.drain_timeout, "shutting down: no new connections, finishing in-flight requests");
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    gateway.flush_access_log();
    gateway.traffic().flush();
    tracing::info!("stopped");
    Ok(())
}
