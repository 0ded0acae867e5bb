//! API keys (`x-api-key`): the presented key is hashed with SHA-256 and compared in constant
//! time (`subtle`) against the hashes of the keys of the plans covering the stage. Plaintext keys
//! never reach the proxy.
//!
//! Keys are bucketed by the first 8 bytes of their hash; within a bucket every candidate is
//! compared in full without early exit. Timing can at most reveal whether some key's *hash*
//! shares a prefix with the hash of the guess, which says nothing about any key.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_ir::traffic as ir;

/// The header carrying the key.
pub const HEADER: &str = "x-api-key";

/// One known key.
struct Entry {
    hash: [u8; 32],
    /// Index of the plan in the stage's plan list.
    plan: usize,
    id: Arc<str>,
    enabled: bool,
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// No `x-api-key` header.
    Missing,
    /// No plan of the stage has this key.
    Unknown,
    /// The key exists but is disabled.
    Disabled(Arc<str>),
    /// A valid key of plan `plan`.
    Valid {
        /// Plan index.
        plan: usize,
        /// The key's id.
        id: Arc<str>,
    },
}

/// The keys of a stage's plans.
#[derive(Default)]
pub struct KeyTable {
    buckets: HashMap<u64, Vec<Entry>>,
}

impl KeyTable {
    /// Indexes the keys of `plans` (in precedence order; compile already gave each key to one
    /// plan per stage).
    pub fn build(plans: &[ir::UsagePlan]) -> KeyTable {
        let mut buckets: HashMap<u64, Vec<Entry>> = HashMap::new();
        for (plan, p) in plans.iter().enumerate() {
            for key in &p.keys {
                let Some(hash) = decode(&key.sha256) else {
                    tracing::warn!(key = %key.id, "skipping an API key with a malformed hash");
                    continue;
                };
                buckets.entry(bucket(&hash)).or_default().push(Entry {
                    hash,
                    plan,
                    id: key.id.as_str().into(),
                    enabled: key.enabled,
                });
            }
        }
        KeyTable { buckets }
    }

    /// Looks up a presented key (`None`: no header).
    pub fn lookup(&self, presented: Option<&[u8]>) -> KeyLookup {
        let Some(presented) = presented else { return KeyLookup::Missing };
        let presented = presented.trim_ascii();
        if presented.is_empty() {
            return KeyLookup::Missing;
        }
        let hash: [u8; 32] = Sha256::digest(presented).into();
        let Some(candidates) = self.buckets.get(&bucket(&hash)) else {
            return KeyLookup::Unknown;
        };
        let mut found: Option<&Entry> = None;
        for entry in candidates {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        match found {
            None => KeyLookup::Unknown,
            Some(e) if !e.enabled => KeyLookup::Disabled(Arc::clone(&e.id)),
            Some(e) => KeyLookup::Valid { plan: e.plan, id: Arc::clone(&e.id) },
        }
    }
}

fn bucket(hash: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(prefix)
}

fn decode(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(keys: &[(&str, &str, bool)]) -> ir::UsagePlan {
        ir::UsagePlan {
            key: tollgate_ir::ObjectKey::new("ns", "p"),
            throttle: None,
            route_throttles: Default::default(),
            quota: None,
            keys: keys
                .iter()
                .map(|(id, key, enabled)| ir::ApiKey {
                    id: id.to_string(),
                    sha256: hex::encode(Sha256::digest(key.as_bytes())),
                    enabled: *enabled,
                })
                .collect(),
        }
    }

    #[test]
    fn finds_valid_disabled_unknown_and_missing_keys() {
        let table = KeyTable::build(&[
            plan(&[("ns/a", "key-a-0123456789abcdef", true)]),
            plan(&[("ns/b", "key-b-0123456789abcdef", false)]),
        ]);
        assert_eq!(
            table.lookup(Some(b"key-a-0123456789abcdef")),
            KeyLookup::Valid { plan: 0, id: "ns/a".into() }
        );
        assert_eq!(
            table.lookup(Some(b" key-a-0123456789abcdef ")),
            KeyLookup::Valid { plan: 0, id: "ns/a".into() }
        );
        assert_eq!(table.lookup(Some(b"key-b-0123456789abcdef")), KeyLookup::Disabled("ns/b".into()));
        assert_eq!(table.lookup(Some(b"key-a-0123456789abcdeF")), KeyLookup::Unknown);
        assert_eq!(table.lookup(Some(b"")), KeyLookup::Missing);
        assert_eq!(table.lookup(None), KeyLookup::Missing);
    }
}
