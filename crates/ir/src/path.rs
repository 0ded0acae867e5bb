//! Request-path normalization: one canonical spelling per path, computed before any matching.
//!
//! Routing, authorization and caching all key on the path, so two spellings of the same
//! resource must never reach them as different strings (`/public/../admin` must not dodge a
//! rule written for `/admin`). [`normalize_path`] turns a raw request-target path (no query)
//! into its canonical form:
//!
//! 1. it must start with `/`, else [`PathError::NotAbsolute`];
//! 2. percent-escapes of *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!    (`%61dmin` → `admin`); every other escape is kept, with upper-case hex digits
//!    (`%2f` → `%2F`). An encoded slash is data, never a separator;
//! 3. raw characters that may not appear in a path (space, `"`, `<`, `>`, `\`, `^`, `` ` ``,
//!    `{`, `|`, `}`, `?`, `#`, `[`, `]`, non-ASCII) are percent-encoded, so `/café` and
//!    `/caf%C3%A9` are one path. The output is always ASCII;
//! 4. malformed escapes (`%`, `%4`, `%G1`), an encoded NUL (`%00`) and raw control bytes
//!    (0x00–0x1F, 0x7F) are errors (the pipeline answers 400). Other encoded control
//!    characters (`%0A`) stay encoded: they are data and cannot split anything here;
//! 5. after decoding, `.` and `..` segments are resolved (also when spelled `%2e`), never
//!    climbing above the root (`/..` → `/`), and runs of `/` collapse into one;
//! 6. a trailing slash is kept and is **significant**: `/a/` and `/a` are different paths and
//!    match different templates (as in Amazon API Gateway and most origin servers). A path
//!    ending in a dot segment ends in `/` (`/a/b/..` → `/a/`, as RFC 3986 §5.2.4 does).
//!
//! Reserved characters that were percent-encoded stay encoded and are *not* equivalent to
//! their raw form (`%21` ≠ `!`), as RFC 3986 §6.2.2.2 says.
//!
//! A path that is already canonical is returned borrowed, without allocating: that is the hot
//! path. The function is idempotent.

use std::borrow::Cow;

/// Why a request path was rejected; the pipeline answers 400 Bad Request.
///
/// Byte offsets (`at`) are into the raw path given to [`normalize_path`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty or does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape at byte {at}")]
    InvalidEscape {
        /// Offset of the `%`.
        at: usize,
    },
    /// `%00`: an encoded NUL byte.
    #[error("encoded NUL byte (%00) at byte {at}")]
    EncodedNul {
        /// Offset of the `%`.
        at: usize,
    },
    /// A raw control byte (0x00–0x1F or 0x7F).
    #[error("control character 0x{byte:02X} at byte {at}")]
    ControlCharacter {
        /// Offset of the byte.
        at: usize,
        /// The byte itself.
        byte: u8,
    },
}

/// Returns the canonical form of `raw` (see the module docs), borrowed when `raw` already is.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(bytes) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_slow(raw).map(Cow::Owned)
}

/// Canonicalizes one path segment (no `/` in it): the character rules of [`normalize_path`]
/// without dot-segment resolution. Used for the literal parts of route templates so that
/// templates and request paths are spelled the same way. Offsets in errors are relative to
/// `segment`.
pub fn canonical_segment(segment: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(segment.len());
    push_canonical(&mut out, segment.as_bytes(), 0)?;
    Ok(out)
}

/// The slow path: rebuilds the path segment by segment.
fn normalize_slow(raw: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    // Whether the result ends in `/`: the last segment was empty (`/a/`) or a dot segment.
    let mut trailing = false;
    let mut offset = 1;
    let body = raw.get(1..).unwrap_or("");
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        push_canonical(&mut out, segment.as_bytes(), offset)?;
        offset += segment.len() + 1;
        // Dot segments are recognised after decoding, so `%2e%2E` is `..` too.
        match out.get(start + 1..).unwrap_or("") {
            "" | "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                // Drop the previous segment; at the root there is nothing to drop (clamp).
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
            }
            _ => continue,
        }
        if is_last {
            trailing = true;
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Appends the canonical spelling of one segment's bytes to `out`. `offset` is where
/// `segment` starts in the caller's input, for error positions.
fn push_canonical(out: &mut String, segment: &[u8], offset: usize) -> Result<(), PathError> {
    let mut i = 0;
    while let Some(&byte) = segment.get(i) {
        let at = offset + i;
        if byte == b'%' {
            let value =
                segment.get(i + 1..i + 3).and_then(decode_hex_pair).ok_or(PathError::InvalidEscape { at })?;
            if value == 0 {
                return Err(PathError::EncodedNul { at });
            }
            if is_unreserved(value) {
                out.push(char::from(value));
            } else {
                push_escape(out, value);
            }
            i += 3;
            continue;
        }
        if byte < 0x20 || byte == 0x7F {
            return Err(PathError::ControlCharacter { at, byte });
        }
        if is_raw_pchar(byte) {
            out.push(char::from(byte));
        } else {
            push_escape(out, byte);
        }
        i += 1;
    }
    Ok(())
}

/// True when `bytes` (starting with `/`) is already canonical. Errors are left to the slow
/// path: anything doubtful answers `false`.
fn is_canonical(bytes: &[u8]) -> bool {
    let mut segment_start = 1;
    let mut i = 1;
    while let Some(&byte) = bytes.get(i) {
        if RAW_PCHAR[usize::from(byte)] {
            i += 1;
            continue;
        }
        match byte {
            b'/' => {
                let segment = bytes.get(segment_start..i).unwrap_or_default();
                if segment.is_empty() || is_dot_segment(segment) {
                    return false;
                }
                segment_start = i + 1;
                i += 1;
            }
            b'%' => {
                let canonical_escape = match bytes.get(i + 1..i + 3) {
                    Some(&[hi, lo]) => {
                        is_upper_hex(hi)
                            && is_upper_hex(lo)
                            && decode_hex_pair(&[hi, lo]).is_some_and(|v| v != 0 && !is_unreserved(v))
                    }
                    _ => false,
                };
                if !canonical_escape {
                    return false;
                }
                i += 3;
            }
            _ => return false,
        }
    }
    !is_dot_segment(bytes.get(segment_start..).unwrap_or_default())
}

fn is_dot_segment(segment: &[u8]) -> bool {
    segment == b"." || segment == b".."
}

/// RFC 3986 `unreserved`.
const fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// [`is_raw_pchar`] as a table, for the no-copy check that reads every byte of every path.
const RAW_PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = is_raw_pchar(byte as u8);
        byte += 1;
    }
    table
};

/// RFC 3986 `pchar` minus `pct-encoded`: the bytes allowed raw inside a segment.
const fn is_raw_pchar(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(byte, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
        || matches!(byte, b':' | b'@')
}

fn is_upper_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte)
}

fn decode_hex_pair(pair: &[u8]) -> Option<u8> {
    match pair {
        &[hi, lo] => Some((hex_value(hi)? << 4) | hex_value(lo)?),
        _ => None,
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [byte >> 4, byte & 0x0F] {
        out.push(char::from(HEX[usize::from(nibble)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<Cow<'_, str>, PathError> {
        normalize_path(raw)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for path in ["/", "/a", "/a/", "/a/b.c/~d", "/a%2Fb", "/x:y@z!$&'()*+,;=", "/%C3%A9", "/..a/.b"] {
            assert!(matches!(norm(path), Ok(Cow::Borrowed(p)) if p == path), "{path}");
        }
    }

    #[test]
    fn rewrites() {
        let cases = [
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a//", "/a/"),
            ("///", "/"),
            ("/a/%2F/b", "/a/%2F/b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%7e", "/a~"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a\\..\\b", "/a%5C..%5Cb"),
            ("/%0a", "/%0A"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a%"), Err(PathError::InvalidEscape { at: 2 }));
        assert_eq!(norm("/a%4"), Err(PathError::InvalidEscape { at: 2 }));
        assert_eq!(norm("/b/%G1"), Err(PathError::InvalidEscape { at: 3 }));
        assert_eq!(norm("/%00"), Err(PathError::EncodedNul { at: 1 }));
        assert_eq!(norm("/a\nb"), Err(PathError::ControlCharacter { at: 2, byte: b'\n' }));
        assert_eq!(norm("/\u{7f}"), Err(PathError::ControlCharacter { at: 1, byte: 0x7F }));
    }

    #[test]
    fn segment_canonicalization() {
        assert_eq!(canonical_segment("%61%2fb"), Ok("a%2Fb".to_owned()));
        assert_eq!(canonical_segment("%"), Err(PathError::InvalidEscape { at: 0 }));
    }
}
