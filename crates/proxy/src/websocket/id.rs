//! Connection ids: 16 unguessable random bytes plus the owner replica's connections-listener
//! address, base64url without padding (safe in a URL path as it is).
//!
//! The owner is encoded so that a @connections call reaching another replica can be forwarded
//! to the replica holding the connection without any shared registry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const RANDOM: usize = 16;

/// A connection id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(String);

impl ConnectionId {
    /// A new id owned by `owner` (`None`: this replica has no connections listener).
    pub fn generate(owner: Option<SocketAddr>) -> ConnectionId {
        let mut bytes = Vec::with_capacity(RANDOM + 19);
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        match owner {
            None => bytes.push(0),
            Some(SocketAddr::V4(a)) => {
                bytes.push(4);
                bytes.extend_from_slice(&a.ip().octets());
                bytes.extend_from_slice(&a.port().to_be_bytes());
            }
            Some(SocketAddr::V6(a)) => {
                bytes.push(6);
                bytes.extend_from_slice(&a.ip().octets());
                bytes.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        ConnectionId(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Wraps an id received from a caller (not checked: an unknown id is simply not found).
    pub fn from_text(text: &str) -> ConnectionId {
        ConnectionId(text.to_string())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The replica that holds the connection, when the id is well-formed and names one.
    pub fn owner(&self) -> Option<SocketAddr> {
        let bytes = URL_SAFE_NO_PAD.decode(self.0.as_bytes()).ok()?;
        let rest = bytes.get(RANDOM..)?;
        let (kind, rest) = rest.split_first()?;
        let port = |b: &[u8]| -> Option<u16> { Some(u16::from_be_bytes([*b.first()?, *b.get(1)?])) };
        match (kind, rest.len()) {
            (4, 6) => {
                let ip: [u8; 4] = rest.get(..4)?.try_into().ok()?;
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port(rest.get(4..)?)?))
            }
            (6, 18) => {
                let ip: [u8; 16] = rest.get(..16)?.try_into().ok()?;
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port(rest.get(16..)?)?))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_owner_and_differ() {
        let owner: SocketAddr = "10.1.2.3:9443".parse().unwrap_or_else(|_| unreachable!());
        let a = ConnectionId::generate(Some(owner));
        let b = ConnectionId::generate(Some(owner));
        assert_ne!(a, b);
        assert_eq!(a.owner(), Some(owner));
        assert!(a.as_str().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        let v6: SocketAddr = "[::1]:80".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(ConnectionId::generate(Some(v6)).owner(), Some(v6));
        assert_eq!(ConnectionId::generate(None).owner(), None);
        assert_eq!(ConnectionId::from_text("not base64 !").owner(), None);
        assert_eq!(ConnectionId::from_text("").owner(), None);
    }
}
