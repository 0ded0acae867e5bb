//! Shared parts of the floor programs: a current-thread runtime, an accept loop, and an inline
//! HTTP/1.1 exchange on an upstream connection owned by the client connection's task.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs `serve(client, upstream_address)` for every accepted connection on a current-thread
/// runtime (as `tollgate --workers 1`). Arguments: LISTEN UPSTREAM.
pub fn run<F, Fut>(serve: F)
where
    F: Fn(TcpStream, String) -> Fut + Copy + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor-* LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let _ = client.set_nodelay(true);
            tokio::spawn(serve(client, upstream.clone()));
        }
    });
}

/// Connects to the upstream with TCP_NODELAY.
pub async fn connect(upstream: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `head` (a complete request head) and reads one response with a Content-Length body into
/// `buffer`; returns (head length, body length). Enough for the bench backend, not a client.
pub async fn exchange(
    upstream: &mut TcpStream,
    head: &[u8],
    buffer: &mut Vec<u8>,
) -> std::io::Result<(usize, usize)> {
    upstream.write_all(head).await?;
    buffer.clear();
    let mut chunk = [0u8; 16384];
    loop {
        let read = upstream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = response.parse(buffer) {
            let body_len = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buffer.len() < head_len + body_len {
                let read = upstream.read(&mut chunk).await?;
                if read == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buffer.extend_from_slice(&chunk[..read]);
            }
            return Ok((head_len, body_len));
        }
    }
}
