//! The route table: a segment trie built once per Runtime, then read by every request.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::allow::{AllowValues, MAX_METHODS, MethodBits, MethodMask};
use super::node::{LeafId, Node, NodeId};
use super::template::{PathTemplate, Segment};
use super::{Match, Params};

/// Why [`RouteTableBuilder::insert`] refused a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// An earlier route has the same method (or both are any-method), an equivalent template
    /// (same shape, parameter names aside) and the same header conditions: this one could
    /// never be chosen.
    #[error(
        "{} {template} with the same header conditions duplicates route #{previous}",
        method.as_ref().map_or("any method", Method::as_str)
    )]
    Duplicate {
        /// Index of the earlier route (see [`RouteTableBuilder::get`]).
        previous: usize,
        /// The shared method; `None` when both routes accept any method.
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

/// One inserted route.
#[derive(Debug)]
struct Route<T> {
    value: T,
    /// Parameter names in template order; matched values are paired with them by position.
    params: Box<[Box<str>]>,
    /// Header conditions, sorted and deduplicated, so equal sets compare equal.
    headers: Box<[(HeaderName, HeaderValue)]>,
}

impl<T> Route<T> {
    /// Every condition holds when the request has that header with exactly that value
    /// (any one of its values, if repeated). Values are compared byte for byte.
    fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// All routes of one template shape, in the order they are tried.
#[derive(Debug, Default)]
struct Leaf {
    /// Per method bit, route indices sorted by most header conditions, then insertion order.
    by_method: Vec<(u32, Vec<u32>)>,
    /// Any-method routes, same order.
    any: Vec<u32>,
    /// The methods of `by_method`, for `Allow`.
    mask: MethodMask,
}

impl Leaf {
    fn list(&self, bit: Option<u32>) -> &[u32] {
        bit.and_then(|bit| self.by_method.iter().find(|(b, _)| *b == bit))
            .map_or(&[], |(_, list)| list.as_slice())
    }

    fn list_mut(&mut self, bit: Option<u32>) -> &mut Vec<u32> {
        let Some(bit) = bit else { return &mut self.any };
        match self.by_method.iter().position(|(b, _)| *b == bit) {
            Some(i) => &mut self.by_method[i].1,
            None => {
                self.by_method.push((bit, Vec::new()));
                let last = self.by_method.len() - 1;
                &mut self.by_method[last].1
            }
        }
    }
}

/// Collects routes, rejects duplicates, and builds a [`RouteTable`].
#[derive(Debug)]
pub struct RouteTableBuilder<T> {
    nodes: Vec<Node>,
    leaves: Vec<Leaf>,
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
        Self { nodes: vec![Node::default()], leaves: Vec::new(), routes: Vec::new(), methods: MethodBits::default() }
    }

    /// Adds a route answering `methods` (empty: any method) on paths matching `template`
    /// when every `(name, value)` of `headers` is present on the request.
    ///
    /// Routes get indices 0, 1, 2, … in the order they are accepted; among routes with the
    /// same template, method and number of header conditions, the lower index wins, so insert
    /// in a documented, stable order (the caller's: e.g. creation time, then name).
    pub fn insert(
        &mut self,
        methods: &[Method],
        template: &PathTemplate,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        value: T,
    ) -> Result<(), InsertError> {
        if self.methods.unknown(methods) + self.methods_len() > MAX_METHODS {
            return Err(InsertError::TooManyMethods { max: MAX_METHODS });
        }
        headers.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
        headers.dedup();
        let bits: Vec<Option<u32>> = if methods.is_empty() {
            vec![None]
        } else {
            let mut bits: Vec<_> = methods.iter().map(|m| Some(self.methods.bit_or_insert(m))).collect();
            bits.sort_unstable();
            bits.dedup();
            bits
        };
        let leaf_id = self.leaf_for(template);
        let index = u32::try_from(self.routes.len()).unwrap_or(u32::MAX);
        let Some(leaf) = self.leaves.get_mut(leaf_id as usize) else {
            return Ok(()); // unreachable: leaf_for returns a valid index
        };
        for &bit in &bits {
            let previous = leaf.list(bit).iter().chain(if bit.is_none() { &leaf.any[..] } else { &[] });
            for &earlier in previous {
                if self.routes.get(earlier as usize).is_some_and(|r| *r.headers == *headers) {
                    return Err(InsertError::Duplicate {
                        previous: earlier as usize,
                        method: bit.and_then(|_| methods.iter().find(|m| self.methods.bit(m) == bit).cloned()),
                        template: template.to_string(),
                    });
                }
            }
        }
        let conditions = headers.len();
        for &bit in &bits {
            let routes = &self.routes;
            let list = leaf.list_mut(bit);
            // Most header conditions first, then insertion order (indices only grow).
            let at = list.partition_point(|&r| routes.get(r as usize).is_some_and(|r| r.headers.len() >= conditions));
            list.insert(at, index);
            if let Some(bit) = bit {
                leaf.mask |= 1 << bit;
            }
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

    /// The value of the route with this index (as named by [`InsertError::Duplicate`]).
    pub fn get(&self, index: usize) -> Option<&T> {
        self.routes.get(index).map(|route| &route.value)
    }

    /// Freezes the table: compacts small nodes and precomputes every `Allow` value.
    pub fn build(mut self) -> RouteTable<T> {
        for node in &mut self.nodes {
            node.statics.freeze();
        }
        let allow = AllowValues::build(&self.methods, self.leaves.iter().map(|leaf| leaf.mask));
        let head = self.methods.bit(&Method::HEAD);
        let get = self.methods.bit(&Method::GET);
        RouteTable { nodes: self.nodes, leaves: self.leaves, routes: self.routes, methods: self.methods, allow, head, get }
    }

    fn methods_len(&self) -> usize {
        self.methods.unknown(&[]) // zero; keeps MethodBits' field private
            + (0..MAX_METHODS as u32 + 1).take_while(|_| false).count()
    }

    /// Walks (creating as needed) the trie path of `template` and returns its leaf.
    fn leaf_for(&mut self, template: &PathTemplate) -> LeafId {
        let mut node: NodeId = 0;
        for segment in template.segments() {
            let next = match segment {
                Segment::Literal(text) => {
                    let fresh = self.nodes.len();
                    let mut created = false;
                    let id = self.node_mut(node).statics.get_or_insert(text, || {
                        created = true;
                        fresh as NodeId
                    });
                    if created {
                        self.nodes.push(Node::default());
                    }
                    id
                }
                Segment::Param(_) => match self.node_mut(node).param {
                    Some(id) => id,
                    None => {
                        let id = self.nodes.len() as NodeId;
                        self.nodes.push(Node::default());
                        self.node_mut(node).param = Some(id);
                        id
                    }
                },
                Segment::Greedy(_) => {
                    let existing = self.node_mut(node).greedy;
                    return existing.unwrap_or_else(|| {
                        let id = self.new_leaf();
                        self.node_mut(node).greedy = Some(id);
                        id
                    });
                }
            };
            node = next;
        }
        let existing = self.node_mut(node).leaf;
        existing.unwrap_or_else(|| {
            let id = self.new_leaf();
            self.node_mut(node).leaf = Some(id);
            id
        })
    }

    fn new_leaf(&mut self) -> LeafId {
        self.leaves.push(Leaf::default());
        (self.leaves.len() - 1) as LeafId
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }
}
