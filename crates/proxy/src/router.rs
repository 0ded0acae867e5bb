//! Method + path (+ headers) → route: path templates and the route table that matches them.
//!
//! Build a [`RouteTable`] off the request path with a [`RouteTableBuilder`], then call
//! [`RouteTable::find`] with the *normalized* path
//! ([`normalize_path`](crate::normalize::normalize_path)).
//!
//! # Templates
//!
//! A [`PathTemplate`] is a sequence of `/`-separated segments: a literal (`orders`), a
//! parameter `{id}` that matches exactly one non-empty segment, or, as the last segment only, a
//! greedy parameter `{path+}` that matches the non-empty rest of the path, slashes included
//! (`/files/{p+}` matches neither `/files` nor `/files/`; `/{p+}` does not match `/`). Its value
//! is that rest without the leading slash. Parameter values are slices of the normalized path:
//! reserved characters stay percent-encoded (`%2F`), the caller decodes if it needs to. A
//! trailing slash is significant: `/a/` and `/a` are different templates and paths.
//!
//! # Precedence
//!
//! A route *applies* to a request when its template matches the path, it accepts the method
//! (names it, accepts any method, or names GET and the request is HEAD) and the request
//! carries all of its header conditions. Among the routes that apply, the winner is the first
//! by these keys, in order:
//!
//! 1. **Template specificity**, segment by segment from the left: a literal segment beats a
//!    parameter, a parameter beats greedy. The first differing segment decides, whatever
//!    the method lists say. Matching backtracks: for `/users/new/posts`, `/users/new/comments`
//!    does not match, so `/users/{id}/posts` does.
//! 2. **Method**, for the same template: a route naming the request method, then (for HEAD
//!    requests) a route naming GET, then an any-method route. So a GET route answers HEAD
//!    unless a HEAD route with an equally or more specific template, or an any-method route
//!    with a more specific one, matches.
//! 3. **Header conditions**, for the same template and method: more conditions first.
//! 4. **Insertion order**: the route inserted first wins. The caller inserts in a documented
//!    stable order (Tollgate: creation time, then namespace/name).
//!
//! A route whose method or headers do not match is skipped, and the search continues with the
//! next route in this order, including less specific templates.
//!
//! # 404 or 405
//!
//! When no route applies: if the path matches some template, no any-method route matches the
//! path, and no route for this method (GET for HEAD) matches it, the answer is
//! [`Match::MethodNotAllowed`] with an `Allow` value listing every method of the routes whose
//! template matches the path, plus HEAD when GET is there, sorted and comma-separated
//! (`"GET, HEAD, POST"`). Otherwise — including a route for this method whose header conditions
//! failed — it is [`Match::NotFound`]. OPTIONS gets no special treatment: a CORS preflight
//! that should not be a 405 is the caller's to recognise.
//!
//! Header conditions hold when the request carries the header (names are case-insensitive)
//! with exactly the given value (byte for byte; any one of its values if repeated).
//!
//! # Why not `matchit`
//!
//! `matchit` 0.9 backtracks between static, parameter and catch-all children, but it returns
//! a single value per path. The rules above must skip a template whose routes reject the
//! method or the headers and fall back to the next most specific one, and a 405 needs the
//! methods of *every* template matching the path; neither fits its API. The table is a small
//! segment trie instead: one node per template prefix, visited depth-first in precedence order;
//! literal children are found through an open-addressing hash table (a lone child is compared
//! inline). Each trie node is visited at most once per lookup, so the cost depends on the
//! path and on how many templates overlap it, not on the number of routes; a lookup allocates
//! only for routes with more than four parameters (`examples/match_bench.rs` measures it).

use std::fmt;

mod allow;
mod builder;
mod node;
mod table;

pub use allow::MAX_METHODS;
pub use builder::{InsertError, RouteTableBuilder};
pub use table::RouteTable;
pub use tollgate_ir::path_template::{MAX_SEGMENTS, PathTemplate, TemplateError};

/// The outcome of [`RouteTable::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match<'a, T> {
    /// A route applies.
    Found {
        /// The winning route's value.
        value: &'a T,
        /// Its parameters, valued from the path.
        params: Params<'a>,
    },
    /// The path is served, but not for this method (405).
    MethodNotAllowed {
        /// The `Allow` header value, e.g. `"GET, HEAD, POST"`.
        allow: &'a str,
    },
    /// No route applies (404).
    NotFound,
}

/// The parameters of a matched route: `(name, value)` pairs in template order, both borrowed
/// (names from the table, values from the path). Up to four values are stored inline, so a
/// typical lookup allocates nothing.
#[derive(Clone)]
pub struct Params<'a> {
    names: &'a [Box<str>],
    values: Values<'a>,
}

/// Parameters stored without allocating.
const INLINE: usize = 4;

#[derive(Clone)]
enum Values<'a> {
    Inline([&'a str; INLINE]),
    Heap(Vec<&'a str>),
}

impl<'a> Params<'a> {
    /// Parameters named `names`, valued by `fill` (given one slot per name).
    pub(crate) fn new(names: &'a [Box<str>], fill: impl FnOnce(&mut [&'a str])) -> Self {
        let mut values = if names.len() <= INLINE {
            Values::Inline([""; INLINE])
        } else {
            Values::Heap(vec![""; names.len()])
        };
        let slots = match &mut values {
            Values::Inline(array) => array.get_mut(..names.len()).unwrap_or_default(),
            Values::Heap(vec) => vec.as_mut_slice(),
        };
        fill(slots);
        Self { names, values }
    }

    fn values(&self) -> &[&'a str] {
        match &self.values {
            Values::Inline(array) => array.get(..self.names.len()).unwrap_or_default(),
            Values::Heap(vec) => vec,
        }
    }

    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, value)| value)
    }

    /// The `(name, value)` pairs, in template order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.names.iter().map(|name| &**name).zip(self.values().iter().copied())
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Default for Params<'_> {
    fn default() -> Self {
        Self { names: &[], values: Values::Inline([""; INLINE]) }
    }
}

impl PartialEq for Params<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Params<'_> {}

impl fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}
