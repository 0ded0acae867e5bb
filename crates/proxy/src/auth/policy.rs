//! Resource policy: source-address allow and deny lists, with `X-Forwarded-For` believed only
//! from trusted proxies.
//!
//! The client address is the TCP peer, unless the peer is a trusted proxy: then
//! `X-Forwarded-For` is walked from the right (the entry the nearest proxy added) past every
//! trusted proxy, and the first untrusted address is the client. Anything a client wrote further
//! left is never believed. An entry that is not an address ends the walk with "unknown", which
//! no allow list matches. Deny wins over allow.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use super::AuthError;

/// A compiled source policy.
#[derive(Debug, Default)]
pub struct SourcePolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    trusted: Vec<IpNet>,
}

fn nets(items: &[String]) -> Vec<IpNet> {
    items
        .iter()
        .filter_map(|s| {
            s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from)).or_else(|| {
                tracing::warn!(cidr = %s, "skipping an invalid CIDR");
                None
            })
        })
        .collect()
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn contains(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(&ip))
}

impl SourcePolicy {
    /// Builds the policy from the snapshot.
    pub fn build(policy: &tollgate_ir::auth::SourcePolicy) -> SourcePolicy {
        SourcePolicy {
            allow: nets(&policy.allow),
            deny: nets(&policy.deny),
            trusted: nets(&policy.trusted_proxies),
        }
    }

    /// The client's address per the trusted-proxy rules; `None` when a forwarded entry is not an
    /// address.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let mut client = canonical(peer);
        if !contains(&self.trusted, client) {
            return Some(client);
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for entry in forwarded.iter().rev() {
            let ip = canonical(parse_forwarded(entry)?);
            client = ip;
            if !contains(&self.trusted, ip) {
                break;
            }
        }
        Some(client)
    }

    /// Admits or refuses the request; returns the client address it decided on.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<Option<IpAddr>, AuthError> {
        let client = self.client_ip(peer, headers);
        let denied = match client {
            Some(ip) => contains(&self.deny, ip) || (!self.allow.is_empty() && !contains(&self.allow, ip)),
            None => !self.allow.is_empty(),
        };
        if denied {
            return Err(AuthError::forbidden(
                "source_denied",
                "the client address is not allowed to call this API",
            ));
        }
        Ok(client)
    }
}

/// `10.0.0.1`, `10.0.0.1:1234`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    entry.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str], trusted: &[&str]) -> SourcePolicy {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        SourcePolicy::build(&tollgate_ir::auth::SourcePolicy {
            allow: v(allow),
            deny: v(deny),
            trusted_proxies: v(trusted),
        })
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap_or(http::HeaderValue::from_static("")));
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let p = policy(&["203.0.113.0/24"], &[], &["10.0.0.0/8"]);
        // Untrusted peer: its X-Forwarded-For is ignored.
        assert!(p.check(ip("198.51.100.7"), &xff("203.0.113.5")).is_err());
        // Trusted peer: the rightmost untrusted entry is the client.
        assert!(p.check(ip("10.1.1.1"), &xff("203.0.113.5")).is_ok());
        // A forged left entry does not help.
        assert!(p.check(ip("10.1.1.1"), &xff("203.0.113.5, 198.51.100.7")).is_err());
        // Several trusted hops are skipped.
        assert!(p.check(ip("10.1.1.1"), &xff("203.0.113.5, 10.2.2.2")).is_ok());
        // Garbage is unknown, which no allow list matches.
        assert!(p.check(ip("10.1.1.1"), &xff("not-an-ip")).is_err());
    }

    #[test]
    fn deny_wins_and_mapped_addresses_compare_as_v4() {
        let p = policy(&["0.0.0.0/0"], &["192.0.2.0/24"], &[]);
        assert!(p.check(ip("192.0.2.9"), &HeaderMap::new()).is_err());
        assert!(p.check(ip("::ffff:192.0.2.9"), &HeaderMap::new()).is_err());
        assert!(p.check(ip("198.51.100.1"), &HeaderMap::new()).is_ok());
    }
}
