//! The segment trie's nodes and their literal-child lookup.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Index of a node in [`RouteTable`](super::RouteTable)'s node arena.
pub(super) type NodeId = u32;
/// Index of a leaf (one template shape) in the leaf arena.
pub(super) type LeafId = u32;

/// One trie node: the state after matching some number of whole segments.
#[derive(Debug, Default)]
pub(super) struct Node {
    /// Children reached by a literal segment.
    pub(super) statics: Statics,
    /// Child reached by a `{param}` segment.
    pub(super) param: Option<NodeId>,
    /// Leaf of a `{greedy+}` segment at this position (greedy is always last).
    pub(super) greedy: Option<LeafId>,
    /// Leaf of templates that end exactly here.
    pub(super) leaf: Option<LeafId>,
}

/// Literal children. While building, a map; [`Statics::freeze`] turns small maps into a
/// slice scanned linearly, which beats hashing for the handful of children most nodes have.
#[derive(Debug)]
pub(super) enum Statics {
    Small(Box<[(Box<str>, NodeId)]>),
    Map(HashMap<Box<str>, NodeId, FxBuildHasher>),
}

/// Up to this many literal children are scanned linearly instead of hashed.
const LINEAR_SCAN_MAX: usize = 8;

impl Default for Statics {
    fn default() -> Self {
        Self::Map(HashMap::default())
    }
}

impl Statics {
    pub(super) fn get(&self, segment: &str) -> Option<NodeId> {
        match self {
            Self::Small(children) => {
                children.iter().find(|(text, _)| &**text == segment).map(|&(_, id)| id)
            }
            Self::Map(map) => map.get(segment).copied(),
        }
    }

    /// Only meaningful while building (the builder keeps the `Map` form).
    pub(super) fn get_or_insert(&mut self, segment: &str, fresh: impl FnOnce() -> NodeId) -> NodeId {
        match self {
            Self::Map(map) => match map.get(segment) {
                Some(&id) => id,
                None => {
                    let id = fresh();
                    map.insert(segment.into(), id);
                    id
                }
            },
            Self::Small(children) => {
                if let Some(id) = children.iter().find(|(text, _)| &**text == segment).map(|&(_, id)| id) {
                    return id;
                }
                let id = fresh();
                let mut grown = std::mem::take(children).into_vec();
                grown.push((segment.into(), id));
                *children = grown.into();
                id
            }
        }
    }

    pub(super) fn freeze(&mut self) {
        if let Self::Map(map) = self
            && map.len() <= LINEAR_SCAN_MAX
        {
            let mut children: Vec<_> = std::mem::take(map).into_iter().collect();
            // Deterministic order; the order does not affect results (keys are distinct).
            children.sort_unstable();
            *self = Self::Small(children.into());
        }
    }
}

/// Builds [`FxHasher`]s.
pub(super) type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// The multiply-rotate hash rustc uses (`rustc-hash` 1.x), inlined to avoid a dependency.
///
/// It is not resistant to hash flooding, which is fine here: the maps are built from
/// configuration, and request input only *looks up* keys, which cannot degrade the table.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            for (dst, src) in word.iter_mut().zip(rest) {
                *dst = *src;
            }
            // Mix in the length so that "a" and "a\0" differ.
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}
