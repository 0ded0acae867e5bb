//! The own HTTP/1.1 exchange against a real loopback socket whose server side writes scripted
//! bytes (split at awkward places where that matters).

use std::time::Duration;

use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// What the scripted server does after reading one request head.
#[derive(Clone)]
struct Script {
    /// Pieces written in order, with a short pause between them (so they arrive as separate reads).
    pieces: Vec<Vec<u8>>,
    /// Close the connection after writing.
    close: bool,
}

fn script(pieces: &[&[u8]], close: bool) -> Script {
    Script { pieces: pieces.iter().map(|p| p.to_vec()).collect(), close }
}

/// A server answering each request on one connection with the next script; returns its address
/// and a channel with the request heads it read.
async fn server(
    scripts: Vec<Script>,
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        for script in scripts {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match socket.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
            for (i, piece) in script.pieces.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if socket.write_all(piece).await.is_err() {
                    return;
                }
            }
            if script.close {
                return;
            }
        }
        // Keep the connection open until the client is done.
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    (address, received)
}

async fn connect(address: std::net::SocketAddr) -> Conn {
    Conn::new(Io::Plain(TcpStream::connect(address).await.expect("connect")))
}

fn get(path: &str) -> http::request::Parts {
    let request = http::Request::get(path)
        .header("host", "upstream.test")
        .header("x-request-id", "abc")
        .body(())
        .expect("request");
    request.into_parts().0
}

fn head_request(path: &str) -> http::request::Parts {
    let mut parts = get(path);
    parts.method = http::Method::HEAD;
    parts
}

struct Collected {
    head: ResponseHead,
    data: Bytes,
    trailers: Option<HeaderMap>,
    reusable: Option<Conn>,
}

/// One exchange and its whole body.
async fn run(conn: Conn, request: &http::request::Parts) -> Result<Collected, H1Error> {
    tokio::time::timeout(Duration::from_secs(5), async move {
        let mut conn = conn;
        let head = exchange(&mut conn, request, None, request.method == http::Method::HEAD).await?;
        let mut body = Body::new(conn, &head);
        let mut data = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert!(body.is_end_stream());
        let reusable = body.take_reusable();
        Ok(Collected { head, data: data.freeze(), trailers, reusable })
    })
    .await
    .expect("the exchange finished in time")
}

async fn one(pieces: &[&[u8]], close: bool, request: &http::request::Parts) -> Result<Collected, H1Error> {
    let (address, _heads) = server(vec![script(pieces, close)]).await;
    run(connect(address).await, request).await
}

#[tokio::test]
async fn content_length_body_and_request_head_on_the_wire() {
    let (address, mut heads) =
        server(vec![script(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"], false)]).await;
    let done = run(connect(address).await, &get("/a/b?q=1")).await.expect("exchange");
    assert_eq!(done.head.parts.status, StatusCode::OK);
    assert_eq!(done.head.parts.headers["x-up"], "1");
    assert_eq!(done.head.parts.headers[CONTENT_LENGTH], "5");
    assert_eq!(&done.data[..], b"hello");
    assert!(done.reusable.is_some(), "a complete keep-alive response frees its connection");
    let wire = heads.recv().await.expect("the server read a head");
    assert_eq!(wire, "GET /a/b?q=1 HTTP/1.1\r\nhost: upstream.test\r\nx-request-id: abc\r\n\r\n");
}

#[tokio::test]
async fn every_response_field_is_kept_in_order_short_heads_and_long() {
    // Up to `INLINE_FIELDS` fields are spanned on the stack, more in a vector: both whole.
    for count in [1, 2, INLINE_FIELDS - 1, INLINE_FIELDS, INLINE_FIELDS + 1, 90] {
        // `count` fields: the length, then alternately a repeated one and one of its own.
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for i in 1..count {
            let field =
                if i % 2 == 0 { format!("X-Dup: {i}\r\n") } else { format!("X-Own-{i}: value {i}\r\n") };
            head.extend_from_slice(field.as_bytes());
        }
        head.extend_from_slice(b"\r\nok");
        let done = one(&[&head], false, &get("/")).await.expect("exchange");
        let headers = &done.head.parts.headers;
        assert_eq!(headers.len(), count, "{count} fields");
        assert_eq!(headers[CONTENT_LENGTH], "2");
        let dups: Vec<&str> = headers.get_all("x-dup").iter().map(|v| v.to_str().unwrap()).collect();
        let expected: Vec<String> = (1..count).filter(|i| i % 2 == 0).map(|i| i.to_string()).collect();
        assert_eq!(dups, expected, "a repeated field keeps its values' order ({count} fields)");
        for i in (1..count).filter(|i| i % 2 == 1) {
            assert_eq!(
                headers[format!("x-own-{i}").as_str()],
                format!("value {i}").as_str(),
                "{count} fields"
            );
        }
        assert_eq!(&done.data[..], b"ok");
    }
}

#[tokio::test]
async fn the_gateways_fields_follow_the_requests_own_once_each() {
    let (address, mut heads) = server(vec![script(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false)]).await;
    let mut parts = get("/x");
    parts.headers.insert("x-forwarded-proto", http::HeaderValue::from_static("spoofed"));
    let ip = crate::headers::client_ip_value([192, 0, 2, 1].into());
    let client = crate::headers::ClientContext { client_ip: &ip, proto: "http", host: None };
    let id = http::HeaderValue::from_static("gw-1");
    let added = crate::headers::Forwarding::take(&mut parts.headers, &client, &id);
    let mut conn = connect(address).await;
    let exchanged = exchange(&mut conn, &parts, Some(&added), false);
    tokio::time::timeout(Duration::from_secs(5), exchanged).await.expect("in time").expect("exchange");
    let wire = heads.recv().await.expect("the server read a head");
    let fields: Vec<&str> = wire.lines().skip(1).take_while(|line| !line.is_empty()).collect();
    let names: Vec<&str> = fields.iter().filter_map(|f| f.split(':').next()).collect();
    assert_eq!(
        names,
        ["host", "x-forwarded-for", "x-forwarded-proto", "x-request-id", "traceparent"],
        "{wire}"
    );
    assert!(fields.contains(&"x-forwarded-proto: http") && fields.contains(&"x-request-id: gw-1"), "{wire}");
}

#[tokio::test]
async fn body_arriving_in_pieces_is_streamed() {
    let done =
        one(&[b"HTTP/1.1 200 OK\r\nContent-", b"Length: 11\r\n\r\nhel", b"lo wo", b"rld"], false, &get("/"))
            .await
            .expect("exchange");
    assert_eq!(&done.data[..], b"hello world");
    assert!(done.reusable.is_some());
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers() {
    let done = one(
        &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\n",
            b"6\r",
            b"\n world\r\n0\r\nX-Checksum: 42\r\n",
            b"\r\n",
        ],
        false,
        &get("/"),
    )
    .await
    .expect("exchange");
    assert_eq!(&done.data[..], b"hello world");
    let trailers = done.trailers.expect("trailers forwarded");
    assert_eq!(trailers["x-checksum"], "42");
    assert!(done.reusable.is_some());
}

#[tokio::test]
async fn chunked_without_trailers_ends_cleanly() {
    let done = one(
        &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
        false,
        &get("/"),
    )
    .await
    .expect("exchange");
    assert_eq!(&done.data[..], b"abc");
    assert!(done.trailers.is_none());
    assert!(done.reusable.is_some());
}

#[tokio::test]
async fn body_until_close_is_read_to_the_end_and_not_reused() {
    let done = one(&[b"HTTP/1.1 200 OK\r\n\r\nfirst ", b"second"], true, &get("/")).await.expect("exchange");
    assert_eq!(&done.data[..], b"first second");
    assert!(done.reusable.is_none(), "a close-delimited body ends with its connection");
}

#[tokio::test]
async fn head_204_and_304_have_no_body_whatever_they_declare() {
    let head = one(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], false, &head_request("/")).await;
    let head = head.expect("exchange");
    assert!(head.data.is_empty());
    assert!(head.reusable.is_some());
    for status in ["204 No Content", "304 Not Modified"] {
        let response = format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\n");
        let done = one(&[response.as_bytes()], false, &get("/")).await.expect("exchange");
        assert!(done.data.is_empty(), "{status}");
        assert!(done.reusable.is_some(), "{status}");
    }
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let done = one(
        &[
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ],
        false,
        &get("/"),
    )
    .await
    .expect("exchange");
    assert_eq!(done.head.parts.status, StatusCode::OK);
    assert!(done.head.parts.headers.get("link").is_none());
    assert_eq!(&done.data[..], b"ok");
}

#[tokio::test]
async fn switching_protocols_without_upgrade_is_refused() {
    let error = one(&[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"], false, &get("/"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(error, H1Error::Invalid(_)), "{error}");
}

#[tokio::test]
async fn content_length_must_be_one_number() {
    for bad in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length: -1",
        "Content-Length: 0x5",
    ] {
        let response = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\nhello");
        let error = one(&[response.as_bytes()], false, &get("/")).await.err().expect("refused");
        assert!(matches!(error, H1Error::Invalid(_)), "{bad}: {error}");
    }
    let done = one(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"], false, &get("/")).await;
    assert_eq!(&done.expect("repeated equal values are one length").data[..], b"hello");
}

#[tokio::test]
async fn transfer_encoding_beats_content_length_and_closes_the_connection() {
    let done = one(
        &[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
        false,
        &get("/"),
    )
    .await
    .expect("exchange");
    assert_eq!(&done.data[..], b"ok");
    assert!(done.reusable.is_none(), "a smuggling-shaped response never shares its connection");
}

#[tokio::test]
async fn connection_close_and_http10_are_not_reused() {
    let request = get("/");
    let close =
        one(&[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"], false, &request);
    assert!(close.await.expect("exchange").reusable.is_none());
    let old = one(&[b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], false, &request);
    let old = old.await.expect("exchange");
    assert_eq!(old.head.parts.version, Version::HTTP_10);
    assert!(old.reusable.is_none());
    let kept =
        one(&[b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok"], false, &request);
    assert!(kept.await.expect("exchange").reusable.is_some());
}

#[tokio::test]
async fn bytes_after_the_body_make_the_connection_unusable() {
    let done =
        one(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"], false, &get("/")).await;
    let done = done.expect("exchange");
    assert_eq!(&done.data[..], b"ok");
    assert!(done.reusable.is_none());
}

#[tokio::test]
async fn closed_before_answering_is_a_stale_connection() {
    let error = one(&[], true, &get("/")).await.err().expect("no response");
    assert!(matches!(error, H1Error::ClosedBeforeResponse), "{error}");
    assert!(error.is_stale_connection());
    let error = one(&[b"HTTP/1.1 200"], true, &get("/")).await.err().expect("cut head");
    assert!(matches!(error, H1Error::ClosedInHead), "{error}");
    assert!(!error.is_stale_connection(), "part of an answer arrived: the server saw the request");
}

#[tokio::test]
async fn closed_inside_the_body_is_an_error() {
    let error = one(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], true, &get("/")).await.err();
    assert!(matches!(error, Some(H1Error::ClosedInBody)), "{error:?}");
    let error =
        one(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], true, &get("/")).await.err();
    assert!(matches!(error, Some(H1Error::ClosedInBody)), "{error:?}");
}

#[tokio::test]
async fn malformed_chunks_are_errors() {
    for bad in [
        &b"zz\r\nab\r\n0\r\n\r\n"[..],
        b"2\r\nabXX0\r\n\r\n",
        b"11111111111111111\r\n",
        b"2 x\r\nab\r\n0\r\n\r\n",
    ] {
        let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        response.extend_from_slice(bad);
        let error = one(&[&response], false, &get("/")).await.err();
        assert!(matches!(error, Some(H1Error::Invalid(_))), "{}: {error:?}", String::from_utf8_lossy(bad));
    }
    let long_line = [b"1;".as_slice(), &[b'x'; 5000]].concat();
    let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    response.extend_from_slice(&long_line);
    let error = one(&[&response], false, &get("/")).await.err();
    assert!(matches!(error, Some(H1Error::Invalid(_))), "{error:?}");
}

#[tokio::test]
async fn oversized_and_garbled_heads_are_refused() {
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    while huge.len() <= MAX_HEAD_BYTES {
        huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    // Under the field-count limit would need longer lines; either refusal names the head.
    let error = one(&[&huge], false, &get("/")).await.err().expect("refused");
    assert!(
        matches!(error, H1Error::HeadTooLarge | H1Error::Parse(httparse::Error::TooManyHeaders)),
        "{error}"
    );
    let error = one(&[b"SSH-2.0-OpenSSH\r\n\r\n"], false, &get("/")).await.err().expect("refused");
    assert!(matches!(error, H1Error::Parse(_)), "{error}");
}

#[tokio::test]
async fn a_connection_carries_consecutive_exchanges() {
    let (address, mut heads) = server(vec![
        script(&[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"], false),
        script(
            &[b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"],
            false,
        ),
    ])
    .await;
    let first = run(connect(address).await, &get("/1")).await.expect("first");
    let conn = first.reusable.expect("reusable after the first");
    let second = run(conn, &get("/2")).await.expect("second");
    assert_eq!(second.head.parts.status, StatusCode::NOT_FOUND);
    assert_eq!(&second.data[..], b"two");
    assert!(heads.recv().await.expect("head 1").starts_with("GET /1 "));
    assert!(heads.recv().await.expect("head 2").starts_with("GET /2 "));
}

#[test]
fn chunk_size_lines() {
    assert_eq!(parse_chunk_size(b"1a"), Some(26));
    assert_eq!(parse_chunk_size(b"A ; name=value"), Some(10));
    assert_eq!(parse_chunk_size(b"0"), Some(0));
    assert_eq!(parse_chunk_size(b""), None);
    assert_eq!(parse_chunk_size(b"g"), None);
    assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
    assert_eq!(parse_chunk_size(b"10000000000000000"), None);
    // What httparse's own chunk-size parser lets through, and a proxy must not.
    assert_eq!(parse_chunk_size(b";ext"), None, "an empty size is not the last chunk");
    assert_eq!(parse_chunk_size(b"5;a\nb"), None, "a bare line feed inside an extension");
    assert_eq!(parse_chunk_size(b"5;a\rb"), None, "a bare carriage return inside an extension");
    assert_eq!(parse_chunk_size(b"5\t;a"), Some(5), "a tab before the extension is whitespace");
}

#[tokio::test]
async fn an_idle_connection_reports_whether_it_can_be_reused() {
    let (address, _heads) =
        server(vec![script(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], false)]).await;
    let done = run(connect(address).await, &get("/")).await.expect("exchange");
    let mut conn = done.reusable.expect("reusable");
    assert!(conn.is_reusable(), "an open, quiet connection can carry the next request");

    // The server closes after its answer (an upstream's keep-alive timeout, sooner).
    let (address, _heads) =
        server(vec![script(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], true)]).await;
    let done = run(connect(address).await, &get("/")).await.expect("exchange");
    let mut conn = done.reusable.expect("the response itself was keep-alive");
    let closed = async {
        while conn.is_reusable() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the closed connection is noticed");

    // Bytes nobody asked for make a connection unusable too. The server sends them only once the
    // exchange is over.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (over, wait_over) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        let mut head = [0u8; 1024];
        let _ = socket.read(&mut head).await;
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let _ = wait_over.await;
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    let done = run(connect(address).await, &get("/")).await.expect("exchange");
    let mut conn = done.reusable.expect("reusable");
    assert!(conn.is_reusable());
    let _ = over.send(());
    let unasked = async {
        while conn.is_reusable() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), unasked).await.expect("the unasked bytes are noticed");
}

#[test]
fn exchanges_in_progress_are_counted_while_their_guards_live() {
    let (first, before_first) = InFlight::enter();
    let (second, before_second) = InFlight::enter();
    assert_eq!(before_second, before_first + 1, "the second sees the first in progress");
    drop(first);
    drop(second);
    let (_third, before_third) = InFlight::enter();
    assert_eq!(before_third, before_first, "finished exchanges are counted out");
}

// Heads queued for the end of the scheduling round (`transport`): a head is queued whenever
// another exchange is in progress on the thread.

/// Reads one request head (any size) off `socket`.
async fn read_head(socket: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    head
}

/// A plain connection and the server's side of it.
async fn connected_pair() -> (Conn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let conn = connect(listener.local_addr().expect("address")).await;
    let (socket, _) = listener.accept().await.expect("accept");
    (conn, socket)
}

#[tokio::test]
async fn concurrent_exchanges_are_written_together_and_answered_round_after_round() {
    const CONNECTIONS: usize = 8;
    let mut servers = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let scripts = vec![script(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], false); 3];
        let (address, heads) = server(scripts).await;
        conns.push(connect(address).await);
        servers.push(heads);
    }
    // Three rounds on the same connections: every round after the first starts new batches.
    for round in 0..3 {
        let request = get(&format!("/round/{round}"));
        let answered =
            futures_util::future::join_all(conns.into_iter().map(|conn| run(conn, &request))).await;
        conns = answered
            .into_iter()
            .map(|collected| {
                let collected = collected.expect("answered");
                assert_eq!(collected.data, "ok");
                collected.reusable.expect("reusable")
            })
            .collect();
        for heads in &mut servers {
            let head = heads.recv().await.expect("the head arrived");
            assert!(head.starts_with(&format!("GET /round/{round} HTTP/1.1\r\n")), "{head}");
        }
    }
}

#[tokio::test]
async fn a_head_abandoned_before_the_round_ends_is_never_sent() {
    let (mut conn, mut socket) = connected_pair().await;
    let other = InFlight::enter();
    let request = get("/abandoned");
    {
        let mut exchange = std::pin::pin!(exchange(&mut conn, &request, None, false));
        let polled = std::future::poll_fn(|cx| Poll::Ready(exchange.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "queued, waiting for the response");
    }
    // The round's batch runs now; the abandoned head must not be in it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut byte)).await;
    assert!(read.is_err(), "nothing may reach the upstream: {read:?}");
    // The connection is clean and serves the next request.
    drop(other);
    let answer = async {
        let head = read_head(&mut socket).await;
        socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.expect("answer");
        head
    };
    let next = get("/next");
    let (result, head) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(exchange(&mut conn, &next, None, false), answer)
    })
    .await
    .expect("in time");
    assert_eq!(result.expect("answered").parts.status, StatusCode::NO_CONTENT);
    assert!(head.starts_with(b"GET /next HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&head));
}

#[tokio::test]
async fn a_head_the_socket_takes_only_in_part_is_finished_by_its_request() {
    let (mut conn, socket) = connected_pair().await;
    let mut socket = socket;
    let _other = InFlight::enter();
    // Far more than loopback socket buffers hold: the batch writes what fits and hands the rest
    // back to the request, which finishes it as the upstream reads.
    let large = "x".repeat(16 * 1024 * 1024);
    let mut request = get("/large");
    request.headers.insert("x-large", HeaderValue::from_str(&large).expect("value"));
    // The upstream on a task of its own: only the batch's hand-back (and then the socket) may
    // wake the exchange.
    let answer = tokio::spawn(async move {
        let head = read_head(&mut socket).await;
        socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.expect("answer");
        head
    });
    let result = tokio::time::timeout(Duration::from_secs(10), exchange(&mut conn, &request, None, false))
        .await
        .expect("in time");
    assert_eq!(result.expect("answered").parts.status, StatusCode::NO_CONTENT);
    let head = answer.await.expect("upstream");
    assert!(head.len() > large.len(), "the whole head arrived: {} bytes", head.len());
    assert!(head.starts_with(b"GET /large HTTP/1.1\r\n"));
}

#[tokio::test]
async fn an_upstream_that_speaks_before_the_head_is_written_fails_the_exchange_as_unsent() {
    let (mut conn, mut socket) = connected_pair().await;
    socket.write_all(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n").await.expect("write");
    // Let the reactor see the bytes, so the exchange's first read finds them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _other = InFlight::enter();
    let request = get("/late");
    let result = tokio::time::timeout(Duration::from_secs(5), exchange(&mut conn, &request, None, false))
        .await
        .expect("in time");
    let error = result.err().expect("not taken for this request's answer");
    assert!(error.is_unsent(), "{error}");
    drop(conn);
    let mut sent = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut sent)).await;
    assert!(sent.is_empty(), "the head was withdrawn: {}", String::from_utf8_lossy(&sent));
}

/// Every byte a field name may hold (RFC 9110 `tchar`).
fn token_bytes() -> impl Iterator<Item = u8> {
    (0u8..=127).filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

#[test]
fn token_words_compare_as_ascii_case_insensitive_equality() {
    let known: [&[u8]; 12] = [
        b"date",
        b"etag",
        b"vary",
        b"server",
        b"connection",
        b"set-cookie",
        b"content-type",
        b"cache-control",
        b"last-modified",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
    ];
    for lower in known {
        // Each position replaced by every token byte: the word comparison says what a byte-wise
        // case-insensitive comparison says (so bit 5 never makes a different token byte match).
        for at in 0..lower.len() {
            for byte in token_bytes() {
                let mut name = lower.to_vec();
                name[at] = byte;
                assert_eq!(
                    token_eq_lower(&name, lower),
                    name.eq_ignore_ascii_case(lower),
                    "{:?} against {:?}",
                    String::from_utf8_lossy(&name),
                    String::from_utf8_lossy(lower)
                );
            }
        }
        assert!(token_eq_lower(&lower.to_ascii_uppercase(), lower));
        assert!(!token_eq_lower(&lower[1..], lower), "a shorter name is another name");
    }
}

#[test]
fn field_names_common_or_not_come_out_as_from_bytes_makes_them() {
    for name in [
        "Date",
        "ETag",
        "vary",
        "SERVER",
        "Connection",
        "Set-Cookie",
        "Content-Type",
        "cache-control",
        "Last-Modified",
        "Content-Length",
        "Content-Encoding",
        "Transfer-Encoding",
        "X-Up",
        "Content-Typf",
        "dates",
        "Server-Timing",
        "x-content-length",
    ] {
        let fast = field_name(name.as_bytes()).expect(name);
        let slow = HeaderName::from_bytes(name.as_bytes()).expect(name);
        assert_eq!(fast, slow, "{name}");
        assert_eq!(fast.as_str(), name.to_ascii_lowercase(), "{name}");
    }
    assert_eq!(field_name(b"content-type").expect("known"), http::header::CONTENT_TYPE);
    assert!(field_name(b"bad name").is_err());
    assert!(field_name(b"").is_err());
    // The word comparison relies on names being tokens: a byte that would pass for `-` with bit 5
    // set (CR) never reaches it.
    for head in [
        &b"HTTP/1.1 200 OK\r\nContent\rLength: 5\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer\rEncoding: chunked\r\n\r\n",
    ] {
        assert!(parse_response_head(&mut BytesMut::from(head)).is_err(), "{head:?}");
    }
}
