//! What every serving mode shares: building the data plane, binding its listeners, and draining on
//! SIGTERM / SIGINT (`tollgate standalone` and `tollgate proxy`; the controller uses `bind` and
//! `wait_for_signal`).

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tollgate_proxy::access_log::AccessLog;
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::upstream::{UpstreamClient, UpstreamSettings};
use tollgate_proxy::{Gateway, admin, server, tls};

use crate::{AccessLogTarget, ServeArgs};

/// The data plane shared by standalone mode and `tollgate proxy`: metrics, access log, upstream
/// client and traffic state, with no configuration yet.
pub(crate) fn build_gateway(serve: &crate::ServeArgs) -> anyhow::Result<Arc<Gateway>> {
    let metrics = Metrics::new().context("registering metrics")?;
    let access_log = match serve.access_log {
        AccessLogTarget::Stdout => AccessLog::stdout(Arc::clone(&metrics)),
        AccessLogTarget::Off => AccessLog::disabled(Arc::clone(&metrics)),
    };
    let extra_ca_pem = match &serve.upstream_ca {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let client = UpstreamClient::new(&UpstreamSettings { extra_ca_pem, ..UpstreamSettings::default() })?;
    let traffic_options = tollgate_proxy::traffic::TrafficOptions {
        redis_url: serve.redis.clone(),
        state_dir: serve.state_dir.clone(),
    };
    let traffic = tollgate_proxy::traffic::TrafficState::new(&traffic_options, &metrics)
        .context("setting up traffic state")?;
    if serve.redis.is_none() && serve.state_dir.is_none() {
        tracing::info!("no --redis or --state-dir: usage-plan quota counts are kept in memory only");
    }
    let gateway = Gateway::with_traffic(client, metrics, access_log, traffic);
    Ok(gateway)
}

/// Binds and starts the traffic listeners (plain HTTP, optional TLS) and the admin port.
pub(crate) async fn spawn_listeners(
    tasks: &mut tokio::task::JoinSet<()>,
    gateway: &Arc<Gateway>,
    serve: &ServeArgs,
    shutdown: &server::Shutdown,
) -> anyhow::Result<()> {
    let (listen, listen_tls, admin_address) = (serve.listen, serve.listen_tls, serve.admin);
    let settings = &serve.server_settings();
    let listener = bind(listen).await?;
    tracing::info!(address = %listen, "serving HTTP (HTTP/1.1, h2c)");
    tasks.spawn(server::serve(listener, None, Arc::clone(gateway), settings.clone(), shutdown.clone()));
    if let Some(address) = listen_tls {
        let listener = bind(address).await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(gateway.runtime_slot()));
        tracing::info!(%address, "serving HTTPS (HTTP/1.1, HTTP/2 by ALPN)");
        tasks.spawn(server::serve(
            listener,
            Some(acceptor),
            Arc::clone(gateway),
            settings.clone(),
            shutdown.clone(),
        ));
    }
    let admin_listener = bind(admin_address).await?;
    tracing::info!(address = %admin_address, "serving admin (/healthz /readyz /metrics /config /usage)");
    tasks.spawn(admin::serve_admin(admin_listener, Arc::clone(gateway), None, shutdown.clone()));
    if let Some(address) = serve.connections_listen {
        let listener = bind(address).await?;
        let bound = listener.local_addr().with_context(|| format!("binding {address}"))?;
        let advertise = serve.connections_advertise.unwrap_or(if bound.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port())
        } else {
            bound
        });
        gateway.websockets().set_owner(advertise);
        tracing::info!(address = %bound, %advertise, "serving the WebSocket @connections API");
        tasks.spawn(tollgate_proxy::connections::serve(listener, Arc::clone(gateway), shutdown.clone()));
    }
    Ok(())
}

/// Waits for SIGTERM / SIGINT, then stops accepting, lets every task drain, and writes out the
/// buffered access log and quota counts.
pub(crate) async fn drain_on_signal(
    mut tasks: tokio::task::JoinSet<()>,
    stop: watch::Sender<bool>,
    gateway: &Gateway,
    drain: std::time::Duration,
) {
    wait_for_signal().await;
    tracing::info!(?drain, "shutting down: no new connections, finishing in-flight requests");
    let _ = stop.send(true);
    // WebSocket sessions outlive their HTTP connection: close them (1001) and run $disconnect.
    gateway.websockets().drain(drain).await;
    while tasks.join_next().await.is_some() {}
    gateway.flush_access_log();
    gateway.traffic().flush();
    tracing::info!("stopped");
}

pub(crate) async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("binding {address}"))
}

pub(crate) async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
