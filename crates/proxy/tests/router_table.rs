//! Route table behaviour: 405 with `Allow`, duplicates, limits, and 10,000 routes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tollgate_proxy::router::{InsertError, MAX_METHODS, Match, PathTemplate, RouteTable, RouteTableBuilder};

fn t(s: &str) -> PathTemplate {
    PathTemplate::parse(s).unwrap()
}

fn m(s: &str) -> Method {
    s.parse().unwrap()
}

fn methods(list: &str) -> Vec<Method> {
    list.split(',').filter(|s| !s.is_empty()).map(m).collect()
}

fn h(name: &str, value: &str) -> (HeaderName, HeaderValue) {
    (HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap())
}

fn find<'a>(table: &'a RouteTable<&'static str>, method: &str, path: &'a str) -> Match<'a, &'static str> {
    table.find(&m(method), path, &HeaderMap::new())
}

fn allow<'a>(table: &'a RouteTable<&'static str>, method: &str, path: &'a str) -> &'a str {
    match find(table, method, path) {
        Match::MethodNotAllowed { allow } => allow,
        other => panic!("{method} {path}: expected 405, got {other:?}"),
    }
}

#[test]
fn method_not_allowed_lists_every_method_of_the_path_sorted() {
    let mut b = RouteTableBuilder::new();
    b.insert(&methods("POST,GET"), &t("/orders"), vec![], "orders").unwrap();
    b.insert(&methods("DELETE"), &t("/orders/{id}"), vec![], "delete").unwrap();
    b.insert(&methods("PATCH,PUT"), &t("/orders/{id}"), vec![h("x-v", "1")], "patch").unwrap();
    b.insert(&methods("PURGE"), &t("/orders/{id}"), vec![], "purge").unwrap();
    b.insert(&methods("HEAD"), &t("/orders/special"), vec![], "head").unwrap();
    b.insert(&methods("GET"), &t("/orders/{id}/{rest+}"), vec![], "rest").unwrap();
    let table = b.build();
    assert_eq!(allow(&table, "PUT", "/orders"), "GET, HEAD, POST");
    // Methods of header-conditioned routes are listed too: the path serves them.
    assert_eq!(allow(&table, "GET", "/orders/7"), "DELETE, PATCH, PURGE, PUT");
    // Two templates match /orders/special; HEAD is not doubled.
    assert_eq!(allow(&table, "GET", "/orders/special"), "DELETE, HEAD, PATCH, PURGE, PUT");
    assert_eq!(allow(&table, "POST", "/orders/7/x/y"), "GET, HEAD");
    // Unknown path: 404, not 405.
    assert_eq!(find(&table, "PUT", "/nothing"), Match::NotFound);
    // The method is served but the header condition fails: 404, not 405 naming it.
    assert_eq!(find(&table, "PUT", "/orders/7"), Match::NotFound);
    // HEAD on a GET path is not a 405.
    assert!(matches!(find(&table, "HEAD", "/orders"), Match::Found { value: &"orders", .. }));
}

#[test]
fn any_method_route_on_the_path_prevents_405() {
    let mut b = RouteTableBuilder::new();
    b.insert(&methods("GET"), &t("/a/b"), vec![], "get").unwrap();
    b.insert(&[], &t("/a/{x}"), vec![h("x-v", "1")], "any").unwrap();
    let table = b.build();
    assert_eq!(find(&table, "POST", "/a/c"), Match::NotFound);
    assert_eq!(find(&table, "POST", "/a/b"), Match::NotFound);
    let mut headers = HeaderMap::new();
    headers.insert("x-v", HeaderValue::from_static("1"));
    assert!(matches!(table.find(&Method::POST, "/a/b", &headers), Match::Found { value: &"any", .. }));
}

#[test]
fn head_fallback_and_explicit_head() {
    let mut b = RouteTableBuilder::new();
    b.insert(&methods("GET"), &t("/a"), vec![], "get-a").unwrap();
    b.insert(&methods("GET"), &t("/b"), vec![], "get-b").unwrap();
    b.insert(&methods("HEAD"), &t("/b"), vec![], "head-b").unwrap();
    b.insert(&methods("POST"), &t("/c"), vec![], "post-c").unwrap();
    let table = b.build();
    assert!(matches!(find(&table, "HEAD", "/a"), Match::Found { value: &"get-a", .. }));
    assert!(matches!(find(&table, "HEAD", "/b"), Match::Found { value: &"head-b", .. }));
    assert!(matches!(find(&table, "GET", "/b"), Match::Found { value: &"get-b", .. }));
    assert_eq!(allow(&table, "HEAD", "/c"), "POST");
    assert_eq!(allow(&table, "PUT", "/b"), "GET, HEAD");
}

#[test]
fn duplicates_are_refused_with_the_earlier_route() {
    let mut b = RouteTableBuilder::new();
    b.insert(&methods("GET,POST"), &t("/a/{x}"), vec![], "first").unwrap();
    b.insert(&methods("GET"), &t("/a/{x}"), vec![h("x-v", "1"), h("x-w", "2")], "with-headers").unwrap();
    b.insert(&[], &t("/a/{x}"), vec![], "any").unwrap();
    let err = b.insert(&methods("PUT,POST"), &t("/a/{y}"), vec![], "dup").unwrap_err();
    assert_eq!(
        err,
        InsertError::Duplicate { previous: 0, method: Some(Method::POST), template: "/a/{y}".into() }
    );
    assert_eq!(err.to_string(), "POST /a/{y} with the same header conditions duplicates route #0");
    assert_eq!(b.get(0), Some(&"first"));
    // The refused route left nothing behind: PUT is still free.
    b.insert(&methods("PUT"), &t("/a/{z}"), vec![], "put").unwrap();

    // Same header set in another order, with a repeat: still a duplicate.
    let err =
        b.insert(&methods("GET"), &t("/%61/{x}"), vec![h("x-w", "2"), h("x-v", "1"), h("x-v", "1")], "d");
    assert!(matches!(err, Err(InsertError::Duplicate { previous: 1, .. })), "{err:?}");
    let err = b.insert(&[], &t("/a/{q}"), vec![], "any2").unwrap_err();
    assert_eq!(err, InsertError::Duplicate { previous: 2, method: None, template: "/a/{q}".into() });
    assert_eq!(err.to_string(), "any method /a/{q} with the same header conditions duplicates route #2");

    // Not duplicates: another shape, another header set, method vs any-method.
    b.insert(&methods("GET"), &t("/a/{x}/"), vec![], "slash").unwrap();
    b.insert(&methods("GET"), &t("/a/{x+}"), vec![], "greedy").unwrap();
    b.insert(&methods("GET"), &t("/a/b"), vec![], "literal").unwrap();
    b.insert(&methods("GET"), &t("/a/{x}"), vec![h("x-v", "2")], "v2").unwrap();
    b.insert(&methods("GET,GET"), &t("/c"), vec![], "twice").unwrap();
    assert_eq!(b.len(), 9);
    let table = b.build();
    assert_eq!(table.len(), 9);
    assert!(matches!(find(&table, "PUT", "/a/1"), Match::Found { value: &"put", .. }));
}

#[test]
fn too_many_methods() {
    let mut b = RouteTableBuilder::new();
    let names: Vec<Method> = (0..MAX_METHODS).map(|i| m(&format!("M{i}"))).collect();
    b.insert(&names, &t("/a"), vec![], "all").unwrap();
    let err = b.insert(&[m("ONE-MORE")], &t("/b"), vec![], "x").unwrap_err();
    assert_eq!(err, InsertError::TooManyMethods { max: MAX_METHODS });
    b.insert(&[m("M3")], &t("/b"), vec![], "known").unwrap();
    let table = b.build();
    assert!(matches!(find(&table, "M63", "/a"), Match::Found { .. }));
    // Beyond 12 distinct methods, Allow still lists them (from the precomputed unions).
    let allow = allow(&table, "GET", "/a");
    assert_eq!(allow.split(", ").count(), MAX_METHODS);
}

#[test]
fn extension_methods_sort_with_the_rest() {
    let mut b = RouteTableBuilder::new();
    b.insert(&methods("PROPFIND,GET,MKCOL"), &t("/dav/{p+}"), vec![], "dav").unwrap();
    let table = b.build();
    assert_eq!(allow(&table, "DELETE", "/dav/x"), "GET, HEAD, MKCOL, PROPFIND");
    assert!(matches!(find(&table, "MKCOL", "/dav/x"), Match::Found { .. }));
}

#[test]
fn empty_table_and_odd_paths() {
    let table: RouteTable<&'static str> = RouteTable::default();
    assert!(table.is_empty());
    assert_eq!(find(&table, "GET", "/"), Match::NotFound);
    let mut b = RouteTableBuilder::new();
    b.insert(&[], &t("/{p+}"), vec![], "all").unwrap();
    let table = b.build();
    // Not normalized input is matched as is, without panicking.
    assert_eq!(find(&table, "GET", ""), Match::NotFound);
    assert_eq!(find(&table, "GET", "relative"), Match::NotFound);
    assert!(matches!(find(&table, "GET", "//x"), Match::Found { .. }));
}

#[test]
fn params_accessors() {
    let mut b = RouteTableBuilder::new();
    b.insert(&[], &t("/u/{user}/f/{file+}"), vec![], ()).unwrap();
    let table = b.build();
    let Match::Found { params, .. } = table.find(&Method::GET, "/u/ann/f/a/b.txt", &HeaderMap::new()) else {
        panic!("no match");
    };
    assert_eq!(params.len(), 2);
    assert_eq!(params.get("user"), Some("ann"));
    assert_eq!(params.get("file"), Some("a/b.txt"));
    assert_eq!(params.get("nope"), None);
    assert_eq!(params.iter().collect::<Vec<_>>(), [("user", "ann"), ("file", "a/b.txt")]);
}

#[test]
fn ten_thousand_routes() {
    let mut b = RouteTableBuilder::new();
    for i in 0..10_000 {
        b.insert(&methods("GET"), &t(&format!("/r{i}/items/{{id}}")), vec![], i).unwrap();
    }
    let table = b.build();
    assert_eq!(table.len(), 10_000);
    let none = HeaderMap::new();
    for i in 0..10_000 {
        let path = format!("/r{i}/items/{}", i * 7);
        match table.find(&Method::GET, &path, &none) {
            Match::Found { value, params } => {
                assert_eq!(*value, i);
                assert_eq!(params.get("id"), Some((i * 7).to_string().as_str()));
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    assert_eq!(table.find(&Method::GET, "/r10000/items/1", &none), Match::NotFound);
    assert_eq!(table.find(&Method::GET, "/r1/items", &none), Match::NotFound);
    assert_eq!(table.find(&Method::GET, "/r1/other/1", &none), Match::NotFound);
    assert_eq!(
        table.find(&Method::POST, "/r1/items/1", &none),
        Match::MethodNotAllowed { allow: "GET, HEAD" }
    );
}

#[test]
fn tables_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable<String>>();
    assert_send_sync::<RouteTableBuilder<String>>();
}

#[test]
fn literal_segments_of_every_length_and_near_misses() {
    // Segments longer than 16 bytes share their first and last 8 bytes here and differ only
    // in the middle; short ones differ in one byte. Lone children and large tables both.
    let label = |len: usize, mid: char| -> String {
        (0..len).map(|i| if i == len / 2 { mid } else { 'a' }).collect()
    };
    let mut b = RouteTableBuilder::new();
    let mut paths = Vec::new();
    for len in 1..=40 {
        for mid in ['x', 'y'] {
            let seg = label(len, mid);
            let many = format!("/many/{seg}");
            let lone = format!("/lone{len}{mid}/{seg}");
            b.insert(&[], &t(&many), vec![], "many").unwrap();
            b.insert(&[], &t(&lone), vec![], "lone").unwrap();
            paths.push((many, "many"));
            paths.push((lone, "lone"));
        }
    }
    let table = b.build();
    for (path, want) in &paths {
        assert!(matches!(find(&table, "GET", path), Match::Found { value, .. } if value == want), "{path}");
        let (dir, last) = path.rsplit_once('/').unwrap();
        let near = format!("{dir}/{}", last.replace(['x', 'y'], "z"));
        assert_eq!(find(&table, "GET", &near), Match::NotFound, "{near}");
        let longer = format!("{path}b");
        assert_eq!(find(&table, "GET", &longer), Match::NotFound, "{longer}");
    }
}
