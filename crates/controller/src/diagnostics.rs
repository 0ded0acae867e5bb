//! What compile says about each object: Kubernetes-style conditions plus field-level findings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use tollgate_ir::ObjectKey;

use crate::inputs::Kind;

/// Condition types (positive polarity).
pub mod condition {
    /// The object is valid and taken into the configuration.
    pub const ACCEPTED: &str = "Accepted";
    /// Every reference of the object resolved.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The object is being served.
    pub const PROGRAMMED: &str = "Programmed";
}

/// Reasons, one constant each, so status and tests agree on spelling.
pub mod reason {
    /// Valid and accepted.
    pub const ACCEPTED: &str = "Accepted";
    /// A field has an invalid value.
    pub const INVALID: &str = "Invalid";
    /// A referenced object does not exist.
    pub const NOT_FOUND: &str = "RefNotFound";
    /// A reference points into a namespace that does not allow it.
    pub const NOT_PERMITTED: &str = "RefNotPermitted";
    /// Every reference resolved.
    pub const RESOLVED: &str = "ResolvedRefs";
    /// Two objects claim the same thing; the older one wins.
    pub const CONFLICT: &str = "Conflicted";
    /// The API does not accept Routes from this namespace.
    pub const NOT_ALLOWED_BY_API: &str = "NotAllowedByAPI";
    /// Served.
    pub const PROGRAMMED: &str = "Programmed";
    /// Not served because the object was rejected.
    pub const NOT_PROGRAMMED: &str = "NotProgrammed";
    /// The backend has no ready endpoint (served, answering 503).
    pub const NO_ENDPOINTS: &str = "NoReadyEndpoints";
    /// Accepted but one or more fields are not enforced by this version.
    pub const NOT_YET_ENFORCED: &str = "NotYetEnforced";
    /// The object was not referenced by anything served.
    pub const UNUSED: &str = "Unused";
    /// Served, but not every connected proxy of the fleet has applied it yet.
    pub const PENDING: &str = "Pending";
    /// Served, but no proxy of the fleet is connected.
    pub const NO_PROXIES: &str = "NoProxies";
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object (or the part named) is not served.
    Error,
    /// Served, but the user should know (a field not yet enforced, an unknown field, ...).
    Warning,
}

/// One finding about one field of one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The condition it affects.
    pub condition: &'static str,
    /// Reason constant.
    pub reason: &'static str,
    /// The field path (`spec.integration.service.name`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Diagnostic {
    /// A finding about `field`.
    pub fn new(
        severity: Severity,
        condition: &'static str,
        reason: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic { severity, condition, reason, field: field.into(), message: message.into() }
    }
}

/// A Kubernetes-style condition (without timestamps; the status writer adds those).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `Programmed`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// `"True"` or `"False"`.
    pub status: &'static str,
    /// Reason constant.
    pub reason: &'static str,
    /// Human message naming the field.
    pub message: String,
    /// The generation this condition describes.
    pub observed_generation: i64,
}

/// Everything compile found about one object.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    /// The object's kind.
    pub kind: Kind,
    /// Namespace and name.
    #[serde(flatten)]
    pub key: ObjectKey,
    /// Where it was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// `metadata.generation`.
    pub generation: i64,
    /// Findings, sorted.
    pub diagnostics: Vec<Diagnostic>,
    /// The resulting conditions.
    pub conditions: Vec<Condition>,
}

impl ObjectReport {
    /// Whether the object was rejected (`Accepted` is false).
    pub fn rejected(&self) -> bool {
        self.conditions.iter().any(|c| c.type_ == condition::ACCEPTED && c.status == "False")
    }
}

/// Collects findings per object during a compile, then turns them into conditions.
#[derive(Default)]
pub struct Diagnostics {
    objects: BTreeMap<(Kind, ObjectKey), Entry>,
}

#[derive(Default)]
struct Entry {
    file: Option<PathBuf>,
    generation: i64,
    findings: Vec<Diagnostic>,
    programmed: Option<bool>,
}

impl Diagnostics {
    /// Registers an object so it gets a report even when nothing is wrong with it.
    pub fn track(&mut self, kind: Kind, key: &ObjectKey, file: Option<&PathBuf>, generation: i64) {
        let entry = self.objects.entry((kind, key.clone())).or_default();
        entry.file = file.cloned();
        entry.generation = generation;
    }

    /// Records a finding.
    pub fn add(&mut self, kind: Kind, key: &ObjectKey, diagnostic: Diagnostic) {
        self.objects.entry((kind, key.clone())).or_default().findings.push(diagnostic);
    }

    /// An error that rejects the object (`Accepted=False`) for an invalid field.
    pub fn invalid(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.reject(kind, key, reason::INVALID, field, message);
    }

    /// An error that rejects the object (`Accepted=False`) with the given reason.
    pub fn reject(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        reason: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.add(kind, key, Diagnostic::new(Severity::Error, condition::ACCEPTED, reason, field, message));
    }

    /// A reference that did not resolve (`ResolvedRefs=False`).
    pub fn unresolved(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        reason: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.add(
            kind,
            key,
            Diagnostic::new(Severity::Error, condition::RESOLVED_REFS, reason, field, message),
        );
    }

    /// A warning that leaves the object accepted.
    pub fn warn(
        &mut self,
        kind: Kind,
        key: &ObjectKey,
        reason: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.add(kind, key, Diagnostic::new(Severity::Warning, condition::ACCEPTED, reason, field, message));
    }

    /// Whether the object has an error on `Accepted` so far.
    pub fn is_rejected(&self, kind: Kind, key: &ObjectKey) -> bool {
        self.objects.get(&(kind, key.clone())).is_some_and(|e| {
            e.findings.iter().any(|d| d.severity == Severity::Error && d.condition == condition::ACCEPTED)
        })
    }

    /// Marks whether the object ended up in the snapshot (GatewayAPI and Route get `Programmed`).
    pub fn programmed(&mut self, kind: Kind, key: &ObjectKey, served: bool) {
        let entry = self.objects.entry((kind, key.clone())).or_default();
        entry.programmed = Some(entry.programmed.unwrap_or(false) || served);
    }

    /// The final reports, sorted by kind, namespace, name.
    pub fn finish(self) -> Vec<ObjectReport> {
        self.objects
            .into_iter()
            .map(|((kind, key), mut entry)| {
                entry.findings.sort();
                entry.findings.dedup();
                let conditions = conditions(kind, &entry);
                ObjectReport {
                    kind,
                    key,
                    file: entry.file,
                    generation: entry.generation,
                    diagnostics: entry.findings,
                    conditions,
                }
            })
            .collect()
    }
}

fn conditions(kind: Kind, entry: &Entry) -> Vec<Condition> {
    let generation = entry.generation;
    let first =
        |cond: &str| entry.findings.iter().find(|d| d.severity == Severity::Error && d.condition == cond);
    let summary = |cond: &str| {
        let errors: Vec<String> = entry
            .findings
            .iter()
            .filter(|d| d.severity == Severity::Error && d.condition == cond)
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect();
        errors.join("; ")
    };
    let mut out = Vec::new();
    let accepted = match first(condition::ACCEPTED) {
        Some(d) => Condition {
            type_: condition::ACCEPTED,
            status: "False",
            reason: d.reason,
            message: summary(condition::ACCEPTED),
            observed_generation: generation,
        },
        None => {
            let warnings: Vec<String> = entry
                .findings
                .iter()
                .filter(|d| d.severity == Severity::Warning)
                .map(|d| format!("{}: {}", d.field, d.message))
                .collect();
            Condition {
                type_: condition::ACCEPTED,
                status: "True",
                reason: reason::ACCEPTED,
                message: if warnings.is_empty() { "Accepted".to_string() } else { warnings.join("; ") },
                observed_generation: generation,
            }
        }
    };
    let is_accepted = accepted.status == "True";
    out.push(accepted);
    out.push(match first(condition::RESOLVED_REFS) {
        Some(d) => Condition {
            type_: condition::RESOLVED_REFS,
            status: "False",
            reason: d.reason,
            message: summary(condition::RESOLVED_REFS),
            observed_generation: generation,
        },
        None => Condition {
            type_: condition::RESOLVED_REFS,
            status: "True",
            reason: reason::RESOLVED,
            message: "All references resolved".to_string(),
            observed_generation: generation,
        },
    });
    if matches!(kind, Kind::GatewayAPI | Kind::Route) {
        let served = is_accepted && entry.programmed.unwrap_or(false);
        out.push(Condition {
            type_: condition::PROGRAMMED,
            status: if served { "True" } else { "False" },
            reason: if served { reason::PROGRAMMED } else { reason::NOT_PROGRAMMED },
            message: if served {
                "Served by the current configuration".to_string()
            } else if !is_accepted {
                "Not served: the object was rejected (see Accepted)".to_string()
            } else {
                "Not served: no stage of an accepted GatewayAPI includes it".to_string()
            },
            observed_generation: generation,
        });
    }
    out
}
