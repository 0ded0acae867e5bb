//! WebSocket: managed WebSocket APIs with real clients (tokio-tungstenite) against the real
//! binary — a chat across two replicas whose backend (examples/chat/backend.py) fans out through
//! the @connections API with botocore's `apigatewaymanagementapi` client; `$connect` refusals,
//! routing by action, `$default`, limits, idle timeout, `$disconnect` exactly once, 410 after
//! close, unauthenticated management calls refused — and passthrough to a WebSocket backend.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::auth_support::*;
use crate::support::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const AK: &str = "AKIDCHATBACKEND01";
const SK: &str = "chat-backend-secret-key";
const STEP: Duration = Duration::from_secs(10);

/// Opens a WebSocket to `url` with optional bearer token; `Err(status)` when refused.
async fn open(url: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("connect failed: {other}"),
    }
}

/// The next data frame (text), skipping pings.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Waits for the server's close frame; returns its code.
async fn closed(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return None,
        }
    }
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

/// One @connections call made by botocore's `apigatewaymanagementapi` client (signed with
/// `key`/`secret`, or unsigned). Returns `{ok: ...}` or `{error: code, status: n}`.
fn management(endpoint: &str, op: &str, id: &str, key: Option<(&str, &str)>) -> Value {
    let script = r#"
import json, sys
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
a = json.loads(sys.argv[1])
kwargs = dict(endpoint_url=a["endpoint"], region_name="eu-central-1")
if a.get("ak"):
    kwargs.update(aws_access_key_id=a["ak"], aws_secret_access_key=a["sk"])
else:
    kwargs.update(config=Config(signature_version=UNSIGNED))
c = botocore.session.get_session().create_client("apigatewaymanagementapi", **kwargs)
try:
    if a["op"] == "get":
        r = c.get_connection(ConnectionId=a["id"])
        out = {"ok": {"sourceIp": r["Identity"]["SourceIp"], "connectedAt": str(r["ConnectedAt"])}}
    elif a["op"] == "post":
        c.post_to_connection(ConnectionId=a["id"], Data=a["data"].encode())
        out = {"ok": True}
    else:
        c.delete_connection(ConnectionId=a["id"])
        out = {"ok": True}
except c.exceptions.ClientError as e:
    out = {"error": e.response["Error"]["Code"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
print(json.dumps(out))
"#;
    let mut args = json!({"endpoint": endpoint, "op": op, "id": id, "data": "{\"from\":\"ops\"}"});
    if let Some((ak, sk)) = key {
        args["ak"] = json!(ak);
        args["sk"] = json!(sk);
    }
    let out =
        Command::new("python3").args(["-c", script, &args.to_string()]).output().expect("python3 + botocore");
    assert!(out.status.success(), "botocore failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The chat example's backend (examples/chat/backend.py), killed on drop.
struct ChatBackend {
    child: Child,
    addr: SocketAddr,
}

impl ChatBackend {
    async fn start(connections: SocketAddr) -> ChatBackend {
        Self::start_on(free_port(), connections, (AK, SK)).await
    }

    async fn start_on(port: u16, connections: SocketAddr, (ak, sk): (&str, &str)) -> ChatBackend {
        let child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat/backend.py"))
            .env("PORT", port.to_string())
            .env("CONNECTIONS_URL", format!("http://{connections}"))
            .env("AWS_ACCESS_KEY_ID", ak)
            .env("AWS_SECRET_ACCESS_KEY", sk)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let backend = ChatBackend { child, addr };
        eventually("chat backend up", || async move { TcpStream::connect(addr).await.is_ok() }).await;
        backend
    }

    async fn stats(&self) -> Value {
        client().get(format!("http://{}/stats", self.addr)).send().await.unwrap().json().await.unwrap()
    }
}

impl Drop for ChatBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chat API of examples/chat, pointed at `backend`, with a JWT authorizer on `idp`.
fn chat_manifests(m: &Manifests, idp: &Idp, backend: SocketAddr) {
    let url = |path: &str| format!("http://{backend}{path}");
    m.write(
        "chat.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: chat, namespace: chat}}\n\
             spec:\n  protocol: WebSocket\n  routeSelectionExpression: $request.body.action\n  \
             connectionsApi: {{credentialSelector: {{matchLabels: {{team: chat-backend}}}}}}\n  \
             stages: [{{name: prod, basePath: /prod}}]\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{name: chat-backend, namespace: chat, labels: {{team: chat-backend}}}}\n\
             type: tollgate.dev/access-key\nstringData: {{accessKeyId: {AK}, secretAccessKey: {SK}}}\n---\n\
             apiVersion: tollgate.dev/v1alpha1\nkind: Authorizer\nmetadata: {{name: idp, namespace: chat}}\nspec:\n  \
             jwt: {{issuer: \"{}\", audiences: [shop], jwksUri: \"{}\", claimsToHeaders: {{sub: x-user-id}}}}\n---\n\
             {}---\n{}---\n{}---\n{}",
            idp.issuer(),
            idp.jwks_uri(),
            route_yaml("chat", "connect", "chat", &format!("  routeKey: $connect\n  authorization: {{authorizerRef: {{name: idp}}}}\n  integration: {{url: \"{}\"}}\n", url("/connect"))),
            route_yaml("chat", "disconnect", "chat", &format!("  routeKey: $disconnect\n  integration: {{url: \"{}\"}}\n", url("/disconnect"))),
            route_yaml("chat", "send-message", "chat", &format!("  routeKey: sendMessage\n  integration: {{url: \"{}\"}}\n", url("/message"))),
            route_yaml("chat", "default", "chat", &format!("  routeKey: $default\n  integration: {{url: \"{}\"}}\n", url("/default"))),
        ),
    );
}

async fn id_of(backend: &ChatBackend, user: &str) -> String {
    let mut found = None;
    for _ in 0..100 {
        let stats = backend.stats().await;
        found = stats["connections"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, u)| *u == user)
            .map(|(id, _)| id.clone());
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    found.unwrap_or_else(|| panic!("no connection for {user}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_across_two_replicas_with_connections_api() {
    let key = SigningKey::rsa();
    let idp = Idp::start(&[&key]).await;
    let (conn_a, conn_b) = (free_port(), free_port());
    let a_addr: SocketAddr = format!("127.0.0.1:{conn_a}").parse().unwrap();
    let b_addr: SocketAddr = format!("127.0.0.1:{conn_b}").parse().unwrap();
    // The backend calls replica A only: B's connections are reached through forwarding.
    let backend = ChatBackend::start(a_addr).await;
    let m = Manifests::new();
    chat_manifests(&m, &idp, backend.addr);
    let a = Tollgate::start_with(m.path(), &["--connections-listen", &a_addr.to_string()]).await;
    let b = Tollgate::start_with(m.path(), &["--connections-listen", &b_addr.to_string()]).await;
    let ws_url = |g: &Tollgate| format!("ws://{}/prod", g.http);

    // $connect: no token → the authorizer refuses; a token without `sub` → the backend refuses.
    assert_eq!(open(&ws_url(&a), None).await.err(), Some(401));
    let anonymous = key.sign(&json!({"iss": idp.issuer(), "aud": "shop", "iat": now(), "exp": now() + 3600}));
    assert_eq!(open(&ws_url(&a), Some(&anonymous)).await.err(), Some(403));
    // A plain request gets no further than authorization.
    assert_eq!(client().get(a.url("/prod")).send().await.unwrap().status().as_u16(), 401);

    let mut alice = open(&ws_url(&a), Some(&key.sign(&claims(&idp.issuer(), "alice", "")))).await.unwrap();
    let mut bob = open(&ws_url(&b), Some(&key.sign(&claims(&idp.issuer(), "bob", "")))).await.unwrap();
    let alice_id = id_of(&backend, "alice").await;
    let bob_id = id_of(&backend, "bob").await;

    // sendMessage fans out through @connections; bob (on B) gets it via A's forward.
    send(&mut alice, json!({"action": "sendMessage", "text": "hello from A"})).await;
    for ws in [&mut alice, &mut bob] {
        let got: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(got, json!({"from": "alice", "text": "hello from A"}));
    }
    send(&mut bob, json!({"action": "sendMessage", "text": "hi alice"})).await;
    for ws in [&mut alice, &mut bob] {
        let got: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(got["from"], "bob");
    }
    // An unknown action goes to $default, whose answer comes back as a frame.
    send(&mut bob, json!({"action": "dance"})).await;
    assert!(next_text(&mut bob).await.contains("unknown action"));

    // The management API from outside: signed calls on either replica, for either connection.
    let endpoint = |addr: SocketAddr| format!("http://{addr}");
    let creds = Some((AK, SK));
    let got = management(&endpoint(a_addr), "get", &bob_id, creds);
    assert_eq!(got["ok"]["sourceIp"], "127.0.0.1", "{got}");
    // An SDK whose endpoint ends with the stage sends /{stage}/@connections/{id}.
    let staged = management(&format!("http://{a_addr}/prod"), "get", &bob_id, creds);
    assert_eq!(staged["ok"]["sourceIp"], "127.0.0.1", "{staged}");
    let other_stage = management(&format!("http://{a_addr}/dev"), "get", &bob_id, creds);
    assert_eq!(other_stage["status"], 410, "{other_stage}");
    assert_eq!(management(&endpoint(b_addr), "post", &alice_id, creds), json!({"ok": true}));
    assert_eq!(next_text(&mut alice).await, "{\"from\":\"ops\"}");
    // Unauthenticated or wrongly signed calls are refused, known id or not.
    for (id, key) in [(&bob_id, None), (&alice_id, Some((AK, "wrong-secret"))), (&"nope".to_string(), None)] {
        let refused = management(&endpoint(b_addr), "get", id, key);
        assert_eq!(refused["status"], 403, "{refused}");
    }

    // DELETE alice through B: A closes her connection; $disconnect runs once; then 410.
    assert_eq!(management(&endpoint(b_addr), "delete", &alice_id, creds), json!({"ok": true}));
    assert_eq!(closed(&mut alice).await, Some(CloseCode::Normal));
    bob.close(None).await.unwrap();
    eventually("both $disconnects invoked", || async {
        let s = backend.stats().await;
        s["disconnects"][&alice_id] == 1 && s["disconnects"][&bob_id] == 1
    })
    .await;
    for addr in [a_addr, b_addr] {
        let gone = management(&endpoint(addr), "post", &alice_id, creds);
        assert_eq!((gone["error"].as_str(), gone["status"].as_u64()), (Some("GoneException"), Some(410)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = backend.stats().await;
    assert_eq!(
        (s["disconnects"][&alice_id].as_u64(), s["disconnects"][&bob_id].as_u64()),
        (Some(1), Some(1))
    );

    // Metrics and access log: connects, messages, disconnect reasons, one line per invocation.
    let text = client().get(a.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains("tollgate_websocket_disconnects_total{kind=\"managed\",reason=\"api\"} 1"),
        "{text}"
    );
    assert!(text.contains("tollgate_websocket_connections{kind=\"managed\"} 0"), "{text}");
    assert!(text.contains("tollgate_websocket_invocation_duration_seconds_count{api=\"chat/chat\",route_key=\"sendMessage\",stage=\"prod\"} 1"), "{text}");
    let line = a.wait_for_log(|l| l["path"] == "sendMessage" && l["connectionId"] == alice_id.as_str()).await;
    assert_eq!((line["status"].as_u64(), line["route"].as_str()), (Some(200), Some("chat/send-message")));
    let line = a.wait_for_log(|l| l["status"] == 101 && l["connectionId"] == alice_id.as_str()).await;
    assert_eq!((line["path"].as_str(), line["principal"].as_str()), (Some("/prod"), Some("alice")));
    let line = a.wait_for_log(|l| l["path"] == "$disconnect" && l["connectionId"] == alice_id.as_str()).await;
    assert_eq!(line["disconnectReason"], "api");
}

/// examples/chat as docs/websocket.md runs it: its manifests (backend port changed), its key and
/// token.sh, its backend.
#[tokio::test(flavor = "multi_thread")]
async fn chat_example_runs_as_documented() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat");
    let m = Manifests::new();
    let port = free_port();
    m.write("chat.yaml", &std::fs::read_to_string(format!("{example}/manifests/chat.yaml")).unwrap());
    let backend_yaml = std::fs::read_to_string(format!("{example}/manifests/backend.yaml")).unwrap();
    let endpoint_ports = "ports: [{name: http, port: 8081}]\nendpoints:";
    assert!(backend_yaml.contains(endpoint_ports));
    m.write(
        "backend.yaml",
        &backend_yaml.replace(endpoint_ports, &format!("ports: [{{name: http, port: {port}}}]\nendpoints:")),
    );
    let connections: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _backend = ChatBackend::start_on(port, connections, ("AKIDCHATEXAMPLE", "chat-example-secret")).await;
    let g = Tollgate::start_with(m.path(), &["--connections-listen", &connections.to_string()]).await;
    let token = |user: &str| {
        let out = Command::new("sh").arg(format!("{example}/token.sh")).arg(user).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let url = format!("ws://{}/prod", g.http);
    let mut alice = open(&url, Some(&token("alice"))).await.unwrap();
    let mut bob = open(&url, Some(&token("bob"))).await.unwrap();
    assert_eq!(open(&url, Some("not-a-token")).await.err(), Some(401));
    // Both are registered with the backend before the message goes out.
    let stats = || async {
        client()
            .get(format!("http://127.0.0.1:{port}/stats"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    eventually("both connected", || async { stats().await["connections"].as_object().unwrap().len() == 2 })
        .await;
    send(&mut bob, json!({"action": "sendMessage", "text": "hi"})).await;
    for ws in [&mut alice, &mut bob] {
        let got: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(got, json!({"from": "bob", "text": "hi"}));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_limits_and_idle_timeout() {
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: ws, namespace: t}}\n\
             spec:\n  protocol: WebSocket\n  webSocket: {{maxFrameBytes: 1024, maxMessageBytes: 2048, idleTimeout: 1500ms}}\n---\n{}",
            route_yaml("t", "echo", "ws", "  routeKey: echo\n  throttle: {rate: 0.01, burst: 2}\n  integration: {mock: {status: 200, body: '{\"echoed\":true}'}}\n"),
        ),
    );
    let g = Tollgate::start(m.path()).await;
    let url = format!("ws://{}/", g.http);
    // A plain request to a WebSocket API is told to upgrade.
    let plain = client().get(g.url("/")).send().await.unwrap();
    assert_eq!((plain.status().as_u16(), plain.headers()["upgrade"].to_str().unwrap()), (426, "websocket"));
    // No $connect Route: connections are accepted.
    let mut ws = open(&url, None).await.unwrap();
    send(&mut ws, json!({"action": "echo"})).await;
    assert_eq!(next_text(&mut ws).await, "{\"echoed\":true}");
    // No match and no $default: an error frame, and the connection stays open.
    send(&mut ws, json!({"action": "nope"})).await;
    let error: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert!(error["message"].as_str().unwrap().contains("\"nope\""), "{error}");
    assert!(error["connectionId"].as_str().is_some_and(|id| !id.is_empty()));
    send(&mut ws, json!({"action": "echo"})).await;
    assert_eq!(next_text(&mut ws).await, "{\"echoed\":true}");
    // Throttles count messages: the route's burst of 2 is spent.
    send(&mut ws, json!({"action": "echo"})).await;
    let throttled: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(throttled["message"], "Too Many Requests", "{throttled}");
    // Over maxMessageBytes: closed with 1009.
    let big = json!({"action": "echo", "pad": "x".repeat(3000)});
    ws.send(Message::text(big.to_string())).await.unwrap();
    assert_eq!(closed(&mut ws).await, Some(CloseCode::Size));
    // Idle: closed with 1001 once nothing crossed the connection for idleTimeout.
    let mut idle = open(&url, None).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut idle).await, Some(CloseCode::Away));
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let text = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains("tollgate_websocket_disconnects_total{kind=\"managed\",reason=\"too_big\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tollgate_websocket_disconnects_total{kind=\"managed\",reason=\"idle\"} 1"),
        "{text}"
    );
    // A managed API over HTTP/2 (RFC 8441).
    let mut h2 = open_h2(g.http, "/").await;
    h2.send(Message::text(json!({"action": "nope"}).to_string())).await.unwrap();
    match tokio::time::timeout(STEP, h2.next()).await.unwrap() {
        Some(Ok(Message::Text(text))) => assert!(text.contains("connectionId"), "{text}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // Drain: open connections are closed with 1001 and their $disconnect runs.
    let mut open_one = open(&url, None).await.unwrap();
    let mut g = g;
    g.terminate();
    assert_eq!(closed(&mut open_one).await, Some(CloseCode::Away));
    assert!(g.wait_exit().await, "exits cleanly");
    let reasons: Vec<Value> = g
        .access_log()
        .into_iter()
        .filter(|l| l["path"] == "$disconnect")
        .map(|l| l["disconnectReason"].clone())
        .collect();
    assert_eq!(reasons.iter().filter(|r| *r == "drain").count(), 2, "{reasons:?}");
}

/// A WebSocket echo server (the backend of a passthrough Route).
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a WebSocket over HTTP/2 (RFC 8441 extended CONNECT, prior-knowledge h2c).
async fn open_h2(
    addr: SocketAddr,
    path: &str,
) -> WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(hyper::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    request.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let response = tokio::time::timeout(STEP, sender.send_request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "extended CONNECT accepted");
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_pipes_frames_and_closes_idle_connections() {
    let echo = echo_server().await;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &format!(
            "{}---\n{}---\n{}",
            simple_api("t", "live"),
            route_yaml(
                "t",
                "open-feed",
                "live",
                &format!(
                    "  match: {{methods: [GET], path: /open}}\n  integration: {{url: \"http://{echo}\"}}\n"
                ),
            ),
            route_yaml(
                "t",
                "feed",
                "live",
                &format!(
                    "  match: {{methods: [GET], path: /feed}}\n  throttle: {{rate: 0.01, burst: 3}}\n  \
                     integration: {{url: \"http://{echo}\", webSocket: {{idleTimeout: 1s}}}}\n"
                ),
            ),
        ),
    );
    let g = Tollgate::start(m.path()).await;
    let url = format!("ws://{}/feed", g.http);
    let mut ws = open(&url, None).await.unwrap();
    ws.send(Message::text("through the gateway")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "through the gateway");
    // HTTP/2 clients use extended CONNECT (RFC 8441); the backend still sees an HTTP/1.1 upgrade.
    let mut h2 = open_h2(g.http, "/feed").await;
    h2.send(Message::text("over h2")).await.unwrap();
    match tokio::time::timeout(STEP, h2.next()).await.unwrap() {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "over h2"),
        other => panic!("expected the echo, got {other:?}"),
    }
    // The upgrade request went through the pipeline: the route throttle counts it.
    let mut second = open(&url, None).await.unwrap();
    assert_eq!(open(&url, None).await.err(), Some(429));
    // Idle for the Route's idleTimeout: the gateway closes the piped connection.
    let started = std::time::Instant::now();
    assert_eq!(closed(&mut second).await, None);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let text = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains("tollgate_websocket_disconnects_total{kind=\"passthrough\",reason=\"idle\"}"),
        "{text}"
    );
    // Drain: the piped connection ends with a close frame (1001) between two frames.
    let mut last = open(&format!("ws://{}/open", g.http), None).await.unwrap();
    last.send(Message::text("still there")).await.unwrap();
    assert_eq!(next_text(&mut last).await, "still there");
    let mut g = g;
    g.terminate();
    assert_eq!(closed(&mut last).await, Some(CloseCode::Away));
    assert!(g.wait_exit().await, "exits cleanly");
}

/// A WebSocket is a connection whose request is long done: the header-read timeout (which closes
/// connections without a request in flight) must not end it, over HTTP/1.1 or HTTP/2.
#[tokio::test(flavor = "multi_thread")]
async fn the_header_read_timeout_leaves_websockets_alone() {
    let echo = echo_server().await;
    let m = Manifests::new();
    let route =
        format!("  match: {{methods: [GET], path: /open}}\n  integration: {{url: \"http://{echo}\"}}\n");
    m.write(
        "api.yaml",
        &format!("{}---\n{}", simple_api("t", "live"), route_yaml("t", "open", "live", &route)),
    );
    let g = Tollgate::start_with(m.path(), &["--header-read-timeout", "1s"]).await;
    let mut h1 = open(&format!("ws://{}/open", g.http), None).await.unwrap();
    let mut h2 = open_h2(g.http, "/open").await;
    // Silent for well over the timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h1.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut h1).await, "still here");
    h2.send(Message::text("over h2")).await.unwrap();
    match tokio::time::timeout(STEP, h2.next()).await.unwrap() {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "over h2"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Memory benchmark (run by hand, see docs/benchmarks.md): 10,000 idle managed connections on
/// one proxy; prints the proxy's resident memory before and after.
/// `ulimit -n 65536; cargo test --release --test integration websocket::memory -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: opens 10,000 connections; run by hand"]
async fn memory_of_10k_idle_connections() {
    const CONNECTIONS: usize = 10_000;
    let m = Manifests::new();
    m.write(
        "api.yaml",
        &format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: ws, namespace: t}}\n\
             spec:\n  protocol: WebSocket\n---\n{}",
            route_yaml(
                "t",
                "echo",
                "ws",
                "  routeKey: $default\n  integration: {mock: {status: 200, body: pong}}\n"
            ),
        ),
    );
    let g = Tollgate::start_with(m.path(), &["--access-log", "off"]).await;
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let pid = g.pid().unwrap();
    let before = rss(pid);
    let url = format!("ws://{}/", g.http);
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS / 250 {
        let batch = (0..250).map(|_| open(&url, None));
        for ws in futures_util::future::join_all(batch).await {
            sockets.push(ws.unwrap());
        }
    }
    // Every connection answers (each session is live, not just accepted).
    let probe = sockets.last_mut().unwrap();
    probe.send(Message::text("ping")).await.unwrap();
    assert_eq!(next_text(probe).await, "pong");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(pid);
    let text = client().get(g.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&format!("tollgate_websocket_connections{{kind=\"managed\"}} {CONNECTIONS}")));
    println!(
        "{CONNECTIONS} idle WebSocket connections: proxy VmRSS {before} KiB before, {after} KiB after ({:.1} KiB per connection)",
        (after - before) as f64 / CONNECTIONS as f64
    );
    assert!(after < 200 * 1024, "resident memory {after} KiB is over 200 MB");
}
