//! Path template parsing: accepted forms, canonical display, and every rejection with its
//! position.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tollgate_proxy::normalize::PathError;
use tollgate_proxy::router::{MAX_SEGMENTS, PathTemplate, TemplateError};

fn parse(s: &str) -> Result<PathTemplate, TemplateError> {
    PathTemplate::parse(s)
}

#[test]
fn accepted_templates() {
    let cases: [(&str, &str, &[&str], bool); 9] = [
        ("/", "/", &[], false),
        ("/orders", "/orders", &[], false),
        ("/orders/", "/orders/", &[], false),
        ("/orders/{id}", "/orders/{id}", &["id"], false),
        ("/orders/{id}/", "/orders/{id}/", &["id"], false),
        ("/files/{path+}", "/files/{path+}", &["path"], true),
        ("/{proxy+}", "/{proxy+}", &["proxy"], true),
        ("/a/{A_1}/b/{b2}/{rest+}", "/a/{A_1}/b/{b2}/{rest+}", &["A_1", "b2", "rest"], true),
        ("/%7euser/%2f/caf\u{e9}", "/~user/%2F/caf%C3%A9", &[], false),
    ];
    for (input, display, params, greedy) in cases {
        let template = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(template.to_string(), display, "{input}");
        assert_eq!(template.params().collect::<Vec<_>>(), params, "{input}");
        assert_eq!(template.is_greedy(), greedy, "{input}");
        assert_eq!(display.parse::<PathTemplate>().as_ref(), Ok(&template), "{input}");
    }
}

#[test]
fn rejected_templates() {
    use TemplateError::*;
    let cases = [
        ("", MissingLeadingSlash),
        ("orders/{id}", MissingLeadingSlash),
        ("/a?b=1", QueryOrFragment { at: 2, ch: '?' }),
        ("/a#top", QueryOrFragment { at: 2, ch: '#' }),
        ("//a", EmptySegment { at: 1 }),
        ("/a//b", EmptySegment { at: 3 }),
        ("/a/{id}//", EmptySegment { at: 8 }),
        ("/{}", EmptyParamName { at: 1 }),
        ("/a/{+}", EmptyParamName { at: 3 }),
        ("/{a-b}", InvalidParamName { at: 3, ch: '-' }),
        ("/x/{a.b}", InvalidParamName { at: 5, ch: '.' }),
        ("/{\u{e9}}", InvalidParamName { at: 2, ch: '\u{e9}' }),
        ("/{a++}", InvalidParamName { at: 3, ch: '+' }),
        ("/{id}/x/{id}", DuplicateParam { at: 8, name: "id".into() }),
        ("/{id}/{id+}", DuplicateParam { at: 6, name: "id".into() }),
        ("/{p+}/x", GreedyNotLast { at: 1 }),
        ("/a/{p+}/", GreedyNotLast { at: 3 }),
        ("/a{id}", MixedSegment { at: 1 }),
        ("/{id}.json", MixedSegment { at: 1 }),
        ("/{a}{b}", MixedSegment { at: 1 }),
        ("/{id", UnbalancedBrace { at: 1 }),
        ("/id}", UnbalancedBrace { at: 3 }),
        ("/{{id}}", UnbalancedBrace { at: 2 }),
        ("/a/.", DotSegment { at: 3 }),
        ("/a/../b", DotSegment { at: 3 }),
        ("/%2e%2E/b", DotSegment { at: 1 }),
        ("/a/%zz", InvalidLiteral { at: 3, source: PathError::InvalidEscape { at: 0 } }),
        ("/a%00", InvalidLiteral { at: 1, source: PathError::EncodedNul { at: 1 } }),
        ("/a\tb", InvalidLiteral { at: 1, source: PathError::ControlCharacter { at: 1, byte: b'\t' } }),
    ];
    for (input, want) in cases {
        assert_eq!(parse(input), Err(want), "parse({input:?})");
    }
}

#[test]
fn too_many_segments() {
    let ok = "/a".repeat(MAX_SEGMENTS);
    assert!(parse(&ok).is_ok());
    let long = "/a".repeat(MAX_SEGMENTS + 1);
    assert_eq!(parse(&long), Err(TemplateError::TooManySegments { max: MAX_SEGMENTS }));
}

#[test]
fn error_messages_name_problem_and_position() {
    let message = |s: &str| parse(s).unwrap_err().to_string();
    assert_eq!(message("/a//b"), "empty segment at byte 3");
    assert_eq!(message("/{p+}/x"), "greedy parameter at byte 1 must be the last segment");
    assert_eq!(message("/{id}/{id}"), "duplicate parameter name \"id\" at byte 6");
    assert_eq!(
        message("/{a-b}"),
        "invalid character '-' in parameter name at byte 3 (allowed: A-Z a-z 0-9 _)"
    );
}

#[test]
fn shapes_ignore_parameter_names() {
    let t = |s: &str| parse(s).unwrap();
    assert!(t("/a/{x}").same_shape(&t("/a/{y}")));
    assert!(t("/a/{x}/{r+}").same_shape(&t("/a/{y}/{s+}")));
    assert!(t("/%61").same_shape(&t("/a")));
    assert!(!t("/a/{x}").same_shape(&t("/a/{x+}")));
    assert!(!t("/a/{x}").same_shape(&t("/a/{x}/")));
    assert!(!t("/a/b").same_shape(&t("/a/{x}")));
    assert_ne!(t("/a/{x}"), t("/a/{y}"));
    assert_eq!(t("/a/{x}/{r+}").shape_key(), t("/a/{y}/{s+}").shape_key());
    assert_ne!(t("/a/{x}").shape_key(), t("/a/{x}/").shape_key());
    assert_ne!(t("/%7Bx%7D").shape_key(), t("/{x}").shape_key());
}

proptest! {
    #[test]
    fn display_round_trips(segments in prop::collection::vec(
        prop_oneof!["[a-z0-9~._-]{1,6}", "%[0-9a-fA-F]{2}", "\\{[A-Za-z_][A-Za-z0-9_]{0,5}\\}"], 0..6),
        trailing in any::<bool>(),
    ) {
        let input = format!("/{}{}", segments.join("/"), if trailing && !segments.is_empty() { "/" } else { "" });
        if let Ok(template) = parse(&input) {
            let shown = template.to_string();
            prop_assert_eq!(parse(&shown), Ok(template.clone()));
            prop_assert_eq!(template.to_string(), shown);
        }
    }

    /// The compiler indexes route claims by `shape_key`, so it must agree with `same_shape`.
    #[test]
    fn shape_key_agrees_with_same_shape(
        a in prop::collection::vec(prop_oneof!["[ab]", "%7B[ab]%7D", "\\{[xy]\\}", "\\{[xy]\\+\\}"], 0..4),
        b in prop::collection::vec(prop_oneof!["[ab]", "%7B[ab]%7D", "\\{[xy]\\}", "\\{[xy]\\+\\}"], 0..4),
        trailing in any::<(bool, bool)>(),
    ) {
        let build = |s: &[String], t: bool| format!("/{}{}", s.join("/"), if t && !s.is_empty() { "/" } else { "" });
        if let (Ok(x), Ok(y)) = (parse(&build(&a, trailing.0)), parse(&build(&b, trailing.1))) {
            prop_assert_eq!(x.same_shape(&y), x.shape_key() == y.shape_key(), "{} vs {}", x, y);
        }
    }
}
