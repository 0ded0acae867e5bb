//! The built route table and its lookup: a depth-first walk of the segment trie.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::allow::{AllowValues, MethodBits, MethodMask};
use super::node::{LeafId, Node, NodeId, SegmentKey};
use super::{Match, Params};

/// One inserted route.
#[derive(Debug)]
pub(super) struct Route<T> {
    pub(super) value: T,
    /// Parameter names in template order; matched values are paired with them by position.
    pub(super) params: Box<[Box<str>]>,
    /// Header conditions, sorted and deduplicated, so equal sets compare equal.
    pub(super) headers: Box<[(HeaderName, HeaderValue)]>,
}

impl<T> Route<T> {
    /// Every condition holds when the request has that header with exactly that value
    /// (any one of its values, if repeated). Values are compared byte for byte.
    fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// All routes of one template shape: a range of [`RouteTable`]'s candidates.
#[derive(Debug)]
pub(super) struct Leaf {
    /// The methods named by its routes, for `Allow`.
    pub(super) mask: MethodMask,
    /// Whether an any-method route has this template (then the path is never a 405).
    pub(super) any: bool,
    pub(super) start: u32,
    pub(super) len: u32,
}

/// A route of a leaf, for one of its methods.
#[derive(Debug, Clone, Copy)]
pub(super) struct Candidate {
    /// The method's bit, or [`ANY_METHOD`].
    pub(super) bit: u32,
    pub(super) route: u32,
}

/// [`Candidate::bit`] of an any-method route.
pub(super) const ANY_METHOD: u32 = u32::MAX;

/// Routes indexed for lookup; built by [`RouteTableBuilder`](super::RouteTableBuilder).
///
/// See the [module docs](super) for the precedence rules. A lookup visits each trie node at
/// most once and only nodes on the request path's way down, so its cost does not grow with
/// the number of routes; it allocates only when the winning route has more than four
/// parameters. Immutable once built: share it behind an `Arc`.
#[derive(Debug)]
pub struct RouteTable<T> {
    pub(super) nodes: Vec<Node>,
    pub(super) leaves: Vec<Leaf>,
    /// Each leaf's routes, grouped by method (any-method last), each group in the order it
    /// is tried: most header conditions first, then insertion order.
    pub(super) candidates: Vec<Candidate>,
    pub(super) routes: Vec<Route<T>>,
    pub(super) methods: MethodBits,
    pub(super) allow: AllowValues,
    /// The bit of GET, for HEAD requests.
    pub(super) get: Option<u32>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        super::RouteTableBuilder::new().build()
    }
}

/// A parameter value captured on the way down, linked to the previous one: the walk keeps
/// its captures on the stack and only the winning route turns them into [`Params`].
struct Captured<'c, 'a> {
    value: &'a str,
    previous: Option<&'c Captured<'c, 'a>>,
}

/// The request's side of a lookup, and what the walk saw, to tell 404 from 405.
struct Search<'a, 'h> {
    /// The request method's bit; `None` if no route names it.
    method: Option<u32>,
    /// The GET bit when the request is HEAD (GET routes answer HEAD).
    get_for_head: Option<u32>,
    headers: &'h HeaderMap,
    path_matched: bool,
    any_method: bool,
    method_matched: bool,
    allowed: MethodMask,
    /// The winning route's parameters, written where it is found (the captures live on the
    /// walk's stack), so that only a pointer travels back up.
    params: Params<'a>,
}

impl<T> RouteTable<T> {
    /// Finds the route for a request. `path` must be normalized
    /// ([`normalize_path`](crate::normalize::normalize_path)); it is matched as is.
    pub fn find<'a>(&'a self, method: &Method, path: &'a str, headers: &HeaderMap) -> Match<'a, T> {
        let Some(rest) = path.strip_prefix('/') else {
            return Match::NotFound;
        };
        let mut search = Search {
            method: self.methods.bit(method),
            get_for_head: if method == Method::HEAD { self.get } else { None },
            headers,
            path_matched: false,
            any_method: false,
            method_matched: false,
            allowed: 0,
            params: Params::default(),
        };
        if let Some(route) = self.walk(0, rest, None, &mut search) {
            return Match::Found { value: &route.value, params: search.params };
        }
        // 405 only when the path is served, but never for this method; if a route for this
        // method (or any method) matched the path and only its headers failed, it is a 404.
        if search.path_matched && !search.any_method && !search.method_matched {
            return Match::MethodNotAllowed { allow: self.allow.get(search.allowed) };
        }
        Match::NotFound
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Matches the segment at the start of `rest` (the path after a `/`) against `node`'s
    /// children in precedence order — literal, parameter, greedy — backtracking to the next
    /// kind when a subtree yields no route.
    fn walk<'a>(
        &'a self,
        node: NodeId,
        rest: &'a str,
        captured: Option<&Captured<'_, 'a>>,
        search: &mut Search<'a, '_>,
    ) -> Option<&'a Route<T>> {
        let node = self.nodes.get(node as usize)?;
        let (segment, after) = match rest.split_once('/') {
            Some((segment, after)) => (segment, Some(after)),
            None => (rest, None),
        };
        if !node.statics.is_empty()
            && let Some(child) = node.statics.get(segment, &SegmentKey::new(segment))
            && let found @ Some(_) = self.descend(child, after, captured, search)
        {
            return found;
        }
        if let Some(child) = node.param
            && !segment.is_empty()
        {
            let captured = Captured { value: segment, previous: captured };
            if let found @ Some(_) = self.descend(child, after, Some(&captured), search) {
                return found;
            }
        }
        if let Some(leaf) = node.greedy
            && !rest.is_empty()
        {
            let captured = Captured { value: rest, previous: captured };
            return self.try_leaf(leaf, Some(&captured), search);
        }
        None
    }

    fn descend<'a>(
        &'a self,
        child: NodeId,
        after: Option<&'a str>,
        captured: Option<&Captured<'_, 'a>>,
        search: &mut Search<'a, '_>,
    ) -> Option<&'a Route<T>> {
        match after {
            Some(rest) => self.walk(child, rest, captured, search),
            None => {
                let leaf = self.nodes.get(child as usize)?.leaf?;
                self.try_leaf(leaf, captured, search)
            }
        }
    }

    /// The path matches this leaf's template: try its routes — naming the method, then GET
    /// for a HEAD request, then any-method — each group in header-count, insertion order.
    fn try_leaf<'a>(
        &'a self,
        leaf: LeafId,
        captured: Option<&Captured<'_, 'a>>,
        search: &mut Search<'a, '_>,
    ) -> Option<&'a Route<T>> {
        let leaf = self.leaves.get(leaf as usize)?;
        let start = leaf.start as usize;
        let candidates = self.candidates.get(start..start + leaf.len as usize)?;
        for wanted in [search.method, search.get_for_head, Some(ANY_METHOD)].into_iter().flatten() {
            for candidate in candidates.iter().filter(|c| c.bit == wanted) {
                let Some(route) = self.routes.get(candidate.route as usize) else {
                    continue;
                };
                if route.headers_match(search.headers) {
                    search.params = params(&route.params, captured);
                    return Some(route);
                }
            }
        }
        search.path_matched = true;
        search.any_method |= leaf.any;
        search.method_matched |=
            candidates.iter().any(|c| Some(c.bit) == search.method || Some(c.bit) == search.get_for_head);
        search.allowed |= leaf.mask;
        None
    }
}

/// Pairs the route's parameter names with the values captured on the way down (the last
/// capture is the last parameter).
fn params<'a>(names: &'a [Box<str>], captured: Option<&Captured<'_, 'a>>) -> Params<'a> {
    Params::new(names, |values| {
        let mut next = captured;
        for value in values.iter_mut().rev() {
            if let Some(capture) = next {
                *value = capture.value;
                next = capture.previous;
            }
        }
    })
}
