//! Building a [`RouteTable`]: the trie, duplicate detection, and precomputed `Allow` values.

use http::{HeaderName, HeaderValue, Method};

use super::allow::{AllowValues, MAX_METHODS, MethodBits, MethodMask};
use super::node::{LeafId, Node, NodeId};
use super::table::{ANY_METHOD, Candidate, Leaf, Route, RouteTable};
use tollgate_ir::path_template::{PathTemplate, Segment};

/// Why [`RouteTableBuilder::insert`] refused a route. Nothing was inserted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// An earlier route has the same method (or both accept any method), an equivalent
    /// template (same shape, parameter names aside) and the same set of header conditions,
    /// so this one could never be chosen.
    #[error(
        "{} {template} with the same header conditions duplicates route #{previous}",
        method.as_ref().map_or("any method", Method::as_str)
    )]
    Duplicate {
        /// Index of the earlier route (the earliest, if several conflict);
        /// [`RouteTableBuilder::get`] returns its value.
        previous: usize,
        /// The method both routes name; `None` when both accept any method.
        method: Option<Method>,
        /// The canonical template of the refused route.
        template: String,
    },
    /// The route would bring the table above [`MAX_METHODS`] distinct methods.
    #[error("a route table names at most {max} distinct methods")]
    TooManyMethods {
        /// The limit.
        max: usize,
    },
}

/// The routes of one template shape while building.
#[derive(Debug, Default)]
struct PendingLeaf {
    /// Per method bit: route indices, most header conditions first, then insertion order.
    by_method: Vec<(u32, Vec<u32>)>,
    /// Any-method routes, same order.
    any: Vec<u32>,
    mask: MethodMask,
}

impl PendingLeaf {
    fn named(&self, bit: u32) -> &[u32] {
        self.by_method.iter().find(|(b, _)| *b == bit).map_or(&[], |(_, list)| list.as_slice())
    }
}

/// Collects routes, rejects duplicates, and builds a [`RouteTable`] (off the request path).
#[derive(Debug)]
pub struct RouteTableBuilder<T> {
    /// Node 0 is the root. Ids are indices, always valid: nodes and leaves are never removed.
    nodes: Vec<Node>,
    leaves: Vec<PendingLeaf>,
    routes: Vec<Route<T>>,
    methods: MethodBits,
}

impl<T> Default for RouteTableBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RouteTableBuilder<T> {
    /// An empty builder.
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::default()],
            leaves: Vec::new(),
            routes: Vec::new(),
            methods: MethodBits::default(),
        }
    }

    /// Adds a route answering `methods` (empty: any method) on paths matching `template`
    /// when the request carries every `(name, value)` of `headers` (order and repeats in
    /// `headers` do not matter).
    ///
    /// Accepted routes are numbered 0, 1, 2, …; among routes with the same template, method
    /// and number of header conditions the lower number wins, so the caller inserts in a
    /// documented, stable order (Tollgate: creation time, then namespace/name).
    pub fn insert(
        &mut self,
        methods: &[Method],
        template: &PathTemplate,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        value: T,
    ) -> Result<(), InsertError> {
        if self.methods.len() + self.methods.unknown(methods) > MAX_METHODS {
            return Err(InsertError::TooManyMethods { max: MAX_METHODS });
        }
        headers.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
        headers.dedup();
        // `None` stands for "any method".
        let mut keys: Vec<(Option<u32>, Option<&Method>)> = if methods.is_empty() {
            vec![(None, None)]
        } else {
            methods.iter().map(|m| (Some(self.methods.bit_or_insert(m)), Some(m))).collect()
        };
        keys.sort_unstable_by_key(|&(bit, _)| bit);
        keys.dedup_by_key(|&mut (bit, _)| bit);

        let leaf_id = self.leaf_for(template);
        let leaf = &mut self.leaves[leaf_id as usize];
        // Name the earliest conflicting route when several methods conflict.
        let conflict = keys
            .iter()
            .filter_map(|&(bit, method)| {
                let earlier = match bit {
                    Some(bit) => leaf.named(bit),
                    None => &leaf.any,
                };
                let same = earlier.iter().find(|&&r| self.routes[r as usize].headers[..] == headers[..]);
                same.map(|&previous| (previous, method))
            })
            .min_by_key(|&(previous, _)| previous);
        if let Some((previous, method)) = conflict {
            return Err(InsertError::Duplicate {
                previous: previous as usize,
                method: method.cloned(),
                template: template.to_string(),
            });
        }

        let index = self.routes.len() as u32;
        let conditions = headers.len();
        for &(bit, _) in &keys {
            let list = match bit {
                Some(bit) => {
                    leaf.mask |= 1 << bit;
                    match leaf.by_method.iter().position(|(b, _)| *b == bit) {
                        Some(i) => &mut leaf.by_method[i].1,
                        None => {
                            leaf.by_method.push((bit, Vec::new()));
                            let last = leaf.by_method.len() - 1;
                            &mut leaf.by_method[last].1
                        }
                    }
                }
                None => &mut leaf.any,
            };
            // Most header conditions first; among equals, insertion order (indices grow).
            let routes = &self.routes;
            let at = list.partition_point(|&r| routes[r as usize].headers.len() >= conditions);
            list.insert(at, index);
        }
        let params = template.params().map(Box::from).collect();
        self.routes.push(Route { value, params, headers: headers.into() });
        Ok(())
    }

    /// The number of routes accepted so far.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The value of the route with this number (as named by [`InsertError::Duplicate`]).
    pub fn get(&self, index: usize) -> Option<&T> {
        self.routes.get(index).map(|route| &route.value)
    }

    /// Freezes the table: compacts the nodes, lays each leaf's routes out in lookup order,
    /// and precomputes every `Allow` value.
    pub fn build(mut self) -> RouteTable<T> {
        for node in &mut self.nodes {
            node.statics.freeze();
        }
        let allow = AllowValues::build(&self.methods, self.leaves.iter().map(|leaf| leaf.mask));
        let mut candidates = Vec::new();
        let leaves = self
            .leaves
            .into_iter()
            .map(|pending| {
                let start = candidates.len();
                for (bit, list) in &pending.by_method {
                    candidates.extend(list.iter().map(|&route| Candidate { bit: *bit, route }));
                }
                candidates.extend(pending.any.iter().map(|&route| Candidate { bit: ANY_METHOD, route }));
                Leaf {
                    mask: pending.mask,
                    any: !pending.any.is_empty(),
                    start: start as u32,
                    len: (candidates.len() - start) as u32,
                }
            })
            .collect();
        RouteTable {
            nodes: self.nodes,
            leaves,
            candidates,
            routes: self.routes,
            get: self.methods.bit(&Method::GET),
            methods: self.methods,
            allow,
        }
    }

    /// Walks the trie along `template`, creating what is missing, and returns its leaf.
    fn leaf_for(&mut self, template: &PathTemplate) -> LeafId {
        let mut node = 0;
        for segment in template.segments() {
            node = match segment {
                Segment::Literal(text) => {
                    let fresh = self.nodes.len() as NodeId;
                    let child = self.nodes[node as usize].statics.get_or_insert(text, || fresh);
                    if child == fresh {
                        self.nodes.push(Node::default());
                    }
                    child
                }
                Segment::Param(_) => match self.nodes[node as usize].param {
                    Some(child) => child,
                    None => {
                        let child = self.nodes.len() as NodeId;
                        self.nodes.push(Node::default());
                        self.nodes[node as usize].param = Some(child);
                        child
                    }
                },
                Segment::Greedy(_) => {
                    // Greedy is last (the parser guarantees it): its leaf hangs off this node.
                    if let Some(leaf) = self.nodes[node as usize].greedy {
                        return leaf;
                    }
                    let leaf = self.new_leaf();
                    self.nodes[node as usize].greedy = Some(leaf);
                    return leaf;
                }
            };
        }
        if let Some(leaf) = self.nodes[node as usize].leaf {
            return leaf;
        }
        let leaf = self.new_leaf();
        self.nodes[node as usize].leaf = Some(leaf);
        leaf
    }

    fn new_leaf(&mut self) -> LeafId {
        self.leaves.push(PendingLeaf::default());
        (self.leaves.len() - 1) as LeafId
    }
}
