//! `tollgate controller`: wire a source (Kubernetes API or a folder), the reconcile loop, the
//! leader's status writer, the subscription server and the admin port.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tollgate_controller::admin::{self, AdminState};
use tollgate_controller::debounce::Debounce;
use tollgate_controller::distribute::auth::TokenReviewer;
use tollgate_controller::distribute::{Authenticator, DistributionServer, Sessions, server_tls};
use tollgate_controller::leader::{Elector, LeaseSettings};
use tollgate_controller::metrics::ControllerMetrics;
use tollgate_controller::publish::Publisher;
use tollgate_controller::reconcile::{Reconciler, StatusLoop, run_status};
use tollgate_controller::replicas::{ReportSettings, Reports, run_reports};
use tollgate_controller::source::folder::FolderSource;
use tollgate_controller::source::kube::{KubeSource, Namespaces};
use tollgate_controller::source::{Changes, Source};
use tollgate_controller::status::StatusWriter;

use crate::ControllerArgs;
use crate::serve::{bind, wait_for_signal};

/// Runs until SIGTERM / SIGINT.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let metrics = ControllerMetrics::new().context("registering metrics")?;
    let changes = Changes::default();
    let publisher = Arc::new(Publisher::new());
    let sessions = Sessions::new(Arc::clone(&metrics));
    let (stop, shutdown) = watch::channel(false);
    let (leader_tx, leader_rx) = watch::channel(false);
    // The other controller replicas' proxy counts (Kubernetes source only; the leader reads them).
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let (reports_tx, reports_rx) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();

    let token = match &args.proxy_token_file {
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    if token.as_deref().is_some_and(|t| t.trim().len() < 16) {
        anyhow::bail!("--proxy-token-file: the token must be at least 16 characters");
    }
    let tls = server_tls(&args.tls_cert, &args.tls_key).context("loading --tls-cert / --tls-key")?;

    let (source, auth): (Arc<dyn Source>, Authenticator) = match &args.manifests {
        Some(dir) => {
            if token.is_none() {
                anyhow::bail!(
                    "--manifests needs --proxy-token-file: without an API server there is no TokenReview"
                );
            }
            let folder = FolderSource::new(dir.clone(), changes.clone());
            folder.poll();
            if let Some(error) = folder.last_error() {
                anyhow::bail!("loading manifests from {}: {error}", dir.display());
            }
            tasks.spawn(Arc::clone(&folder).run(args.reload_interval));
            // No analysis without status to record it in, but the fleet's per-track evidence is
            // still gathered: this single replica sees every proxy.
            let (evidence_sessions, evidence_metrics) = (Arc::clone(&sessions), Arc::clone(&metrics));
            let mut evidence_stop = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = tollgate_controller::stopped(&mut evidence_stop) => return,
                    }
                    evidence_metrics.canary_evidence.record(&evidence_sessions.take_stats());
                }
            });
            tracing::info!(dir = %dir.display(), "objects from a folder: no status writes, no leader election");
            (folder, Authenticator::new(token.as_deref(), None))
        }
        None => {
            // kubeconfig ($KUBECONFIG, ~/.kube/config) or the in-cluster ServiceAccount.
            let client = tollgate_controller::kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let namespaces = if args.namespaces.is_empty() {
                Namespaces::All
            } else {
                Namespaces::Only(args.namespaces.clone())
            };
            let source = KubeSource::start(client.clone(), namespaces, changes.clone());
            let allowed: BTreeSet<String> = args
                .proxy_service_accounts
                .iter()
                .map(|sa| match sa.split_once('/') {
                    Some((ns, name)) => Ok(format!("system:serviceaccount:{ns}:{name}")),
                    None => Err(anyhow::anyhow!("--proxy-service-accounts: {sa:?} must be NAMESPACE/NAME")),
                })
                .collect::<anyhow::Result<_>>()?;
            if allowed.is_empty() && token.is_none() {
                anyhow::bail!(
                    "proxies could not authenticate: give --proxy-service-accounts NAMESPACE/NAME (TokenReview) or \
                     --proxy-token-file"
                );
            }
            let review = (!allowed.is_empty()).then(|| {
                TokenReviewer::new(client.clone(), vec![args.proxy_token_audience.clone()], allowed)
            });
            let identity = args.identity.clone().unwrap_or_else(|| {
                std::env::var("HOSTNAME").unwrap_or_else(|_| "tollgate-controller".to_string())
            });
            let identity = format!("{identity}_{}", &uuid_suffix());
            let lease = LeaseSettings {
                namespace: args
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string()),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(5),
            };
            let report_settings = ReportSettings {
                namespace: lease.namespace.clone(),
                prefix: args.lease_name.clone(),
                identity: identity.clone(),
                duration: lease.duration,
                renew_every: lease.renew_every,
            };
            let canary_peers = tollgate_controller::canary::peers::PeerSettings {
                namespace: lease.namespace.clone(),
                prefix: args.lease_name.clone(),
                identity: identity.clone(),
            };
            tasks.spawn(run_reports(
                Reports::new(client.clone(), report_settings),
                Arc::clone(&publisher),
                Arc::clone(&sessions),
                leader_rx.clone(),
                peers_tx,
                shutdown.clone(),
            ));
            tracing::info!(lease = %format!("{}/{}", lease.namespace, lease.name), %identity, "leader election");
            let elector = Elector::new(client.clone(), lease);
            let leader_metric = Arc::clone(&metrics);
            let mut leader_watch = leader_rx.clone();
            tasks.spawn(async move {
                while leader_watch.changed().await.is_ok() {
                    leader_metric.leader.set(i64::from(*leader_watch.borrow_and_update()));
                }
            });
            tasks.spawn(elector.run(leader_tx.clone(), shutdown.clone()));
            let reporter = tollgate_controller::kube::runtime::events::Reporter {
                controller: "tollgate-controller".into(),
                instance: Some(identity),
            };
            let recorder =
                tollgate_controller::kube::runtime::events::Recorder::new(client.clone(), reporter.clone());
            // Canary analysis: leader only, its own field manager (status.stages) and Events.
            let canary_recorder =
                tollgate_controller::kube::runtime::events::Recorder::new(client.clone(), reporter);
            let canary_loop = tollgate_controller::canary::leader::AnalysisLoop {
                clock: tollgate_controller::canary::SystemClock,
                writer: tollgate_controller::canary::leader::CanaryWriter {
                    client: client.clone(),
                    recorder: Some(canary_recorder),
                },
                sessions: Arc::clone(&sessions),
                reports: reports_rx.clone(),
                leader: leader_rx.clone(),
                tick: Duration::from_millis(500),
                peers: Some(tollgate_controller::canary::peers::Peers::new(client.clone(), canary_peers)),
                metrics: Arc::clone(&metrics),
            };
            tasks.spawn(tollgate_controller::canary::leader::run(canary_loop, shutdown.clone()));
            let writer = StatusWriter::new(client, Some(recorder), Arc::clone(&metrics));
            let status_loop = StatusLoop {
                writer,
                reports: reports_rx.clone(),
                publisher: Arc::clone(&publisher),
                sessions: Arc::clone(&sessions),
                peers: peers_rx.clone(),
                leader: leader_rx.clone(),
                min_interval: Duration::from_millis(500),
            };
            tasks.spawn(run_status(status_loop, shutdown.clone()));
            (source, Authenticator::new(token.as_deref(), review))
        }
    };

    let reconciler = Reconciler {
        source: Arc::clone(&source),
        changes: changes.clone(),
        publisher: Arc::clone(&publisher),
        debounce: Debounce { quiet: args.debounce, max_delay: args.max_delay },
        metrics: Arc::clone(&metrics),
        reports: reports_tx,
        status_refresh: Duration::from_secs(10),
    };
    tasks.spawn(reconciler.run(shutdown.clone()));

    let server = Arc::new(DistributionServer {
        publisher: Arc::clone(&publisher),
        sessions: Arc::clone(&sessions),
        auth,
        keepalive: args.keepalive,
    });
    let listener = bind(args.serve).await?;
    tracing::info!(address = %args.serve, "serving subscriptions (HTTP/2 over TLS)");
    tasks.spawn(server.serve(listener, tls, shutdown.clone()));

    let admin_listener = bind(args.admin).await?;
    tracing::info!(address = %args.admin, "serving admin (/healthz /readyz /metrics /config)");
    let state = Arc::new(AdminState {
        publisher: Arc::clone(&publisher),
        sessions: Arc::clone(&sessions),
        metrics: Arc::clone(&metrics),
        reports: reports_rx,
        leader: leader_rx,
        peers: peers_rx,
        source,
    });
    tasks.spawn(admin::serve(admin_listener, state, shutdown.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    // The Lease release and open subscriptions finish quickly; don't wait on the folder poller.
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} })
            .await;
    tasks.abort_all();
    tracing::info!("stopped");
    Ok(())
}

fn uuid_suffix() -> String {
    let bytes = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{bytes:08x}")
}
