//! Canary releases: the split by weight, sticky clients, the forcing header, weight changes made
//! by editing manifests, evidence per track (metrics, access log, `/config`), and automated
//! analysis that rolls back a failing v2 and promotes a healthy one step by step.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;

use crate::support::*;

/// A backend that answers its version's name, and 500 on every `fail_every`-th request (0:
/// never) — 5 makes a v2 that fails 20 % of its requests.
struct Versioned {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Versioned {
    async fn start(version: &'static str, fail_every: usize) -> Versioned {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        let failing = fail_every > 0 && n.is_multiple_of(fail_every);
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(version)));
                            if failing {
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Versioned { addr, task }
    }
}

impl Drop for Versioned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn api_yaml(stages: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: shop, namespace: shop}}\nspec:\n  \
         stages:\n{stages}"
    )
}

/// The Route every stage serves: its backend is chosen by a stage variable.
fn orders_route() -> String {
    route_yaml(
        "shop",
        "orders",
        "shop",
        "  match: {methods: [GET], path: /orders}\n  \
         integration: {service: {name: '${stageVariables.ordersService}', port: 80}}\n",
    )
}

/// `n` GETs of `path` with `headers`, 16 at a time; the body (version) or status of each.
async fn hit(g: &Tollgate, path: &str, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let c = client();
    let url = g.url(path);
    let headers: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, url, headers, next) = (c.clone(), url.clone(), headers.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let mut request = c.get(&url);
                for (k, v) in &headers {
                    request = request.header(k, v);
                }
                let response = request.send().await.unwrap();
                let key = if response.status() == StatusCode::OK {
                    response.text().await.unwrap()
                } else {
                    response.status().as_u16().to_string()
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        }));
    }
    let mut total = BTreeMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

async fn get(g: &Tollgate, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(g.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

async fn config_canary(g: &Tollgate, stage: &str) -> Value {
    let config: Value = client().get(g.admin_url("/config")).send().await.unwrap().json().await.unwrap();
    config["canaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["stage"] == stage)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weight_split_sticky_clients_forcing_header_and_manifest_edits() {
    let (v1, v2) = (Versioned::start("v1", 0).await, Versioned::start("v2", 0).await);
    let m = Manifests::new();
    let stages = |weight: &str| {
        format!(
            "  - name: prod\n    variables: {{ordersService: orders}}\n    canary: {{weight: {weight}, variables: \
             {{ordersService: orders-v2}}}}\n  - name: sticky\n    basePath: /sticky\n    variables: {{ordersService: \
             orders}}\n    canary: {{weight: 50, variables: {{ordersService: orders-v2}}, sticky: true, forceHeader: \
             {{enabled: false}}}}\n"
        )
    };
    m.write("api.yaml", &api_yaml(&stages("10")));
    m.write("routes.yaml", &orders_route());
    m.write("v1.yaml", &service_yaml("shop", "orders", 80, &[v1.addr]));
    m.write("v2.yaml", &service_yaml("shop", "orders-v2", 80, &[v2.addr]));
    let g = Tollgate::start(m.path()).await;

    // Split accuracy: 10,000 requests at weight 10.
    let seen = hit(&g, "/orders", 10_000, &[]).await;
    let (n1, n2) = (seen.get("v1").copied().unwrap_or(0), seen.get("v2").copied().unwrap_or(0));
    assert_eq!(n1 + n2, 10_000, "{seen:?}");
    let share = n2 as f64 * 100.0 / 10_000.0;
    assert!((share - 10.0).abs() <= 1.5, "canary share {share} % at weight 10: {seen:?}");

    // Evidence: metrics and access-log lines carry the track, and agree with what was served.
    let metrics = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    let canary_line = format!(
        r#"tollgate_requests_total{{api="shop/shop",method="GET",route="shop/orders",stage="prod",status_class="2xx",track="canary"}} {n2}"#
    );
    assert!(metrics.contains(&canary_line), "{canary_line}\n{metrics}");
    assert!(
        metrics.contains(&format!(r#"stage="prod",status_class="2xx",track="stable"}} {n1}"#)),
        "{metrics}"
    );
    eventually("access-log lines carry the track", || async {
        let log = g.access_log();
        let canary = log.iter().filter(|l| l["stage"] == "prod" && l["track"] == "canary").count();
        let stable = log.iter().filter(|l| l["stage"] == "prod" && l["track"] == "stable").count();
        canary == n2 && stable == n1
    })
    .await;

    // The forcing header works both ways.
    let forced = hit(&g, "/orders", 50, &[("x-tollgate-canary", "always")]).await;
    assert_eq!(forced.get("v2"), Some(&50), "{forced:?}");
    let forced = hit(&g, "/orders", 50, &[("x-tollgate-canary", "never")]).await;
    assert_eq!(forced.get("v1"), Some(&50), "{forced:?}");

    // Sticky stage: a cookie client sees one track for 1,000 requests; the cookie is signed.
    let first = get(&g, "/sticky/orders", &[]).await;
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("tollgate-canary-sticky=") && cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("Path=/sticky"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let track = first.text().await.unwrap();
    let seen = hit(&g, "/sticky/orders", 1_000, &[("cookie", &pair)]).await;
    assert_eq!(seen.get(&track), Some(&1_000), "{seen:?}");
    // A tampered cookie is not trusted (a new one is issued).
    let (id, _) = pair.rsplit_once('.').unwrap();
    let tampered = get(&g, "/sticky/orders", &[("cookie", &format!("{id}.0000"))]).await;
    assert!(tampered.headers().contains_key("set-cookie"));
    // API clients without cookies are kept on their track by their key, and get no cookie.
    let mut tracks = BTreeMap::new();
    for i in 0..20 {
        let key = format!("client-key-{i}");
        let seen = hit(&g, "/sticky/orders", 40, &[("x-api-key", &key)]).await;
        assert_eq!(seen.len(), 1, "one track per API key: {seen:?}");
        *tracks.entry(seen.into_keys().next().unwrap()).or_insert(0) += 1;
        assert!(
            !get(&g, "/sticky/orders", &[("x-api-key", &key)]).await.headers().contains_key("set-cookie")
        );
    }
    assert_eq!(tracks.len(), 2, "at weight 50, 20 keys land on both tracks: {tracks:?}");
    // The forcing header is disabled on this stage: it does not move a sticky client.
    let seen = hit(&g, "/sticky/orders", 20, &[("cookie", &pair), ("x-tollgate-canary", "always")]).await;
    let other = if track == "v1" { "never" } else { "always" };
    let seen_other = hit(&g, "/sticky/orders", 20, &[("cookie", &pair), ("x-tollgate-canary", other)]).await;
    assert_eq!((seen.get(&track), seen_other.get(&track)), (Some(&20), Some(&20)), "{seen:?} {seen_other:?}");

    // /config shows the canary and its weights.
    let canary = config_canary(&g, "prod").await;
    assert_eq!((canary["specWeight"].as_f64(), canary["effectiveWeight"].as_f64()), (Some(10.0), Some(10.0)));

    // Editing the manifest changes the weight: 100 sends everything to v2, 0 everything to v1.
    m.write("api.yaml", &api_yaml(&stages("100")));
    eventually("weight 100 is served", || async { hit(&g, "/orders", 20, &[]).await.get("v2") == Some(&20) })
        .await;
    m.write("api.yaml", &api_yaml(&stages("0.5")));
    eventually("weight 0.5 is served", || async {
        config_canary(&g, "prod").await["effectiveWeight"].as_f64() == Some(0.5)
    })
    .await;
    let seen = hit(&g, "/orders", 2_000, &[]).await;
    assert!(seen.get("v2").copied().unwrap_or(0) <= 40, "0.5 % of 2,000 is about 10: {seen:?}");
}

/// Sends requests to `paths` from 4 workers until `stop` is set.
fn drive(g: &Tollgate, paths: &[&str], stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let urls: Vec<String> = paths.iter().map(|p| g.url(p)).collect();
        let stop = Arc::clone(stop);
        let c = client();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while !stop.load(Ordering::SeqCst) {
                let _ = c.get(&urls[i % urls.len()]).send().await;
                i += 1;
            }
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn analysis_rolls_back_a_failing_v2_and_promotes_a_healthy_one_step_by_step() {
    let v1 = Versioned::start("v1", 0).await;
    let v2_bad = Versioned::start("v2", 5).await;
    let v2_good = Versioned::start("v2", 0).await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &api_yaml(
            "  - name: bad\n    basePath: /bad\n    variables: {ordersService: orders}\n    canary:\n      weight: 20\n      \
             variables: {ordersService: orders-v2-bad}\n      analysis: {interval: 1s, stepWeight: 10, maxWeight: 50, \
             maxErrorRate: 5, minRequests: 10}\n  - name: good\n    basePath: /good\n    variables: {ordersService: \
             orders}\n    canary:\n      weight: 20\n      variables: {ordersService: orders-v2-good}\n      \
             analysis: {interval: 1s, stepWeight: 20, maxWeight: 80, maxErrorRate: 1, maxP99Latency: 2s, \
             minRequests: 10}\n",
        ),
    );
    m.write("routes.yaml", &orders_route());
    m.write("v1.yaml", &service_yaml("shop", "orders", 80, &[v1.addr]));
    m.write("v2-bad.yaml", &service_yaml("shop", "orders-v2-bad", 80, &[v2_bad.addr]));
    m.write("v2-good.yaml", &service_yaml("shop", "orders-v2-good", 80, &[v2_good.addr]));
    let g = Tollgate::start(m.path()).await;
    let started = config_canary(&g, "bad").await;
    assert_eq!(started["phase"], "Progressing", "{started}");

    let stop = Arc::new(AtomicBool::new(false));
    let workers = drive(&g, &["/bad/orders", "/good/orders"], &stop);
    eventually("the failing canary is rolled back", || async {
        config_canary(&g, "bad").await["phase"] == "RolledBack"
    })
    .await;
    eventually("the healthy canary is promoted", || async {
        config_canary(&g, "good").await["phase"] == "Promoted"
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let bad = config_canary(&g, "bad").await;
    assert_eq!(bad["effectiveWeight"].as_f64(), Some(0.0), "{bad}");
    assert_eq!(bad["specWeight"].as_f64(), Some(20.0), "the spec is never rewritten: {bad}");
    let reason = bad["lastDecision"].as_str().unwrap();
    assert!(reason.starts_with("rolled back from 20 % to 0 %: canary error rate"), "{reason}");
    assert!(reason.contains("above maxErrorRate 5 %"), "{reason}");
    // Rolled back: every request goes to v1 again.
    let seen = hit(&g, "/bad/orders", 200, &[]).await;
    assert_eq!(seen.get("v1"), Some(&200), "{seen:?}");

    let good = config_canary(&g, "good").await;
    assert_eq!(good["effectiveWeight"].as_f64(), Some(80.0), "{good}");
    let steps: Vec<f64> =
        good["history"].as_array().unwrap().iter().map(|s| s["weight"].as_f64().unwrap()).collect();
    assert_eq!(steps, vec![40.0, 60.0, 80.0], "stepped up one interval at a time: {good}");
    assert!(good["promotion"].as_str().unwrap().contains("stages[good].canary"), "{good}");
    let seen = hit(&g, "/good/orders", 1_000, &[]).await;
    let share = seen.get("v2").copied().unwrap_or(0) as f64 / 10.0;
    assert!((share - 80.0).abs() <= 5.0, "80 % served after promotion: {seen:?}");
    // The decisions are logged.
    assert!(g.stderr().contains("CanaryRolledBack"), "{}", g.stderr());
}

#[tokio::test]
async fn canary_has_its_own_cache_space_unless_it_shares_the_stage_cache() {
    let (v1, v2) = (Versioned::start("v1", 0).await, Versioned::start("v2", 0).await);
    let m = Manifests::new();
    let stage = |name: &str, shared: bool| {
        format!(
            "  - name: {name}\n    basePath: /{name}\n    variables: {{ordersService: orders}}\n    cache: {{enabled: true}}\n    \
             canary: {{weight: 50, variables: {{ordersService: orders-v2}}, useStageCache: {shared}}}\n"
        )
    };
    m.write("api.yaml", &api_yaml(&(stage("own", false) + &stage("shared", true))));
    m.write(
        "routes.yaml",
        &route_yaml(
            "shop",
            "orders",
            "shop",
            "  match: {methods: [GET], path: /orders}\n  cache: {enabled: true, ttl: 60s, shared: true}\n  \
             integration: {service: {name: '${stageVariables.ordersService}', port: 80}}\n",
        ),
    );
    m.write("v1.yaml", &service_yaml("shop", "orders", 80, &[v1.addr]));
    m.write("v2.yaml", &service_yaml("shop", "orders-v2", 80, &[v2.addr]));
    let g = Tollgate::start(m.path()).await;
    let fetch = |path: &'static str, force: &'static str| {
        let g = &g;
        async move {
            let r = get(g, path, &[("x-tollgate-canary", force)]).await;
            let cache =
                r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            (cache, r.text().await.unwrap())
        }
    };
    assert_eq!(fetch("/own/orders", "never").await, ("miss".to_string(), "v1".to_string()));
    assert_eq!(fetch("/own/orders", "never").await, ("hit".to_string(), "v1".to_string()));
    // The canary never gets the stable track's cached answer (nor the reverse).
    assert_eq!(fetch("/own/orders", "always").await, ("miss".to_string(), "v2".to_string()));
    assert_eq!(fetch("/own/orders", "always").await, ("hit".to_string(), "v2".to_string()));
    assert_eq!(fetch("/own/orders", "never").await, ("hit".to_string(), "v1".to_string()));
    // useStageCache: true — both tracks read and write one cache.
    assert_eq!(fetch("/shared/orders", "never").await, ("miss".to_string(), "v1".to_string()));
    assert_eq!(fetch("/shared/orders", "always").await, ("hit".to_string(), "v1".to_string()));
}
