//! Types shared by several kinds: references, throttles, durations and schema helpers.

mod duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use duration::{DURATION_PATTERN, Duration, DurationError};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};

/// An RFC 1123 host name, optionally with a leading `*.` wildcard label. Lower case only.
pub(crate) const HOSTNAME_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// An RFC 1123 DNS label (names of stages).
pub(crate) const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// An HTTP header name (an RFC 9110 token).
pub(crate) const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

/// An absolute URL path without query or fragment.
pub(crate) const PATH_PATTERN: &str = r"^/[^?#]*$";

/// An `http://` or `https://` URL.
pub(crate) const HTTP_URL_PATTERN: &str = r"^https?://[^\s]+$";

/// An IPv4 or IPv6 address or CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
pub(crate) const CIDR_PATTERN: &str = r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$";

/// A reference to an object in the same namespace as the referring object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// Name of the referenced object, in the namespace of the object that refers to it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to an object that may live in another namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the referenced object. Default: the namespace of the object that refers to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A token-bucket rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Steady-state rate in requests per second; fractions are allowed (0.5 = one request every
    /// two seconds). Must be greater than 0.
    #[schemars(range(min = 0), extend("exclusiveMinimum" = true))]
    pub rate: f64,
    /// Bucket size: how many requests may arrive at once above the steady rate. At least 1.
    #[schemars(range(min = 1))]
    pub burst: u32,
    /// Where the limit is counted: `local` (each proxy replica enforces the limit on its own) or
    /// `global` (counted in Redis, so the whole fleet honours it). Default: `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ThrottleScope>,
    /// What a `global` throttle does while Redis cannot be reached: `Open` admits requests (the
    /// failure is logged and counted in `tollgate_redis_failures_total`), `Closed` answers 503.
    /// Ignored for `local` throttles. Default: `Open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
}

/// What a limit counted in shared state does when that state cannot be reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum FailurePolicy {
    /// Admit the request without counting it (availability first).
    #[default]
    Open,
    /// Refuse the request with 503 (the limit first).
    Closed,
}

/// Where a throttle is counted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
// No schema description: kube hoists it over the field's own doc (kubectl explain).
#[schemars(description = "")]
pub enum ThrottleScope {
    /// Each proxy replica counts on its own (exact and free, but N replicas admit N times the rate).
    #[default]
    Local,
    /// Counted fleet-wide in Redis.
    Global,
}

/// Schema of a free-form JSON object whose content the API server keeps as is.
///
/// Used only for `Route.spec.validation.bodySchema`, a JSON Schema document.
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A "set exactly one of" rule is broken.
///
/// The API server enforces these rules with CEL, but manifests read from disk (standalone mode,
/// `tollgate validate`) never met an API server, so the typed accessors check again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: set exactly one of {}; found {found}", options.join(", "))]
pub struct OneOfError {
    /// Path of the object holding the alternatives (e.g. `integration`).
    pub field: &'static str,
    /// The alternatives, as spelled in YAML.
    pub options: &'static [&'static str],
    /// How many of them are set.
    pub found: usize,
}

/// The one `Some` among `candidates`, or a [`OneOfError`] naming `field` and `options`.
pub(crate) fn exactly_one<T, const N: usize>(
    field: &'static str,
    options: &'static [&'static str],
    candidates: [Option<T>; N],
) -> Result<T, OneOfError> {
    let mut set = candidates.into_iter().flatten();
    match (set.next(), set.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(OneOfError { field, options, found: 0 }),
        (Some(_), Some(_)) => Err(OneOfError { field, options, found: 2 + set.count() }),
    }
}
