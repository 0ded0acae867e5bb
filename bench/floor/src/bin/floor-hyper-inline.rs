//! hyper's HTTP/1 server; the upstream exchange inline on the client connection's own upstream
//! connection.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::Mutex;

fn main() {
    tollgate_bench_floor::run(|client, upstream| async move {
        let Ok(upstream) = tollgate_bench_floor::connect(&upstream).await else { return };
        let upstream = Arc::new(Mutex::new((upstream, Vec::new())));
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let upstream = Arc::clone(&upstream);
            async move {
                let mut head = Vec::with_capacity(512);
                head.extend_from_slice(request.method().as_str().as_bytes());
                head.push(b' ');
                head.extend_from_slice(request.uri().path().as_bytes());
                head.extend_from_slice(b" HTTP/1.1\r\n");
                for (name, value) in request.headers() {
                    head.extend_from_slice(name.as_str().as_bytes());
                    head.extend_from_slice(b": ");
                    head.extend_from_slice(value.as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
                head.extend_from_slice(b"x-forwarded-for: 127.0.0.1\r\n\r\n");
                let mut guard = upstream.lock().await;
                let (stream, buffer) = &mut *guard;
                let (head_len, body_len) = tollgate_bench_floor::exchange(stream, &head, buffer).await?;
                let body = Bytes::copy_from_slice(&buffer[head_len..head_len + body_len]);
                Ok::<_, std::io::Error>(hyper::Response::new(Full::new(body)))
            }
        });
        let io = hyper_util::rt::TokioIo::new(client);
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    });
}
