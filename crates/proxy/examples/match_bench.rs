//! Route-match micro-benchmark: ns per lookup for hits and misses in tables of 10, 1,000 and
//! 10,000 routes (`GET /r{i}/items/{id}` plus a few overlapping templates), and ns per
//! `normalize_path` call. Run with `cargo run --release -p tollgate-proxy --example match_bench`.
//! Numbers are for comparing builds on one machine, not assertions.

use std::error::Error;
use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, Method};
use tollgate_proxy::normalize::normalize_path;
use tollgate_proxy::router::{Match, PathTemplate, RouteTable, RouteTableBuilder};

const LOOKUPS: usize = 2_000_000;
/// Distinct request paths cycled through, so that one hot path does not flatter the cache
/// (a power of two: the index is masked, not divided).
const PATHS: usize = 1024;

fn build(routes: usize) -> Result<RouteTable<usize>, Box<dyn Error>> {
    let mut builder = RouteTableBuilder::new();
    for i in 0..routes {
        let template = PathTemplate::parse(&format!("/r{i}/items/{{id}}"))?;
        builder.insert(&[Method::GET], &template, vec![], i)?;
    }
    // Overlapping shapes that make the walk backtrack on some paths.
    builder.insert(&[Method::POST], &PathTemplate::parse("/r0/items/new")?, vec![], routes)?;
    builder.insert(&[], &PathTemplate::parse("/static/{file+}")?, vec![], routes + 1)?;
    Ok(builder.build())
}

/// A cheap deterministic sequence (xorshift), to spread requests over the table.
fn spread(count: usize, modulo: usize) -> impl Iterator<Item = usize> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % modulo as u64) as usize
    })
}

/// Runs `LOOKUPS` lookups over `paths` and returns ns per lookup and how many were found.
fn time(table: &RouteTable<usize>, method: &Method, paths: &[String]) -> (f64, usize) {
    let headers = HeaderMap::new();
    let mut found = 0;
    let start = Instant::now();
    for i in 0..LOOKUPS {
        let path = black_box(&paths[i & (PATHS - 1)]);
        if let Match::Found { value, params } = table.find(method, path, &headers) {
            black_box((value, &params));
            found += 1;
        }
    }
    let elapsed = start.elapsed();
    (elapsed.as_nanos() as f64 / LOOKUPS as f64, found)
}

fn main() -> Result<(), Box<dyn Error>> {
    println!("{LOOKUPS} lookups per row, {PATHS} distinct paths per row");
    println!("{:>7}  {:<34} {:>10} {:>8}", "routes", "case", "ns/lookup", "found");
    for routes in [10, 1_000, 10_000] {
        let started = Instant::now();
        let table = build(routes)?;
        let build_ms = started.elapsed().as_secs_f64() * 1e3;
        let cases: [(&str, Method, Vec<String>); 6] = [
            (
                "hit  GET /r{i}/items/{id}",
                Method::GET,
                spread(PATHS, routes).map(|i| format!("/r{i}/items/{}", i * 31)).collect(),
            ),
            (
                "hit  HEAD (via GET)",
                Method::HEAD,
                spread(PATHS, routes).map(|i| format!("/r{i}/items/{i}")).collect(),
            ),
            (
                "hit  GET /static/{file+}",
                Method::GET,
                spread(PATHS, 1000).map(|i| format!("/static/css/{i}.css")).collect(),
            ),
            (
                "miss unknown first segment",
                Method::GET,
                spread(PATHS, routes).map(|i| format!("/x{i}/items/1")).collect(),
            ),
            (
                "miss after two segments",
                Method::GET,
                spread(PATHS, routes).map(|i| format!("/r{i}/other/1")).collect(),
            ),
            (
                "miss 405 (POST)",
                Method::POST,
                spread(PATHS, routes).map(|i| format!("/r{i}/items/7")).collect(),
            ),
        ];
        for (name, method, paths) in &cases {
            // A first pass warms caches and the CPU clock; only the second is reported.
            time(&table, method, paths);
            let (ns, found) = time(&table, method, paths);
            println!("{routes:>7}  {name:<34} {ns:>10.1} {found:>8}");
        }
        println!("{routes:>7}  {:<34} {:>10.2} ms", "(build)", build_ms);
    }

    let canonical = "/r123/items/4567";
    let messy = "/r123//./items/%34567";
    for (name, path) in [("normalize canonical (no copy)", canonical), ("normalize messy (copy)", messy)] {
        let start = Instant::now();
        let mut total = 0;
        for _ in 0..LOOKUPS {
            total += normalize_path(black_box(path)).map_or(0, |p| p.len());
        }
        let ns = start.elapsed().as_nanos() as f64 / LOOKUPS as f64;
        println!("{:>7}  {name:<34} {ns:>10.1} {:>8}", "-", black_box(total) / LOOKUPS);
    }
    Ok(())
}
