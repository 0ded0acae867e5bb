//! Writes a [`Record`] as one JSON object, field by field.
//!
//! serde_json's general path cost ~5,000 instructions per line (callgrind): every key goes
//! through its string escaper, and every value through a formatter call. Here the keys and the
//! punctuation around them are literals, strings are copied in runs between the bytes that need
//! escaping, and integers are formatted with `itoa`. Durations are written to the microsecond
//! (`12.345` ms), from integers, instead of as the shortest form of an `f64` (`12.345678901`):
//! that took ~400 instructions per number. The output is byte for byte what serde_json writes for
//! the record's `Serialize` form, which rounds the same way (the tests hold them together,
//! hostile strings included).

use serde::Serializer;

use super::Record;

/// Appends `record` as a JSON object (no newline) to `out`.
pub(super) fn write(record: &Record, out: &mut Vec<u8>) {
    // In the record's field order (the `Serialize` form's).
    let leading: [(&[u8], &str); 10] = [
        (b"{\"time\":", &record.time),
        (b",\"requestId\":", &record.request_id),
        (b",\"api\":", &record.api),
        (b",\"stage\":", &record.stage),
        (b",\"route\":", &record.route),
        (b",\"track\":", record.track.as_str()),
        (b",\"method\":", &record.method),
        (b",\"host\":", &record.host),
        (b",\"path\":", &record.path),
        (b",\"protocol\":", record.protocol),
    ];
    for (key, value) in leading {
        out.extend_from_slice(key);
        string(out, value);
    }
    out.extend_from_slice(b",\"status\":");
    integer(out, u64::from(record.status));
    out.extend_from_slice(b",\"durationMs\":");
    millis(out, record.duration_ms);
    if let Some(upstream_ms) = record.upstream_ms {
        out.extend_from_slice(b",\"upstreamMs\":");
        millis(out, upstream_ms);
    }
    if let Some(upstream) = &record.upstream {
        out.extend_from_slice(b",\"upstream\":");
        string(out, upstream);
    }
    out.extend_from_slice(b",\"bytesReceived\":");
    integer(out, record.bytes_received);
    out.extend_from_slice(b",\"bytesSent\":");
    integer(out, record.bytes_sent);
    out.extend_from_slice(b",\"clientIp\":");
    string(out, &record.client_ip);
    let optional: [(&[u8], Option<&str>); 5] = [
        (b",\"principal\":", record.principal.as_deref()),
        (b",\"apiKeyId\":", record.api_key_id.as_deref()),
        (b",\"error\":", record.error),
        (b",\"connectionId\":", record.connection_id.as_deref()),
        (b",\"disconnectReason\":", record.disconnect_reason),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            out.extend_from_slice(key);
            string(out, value);
        }
    }
    out.push(b'}');
}

fn integer(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Milliseconds, rounded to the microsecond.
fn to_micros(millis: f64) -> f64 {
    (millis * 1000.0).round() / 1000.0
}

/// Durations beyond this many microseconds (~285 years), or negative, are written by serde_json.
const MAX_EXACT_MICROS: f64 = 9.0e15;

/// Milliseconds to the microsecond, as serde_json writes the rounded `f64` (its shortest form:
/// `12.345`, `12.5`, `12.0`); JSON has no NaN or infinity, so those are `null`, as serde_json
/// writes them too.
fn millis(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let micros = (value * 1000.0).round();
    if !(0.0..MAX_EXACT_MICROS).contains(&micros) {
        // A finite number always serializes.
        let _ = serde_json::to_writer(&mut *out, &to_micros(value));
        return;
    }
    // Exact: a non-negative integer below 2^53.
    let micros = micros as u64;
    integer(out, micros / 1000);
    out.push(b'.');
    let fraction = micros % 1000;
    if fraction == 0 {
        out.push(b'0');
        return;
    }
    let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
    let used = if digits[2] != 0 {
        3
    } else if digits[1] != 0 {
        2
    } else {
        1
    };
    for digit in &digits[..used] {
        out.push(b'0' + *digit as u8);
    }
}

/// The `Serialize` form of a duration field (see the module documentation).
pub(super) fn serialize_millis<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(to_micros(*value))
}

/// The `Serialize` form of an optional duration field.
pub(super) fn serialize_some_millis<S: Serializer>(
    value: &Option<f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serialize_millis(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// A JSON string: `"` and `\` escaped, control characters as `\n`-style or `\u00XX` escapes,
/// everything else (UTF-8 included) as it is — the escapes serde_json uses.
fn string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if byte >= 0x20 && byte != b'"' && byte != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..index]);
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0xf)]);
            }
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn written(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        write(record, &mut out);
        out
    }

    /// Byte for byte what serde_json writes for the same record.
    fn assert_like_serde_json(record: &Record) {
        let ours = written(record);
        let theirs = serde_json::to_vec(record).expect("serializes");
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
    }

    #[test]
    fn a_plain_record_is_written_as_serde_json_writes_it() {
        assert_like_serde_json(&Record::default());
        assert_like_serde_json(&Record {
            time: "2026-11-22T20:00:00.123456789Z".into(),
            request_id: "9b2c4c1e-8f1a-4d7e-9a53-1f0e6c2d7b10".into(),
            api: Arc::from("shop/shop"),
            stage: Arc::from("prod"),
            route: Arc::from("shop/get-order"),
            track: tollgate_ir::canary::Track::Canary,
            method: "GET".into(),
            host: "api.example.com".into(),
            path: "/orders/42".into(),
            protocol: "HTTP/1.1",
            status: 200,
            duration_ms: 1.234567,
            upstream_ms: Some(0.5),
            upstream: Some("10.0.0.7:8080".into()),
            bytes_received: 0,
            bytes_sent: u64::MAX,
            client_ip: "2001:db8::1".into(),
            principal: Some("alice".into()),
            api_key_id: Some("key-1".into()),
            error: Some("upstream_timeout"),
            connection_id: Some("c-1".into()),
            disconnect_reason: Some("client"),
        });
    }

    #[test]
    fn hostile_strings_are_escaped_as_serde_json_escapes_them() {
        let nasty = [
            "\"quoted\" and \\backslashed\\",
            "line\nbreak\rreturn\ttab",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}",
            "ünïcödé \u{2028}\u{2029} 🦀",
            "}\",\"status\":999,\"x\":\"",
            "",
        ];
        for value in nasty {
            let record = Record {
                host: value.into(),
                path: value.into(),
                principal: Some(value.into()),
                upstream: Some(value.into()),
                ..Record::default()
            };
            assert_like_serde_json(&record);
            let parsed: serde_json::Value = serde_json::from_slice(&written(&record)).expect("valid JSON");
            assert_eq!(parsed["host"], value);
            assert_eq!(parsed["status"], 0, "no field injected");
        }
    }

    #[test]
    fn numbers_match_serde_json_and_non_finite_ones_are_null() {
        let samples = [
            0.0,
            0.1,
            1.0,
            12.5,
            0.0004,
            0.0005,
            1e-7,
            0.123_456_789,
            1.000_5,
            2.999_9,
            999.999_6,
            123_456_789.123,
            f64::MIN_POSITIVE,
            -1.5,
            1e13,
            1e20,
        ];
        for duration_ms in samples {
            assert_like_serde_json(&Record {
                duration_ms,
                upstream_ms: Some(duration_ms),
                ..Record::default()
            });
        }
        // Sub-millisecond to minutes, in steps that hit every kind of fraction.
        let mut duration_ms = 0.000_37;
        while duration_ms < 100_000.0 {
            assert_like_serde_json(&Record { duration_ms, ..Record::default() });
            duration_ms = duration_ms * 1.37 + 0.000_13;
        }
        let written = written(&Record { duration_ms: 12.345_678_9, ..Record::default() });
        assert!(String::from_utf8_lossy(&written).contains("\"durationMs\":12.346,"), "to the microsecond");
        let record = Record { duration_ms: f64::NAN, upstream_ms: Some(f64::INFINITY), ..Record::default() };
        assert_like_serde_json(&record);
    }
}
