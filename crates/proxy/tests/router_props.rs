//! Property tests for the route table: literal paths are found, parameter values are captured
//! exactly, and every lookup agrees with a naive reference implementation of the precedence
//! rules (a linear scan sorting all applicable routes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use tollgate_proxy::router::{InsertError, Match, PathTemplate, RouteTableBuilder};

/// A template segment of the reference model.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(&'static str),
    Param,
    Greedy,
}

impl Seg {
    /// Precedence rank: lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Seg::Lit(_) => 0,
            Seg::Param => 1,
            Seg::Greedy => 2,
        }
    }
}

#[derive(Debug, Clone)]
struct Spec {
    segs: Vec<Seg>,
    /// Empty: any method.
    methods: Vec<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    /// Parameter name prefix, so equivalent shapes get different names.
    prefix: &'static str,
}

impl Spec {
    fn template(&self) -> String {
        if self.segs.is_empty() {
            return "/".into();
        }
        let mut out = String::new();
        for (i, seg) in self.segs.iter().enumerate() {
            out.push('/');
            match seg {
                Seg::Lit(s) => out.push_str(s),
                Seg::Param => out.push_str(&format!("{{{}{i}}}", self.prefix)),
                Seg::Greedy => out.push_str(&format!("{{{}{i}+}}", self.prefix)),
            }
        }
        out
    }

    fn header_set(&self) -> BTreeSet<(&'static str, &'static str)> {
        self.headers.iter().copied().collect()
    }

    /// Reference matching: `Some(params)` when the template matches `path`.
    fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let segments: Vec<&str> = path[1..].split('/').collect();
        let template = PathTemplate::parse(&self.template()).unwrap();
        let names: Vec<&str> = template.params().collect();
        let mut values = Vec::new();
        let segs: &[Seg] = if self.segs.is_empty() { &[Seg::Lit("")] } else { &self.segs };
        for (i, seg) in segs.iter().enumerate() {
            match seg {
                Seg::Lit(s) => (segments.get(i)? == s).then_some(())?,
                Seg::Param => values.push(segments.get(i).filter(|s| !s.is_empty())?.to_string()),
                Seg::Greedy => {
                    let rest = segments.get(i..).map(|r| r.join("/")).filter(|r| !r.is_empty())?;
                    values.push(rest);
                    return Some(names.iter().map(|n| n.to_string()).zip(values).collect());
                }
            }
        }
        (segments.len() == segs.len()).then(|| names.iter().map(|n| n.to_string()).zip(values).collect())
    }

    fn method_rank(&self, method: &str) -> Option<u8> {
        if self.methods.contains(&method) {
            Some(0)
        } else if method == "HEAD" && self.methods.contains(&"GET") {
            Some(1)
        } else if self.methods.is_empty() {
            Some(2)
        } else {
            None
        }
    }
}

/// Sort key (segment ranks, method rank, minus header count, index) and the params.
type Candidate = (Vec<u8>, u8, isize, usize, Vec<(String, String)>);

/// The reference answer, rendered like the table's.
fn reference(routes: &[(usize, Spec)], method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut best: Option<Candidate> = None;
    for (index, spec) in routes {
        let (Some(params), Some(rank)) = (spec.matches(path), spec.method_rank(method)) else {
            continue;
        };
        if !spec.headers.iter().all(|h| headers.contains(h)) {
            continue;
        }
        let key = (
            spec.segs.iter().map(Seg::rank).collect::<Vec<_>>(),
            rank,
            -(spec.header_set().len() as isize),
            *index,
        );
        if best.as_ref().is_none_or(|b| (&key.0, key.1, key.2, key.3) < (&b.0, b.1, b.2, b.3)) {
            best = Some((key.0, key.1, key.2, key.3, params));
        }
    }
    if let Some((_, _, _, index, params)) = best {
        return render_found(index, params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    }
    let on_path: Vec<&Spec> = routes.iter().map(|(_, s)| s).filter(|s| s.matches(path).is_some()).collect();
    if on_path.is_empty() || on_path.iter().any(|s| s.method_rank(method).is_some()) {
        return "404".into();
    }
    let mut allow: BTreeSet<&str> = on_path.iter().flat_map(|s| s.methods.iter().copied()).collect();
    if allow.contains("GET") {
        allow.insert("HEAD");
    }
    format!("405 {}", allow.into_iter().collect::<Vec<_>>().join(", "))
}

fn render_found<'a>(index: usize, params: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = format!("#{index}");
    for (name, value) in params {
        out.push_str(&format!(" {name}={value}"));
    }
    out
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "c"]).prop_map(Seg::Lit),
        2 => Just(Seg::Param),
        1 => Just(Seg::Greedy),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let segs = (prop::collection::vec(seg(), 0..4), any::<bool>()).prop_map(|(mut segs, trailing)| {
        // Greedy only last; an optional trailing slash is an empty literal.
        if let Some(i) = segs.iter().position(|s| *s == Seg::Greedy) {
            segs.truncate(i + 1);
        } else if trailing && !segs.is_empty() {
            segs.push(Seg::Lit(""));
        }
        segs
    });
    let methods = prop::sample::subsequence(vec!["GET", "HEAD", "POST", "PUT"], 0..=2);
    let headers = prop::sample::subsequence(vec![("x-a", "1"), ("x-a", "2"), ("x-b", "1")], 0..=2);
    let prefix = prop::sample::select(vec!["p", "q"]);
    (segs, methods, headers, prefix).prop_map(|(segs, methods, headers, prefix)| Spec {
        segs,
        methods,
        headers,
        prefix,
    })
}

fn request_path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec!["a", "b", "c", "d", "%2F"]);
    (prop::collection::vec(segment, 0..5), any::<bool>()).prop_map(|(segs, trailing)| {
        format!("/{}{}", segs.join("/"), if trailing && !segs.is_empty() { "/" } else { "" })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn agrees_with_the_reference(
        specs in prop::collection::vec(spec(), 1..14),
        requests in prop::collection::vec((
            prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE"]),
            request_path(),
            prop::sample::subsequence(vec![("x-a", "1"), ("x-a", "2"), ("x-b", "1")], 0..=3),
        ), 1..24),
    ) {
        let mut builder = RouteTableBuilder::new();
        let mut accepted: Vec<(usize, Spec)> = Vec::new();
        for spec in specs {
            let template = PathTemplate::parse(&spec.template()).unwrap();
            let headers = spec.headers.iter().map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v))).collect();
            let methods: Vec<Method> = spec.methods.iter().map(|m| m.parse().unwrap()).collect();
            let earlier = accepted.iter().find(|(_, s)| {
                s.segs == spec.segs
                    && s.header_set() == spec.header_set()
                    && (s.methods.is_empty() && spec.methods.is_empty() || s.methods.iter().any(|m| spec.methods.contains(m)))
            });
            match (builder.insert(&methods, &template, headers, accepted.len()), earlier) {
                (Ok(()), None) => accepted.push((accepted.len(), spec)),
                (Err(InsertError::Duplicate { previous, .. }), Some(&(index, _))) => prop_assert_eq!(previous, index),
                (got, want) => prop_assert!(false, "insert {spec:?}: got {got:?}, reference duplicate {want:?}"),
            }
        }
        let table = builder.build();
        for (method, path, headers) in requests {
            let mut map = HeaderMap::new();
            for (n, v) in &headers {
                map.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            let got = match table.find(&method.parse().unwrap(), &path, &map) {
                Match::Found { value, params } => render_found(*value, params.iter()),
                Match::MethodNotAllowed { allow } => format!("405 {allow}"),
                Match::NotFound => "404".into(),
            };
            let want = reference(&accepted, method, &path, &headers);
            prop_assert_eq!(got, want, "{} {} {:?} with routes {:#?}", method, path, headers, accepted);
        }
    }

    #[test]
    fn every_literal_path_is_found(paths in prop::collection::btree_set("(/[a-z0-9._~-]{1,6}){1,5}/?", 1..60)) {
        let mut builder = RouteTableBuilder::new();
        let mut inserted = Vec::new();
        for path in &paths {
            // Dot segments are not templates; the generator can produce them.
            if let Ok(template) = PathTemplate::parse(path) {
                builder.insert(&[Method::GET], &template, vec![], path.clone()).unwrap();
                inserted.push(path);
            }
        }
        let table = builder.build();
        for path in inserted {
            match table.find(&Method::GET, path, &HeaderMap::new()) {
                Match::Found { value, params } => {
                    prop_assert_eq!(value, path);
                    prop_assert!(params.is_empty());
                }
                other => prop_assert!(false, "{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn parameter_values_are_captured_exactly(
        id in "([a-zA-Z0-9._~!$&'()*+,;=:@-]|%[0-9A-F]{2}){1,12}",
        rest in "([a-z0-9]{1,4}/?){1,4}",
    ) {
        let mut builder = RouteTableBuilder::new();
        builder.insert(&[], &PathTemplate::parse("/items/{id}/{rest+}").unwrap(), vec![], ()).unwrap();
        builder.insert(&[], &PathTemplate::parse("/items/{id}").unwrap(), vec![], ()).unwrap();
        let table = builder.build();
        let path = format!("/items/{id}/{rest}");
        let found = table.find(&Method::GET, &path, &HeaderMap::new());
        let Match::Found { params, .. } = found else { panic!("{path}: {found:?}") };
        prop_assert_eq!(params.iter().collect::<Vec<_>>(), vec![("id", id.as_str()), ("rest", rest.as_str())]);
        let single = format!("/items/{id}");
        let found = table.find(&Method::GET, &single, &HeaderMap::new());
        let Match::Found { params, .. } = found else { panic!("{single}: {found:?}") };
        prop_assert_eq!(params.get("id"), Some(id.as_str()));
    }
}
