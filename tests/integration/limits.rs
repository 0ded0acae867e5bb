//! Request limits: body size (413), header size (431).

use reqwest::StatusCode;

use crate::support::*;

async fn setup() -> (Tollgate, Backend, Manifests) {
    let backend = Backend::start("b").await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {name: l, namespace: l}\nspec:\n  \
         limits: {maxRequestBodyBytes: 1000}\n",
    );
    m.write(
        "routes.yaml",
        &[
            route_yaml("l", "up", "l", "  match: {path: /up}\n  integration: {service: {name: b, port: 80}}\n"),
            route_yaml(
                "l",
                "up-retry",
                "l",
                "  match: {path: /up-retry}\n  integration:\n    service: {name: b, port: 80}\n    retries: {attempts: 1, on: [connect-failure]}\n",
            ),
        ]
        .join("---\n"),
    );
    m.write("svc.yaml", &service_yaml("l", "b", 80, &[backend.addr]));
    let gateway = Tollgate::start_with(m.path(), &["--max-header-bytes", "16384"]).await;
    (gateway, backend, m)
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (g, backend, _m) = setup().await;
    let ok = client().post(g.url("/up")).body("x".repeat(1000)).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    // Announced by Content-Length: refused before anything is forwarded.
    let big = client().post(g.url("/up")).body("x".repeat(1001)).send().await.unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = big.json().await.unwrap();
    assert_eq!(body["message"], "Request body exceeds the limit of 1000 bytes");
    assert_eq!(backend.hits(), 1);

    // Chunked (no Content-Length), buffered because the route retries.
    let chunked = format!(
        "POST /up-retry HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2000)
    );
    let (status, text) = raw_request(g.http, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(backend.hits(), 1, "nothing reached the backend");
}

#[tokio::test]
async fn streamed_chunked_body_over_the_limit_is_cut_off() {
    let (g, _backend, _m) = setup().await;
    let chunked = format!(
        "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
        "y".repeat(2000)
    );
    let (status, text) = raw_request(g.http, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
}

/// `--max-header-bytes 16384`: a larger head gets the gateway's JSON 431, logged and counted, over
/// HTTP/1.1 and HTTP/2 alike; one the parser cannot hold (beyond twice the limit) still gets 431.
#[tokio::test]
async fn oversized_headers_get_431() {
    let (g, backend, _m) = setup().await;
    let fits = client().get(g.url("/up")).header("x-big", "z".repeat(15_000)).send().await.unwrap();
    assert_eq!(fits.status(), StatusCode::OK, "a head within the limit is served");

    let r = client()
        .get(g.url("/up"))
        .header("x-big", "z".repeat(20_000))
        .header("x-request-id", "too-big-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.headers()["x-request-id"], "too-big-1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Request Header Fields Too Large: the request head exceeds 16384 bytes");
    assert_eq!(body["requestId"], "too-big-1");
    let line = g.wait_for_log(|l| l["requestId"] == "too-big-1").await;
    assert_eq!(line["status"], 431);
    assert_eq!(line["error"], "head_too_large");

    // The limit counts the whole head: many fields, each small (fewer than the parser's 100).
    let mut many = client().get(g.url("/up"));
    for i in 0..90 {
        many = many.header(format!("x-field-{i}"), "z".repeat(200));
    }
    let r = many.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.headers()["content-type"], "application/json");

    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(g.url("/up")).header("x-big", "z".repeat(20_000)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("16384"), "{body}");

    // Beyond what the parser holds: refused before the head is read whole.
    let (status, _) = raw_request(
        g.http,
        format!("GET /up HTTP/1.1\r\nHost: x\r\nx-huge: {}\r\nConnection: close\r\n\r\n", "z".repeat(40_000))
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(backend.hits(), 1, "only the head within the limit reached the backend");
    eventually("the 431s are counted", || async {
        let text = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().any(|l| {
            l.starts_with("tollgate_requests_total{")
                && l.contains(r#"method="GET",route="",stage="",status_class="4xx""#)
                && l.ends_with(" 3")
        })
    })
    .await;
}

/// `--header-read-timeout 1s`, and a route to a backend that answers `/delay/{ms}` that late.
async fn with_header_read_timeout() -> (Tollgate, Backend, Manifests) {
    let backend = Backend::start("t").await;
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("t", "t"));
    let route = "  match: {path: '/delay/{ms}'}\n  integration: {service: {name: s, port: 80}}\n";
    m.write(
        "routes.yaml",
        &format!(
            "{}---\n{}",
            route_yaml("t", "slow", "t", route),
            service_yaml("t", "s", 80, &[backend.addr])
        ),
    );
    let gateway = Tollgate::start_with(m.path(), &["--header-read-timeout", "1s"]).await;
    (gateway, backend, m)
}

/// Sends one keep-alive GET on `stream` and reads its response (head and `Content-Length` body).
async fn exchange_on(stream: &mut tokio::net::TcpStream, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text);
            }
        }
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("answered in time")?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn clients_slow_to_send_a_head_and_idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (g, _backend, _m) = with_header_read_timeout().await;
    // Slowloris: part of a head, then nothing.
    let mut slow = tokio::net::TcpStream::connect(g.http).await.unwrap();
    slow.write_all(b"GET /delay/0 HTTP/1.1\r\nHost: t\r\nX-Slow: ").await.unwrap();
    // A connection that never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(g.http).await.unwrap();
    // A keep-alive connection left idle after one exchange.
    let mut idle = tokio::net::TcpStream::connect(g.http).await.unwrap();
    let answer = exchange_on(&mut idle, "/delay/0").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (what, stream) in [("slow head", &mut slow), ("silent", &mut silent), ("idle keep-alive", &mut idle)]
    {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{what}: closed by the gateway after the header-read timeout");
        assert!(!String::from_utf8_lossy(&rest).contains(" 200 "), "{what}: nothing served");
    }
    // On the TLS listener, a client that never starts its handshake: the same timeout (1 s here),
    // not the handshake's own 10 s.
    let mut no_hello = tokio::net::TcpStream::connect(g.tls).await.unwrap();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(5), no_hello.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "no ClientHello: closed after the header-read timeout");
}

/// A client may close its sending side once its request is out (`shutdown(SHUT_WR)`, as
/// `nc -N` does): it still gets the response, here one that takes 300 ms.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (g, _backend, _m) = with_header_read_timeout().await;
    let mut stream = tokio::net::TcpStream::connect(g.http).await.unwrap();
    stream.write_all(b"GET /delay/300 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await.expect("answered in time").unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// A client that goes away while its request is in flight: the request runs to its response
/// (HAProxy's default too) and is logged and counted when the response cannot be delivered.
#[tokio::test]
async fn a_request_whose_client_went_away_is_still_logged() {
    use tokio::io::AsyncWriteExt;
    let (g, backend, _m) = with_header_read_timeout().await;
    let mut stream = tokio::net::TcpStream::connect(g.http).await.unwrap();
    stream.write_all(b"GET /delay/300 HTTP/1.1\r\nHost: t\r\nX-Request-Id: gone-1\r\n\r\n").await.unwrap();
    // Gone once the gateway has read the request.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(stream);
    let line = g.wait_for_log(|l| l["requestId"] == "gone-1").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "t/slow");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn the_header_read_timeout_does_not_cut_slow_responses_or_busy_connections() {
    let (g, _backend, _m) = with_header_read_timeout().await;
    let mut stream = tokio::net::TcpStream::connect(g.http).await.unwrap();
    // The upstream takes longer than the timeout: a request in flight is not a slow head.
    let answer = exchange_on(&mut stream, "/delay/1500").await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Requests every 400 ms for well over the timeout, all on this one connection.
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let answer = exchange_on(&mut stream, "/delay/0").await.expect("the connection stays open");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
