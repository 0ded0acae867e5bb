//! A Lease per controller replica carrying a JSON annotation: how replicas share what their own
//! proxies reported. Proxies subscribe to whichever replica the Service picks, but only the leader
//! writes status, so each replica publishes its part and the leader reads the others'. Two kinds
//! use it: proxy counts for `Programmed` ([`crate::replicas`]) and canary counts for the analysis
//! ([`crate::canary`]), each with its own label, annotation and name infix.
//!
//! Writes are server-side apply (create or update in one call, idempotent); a replica that stops
//! cleanly deletes its Lease.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

/// What a kind of replica Lease is called and carries.
#[derive(Clone, Debug)]
pub struct LeaseKind {
    /// Name infix: the Lease is `<prefix>-<infix>-<identity>`.
    pub infix: &'static str,
    /// Label (value `"true"`) the Leases of this kind carry and are listed by.
    pub label: &'static str,
    /// Annotation holding the JSON.
    pub annotation: &'static str,
    /// Field manager of the writes.
    pub field_manager: &'static str,
}

/// Where this replica's Lease lives.
#[derive(Clone, Debug)]
pub struct ReplicaLeaseSettings {
    /// Namespace (the controller's own).
    pub namespace: String,
    /// Name prefix (the leader-election Lease's name).
    pub prefix: String,
    /// This replica's identity.
    pub identity: String,
    /// `leaseDurationSeconds` to write (readers may treat a Lease not renewed for this long as
    /// gone); `None` writes none.
    pub duration: Option<Duration>,
}

/// Why a replica Lease could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API call failed.
    #[error("{label} Leases in {namespace}: {source}")]
    Api {
        /// The kind's label.
        label: &'static str,
        /// Namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The annotation could not be encoded.
    #[error("encoding the {annotation} annotation: {source}")]
    Encode {
        /// The annotation.
        annotation: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Another replica's Lease of the same kind, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerLease {
    /// Its name.
    pub name: String,
    /// When it was last renewed (as written by its holder).
    pub renew_time: Option<MicroTime>,
    /// Its `leaseDurationSeconds`, if any.
    pub duration: Option<Duration>,
    /// The annotation's text, if present.
    pub annotation: Option<String>,
}

/// A valid Lease name from `<prefix>-<infix>-<identity>`: lower-case letters, digits and `-`, at
/// most 63 characters, not ending in `-`.
pub fn lease_name(prefix: &str, infix: &str, identity: &str) -> String {
    let raw = format!("{prefix}-{infix}-{identity}").to_ascii_lowercase();
    let mut name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// This replica's Lease of one kind, and read access to the others'.
pub struct ReplicaLease {
    api: Api<Lease>,
    kind: LeaseKind,
    settings: ReplicaLeaseSettings,
    name: String,
}

impl ReplicaLease {
    /// The Lease of kind `kind` for this replica.
    pub fn new(client: Client, kind: LeaseKind, settings: ReplicaLeaseSettings) -> ReplicaLease {
        let name = lease_name(&settings.prefix, kind.infix, &settings.identity);
        ReplicaLease { api: Api::namespaced(client, &settings.namespace), kind, settings, name }
    }

    /// This replica's Lease name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api { label: self.kind.label, namespace: self.settings.namespace.clone(), source }
    }

    /// Creates or renews this replica's Lease with `value` as the annotation (server-side apply).
    pub async fn publish<T: Serialize>(&self, value: &T, wall: Timestamp) -> Result<(), LeaseError> {
        let encode = |source| LeaseError::Encode { annotation: self.kind.annotation, source };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(BTreeMap::from([(self.kind.label.to_string(), "true".to_string())])),
                annotations: Some(BTreeMap::from([(
                    self.kind.annotation.to_string(),
                    serde_json::to_string(value).map_err(encode)?,
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: self
                    .settings
                    .duration
                    .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX).max(1)),
                renew_time: Some(MicroTime(wall)),
                ..LeaseSpec::default()
            }),
        };
        let mut body = serde_json::to_value(&lease).map_err(encode)?;
        if let Some(object) = body.as_object_mut() {
            object.insert("apiVersion".into(), "coordination.k8s.io/v1".into());
            object.insert("kind".into(), "Lease".into());
        }
        self.api
            .patch(&self.name, &PatchParams::apply(self.kind.field_manager).force(), &Patch::Apply(body))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Deletes this replica's Lease (on a clean stop); one already gone is fine.
    pub async fn withdraw(&self) -> Result<(), LeaseError> {
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    /// The other replicas' Leases of this kind (listed by label; this replica's own left out).
    pub async fn peers(&self) -> Result<Vec<PeerLease>, LeaseError> {
        let list = self
            .api
            .list(&ListParams::default().labels(&format!("{}=true", self.kind.label)))
            .await
            .map_err(|e| self.error(e))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|lease| {
                let name = lease.metadata.name?;
                if name == self.name {
                    return None;
                }
                let spec = lease.spec.unwrap_or_default();
                Some(PeerLease {
                    name,
                    renew_time: spec.renew_time,
                    duration: spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map(Duration::from_secs),
                    annotation: lease.metadata.annotations.and_then(|mut a| a.remove(self.kind.annotation)),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name("tollgate-controller", "proxies", "Tollgate-Controller-7d9f_0a1B"),
            "tollgate-controller-proxies-tollgate-controller-7d9f-0a1b"
        );
        let long = lease_name("tollgate-controller", "canary", &("x".repeat(100) + "_"));
        assert!(long.len() <= 63);
        assert!(!long.ends_with('-'));
    }
}
