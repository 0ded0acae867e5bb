//! Match cost against route count: a benchmark, not a test (it never asserts a time). Run with
//! `cargo test --release -p tollgate-proxy --test router_scale -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, Method};
use tollgate_proxy::router::{Match, PathTemplate, RouteTableBuilder};

/// `routes` routes in the shapes real APIs have: a literal collection per service, an item with a
/// parameter, a nested collection, and a greedy catch-all per service.
fn table(routes: usize) -> tollgate_proxy::router::RouteTable<usize> {
    let mut b = RouteTableBuilder::new();
    let mut n = 0;
    let mut service = 0;
    while n < routes {
        for (method, path) in [
            ("GET", format!("/svc{service}/orders")),
            ("GET", format!("/svc{service}/orders/{{id}}")),
            ("GET", format!("/svc{service}/orders/{{id}}/items/{{item}}")),
            ("POST", format!("/svc{service}/files/{{path+}}")),
        ] {
            if n == routes {
                break;
            }
            b.insert(&[method.parse::<Method>().unwrap()], &PathTemplate::parse(&path).unwrap(), vec![], n)
                .unwrap();
            n += 1;
        }
        service += 1;
    }
    b.build()
}

#[test]
#[ignore = "benchmark; run explicitly"]
fn match_cost_does_not_grow_with_route_count() {
    let headers = HeaderMap::new();
    let get = Method::GET;
    for routes in [10usize, 1_000, 10_000] {
        let table = table(routes);
        let services = routes / 4; // services with all four routes
        let paths: Vec<String> =
            (0..1024).map(|i| format!("/svc{}/orders/{}/items/{}", i % services, i * 7, i)).collect();
        let rounds = 2_000_000;
        let started = Instant::now();
        let mut found = 0usize;
        for i in 0..rounds {
            if let Match::Found { .. } = table.find(&get, black_box(&paths[i % paths.len()]), &headers) {
                found += 1;
            }
        }
        let per = started.elapsed().as_nanos() as f64 / rounds as f64;
        assert_eq!(found, rounds, "every path matches");
        eprintln!("{routes:>6} routes: {per:.0} ns per match (two parameters captured)");
    }
}
