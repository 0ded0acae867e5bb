//! No HTTP library: httparse on the client side too, the response bytes relayed as they came.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    tollgate_bench_floor::run(|mut client, upstream| async move {
        let Ok(mut upstream) = tollgate_bench_floor::connect(&upstream).await else { return };
        let (mut input, mut filled, mut head, mut answer) = (vec![0u8; 16384], 0, Vec::new(), Vec::new());
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            let used = match request.parse(&input[..filled]) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) => match client.read(&mut input[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => {
                        filled += read;
                        continue;
                    }
                },
                Err(_) => return,
            };
            head.clear();
            head.extend_from_slice(request.method.unwrap_or("GET").as_bytes());
            head.push(b' ');
            head.extend_from_slice(request.path.unwrap_or("/").as_bytes());
            head.extend_from_slice(b" HTTP/1.1\r\n");
            for header in request.headers.iter().filter(|h| !h.name.eq_ignore_ascii_case("connection")) {
                head.extend_from_slice(header.name.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(header.value);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"x-forwarded-for: 127.0.0.1\r\n\r\n");
            input.copy_within(used..filled, 0);
            filled -= used;
            if tollgate_bench_floor::exchange(&mut upstream, &head, &mut answer).await.is_err()
                || client.write_all(&answer).await.is_err()
            {
                return;
            }
        }
    });
}
