//! The one response/request body type the proxy passes around, and constructors for it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

/// A boxed error from any body source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy produces and every request it forwards.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body made of one chunk.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// Reads a body of at most `limit` bytes; `Err` when it fails or grows larger. (Not through
/// `Limited`: its generic error conversion trips rustc's `Send` check for the futures that hold
/// it — "implementation of `From` is not general enough".)
pub async fn collect_limited(mut body: ProxyBody, limit: u64) -> Result<Bytes, ()> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Ok(data) = frame.into_data() {
            if (out.len() + data.len()) as u64 > limit {
                return Err(());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
