//! hyper's HTTP/1 server and a hyper client connection pinned to each client connection.
//! With `AUTO=1`: hyper-util's auto (HTTP/1 + h2c) builder and a header-read timer, as Tollgate.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;

fn main() {
    tollgate_bench_floor::run(|client, upstream| async move {
        let Ok(upstream) = tollgate_bench_floor::connect(&upstream).await else { return };
        let Ok((sender, connection)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(upstream)).await
        else {
            return;
        };
        tokio::spawn(connection);
        let sender = Arc::new(Mutex::new(sender));
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let sender = Arc::clone(&sender);
            async move {
                let (mut parts, _) = request.into_parts();
                parts.headers.insert("x-forwarded-for", hyper::header::HeaderValue::from_static("127.0.0.1"));
                let mut sender = sender.lock().await;
                sender.ready().await.map_err(std::io::Error::other)?;
                let response = sender
                    .send_request(hyper::Request::from_parts(parts, Empty::new()))
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(response.map(BodyExt::boxed))
            }
        });
        let io = TokioIo::new(client);
        if std::env::var_os("AUTO").is_some() {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
            let _ = builder.serve_connection_with_upgrades(io, service).await;
        } else {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        }
    });
}
