//! The test client: requests to the gateway with a chosen Host, and a load loop that retries only
//! what a well-behaved client retries (connection failures), counting everything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: reqwest::header::HeaderMap,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (the echo backend's description of the request).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }

    /// A header's value, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// Sends requests to one gateway address with the Host of the API under test.
#[derive(Clone)]
pub struct Gateway {
    base: String,
    host: String,
    client: reqwest::Client,
}

impl Gateway {
    /// `base` is `http://ADDRESS:PORT`; every request carries `Host: host`.
    pub fn new(base: &str, host: &str) -> anyhow::Result<Gateway> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Gateway { base: base.trim_end_matches('/').to_string(), host: host.to_string(), client })
    }

    /// Where requests go.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with extra headers.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request =
            self.client.request(method, format!("{}{path}", self.base)).header("host", &self.host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok(Reply { status, headers, body })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send("GET", path, &[]).await
    }

    /// Polls `GET path` until `accept` is satisfied (config changes take a moment to reach
    /// every proxy).
    pub async fn get_until(
        &self,
        what: &str,
        path: &str,
        headers: &[(&str, &str)],
        accept: impl Fn(&Reply) -> bool,
    ) -> anyhow::Result<Reply> {
        let accept = &accept;
        crate::eventually(what, crate::WAIT, || async move {
            Ok(self.send("GET", path, headers).await.ok().filter(|r| accept(r)))
        })
        .await
    }
}

/// Counts of a load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests answered with the expected status.
    pub ok: u64,
    /// Connection-level failures that succeeded on a retry.
    pub retried: u64,
    /// Requests that failed after every retry, or got an unexpected status.
    pub failed: u64,
    /// A few examples of failures.
    pub examples: Vec<String>,
}

/// Runs `workers` loops of `GET path` until `stop` is set; a request is retried (up to 3 times)
/// only when the connection failed before a response — what a client with retries does when a
/// pod goes away. Any other error, and any status other than `expect`, counts as failed.
pub async fn load(
    gateways: Vec<Gateway>,
    path: String,
    expect: u16,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let ok = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let examples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (gateways, path, stop) = (gateways.clone(), path.clone(), Arc::clone(&stop));
        let (ok, retried, failed, examples) =
            (Arc::clone(&ok), Arc::clone(&retried), Arc::clone(&failed), Arc::clone(&examples));
        tasks.spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let mut attempt = 0;
                loop {
                    // Round robin over the gateways (local mode: several proxies, no Service).
                    let gateway = &gateways[n % gateways.len()];
                    n += 1;
                    match gateway.get(&path).await {
                        Ok(reply) if reply.status == expect => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if attempt > 0 {
                                retried.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                        Err(error) if attempt < 3 && is_connect_error(&error) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut list) = examples.lock()
                                && list.len() < 5
                            {
                                list.push(match other {
                                    Ok(reply) => format!("status {}: {}", reply.status, reply.body),
                                    Err(error) => format!("{error:#}"),
                                });
                            }
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let examples = examples.lock().map(|l| l.clone()).unwrap_or_default();
    LoadReport {
        ok: ok.load(Ordering::Relaxed),
        retried: retried.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        examples,
    }
}

fn is_connect_error(error: &anyhow::Error) -> bool {
    error.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_connect())
}
