//! The controller → proxy protocol: the messages on a subscription and their framing.
//!
//! A proxy subscribes with `GET` [`SUBSCRIBE_PATH`]`?fleet=NAME` and reads a streaming response
//! made of frames. Each frame is a 4-byte big-endian length, then that many bytes: one byte of
//! frame type and a deflate-compressed JSON payload. The first frame is always a full
//! [`Snapshot`]; later frames are full snapshots (routes changed), [`EndpointUpdate`]s (only the
//! endpoints of some Services changed: the cheap path for pod churn) or keepalives. After applying
//! a frame the proxy `POST`s an [`AppliedReport`] to [`APPLIED_PATH`]. Pure data and byte
//! shuffling: no IO happens here.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::Snapshot;

/// Path of the subscription stream (`GET`, query `fleet=NAME`).
pub const SUBSCRIBE_PATH: &str = "/v1alpha1/subscribe";
/// Path where a proxy reports the version it applied (`POST`, JSON [`AppliedReport`]).
pub const APPLIED_PATH: &str = "/v1alpha1/applied";
/// Path where a proxy reports per-track request counts of canary stages (`POST`, JSON
/// [`StatsReport`]), periodically, on the subscription's connection.
pub const STATS_PATH: &str = "/v1alpha1/stats";
/// Largest accepted [`StatsReport`] body.
pub const MAX_STATS_BYTES: usize = 1024 * 1024;
/// Response header of a subscription naming the session, echoed in [`AppliedReport::session`].
pub const SESSION_HEADER: &str = "x-tollgate-session";
/// Request header of a subscription: the version the proxy serves (0: none), for logs and metrics.
pub const HAVE_VERSION_HEADER: &str = "x-tollgate-have-version";
/// Largest frame accepted (compressed), so a broken peer cannot make us allocate without bound.
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// Largest payload after decompression.
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024 * 1024;

/// A Service port a backend was resolved from, so its endpoints can be updated on their own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// The Service port (not the target port).
    pub port: i32,
}

/// New endpoint lists for some Services, on top of the full snapshot of `base_version`.
///
/// Lists are absolute (not added/removed), so the update since a full snapshot can be merged and
/// sent to any proxy that holds that snapshot or a later endpoint update of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointUpdate {
    /// The version after applying the update.
    pub version: u64,
    /// The version of the full snapshot this update applies to.
    pub base_version: u64,
    /// The Services whose endpoints changed since `base_version`, with their current endpoints.
    pub services: Vec<ServiceEndpoints>,
}

/// The current ready endpoints of one Service port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    /// The Service port.
    pub service: ServiceRef,
    /// Ready endpoint authorities, sorted.
    pub endpoints: Vec<String>,
}

/// What a proxy reports after applying a frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedReport {
    /// The session named by the subscription's [`SESSION_HEADER`].
    pub session: String,
    /// The version now served.
    pub version: u64,
}

/// Per-track counts a proxy gathered since its previous report (deltas, so the controller can
/// add the reports of every proxy of the fleet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// The session named by the subscription's [`SESSION_HEADER`].
    pub session: String,
    /// One entry per (API, stage, track) with traffic since the previous report.
    pub tracks: Vec<crate::canary::TrackReport>,
}

/// One message on a subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A full snapshot of the proxy's fleet: replaces everything.
    Snapshot(Snapshot),
    /// New endpoints for some Services.
    Endpoints(EndpointUpdate),
    /// Nothing changed; the stream is alive.
    Keepalive,
}

const TYPE_SNAPSHOT: u8 = 1;
const TYPE_ENDPOINTS: u8 = 2;
const TYPE_KEEPALIVE: u8 = 3;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// JSON (de)serialization failed.
    #[error("frame payload is not valid JSON for its type: {0}")]
    Json(#[source] serde_json::Error),
    /// Compression or decompression failed.
    #[error("frame payload could not be (de)compressed: {0}")]
    Compression(#[source] std::io::Error),
    /// The frame is larger than [`MAX_FRAME_BYTES`] (or its payload than [`MAX_PAYLOAD_BYTES`]).
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(u64),
    /// An unknown frame type (a newer controller?).
    #[error("unknown frame type {0}: is the controller newer than this proxy?")]
    UnknownType(u8),
    /// A zero-length frame.
    #[error("empty frame")]
    Empty,
}

impl Frame {
    /// Encodes a snapshot frame from a borrowed snapshot (no copy of its routes); the same bytes
    /// as `Frame::Snapshot(snapshot.clone()).encode()`.
    pub fn encode_snapshot(snapshot: &Snapshot) -> Result<Vec<u8>, FrameError> {
        framed(TYPE_SNAPSHOT, &compress_json(snapshot)?)
    }

    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        match self {
            Frame::Snapshot(snapshot) => Self::encode_snapshot(snapshot),
            Frame::Endpoints(update) => framed(TYPE_ENDPOINTS, &compress_json(update)?),
            Frame::Keepalive => framed(TYPE_KEEPALIVE, &[]),
        }
    }

    /// Decodes one frame body (type byte and payload, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let (&kind, payload) = body.split_first().ok_or(FrameError::Empty)?;
        match kind {
            TYPE_SNAPSHOT => Ok(Frame::Snapshot(decompress_json(payload)?)),
            TYPE_ENDPOINTS => Ok(Frame::Endpoints(decompress_json(payload)?)),
            TYPE_KEEPALIVE => Ok(Frame::Keepalive),
            other => Err(FrameError::UnknownType(other)),
        }
    }
}

/// Length prefix (type byte included), type byte, payload.
fn framed(kind: u8, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = payload.len() + 1;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut out = Vec::with_capacity(len + 4);
    out.extend_from_slice(&u32::try_from(len).map_err(|_| FrameError::TooLarge(len as u64))?.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(out)
}

fn compress_json<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    // Buffered: serde_json writes token by token, and each write into the encoder zeroes its
    // whole output buffer (32 KiB) first. Unbuffered, a 10,000-Route snapshot spent over 80 % of
    // its encoding time in that memset.
    let mut buffered = std::io::BufWriter::with_capacity(COMPRESS_INPUT_BUFFER, &mut encoder);
    serde_json::to_writer(&mut buffered, value).map_err(FrameError::Json)?;
    buffered.flush().map_err(FrameError::Compression)?;
    drop(buffered);
    encoder.finish().map_err(FrameError::Compression)
}

/// Input handed to the deflate encoder at once (see `compress_json`).
const COMPRESS_INPUT_BUFFER: usize = 64 * 1024;

fn decompress_json<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let mut decoder = flate2::read::DeflateDecoder::new(payload).take(MAX_PAYLOAD_BYTES + 1);
    let mut json = Vec::new();
    decoder.read_to_end(&mut json).map_err(FrameError::Compression)?;
    if json.len() as u64 > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge(json.len() as u64));
    }
    serde_json::from_slice(&json).map_err(FrameError::Json)
}

/// Splits a byte stream into frames: feed it chunks as they arrive, take frames out.
#[derive(Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = self.buffer.first_chunk::<4>() else { return Ok(None) };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(len as u64));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let frame = Frame::decode(&self.buffer[4..4 + len]);
        self.buffer.drain(..4 + len);
        frame.map(Some)
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

impl Snapshot {
    /// Applies an endpoint update: every backend resolved from one of its Services gets the new
    /// endpoints, and the snapshot takes the update's version. Returns how many backends changed.
    pub fn apply_endpoints(&mut self, update: &EndpointUpdate) -> usize {
        let lookup: std::collections::HashMap<&ServiceRef, &Vec<String>> =
            update.services.iter().map(|s| (&s.service, &s.endpoints)).collect();
        let mut changed = 0;
        for backend in self.backends_mut() {
            if let Some(endpoints) = backend.service.as_ref().and_then(|s| lookup.get(s))
                && backend.endpoints != **endpoints
            {
                backend.endpoints = (*endpoints).clone();
                changed += 1;
            }
        }
        self.version = update.version;
        changed
    }

    /// Every HTTP backend of every route (both tracks), for in-place updates.
    pub fn backends_mut(&mut self) -> impl Iterator<Item = &mut crate::Backend> {
        self.apis.iter_mut().flat_map(|api| {
            api.stages.iter_mut().flat_map(|stage| {
                let canary = stage.canary.iter_mut().flat_map(|c| c.routes.iter_mut());
                stage.routes.iter_mut().chain(canary).filter_map(|route| match &mut route.integration {
                    crate::Integration::Http(http) => Some(&mut http.backend),
                    crate::Integration::Mock(_) => None,
                })
            })
        })
    }

    /// Every HTTP backend of every route.
    pub fn backends(&self) -> impl Iterator<Item = &crate::Backend> {
        self.apis.iter().flat_map(|api| {
            api.stages.iter().flat_map(|stage| {
                let canary = stage.canary.iter().flat_map(|c| c.routes.iter());
                stage.routes.iter().chain(canary).filter_map(|route| match &route.integration {
                    crate::Integration::Http(http) => Some(&http.backend),
                    crate::Integration::Mock(_) => None,
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_chunk_boundaries() {
        let snapshot = Snapshot { version: 7, content_hash: "abc".into(), ..Snapshot::default() };
        let update = EndpointUpdate {
            version: 8,
            base_version: 7,
            services: vec![ServiceEndpoints {
                service: ServiceRef { namespace: "a".into(), name: "b".into(), port: 80 },
                endpoints: vec!["10.0.0.1:8080".into()],
            }],
        };
        let mut bytes = Frame::Snapshot(snapshot.clone()).encode().unwrap_or_default();
        bytes.extend(Frame::Keepalive.encode().unwrap_or_default());
        bytes.extend(Frame::Endpoints(update.clone()).encode().unwrap_or_default());
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        for chunk in bytes.chunks(3) {
            reader.push(chunk);
            while let Some(frame) = reader.next_frame().unwrap_or_else(|e| panic!("{e}")) {
                frames.push(frame);
            }
        }
        assert_eq!(frames, vec![Frame::Snapshot(snapshot), Frame::Keepalive, Frame::Endpoints(update)]);
        assert_eq!(reader.pending(), 0);
    }

    #[test]
    fn oversized_and_unknown_frames_are_errors() {
        let mut reader = FrameReader::default();
        reader.push(&u32::MAX.to_be_bytes());
        assert!(matches!(reader.next_frame(), Err(FrameError::TooLarge(_))));
        assert!(matches!(Frame::decode(&[9]), Err(FrameError::UnknownType(9))));
        assert!(matches!(Frame::decode(&[]), Err(FrameError::Empty)));
    }
}
