//! The upstream side of body-less requests, which the proxy's own HTTP/1.1 code exchanges, against
//! a scripted upstream that writes raw bytes: chunked and close-delimited bodies, HEAD, 204 and
//! 304, `Connection: close`, large bodies in pieces, and an upstream keep-alive timeout shorter
//! than the gateway's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A large body, sent in pieces.
const LARGE: usize = 1 << 20;

/// An upstream that answers by path with raw HTTP/1.1 bytes, and closes a connection idle for
/// `idle_close`. Counts accepted connections.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(idle_close: Duration) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, idle_close));
            }
        });
        Scripted { addr, accepted }
    }
}

async fn serve(mut socket: TcpStream, idle_close: Duration) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            match tokio::time::timeout(idle_close, socket.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {
                    buffer.extend_from_slice(&chunk[..n]);
                    continue;
                }
                // Closed by the client, an error, or idle too long: close.
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        buffer.drain(..end + 4);
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let keep_going = answer(&mut socket, method, path).await;
        if !keep_going {
            return;
        }
    }
}

/// Writes the answer for `path`; whether the connection stays open.
async fn answer(socket: &mut TcpStream, method: &str, path: &str) -> bool {
    let pause = || tokio::time::sleep(Duration::from_millis(10));
    match path {
        "/chunked" => {
            let pieces: [&[u8]; 4] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5;ext=1\r\nhel",
                b"lo\r\n6\r\n wor",
                b"ld\r\n0\r\n",
                b"\r\n",
            ];
            for piece in pieces {
                if socket.write_all(piece).await.is_err() {
                    return false;
                }
                pause().await;
            }
            true
        }
        "/until-close" => {
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n\r\nfirst, ").await;
            pause().await;
            let _ = socket.write_all(b"then the rest").await;
            false
        }
        "/close" => {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nclosed")
                .await;
            false
        }
        "/large" => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\n\r\n");
            if socket.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let piece = vec![b'x'; LARGE / 16];
            for _ in 0..16 {
                if socket.write_all(&piece).await.is_err() {
                    return false;
                }
            }
            true
        }
        "/no-content" => socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.is_ok(),
        "/not-modified" => socket
            .write_all(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 10\r\n\r\n")
            .await
            .is_ok(),
        "/smuggle" => socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc")
            .await
            .is_ok(),
        _ => {
            // Plain answer; for HEAD the length of the body a GET would get, and no body.
            let body = format!("{method} {path}");
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Scripted: yes\r\n\r\n", body.len());
            let mut out = head.into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
            }
            socket.write_all(&out).await.is_ok()
        }
    }
}

async fn gateway_to(upstream: SocketAddr) -> (Tollgate, Manifests) {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("u", "u"));
    m.write(
        "route.yaml",
        &route_yaml(
            "u",
            "all",
            "u",
            "  match: {path: '/{p+}'}\n  integration:\n    service: {name: up, port: 80}\n",
        ),
    );
    m.write("svc.yaml", &service_yaml("u", "up", 80, &[upstream]));
    (Tollgate::start(m.path()).await, m)
}

#[tokio::test]
async fn bodies_of_every_framing_arrive_whole() {
    let upstream = Scripted::start(Duration::from_secs(30)).await;
    let (gateway, _m) = gateway_to(upstream.addr).await;
    let http = client();

    let r = http.get(gateway.url("/chunked")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "hello world");

    let r = http.get(gateway.url("/until-close")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "first, then the rest");

    let r = http.get(gateway.url("/large")).send().await.unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), LARGE);
    assert!(body.iter().all(|&b| b == b'x'));

    let r = http.head(gateway.url("/plain")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "11", "HEAD keeps the length the upstream declared");
    assert_eq!(r.headers()["x-scripted"], "yes");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = http.get(gateway.url("/no-content")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http.get(gateway.url("/not-modified")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], "\"v1\"");

    // After all that, the next plain request still gets its own answer (no byte of an earlier
    // response left on a reused connection).
    let r = http.get(gateway.url("/after")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "GET /after");
}

#[tokio::test]
async fn connections_are_reused_only_when_the_response_allows() {
    let upstream = Scripted::start(Duration::from_secs(30)).await;
    let (gateway, _m) = gateway_to(upstream.addr).await;
    let http = client();
    for i in 0..5 {
        let r = http.get(gateway.url(&format!("/plain/{i}"))).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), format!("GET /plain/{i}"));
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1, "one keep-alive upstream connection");
    for _ in 0..3 {
        let r = http.get(gateway.url("/close")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "closed");
    }
    // The first `/close` ends the kept connection; each later one needs a new connection.
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3, "Connection: close is honoured");
}

#[tokio::test]
async fn an_upstream_keep_alive_timeout_shorter_than_ours_loses_no_request() {
    // The upstream closes connections idle for 150 ms (Node.js closes after 5 s by default;
    // the gateway keeps idle connections 90 s).
    let upstream = Scripted::start(Duration::from_millis(150)).await;
    let (gateway, _m) = gateway_to(upstream.addr).await;
    let http = client();
    for method in [reqwest::Method::GET, reqwest::Method::POST, reqwest::Method::GET, reqwest::Method::DELETE]
    {
        let r = http.request(method.clone(), gateway.url("/plain")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{method}");
        assert_eq!(r.text().await.unwrap(), format!("{method} /plain"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 4, "each request found its connection closed");
}

#[tokio::test]
async fn a_response_with_conflicting_lengths_is_a_502() {
    let upstream = Scripted::start(Duration::from_secs(30)).await;
    let (gateway, _m) = gateway_to(upstream.addr).await;
    let r = client().get(gateway.url("/smuggle")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["requestId"].is_string(), "{body}");
}
