//! The methods a route table knows, as bits, and the precomputed `Allow` header values.

use std::collections::{HashMap, HashSet};

use http::Method;

use super::node::FxBuildHasher;

/// A set of methods: bit `i` is [`MethodBits`]'s `i`-th method.
pub(super) type MethodMask = u64;

/// The most distinct methods one route table may name (methods are kept as bits of a `u64`).
pub const MAX_METHODS: usize = 64;

/// Above this many distinct unions, `Allow` values are no longer all precomputed; see
/// [`AllowValues::get`].
const MAX_PRECOMPUTED: usize = 4096;

/// The distinct methods named by a table's routes, numbered in order of first appearance.
#[derive(Debug, Default)]
pub(super) struct MethodBits {
    methods: Vec<Method>,
}

impl MethodBits {
    pub(super) fn bit(&self, method: &Method) -> Option<u32> {
        self.methods.iter().position(|m| m == method).and_then(|i| u32::try_from(i).ok())
    }

    /// How many methods are numbered.
    pub(super) fn len(&self) -> usize {
        self.methods.len()
    }

    /// How many of `methods` this table does not know yet.
    pub(super) fn unknown(&self, methods: &[Method]) -> usize {
        let mut fresh: Vec<&Method> = Vec::new();
        for method in methods {
            if self.bit(method).is_none() && !fresh.contains(&method) {
                fresh.push(method);
            }
        }
        fresh.len()
    }

    /// The bit of `method`, numbering it if new. The caller checked [`MAX_METHODS`].
    pub(super) fn bit_or_insert(&mut self, method: &Method) -> u32 {
        if let Some(bit) = self.bit(method) {
            return bit;
        }
        self.methods.push(method.clone());
        u32::try_from(self.methods.len() - 1).unwrap_or(u32::MAX)
    }

    fn names(&self, mask: MethodMask) -> Vec<&str> {
        let mut names: Vec<&str> = (0..self.methods.len())
            .filter(|&i| mask & (1 << i) != 0)
            .filter_map(|i| self.methods.get(i).map(Method::as_str))
            .collect();
        // A GET route answers HEAD too, so HEAD is advertised with it.
        if names.contains(&"GET") && !names.contains(&"HEAD") {
            names.push("HEAD");
        }
        names.sort_unstable();
        names
    }
}

/// `Allow` header values for every union of leaf method sets a lookup can produce.
///
/// A request path can match several templates (`/users/new` and `/users/{id}`), and its 405
/// must list the methods of all of them, so the values are the closure under union of the
/// leaves' sets, built once here so that a lookup only reads.
#[derive(Debug, Default)]
pub(super) struct AllowValues {
    by_mask: HashMap<MethodMask, Box<str>, FxBuildHasher>,
    /// Every method of the table: used for a union that was not precomputed.
    all: Box<str>,
}

impl AllowValues {
    pub(super) fn build(methods: &MethodBits, leaf_masks: impl IntoIterator<Item = MethodMask>) -> Self {
        let base: Vec<MethodMask> =
            leaf_masks.into_iter().filter(|&mask| mask != 0).collect::<HashSet<_>>().into_iter().collect();
        let mut closure: HashSet<MethodMask> = base.iter().copied().collect();
        let mut queue: Vec<MethodMask> = base.clone();
        'grow: while let Some(mask) = queue.pop() {
            for &other in &base {
                let union = mask | other;
                if closure.insert(union) {
                    if closure.len() >= MAX_PRECOMPUTED {
                        break 'grow;
                    }
                    queue.push(union);
                }
            }
        }
        let all_mask = base.iter().fold(0, |acc, mask| acc | mask);
        let render = |mask| methods.names(mask).join(", ").into_boxed_str();
        Self {
            all: render(all_mask),
            by_mask: closure.into_iter().map(|mask| (mask, render(mask))).collect(),
        }
    }

    /// The `Allow` value for `mask`. Every union is precomputed unless a table names more
    /// than 12 distinct methods and combines them in thousands of ways; then an unforeseen
    /// union answers with all of the table's methods, a superset.
    pub(super) fn get(&self, mask: MethodMask) -> &str {
        self.by_mask.get(&mask).unwrap_or(&self.all)
    }
}
