//! Leader election with a `coordination.k8s.io/v1` Lease: the holder renews it; another replica
//! takes it over once it has seen the same record unchanged for a whole lease duration. Times are
//! measured on the local monotonic clock (as client-go does), so clock skew between replicas
//! does not matter; `renewTime` is written for humans and tools.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name, plus a random suffix).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (and others retry).
    pub renew_every: Duration,
}

/// Why a Lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API call failed.
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Tries to hold the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The last record seen from another holder and when it was first seen unchanged.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// When this replica last renewed successfully.
    renewed: Option<Instant>,
}

impl Elector {
    /// An elector; nothing happens until [`Elector::step`] or [`Elector::run`].
    pub fn new(client: Client, settings: LeaseSettings) -> Elector {
        Elector { api: Api::namespaced(client, &settings.namespace), settings, observed: None, renewed: None }
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX).max(1)
    }

    /// One attempt to acquire or renew. `now` is the monotonic clock; `wall` is written into the
    /// Lease. Returns whether this replica holds the Lease afterwards.
    pub async fn step(&mut self, now: Instant, wall: Timestamp) -> Result<bool, LeaderError> {
        let me = self.settings.identity.clone();
        let Some(lease) = self.api.get_opt(&self.settings.name).await.map_err(|e| self.error(e))? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(wall)),
                    renew_time: Some(MicroTime(wall)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.write(self.api.create(&PostParams::default(), &lease).await, now);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(me.as_str()) {
            let mut renewed = lease.clone();
            renewed.spec = Some(LeaseSpec {
                renew_time: Some(MicroTime(wall)),
                lease_duration_seconds: Some(self.duration_seconds()),
                ..spec
            });
            return self
                .write(self.api.replace(&self.settings.name, &PostParams::default(), &renewed).await, now);
        }
        // Someone else (or nobody) holds it: take over only once its record stood still for a
        // whole lease duration as measured here.
        self.renewed = None;
        let record = (holder.clone(), spec.renew_time.clone());
        let expired = match &self.observed {
            Some((h, r, since)) if (h, r) == (&record.0, &record.1) => {
                let duration = Duration::from_secs(
                    u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
                );
                now.duration_since(*since) >= duration
            }
            _ => {
                self.observed = Some((record.0, record.1, now));
                false
            }
        };
        if holder.is_some() && !expired {
            return Ok(false);
        }
        let mut taken = lease.clone();
        taken.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + 1),
            ..spec
        });
        // `replace` carries the resourceVersion we read: if another replica won the race, the API
        // server answers 409 Conflict and we stay a follower.
        self.write(self.api.replace(&self.settings.name, &PostParams::default(), &taken).await, now)
    }

    fn write(&mut self, result: Result<Lease, kube::Error>, now: Instant) -> Result<bool, LeaderError> {
        match result {
            Ok(_) => {
                self.renewed = Some(now);
                self.observed = None;
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.renewed = None;
                Ok(false)
            }
            Err(error) => Err(self.error(error)),
        }
    }

    /// Whether this replica may still act as leader at `now`: it renewed within the lease
    /// duration (a leader that cannot renew steps down before anyone else can take over).
    pub fn is_leader(&self, now: Instant) -> bool {
        self.renewed.is_some_and(|at| now.duration_since(at) < self.settings.duration)
    }

    /// Gives the Lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        if self.renewed.take().is_none() {
            return Ok(());
        }
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await.map_err(|e| self.error(e))? else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(LeaseSpec { holder_identity: None, lease_duration_seconds: Some(1), ..spec });
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Runs until `shutdown` flips, publishing leadership on `leader`; releases the Lease at
    /// the end.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = Instant::now();
            if let Err(error) = self.step(now, Timestamp::now()).await {
                tracing::warn!(%error, "leader election attempt failed");
            }
            let is_leader = self.is_leader(Instant::now());
            leader.send_if_modified(|held| {
                let changed = *held != is_leader;
                if changed {
                    tracing::info!(leader = is_leader, identity = %self.settings.identity, "leadership changed");
                }
                *held = is_leader;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(self.settings.renew_every) => {}
                _ = crate::stopped(&mut shutdown) => break,
            }
        }
        leader.send_replace(false);
        if let Err(error) = self.release().await {
            tracing::warn!(%error, "could not release the Lease");
        }
    }
}
