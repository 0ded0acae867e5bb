//! Request-path normalization: attack shapes, errors, and properties (idempotence, no dot
//! segments or empty segments left, one spelling per path).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use proptest::prelude::*;
use tollgate_proxy::normalize::{PathError, normalize_path};

#[test]
fn attack_shapes_converge() {
    let cases = [
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/%2e./admin", "/admin"),
        ("/public/.%2E/admin", "/admin"),
        ("/public/%2e/admin", "/public/admin"),
        ("/public/./../admin", "/admin"),
        ("/public/x/../../admin", "/admin"),
        ("/../../../admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin//x", "/admin/x"),
        ("/a/./b", "/a/b"),
        ("/%61dmin", "/admin"),
        ("/%41DMIN", "/ADMIN"),
        ("/..", "/"),
        ("/.", "/"),
        ("/%2e", "/"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/%2F/b", "/a/%2F/b"),
        ("/a%2fb", "/a%2Fb"),
        ("/a/%2f%2e%2e/b", "/a/%2F../b"),
        ("/a%5c..%5cadmin", "/a%5C..%5Cadmin"),
        ("/%7Euser/%2d%5F", "/~user/-_"),
        ("/a/", "/a/"),
        ("/a//", "/a/"),
        ("/a;b=c/d:e@f", "/a;b=c/d:e@f"),
        ("/%e2%82%ac", "/%E2%82%AC"),
        ("/\u{20ac}", "/%E2%82%AC"),
        ("/a b/<c>", "/a%20b/%3Cc%3E"),
        ("/%25", "/%25"),
        ("/%2525", "/%2525"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw).as_deref(), Ok(want), "normalize({raw:?})");
    }
}

#[test]
fn trailing_slash_is_kept_and_significant() {
    assert_eq!(normalize_path("/a/").as_deref(), Ok("/a/"));
    assert_eq!(normalize_path("/a").as_deref(), Ok("/a"));
    assert_ne!(normalize_path("/a/"), normalize_path("/a"));
}

#[test]
fn canonical_input_is_not_copied() {
    for path in ["/", "/orders/42", "/a/b/", "/a%2Fb", "/%C3%A9", "/...", "/.a", "/a..b"] {
        assert!(matches!(normalize_path(path), Ok(Cow::Borrowed(_))), "{path}");
    }
}

#[test]
fn rejected_paths() {
    let cases = [
        ("", PathError::NotAbsolute),
        ("admin", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("/%", PathError::InvalidEscape { at: 1 }),
        ("/a/%4", PathError::InvalidEscape { at: 3 }),
        ("/%G1", PathError::InvalidEscape { at: 1 }),
        ("/%1G", PathError::InvalidEscape { at: 1 }),
        ("/%%41", PathError::InvalidEscape { at: 1 }),
        ("/a%00b", PathError::EncodedNul { at: 2 }),
        ("/a\0", PathError::ControlCharacter { at: 2, byte: 0 }),
        ("/a\r\nb", PathError::ControlCharacter { at: 2, byte: b'\r' }),
        ("/\t", PathError::ControlCharacter { at: 1, byte: b'\t' }),
        ("/x\u{7f}", PathError::ControlCharacter { at: 2, byte: 0x7F }),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw), Err(want), "normalize({raw:?})");
    }
}

#[test]
fn errors_read_well() {
    assert_eq!(PathError::InvalidEscape { at: 3 }.to_string(), "invalid percent-escape at byte 3");
    assert_eq!(PathError::NotAbsolute.to_string(), "path must start with '/'");
}

/// Paths assembled from pieces that exercise every rule.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", ".", "..", "%2e", "%2E", "%2e%2E", ".%2e", "a", "B", "z9", "~", "-", "_", "%41", "%7e",
        "%2f", "%2F", "%c3%a9", "\u{e9}", " ", "%20", "%25", "!", ":", "@", "+", "\\", "?", "#", "%", "%0",
        "%zz", "%00", "%0a", "\n", "{", "}",
    ]);
    prop::collection::vec(piece, 0..14).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn arbitrary_path() -> impl Strategy<Value = String> {
    prop_oneof![tricky_path(), any::<String>().prop_map(|s| format!("/{s}")), "/[a-z./%2eE]{0,24}"]
}

/// Checks every invariant of a normalized path.
fn assert_canonical(out: &str) {
    assert!(out.starts_with('/'), "{out:?} must start with '/'");
    assert!(out.is_ascii(), "{out:?} must be ASCII");
    for bad in ["//", "/./", "/../"] {
        assert!(!out.contains(bad), "{out:?} contains {bad:?}");
    }
    assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{out:?} ends in a dot segment");
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)), "{out:?}");
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(value != 0, "{out:?} keeps %00");
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~".contains(&value)),
            "{out:?} keeps an unreserved character encoded"
        );
    }
    assert!(!bytes.iter().any(|b| b.is_ascii_control()), "{out:?} has a control byte");
}

/// Percent-encodes the unreserved characters at the chosen positions, in mixed case.
fn encode_some(path: &str, mask: &[bool]) -> String {
    let mut out = String::new();
    for (i, ch) in path.chars().enumerate() {
        let unreserved = ch.is_ascii_alphanumeric() || "-._~".contains(ch);
        if unreserved && mask.get(i).copied().unwrap_or(false) {
            let hex = format!("%{:02x}", ch as u8);
            out.push_str(&if i % 2 == 0 { hex.to_uppercase() } else { hex });
        } else {
            out.push(ch);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn output_is_canonical_and_idempotent(raw in arbitrary_path()) {
        if let Ok(out) = normalize_path(&raw) {
            assert_canonical(&out);
            // Idempotent, and the second pass takes the no-copy path.
            let again = normalize_path(&out);
            prop_assert!(matches!(again, Ok(Cow::Borrowed(p)) if *p == *out), "{raw:?} → {out:?} → {again:?}");
        }
    }

    #[test]
    fn borrowed_means_unchanged(raw in arbitrary_path()) {
        if let Ok(Cow::Borrowed(out)) = normalize_path(&raw) {
            prop_assert_eq!(out, raw.as_str());
        }
    }

    #[test]
    fn encoding_unreserved_characters_changes_nothing(
        raw in "/[a-zA-Z0-9._~/-]{0,24}",
        mask in prop::collection::vec(any::<bool>(), 25),
    ) {
        let encoded = encode_some(&raw, &mask);
        prop_assert_eq!(normalize_path(&encoded), normalize_path(&raw), "{}", encoded);
    }

    #[test]
    fn dot_dot_never_escapes_the_root(ups in 1usize..6, tail in "[a-z]{1,8}") {
        let raw = format!("{}{tail}", "/..".repeat(ups) + "/");
        prop_assert_eq!(normalize_path(&raw).map(Cow::into_owned), Ok(format!("/{tail}")));
    }

    #[test]
    fn segments_and_parent_references_cancel(segments in prop::collection::vec("[a-z]{1,5}", 1..6), keep in 0usize..6) {
        // /s1/s2/.../sn followed by (n - keep) `..` segments, then /end.
        let keep = keep.min(segments.len());
        let raw = format!("/{}{}/end", segments.join("/"), "/..".repeat(segments.len() - keep));
        let kept: String = segments[..keep].iter().map(|s| format!("/{s}")).collect();
        prop_assert_eq!(normalize_path(&raw).map(Cow::into_owned), Ok(format!("{kept}/end")));
    }
}
