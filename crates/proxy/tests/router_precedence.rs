//! The route precedence table: literal > parameter > greedy per segment with backtracking,
//! method before any-method, header conditions, insertion order, HEAD via GET.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate_proxy::router::{Match, PathTemplate, RouteTable, RouteTableBuilder};

/// A route spec: `"GET,POST /a/{id}"`, `"* /a"` (any method), optionally with header
/// conditions `"GET /a x-v=1 x-w=2"`.
fn table(specs: &[&str]) -> RouteTable<usize> {
    let mut builder = RouteTableBuilder::new();
    for (i, spec) in specs.iter().enumerate() {
        let mut words = spec.split(' ');
        let methods: Vec<Method> = match words.next().unwrap() {
            "*" => vec![],
            list => list.split(',').map(|m| m.parse().unwrap()).collect(),
        };
        let template = PathTemplate::parse(words.next().unwrap()).unwrap();
        let headers = words
            .map(|h| {
                let (n, v) = h.split_once('=').unwrap();
                (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap())
            })
            .collect();
        builder.insert(&methods, &template, headers, i).unwrap();
    }
    builder.build()
}

/// `"#3"`, `"#3 id=7 rest=a/b"`, `"405 GET, HEAD"` or `"404"`.
fn lookup(table: &RouteTable<usize>, request: &str) -> String {
    let mut words = request.split(' ');
    let method: Method = words.next().unwrap().parse().unwrap();
    let path = words.next().unwrap();
    let mut headers = HeaderMap::new();
    for h in words {
        let (n, v) = h.split_once('=').unwrap();
        headers.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    match table.find(&method, path, &headers) {
        Match::Found { value, params } => {
            let mut out = format!("#{value}");
            for (name, value) in params.iter() {
                out.push_str(&format!(" {name}={value}"));
            }
            out
        }
        Match::MethodNotAllowed { allow } => format!("405 {allow}"),
        Match::NotFound => "404".to_owned(),
    }
}

fn check(specs: &[&str], cases: &[(&str, &str)]) {
    let table = table(specs);
    for (request, want) in cases {
        assert_eq!(lookup(&table, request), *want, "routes {specs:?}, request {request:?}");
    }
}

#[test]
fn literal_beats_param_beats_greedy() {
    check(
        &["GET /a/{p+}", "GET /a/{id}", "GET /a/b", "GET /{x}/b", "GET /{all+}"],
        &[
            ("GET /a/b", "#2"),
            ("GET /a/c", "#1 id=c"),
            ("GET /a/c/d", "#0 p=c/d"),
            ("GET /a/b/", "#0 p=b/"),
            ("GET /z/b", "#3 x=z"),
            ("GET /z/c", "#4 all=z/c"),
            ("GET /a", "#4 all=a"),
            ("GET /", "404"),
        ],
    );
}

#[test]
fn leftmost_segment_decides() {
    // /a/{x} beats /{y}/b for /a/b: segment 1 is literal in the first.
    check(
        &["GET /{y}/b", "GET /a/{x}", "GET /{y}/{z}/c", "GET /{y}/b/{z}"],
        &[
            ("GET /a/b", "#1 x=b"),
            ("GET /q/b", "#0 y=q"),
            ("GET /q/b/c", "#3 y=q z=c"),
            ("GET /q/r/c", "#2 y=q z=r"),
        ],
    );
}

#[test]
fn backtracking() {
    check(
        &["GET /users/new/comments", "GET /users/{id}/posts", "GET /users/{id}/{rest+}", "GET /{p+}"],
        &[
            ("GET /users/new/posts", "#1 id=new"),
            ("GET /users/new/comments", "#0"),
            ("GET /users/new/likes", "#2 id=new rest=likes"),
            ("GET /users/new/comments/1", "#2 id=new rest=comments/1"),
            ("GET /users/new", "#3 p=users/new"),
        ],
    );
    // Backtracking out of a literal subtree that has deeper literals but no route.
    check(&["GET /a/b/c/d", "GET /a/{x}/c"], &[("GET /a/b/c", "#1 x=b")]);
}

#[test]
fn greedy_needs_at_least_one_character() {
    check(
        &["GET /files/{p+}", "GET /{root+}"],
        &[
            ("GET /files/x", "#0 p=x"),
            ("GET /files/x/y.txt", "#0 p=x/y.txt"),
            ("GET /files/", "#1 root=files/"),
            ("GET /files", "#1 root=files"),
            ("GET /", "404"),
        ],
    );
}

#[test]
fn param_needs_a_non_empty_segment() {
    check(&["GET /a/{id}", "GET /{x}"], &[("GET /a/", "404"), ("GET /a/x", "#0 id=x"), ("GET /", "404")]);
}

#[test]
fn trailing_slash_is_significant() {
    check(
        &["GET /a", "GET /a/", "GET /b/{id}/"],
        &[("GET /a", "#0"), ("GET /a/", "#1"), ("GET /b/7/", "#2 id=7"), ("GET /b/7", "404")],
    );
}

#[test]
fn root() {
    check(&["GET /"], &[("GET /", "#0"), ("GET /a", "404"), ("HEAD /", "#0"), ("POST /", "405 GET, HEAD")]);
}

#[test]
fn named_method_beats_any_method_only_for_the_same_template() {
    check(
        &["* /a/{id}", "GET /a/{id}", "* /a/b", "POST /{x}/{y}"],
        &[
            ("GET /a/7", "#1 id=7"),
            ("PUT /a/7", "#0 id=7"),
            // The more specific template wins regardless of its method list.
            ("GET /a/b", "#2"),
            ("POST /a/b", "#2"),
            ("POST /a/7", "#0 id=7"),
            ("POST /q/7", "#3 x=q y=7"),
        ],
    );
}

#[test]
fn method_mismatch_falls_back_to_less_specific_template() {
    check(
        &["GET /users/new", "POST /users/{id}", "DELETE /{p+}"],
        &[
            ("POST /users/new", "#1 id=new"),
            ("DELETE /users/new", "#2 p=users/new"),
            ("PUT /users/new", "405 DELETE, GET, HEAD, POST"),
            ("PUT /users/7", "405 DELETE, POST"),
        ],
    );
}

#[test]
fn head_is_answered_by_get_unless_something_more_specific_takes_it() {
    check(
        &["GET /a/{id}", "HEAD /a/b", "* /c/d", "GET /c/{x}", "GET /e", "* /e", "GET /f", "HEAD /f"],
        &[
            ("HEAD /a/7", "#0 id=7"),
            ("HEAD /a/b", "#1"),
            ("GET /a/b", "#0 id=b"),
            // A more specific any-method route takes HEAD from GET ...
            ("HEAD /c/d", "#2"),
            ("HEAD /c/e", "#3 x=e"),
            // ... but with the same template, GET answers HEAD before any-method.
            ("HEAD /e", "#4"),
            ("POST /e", "#5"),
            // An explicit HEAD route beats GET for the same template.
            ("HEAD /f", "#7"),
        ],
    );
}

#[test]
fn header_conditions() {
    check(
        &[
            "GET /a",
            "GET /a x-version=2",
            "GET /a x-version=2 x-beta=1",
            "GET /a x-version=3",
            "GET /a x-beta=3",
            "* /b x-version=2",
            "GET /{p}",
        ],
        &[
            ("GET /a", "#0"),
            ("GET /a x-version=2", "#1"),
            ("GET /a x-version=2 x-beta=1", "#2"),
            ("GET /a x-beta=1", "#0"),
            ("GET /a x-version=1 x-version=2", "#1"),
            // As many conditions, all met: insertion order.
            ("GET /a x-version=3", "#3"),
            ("GET /a x-beta=3", "#4"),
            ("GET /a x-beta=3 x-version=3", "#3"),
            // Header values are compared exactly; names case-insensitively (HeaderName).
            ("GET /a X-Version=2", "#1"),
            ("GET /a x-version=V2", "#0"),
            // A route whose headers fail is skipped, down to less specific templates ...
            ("GET /b x-version=2", "#5"),
            ("GET /b", "#6 p=b"),
            ("POST /b", "404"),
        ],
    );
}

#[test]
fn conditioned_routes_are_tried_before_unconditioned_regardless_of_order() {
    check(
        &["GET /a", "GET /a x-v=1", "GET /a x-v=1 x-w=1", "GET /a x-w=1"],
        &[
            ("GET /a x-v=1 x-w=1", "#2"),
            ("GET /a x-w=1 x-v=1", "#2"),
            ("GET /a x-w=1", "#3"),
            ("GET /a x-v=1", "#1"),
            ("GET /a", "#0"),
        ],
    );
}

#[test]
fn named_method_beats_any_method_even_with_fewer_headers() {
    check(&["* /a x-v=1", "GET /a"], &[("GET /a x-v=1", "#1"), ("POST /a x-v=1", "#0"), ("POST /a", "404")]);
}

#[test]
fn parameter_names_come_from_the_winning_route() {
    check(
        &["GET /a/{x}", "POST /a/{y}", "* /a/{z}"],
        &[("GET /a/1", "#0 x=1"), ("POST /a/1", "#1 y=1"), ("PUT /a/1", "#2 z=1")],
    );
}

#[test]
fn values_are_the_normalized_path_slices() {
    check(
        &["GET /f/{name}/{rest+}"],
        &[("GET /f/a%2Fb/c%20d/e/", "#0 name=a%2Fb rest=c%20d/e/"), ("GET /f/x/%2F", "#0 name=x rest=%2F")],
    );
}
