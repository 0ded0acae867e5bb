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

/// Literal children. While building, a map; [`Statics::freeze`] turns it into a lone child
/// kept inline (the common REST shape `/orders/{id}/items`) or an open-addressing table, both
/// matched through [`SegmentKey`]s: a lookup reads the request segment once, probes an array
/// (load factor ≤ 1/2), and confirms with integer compares (plus a `memcmp` only for
/// segments longer than 16 bytes).
#[derive(Debug)]
pub(super) enum Statics {
    Building(HashMap<Box<str>, NodeId, FxBuildHasher>),
    None,
    /// A single child whose text fits in its key (at most 16 bytes).
    One(Child),
    Many(Slots),
}

impl Default for Statics {
    fn default() -> Self {
        Self::Building(HashMap::default())
    }
}

/// An open-addressing hash table from literal segment to child node.
#[derive(Debug)]
pub(super) struct Slots {
    /// A power-of-two number of slots, at least twice the number of children.
    slots: Box<[Child]>,
    /// The full text of each slot (same index), compared only for long segments.
    labels: Box<[Box<str>]>,
}

/// A literal child: the [`SegmentKey`] of its text and its node ([`EMPTY`] for a free slot).
#[derive(Debug, Clone, Copy)]
pub(super) struct Child {
    hash: u64,
    head: u64,
    tail: u64,
    len: u32,
    node: NodeId,
}

const EMPTY: NodeId = NodeId::MAX;

/// A path segment read into words once: its length and its first and last 8 bytes, which
/// together hold all of a segment of up to 16 bytes. Hashed only when a table is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentKey {
    head: u64,
    tail: u64,
    /// Saturating; lengths above 16 are confirmed by comparing text anyway.
    len: u32,
}

/// Up to this length, equal [`SegmentKey`]s mean equal segments.
const WORDS_HOLD_ALL: u32 = 16;

impl SegmentKey {
    pub(super) fn new(segment: &str) -> Self {
        let bytes = segment.as_bytes();
        let len = bytes.len();
        let word =
            |at: usize| bytes.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_le_bytes);
        let half =
            |at: usize| bytes.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, u32::from_le_bytes);
        let byte = |at: usize| bytes.get(at).copied().map_or(0, u64::from);
        // Overlapping reads: with the length, they determine every byte of a short segment.
        let (head, tail) = match len {
            8.. => (word(0), word(len - 8)),
            4..8 => (u64::from(half(0)) | (u64::from(half(len - 4)) << 32), 0),
            1..4 => (byte(0) | (byte(len / 2) << 8) | (byte(len - 1) << 16), 0),
            0 => (0, 0),
        };
        Self { head, tail, len: u32::try_from(len).unwrap_or(u32::MAX) }
    }

    /// The hash of `segment` (which this key was read from). Multiply-based and not
    /// resistant to hash flooding, which is fine: the tables are built from configuration;
    /// request input only looks keys up and cannot degrade them.
    fn hash(&self, segment: &str) -> u64 {
        let mut hash = if self.len <= WORDS_HOLD_ALL {
            (self.head.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.tail)
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
        } else {
            let mut hasher = FxHasher::default();
            hasher.write(segment.as_bytes());
            hasher.finish()
        };
        // fmix64 from MurmurHash3: the low bits, which pick the slot, depend on every bit.
        hash ^= u64::from(self.len);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    }

    fn child(self, hash: u64, node: NodeId) -> Child {
        Child { hash, head: self.head, tail: self.tail, len: self.len, node }
    }
}

impl Child {
    fn is(&self, key: &SegmentKey) -> bool {
        self.head == key.head && self.tail == key.tail && self.len == key.len
    }
}

impl Statics {
    /// Whether there is no literal child (then the segment need not be read).
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Self::Building(map) => map.is_empty(),
            Self::None => true,
            Self::One(_) | Self::Many(_) => false,
        }
    }

    /// The child for `segment`, whose key is `key`.
    pub(super) fn get(&self, segment: &str, key: &SegmentKey) -> Option<NodeId> {
        let table = match self {
            // A lone child is at most 16 bytes long: the words decide, no hash needed.
            Self::One(child) => return child.is(key).then_some(child.node),
            Self::Many(table) => table,
            Self::None => return None,
            Self::Building(map) => return map.get(segment).copied(),
        };
        let mask = table.slots.len().checked_sub(1)?;
        // Truncation is fine: only the low bits pick the slot.
        let hash = key.hash(segment);
        let mut i = hash as usize & mask;
        // A free slot always exists (load ≤ 1/2), so the probe ends.
        loop {
            let slot = table.slots.get(i)?;
            if slot.node == EMPTY {
                return None;
            }
            if slot.hash == hash
                && slot.is(key)
                && (key.len <= WORDS_HOLD_ALL || table.labels.get(i).is_some_and(|l| **l == *segment))
            {
                return Some(slot.node);
            }
            i = (i + 1) & mask;
        }
    }

    /// The child for `segment`, created with `fresh` if missing. Only while building: the
    /// builder never freezes, [`RouteTableBuilder::build`](super::RouteTableBuilder::build)
    /// does, once, at the end.
    pub(super) fn get_or_insert(&mut self, segment: &str, fresh: impl FnOnce() -> NodeId) -> NodeId {
        match self {
            Self::Building(map) => *map.entry(segment.into()).or_insert_with(fresh),
            Self::None | Self::One(_) | Self::Many(_) => fresh(),
        }
    }

    pub(super) fn freeze(&mut self) {
        let Self::Building(map) = self else { return };
        let map = std::mem::take(map);
        if let (1, Some((label, &node))) = (map.len(), map.iter().next()) {
            let key = SegmentKey::new(label);
            if key.len <= WORDS_HOLD_ALL {
                *self = Self::One(key.child(key.hash(label), node));
                return;
            }
        }
        *self = Self::build_slots(map);
    }

    fn build_slots(map: HashMap<Box<str>, NodeId, FxBuildHasher>) -> Self {
        if map.is_empty() {
            return Self::None;
        }
        let capacity = (map.len() * 2).next_power_of_two();
        let mask = capacity - 1;
        let free = SegmentKey { head: 0, tail: 0, len: 0 }.child(0, EMPTY);
        let mut slots = vec![free; capacity];
        let mut labels: Vec<Box<str>> = vec![Box::from(""); capacity];
        for (label, node) in map {
            let key = SegmentKey::new(&label);
            let hash = key.hash(&label);
            // Indices stay below `capacity`, which exceeds the number of children.
            let mut i = hash as usize & mask;
            while slots[i].node != EMPTY {
                i = (i + 1) & mask;
            }
            slots[i] = key.child(hash, node);
            labels[i] = label;
        }
        Self::Many(Slots { slots: slots.into(), labels: labels.into() })
    }
}

/// Builds [`FxHasher`]s.
pub(super) type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// The multiply-rotate hash rustc uses (`rustc-hash` 1.x), inlined to avoid a dependency.
/// Same caveat as [`SegmentKey::new`]: keys come from configuration.
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
