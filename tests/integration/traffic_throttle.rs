//! Throttles: accuracy of local and global (Redis, two gateways) buckets, the 429 answer, the
//! Redis failure policy and recovery, and limiter state across configuration swaps.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::redis::RedisServer;
use crate::support::*;

const RATE: f64 = 50.0;
const BURST: u32 = 20;

fn api(stage_throttle: &str) -> String {
    format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: t, namespace: t}}\nspec:\n  stages:\n  \
         - name: prod\n    throttle: {stage_throttle}\n"
    )
}

fn mock_route(name: &str, path: &str, extra: &str) -> String {
    route_yaml(
        "t",
        name,
        "t",
        &format!("  match: {{path: {path}}}\n{extra}  integration: {{mock: {{status: 200, body: ok}}}}\n"),
    )
}

/// Sends GETs to `urls` in turn at `per_second` for `duration`, each on its own task so a slow
/// answer never slows the pace. Returns (admitted, refused, seconds from first to last send).
async fn drive(urls: &[String], per_second: f64, duration: Duration) -> (usize, usize, f64) {
    let client = client();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut last = start;
    let mut i = 0;
    while start.elapsed() < duration {
        ticker.tick().await;
        last = Instant::now();
        let request = client.get(&urls[i % urls.len()]).send();
        i += 1;
        tasks.spawn(async move { request.await.map(|r| r.status()).ok() });
    }
    let (mut admitted, mut refused) = (0, 0);
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            Some(StatusCode::OK) => admitted += 1,
            Some(StatusCode::TOO_MANY_REQUESTS) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (admitted, refused, (last - start).as_secs_f64())
}

fn assert_accurate(admitted: usize, elapsed: f64, what: &str) {
    let expected = RATE * elapsed + f64::from(BURST);
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.02,
        "{what}: admitted {admitted}, expected {expected:.1} (±2 %), error {:.2} %",
        error * 100.0
    );
}

#[tokio::test]
async fn local_throttle_admits_rate_times_time_plus_burst() {
    let m = Manifests::new();
    m.write("api.yaml", &api(&format!("{{rate: {RATE}, burst: {BURST}}}")));
    m.write("routes.yaml", &mock_route("r", "/x", ""));
    let g = Tollgate::start(m.path()).await;
    let (admitted, refused, elapsed) = drive(&[g.url("/x")], 2.0 * RATE, Duration::from_secs(10)).await;
    assert!(refused > 0);
    assert_accurate(admitted, elapsed, "local");
}

#[tokio::test]
async fn global_throttle_is_shared_by_two_gateways() {
    let redis = RedisServer::start().await;
    let m = Manifests::new();
    m.write("api.yaml", &api(&format!("{{rate: {RATE}, burst: {BURST}, scope: global}}")));
    m.write("routes.yaml", &mock_route("r", "/x", ""));
    let a = Tollgate::start_with(m.path(), &["--redis", &redis.url()]).await;
    let b = Tollgate::start_with(m.path(), &["--redis", &redis.url()]).await;
    let (admitted, refused, elapsed) =
        drive(&[a.url("/x"), b.url("/x")], 2.0 * RATE, Duration::from_secs(10)).await;
    assert!(refused > 0);
    assert_accurate(admitted, elapsed, "global across two gateways");
}

#[tokio::test]
async fn throttled_requests_get_429_with_retry_after_and_ratelimit_headers() {
    let m = Manifests::new();
    m.write("api.yaml", &api("{rate: 1000, burst: 1000}"));
    m.write("routes.yaml", &mock_route("slow", "/slow", "  throttle: {rate: 0.5, burst: 2}\n"));
    let g = Tollgate::start(m.path()).await;
    let c = client();
    let first = c.get(g.url("/slow")).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(c.get(g.url("/slow")).send().await.unwrap().status(), StatusCode::OK);
    let refused = c.get(g.url("/slow")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_eq!(refused.headers()["content-type"], "application/json");
    let id = refused.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"message": "Too Many Requests", "requestId": id}));
    let metrics = c.get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .contains(r#"tollgate_throttled_total{api="t/t",level="route",route="t/slow",stage="prod"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn redis_down_follows_the_failure_policy_and_recovers_without_restart() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let m = Manifests::new();
    m.write("api.yaml", &api("{rate: 1000, burst: 1000}"));
    m.write(
        "routes.yaml",
        &[
            mock_route(
                "open",
                "/open",
                "  throttle: {rate: 0.01, burst: 1, scope: global, failurePolicy: Open}\n",
            ),
            mock_route(
                "closed",
                "/closed",
                "  throttle: {rate: 0.01, burst: 1, scope: global, failurePolicy: Closed}\n",
            ),
        ]
        .join("---\n"),
    );
    let g = Tollgate::start_with(m.path(), &["--redis", &redis.url()]).await;
    let c = client();
    let status = |path: &'static str| {
        let c = c.clone();
        let url = g.url(path);
        async move { c.get(url).send().await.unwrap().status() }
    };
    assert_eq!(status("/open").await, StatusCode::OK);
    assert_eq!(status("/open").await, StatusCode::TOO_MANY_REQUESTS, "counted in Redis");
    assert_eq!(status("/closed").await, StatusCode::OK);

    redis.stop();
    // Open: admitted although the bucket is empty. Closed: 503.
    for _ in 0..3 {
        assert_eq!(status("/open").await, StatusCode::OK);
        assert_eq!(status("/closed").await, StatusCode::SERVICE_UNAVAILABLE);
    }
    let metrics = c.get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"tollgate_redis_failures_total{operation="throttle",policy="closed"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tollgate_redis_failures_total{operation="throttle",policy="open"}"#),
        "{metrics}"
    );
    assert!(g.stderr().contains("Redis unreachable"), "{}", g.stderr());

    // Redis comes back empty on the same port: the gateway reconnects by itself.
    let _redis = RedisServer::start_on(port).await;
    eventually("the closed route works again", || async { status("/closed").await == StatusCode::OK }).await;
    assert_eq!(status("/closed").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn limiter_state_survives_a_swap_unless_the_limit_changes() {
    let m = Manifests::new();
    m.write("api.yaml", &api("{rate: 1000, burst: 1000}"));
    m.write("routes.yaml", &mock_route("r", "/r", "  throttle: {rate: 0.01, burst: 2}\n"));
    let g = Tollgate::start(m.path()).await;
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = g.url(path);
        async move { c.get(url).send().await.unwrap().status() }
    };
    assert_eq!(get("/r").await, StatusCode::OK);
    assert_eq!(get("/r").await, StatusCode::OK);
    assert_eq!(get("/r").await, StatusCode::TOO_MANY_REQUESTS);
    // An unrelated change: the bucket carries over.
    m.write(
        "routes.yaml",
        &[mock_route("r", "/r", "  throttle: {rate: 0.01, burst: 2}\n"), mock_route("other", "/other", "")]
            .join("---\n"),
    );
    eventually("the new route is served", || async { get("/other").await == StatusCode::OK }).await;
    assert_eq!(get("/r").await, StatusCode::TOO_MANY_REQUESTS);
    // A changed limit starts a fresh bucket.
    m.write("routes.yaml", &mock_route("r", "/r", "  throttle: {rate: 0.01, burst: 3}\n"));
    eventually("the new limit applies", || async { get("/r").await == StatusCode::OK }).await;
}
