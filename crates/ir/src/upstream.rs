//! Upstream options of a backend reached through a ServiceExport: TLS material, load-balancing
//! policy, outlier detection and DNS resolution by the proxy.

use serde::{Deserialize, Serialize};

use crate::{Millis, Redacted};

/// TLS to an upstream beyond the server name: which authorities to trust and which client
/// certificate to present. Reduced from Secrets by the controller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// PEM certificates the upstream's chain must lead to. `None`: the public web PKI roots
    /// (plus the proxy's `--upstream-ca` bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The client certificate presented for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
}

/// A client certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// PEM private key; never printed.
    pub key_pem: Redacted,
}

/// How requests are spread over a backend's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "policy")]
pub enum LoadBalancing {
    /// Endpoints in turn.
    #[default]
    RoundRobin,
    /// Of two endpoints picked at random, the one with fewer requests in flight.
    LeastRequest,
    /// Rendezvous hashing of a request attribute: the same value goes to the same endpoint while
    /// that endpoint exists and is not ejected.
    ConsistentHash {
        /// What is hashed.
        hash_on: HashOn,
    },
}

impl LoadBalancing {
    /// Whether this is the default (round robin), for `skip_serializing_if`.
    pub fn is_default(&self) -> bool {
        *self == LoadBalancing::RoundRobin
    }
}

/// The request attribute a consistent hash is computed from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "source", content = "name")]
pub enum HashOn {
    /// A request header (lower-case name).
    Header(String),
    /// A query parameter.
    Query(String),
    /// A cookie.
    Cookie(String),
    /// The caller's principal set by the authorizer.
    Principal,
    /// The client's IP address (the TCP peer).
    SourceIp,
}

/// Ejection of endpoints that keep failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures (connect or TLS errors, timeouts, 5xx) that eject an endpoint.
    pub consecutive_errors: u32,
    /// How long an ejected endpoint stays out of rotation.
    pub ejection_time: Millis,
    /// The most endpoints that may be ejected at once, in percent of the endpoints (at least
    /// one may always be ejected when there are two or more).
    pub max_ejection_percent: u32,
}

/// A DNS name the proxy resolves itself; every address it resolves to is an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsTarget {
    /// The name (lower-case).
    pub name: String,
    /// The port connected to on each address.
    pub port: u16,
    /// How long a resolution is used before the name is resolved again.
    pub refresh: Millis,
}

/// What kind of network an address belongs to, for deciding whether an export may target it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressScope {
    /// Private (RFC 1918, IPv6 unique-local), shared (RFC 6598) or loopback: allowed in
    /// `external.addresses`.
    Private,
    /// A public address: allowed only through a name.
    Public,
    /// Never a backend: link-local (cloud metadata services live there), unspecified,
    /// multicast or broadcast. The text says which.
    Forbidden(&'static str),
}

/// Classifies an address (IPv4-mapped IPv6 addresses as their IPv4 address).
pub fn address_scope(ip: std::net::IpAddr) -> AddressScope {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_link_local() {
                AddressScope::Forbidden("link-local (169.254.0.0/16, where cloud metadata services answer)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                AddressScope::Forbidden("unspecified, broadcast or multicast")
            } else if v4.is_private() || v4.is_loopback() || (a == 100 && (64..128).contains(&b)) {
                AddressScope::Private
            } else {
                AddressScope::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_scope(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if first & 0xffc0 == 0xfe80 {
                AddressScope::Forbidden("link-local (fe80::/10)")
            } else if v6.is_unspecified() || v6.is_multicast() {
                AddressScope::Forbidden("unspecified or multicast")
            } else if v6.is_loopback() || first & 0xfe00 == 0xfc00 {
                AddressScope::Private
            } else {
                AddressScope::Public
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> AddressScope {
        address_scope(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn private_public_and_forbidden_addresses() {
        for private in ["10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1", "fd00::1", "::1"]
        {
            assert_eq!(scope(private), AddressScope::Private, "{private}");
        }
        for public in ["8.8.8.8", "100.128.0.1", "2001:db8::1", "::ffff:1.1.1.1"] {
            assert_eq!(scope(public), AddressScope::Public, "{public}");
        }
        for forbidden in ["169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "fe80::1", "::"] {
            assert!(matches!(scope(forbidden), AddressScope::Forbidden(_)), "{forbidden}");
        }
        assert_eq!(scope("::ffff:10.0.0.1"), AddressScope::Private);
    }
}
