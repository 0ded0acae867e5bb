//! Path templates: `/orders/{id}`, `/files/{path+}`, parsed and validated once at build time.

use std::fmt;
use std::str::FromStr;

use crate::path::{PathError, canonical_segment};

/// The most segments a template may have. It bounds the depth of the matching trie (and the
/// recursion of a lookup); real APIs stay far below it.
pub const MAX_SEGMENTS: usize = 128;

/// One `/`-separated piece of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this (canonical) text. The empty literal is the root `/` or a trailing
    /// slash, and only ever comes last.
    Literal(Box<str>),
    /// `{name}`: exactly one non-empty segment.
    Param(Box<str>),
    /// `{name+}`: the non-empty rest of the path, slashes included; always last.
    Greedy(Box<str>),
}

/// A parsed route path template such as `/orders/{id}` or `/files/{path+}`.
///
/// Literal segments are canonicalized with the rules of
/// [`normalize_path`](crate::path::normalize_path) (unreserved escapes decoded, other
/// escapes upper-cased, disallowed characters encoded), so a template is written the way a
/// normalized request path is spelled: `/%61dmin` and `/admin` are the same template. Dot
/// segments (`.`, `..`, also as `%2e`) are rejected rather than resolved: a template that
/// climbs is a mistake. A trailing slash is significant (`/a/` ≠ `/a`), as for paths.
///
/// `Display` prints the canonical form, which parses back to an equal template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathTemplate {
    segments: Box<[Segment]>,
}

/// Why a template was rejected. `at` is a byte offset into the template string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is empty or does not start with `/`.
    #[error("path template must start with '/'")]
    MissingLeadingSlash,
    /// `?` or `#`: a template is a path, without query or fragment.
    #[error("{ch:?} at byte {at}: a path template has no query or fragment")]
    QueryOrFragment {
        /// Offset of the character.
        at: usize,
        /// `?` or `#`.
        ch: char,
    },
    /// `//`: an empty segment (only a trailing slash may end the template).
    #[error("empty segment at byte {at}")]
    EmptySegment {
        /// Offset where the empty segment starts.
        at: usize,
    },
    /// `{}` or `{+}`.
    #[error("empty parameter name at byte {at}")]
    EmptyParamName {
        /// Offset of the `{`.
        at: usize,
    },
    /// A parameter name with a character outside `[A-Za-z0-9_]`.
    #[error("invalid character {ch:?} in parameter name at byte {at} (allowed: A-Z a-z 0-9 _)")]
    InvalidParamName {
        /// Offset of the character.
        at: usize,
        /// The offending character.
        ch: char,
    },
    /// The same parameter name twice.
    #[error("duplicate parameter name {name:?} at byte {at}")]
    DuplicateParam {
        /// Offset of the second `{`.
        at: usize,
        /// The repeated name.
        name: String,
    },
    /// `{name+}` followed by more segments (or a trailing slash).
    #[error("greedy parameter at byte {at} must be the last segment")]
    GreedyNotLast {
        /// Offset of the greedy parameter's `{`.
        at: usize,
    },
    /// A parameter and literal text (or two parameters) in one segment, like `/a{id}`.
    #[error("parameter mixed with other text in the segment at byte {at}")]
    MixedSegment {
        /// Offset where the segment starts.
        at: usize,
    },
    /// A `{` without its `}`, a `}` without its `{`, or nested braces.
    #[error("unbalanced brace at byte {at}")]
    UnbalancedBrace {
        /// Offset of the brace.
        at: usize,
    },
    /// A `.` or `..` segment (also spelled `%2e`).
    #[error("dot segment at byte {at}: templates must not contain '.' or '..' segments")]
    DotSegment {
        /// Offset where the segment starts.
        at: usize,
    },
    /// A literal segment that is not a valid path segment (bad escape, control character).
    #[error("invalid literal segment at byte {at}")]
    InvalidLiteral {
        /// Offset where the segment starts.
        at: usize,
        /// What is wrong with it (offsets relative to the segment).
        #[source]
        source: PathError,
    },
    /// More than [`MAX_SEGMENTS`] segments.
    #[error("path template has more than {max} segments")]
    TooManySegments {
        /// The limit.
        max: usize,
    },
}

impl PathTemplate {
    /// Parses and validates a template (see [`TemplateError`] for what is rejected).
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let body = template.strip_prefix('/').ok_or(TemplateError::MissingLeadingSlash)?;
        if let Some((at, ch)) = template.char_indices().find(|&(_, c)| c == '?' || c == '#') {
            return Err(TemplateError::QueryOrFragment { at, ch });
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let mut greedy_at = None;
        let mut at = 1;
        let mut parts = body.split('/').peekable();
        while let Some(text) = parts.next() {
            let is_last = parts.peek().is_none();
            if segments.len() == MAX_SEGMENTS {
                return Err(TemplateError::TooManySegments { max: MAX_SEGMENTS });
            }
            if let Some(greedy) = greedy_at {
                return Err(TemplateError::GreedyNotLast { at: greedy });
            }
            if text.is_empty() && !is_last {
                return Err(TemplateError::EmptySegment { at });
            }
            let segment = match parse_param(text, at)? {
                Some((name, greedy)) => {
                    if names.contains(&name) {
                        return Err(TemplateError::DuplicateParam { at, name: name.to_owned() });
                    }
                    names.push(name);
                    if greedy {
                        greedy_at = Some(at);
                        Segment::Greedy(name.into())
                    } else {
                        Segment::Param(name.into())
                    }
                }
                None => {
                    let literal = canonical_segment(text)
                        .map_err(|source| TemplateError::InvalidLiteral { at, source })?;
                    if literal == "." || literal == ".." {
                        return Err(TemplateError::DotSegment { at });
                    }
                    Segment::Literal(literal.into())
                }
            };
            segments.push(segment);
            at += text.len() + 1;
        }
        Ok(Self { segments: segments.into() })
    }

    /// The parameter names, in template order (the greedy one last).
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Param(name) | Segment::Greedy(name) => Some(&**name),
            Segment::Literal(_) => None,
        })
    }

    /// Whether the template ends in a greedy `{name+}` parameter.
    pub fn is_greedy(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Greedy(_)))
    }

    /// Whether both templates match exactly the same paths, i.e. they are equal up to
    /// parameter names (`/a/{x}` and `/a/{y}`). A route table holds one shape once per
    /// method and header set.
    pub fn same_shape(&self, other: &Self) -> bool {
        self.segments.len() == other.segments.len()
            && self.segments.iter().zip(other.segments.iter()).all(|pair| match pair {
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Param(_), Segment::Param(_)) | (Segment::Greedy(_), Segment::Greedy(_)) => true,
                _ => false,
            })
    }

    /// A string that is equal for two templates exactly when [`same_shape`](Self::same_shape)
    /// holds: literals as written, `{}` for a parameter, `{+}` for a greedy one. Literal segments
    /// never contain `{` (it would be percent-encoded), so the markers cannot collide with text.
    pub fn shape_key(&self) -> String {
        let mut key = String::new();
        for segment in self.segments.iter() {
            key.push('/');
            match segment {
                Segment::Literal(text) => key.push_str(text),
                Segment::Param(_) => key.push_str("{}"),
                Segment::Greedy(_) => key.push_str("{+}"),
            }
        }
        key
    }

    /// The template's segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

/// Recognises `{name}` / `{name+}`; `Ok(None)` for a literal segment (no braces at all).
fn parse_param(text: &str, at: usize) -> Result<Option<(&str, bool)>, TemplateError> {
    // Balance first, so that `/{a` is reported as a brace problem, not as mixed text.
    let mut open = None;
    let mut groups = 0;
    for (i, ch) in text.char_indices() {
        match (ch, open) {
            ('{', None) => open = Some(i),
            ('}', Some(_)) => {
                open = None;
                groups += 1;
            }
            ('{', Some(_)) | ('}', None) => return Err(TemplateError::UnbalancedBrace { at: at + i }),
            _ => {}
        }
    }
    if let Some(i) = open {
        return Err(TemplateError::UnbalancedBrace { at: at + i });
    }
    if groups == 0 {
        return Ok(None);
    }
    let inner = match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        Some(inner) if groups == 1 => inner,
        _ => return Err(TemplateError::MixedSegment { at }),
    };
    let (name, greedy) = match inner.strip_suffix('+') {
        Some(name) => (name, true),
        None => (inner, false),
    };
    if name.is_empty() {
        return Err(TemplateError::EmptyParamName { at });
    }
    if let Some((i, ch)) = name.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_')) {
        return Err(TemplateError::InvalidParamName { at: at + 1 + i, ch });
    }
    Ok(Some((name, greedy)))
}

impl FromStr for PathTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in self.segments.iter() {
            match segment {
                Segment::Literal(text) => write!(f, "/{text}")?,
                Segment::Param(name) => write!(f, "/{{{name}}}")?,
                Segment::Greedy(name) => write!(f, "/{{{name}+}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_display_round_trips() {
        for (input, canonical) in [
            ("/", "/"),
            ("/a/", "/a/"),
            ("/orders/{id}", "/orders/{id}"),
            ("/files/{path+}", "/files/{path+}"),
            ("/%61dmin/%2fx", "/admin/%2Fx"),
            ("/caf\u{e9}", "/caf%C3%A9"),
        ] {
            let template = PathTemplate::parse(input);
            assert_eq!(template.as_ref().map(ToString::to_string), Ok(canonical.to_owned()), "{input}");
            assert_eq!(PathTemplate::parse(canonical), template);
        }
    }

    #[test]
    fn segments_of_root_and_trailing_slash() {
        let root = PathTemplate::parse("/");
        assert_eq!(root.map(|t| t.segments.to_vec()), Ok(vec![Segment::Literal("".into())]));
        let trailing = PathTemplate::parse("/a/");
        assert_eq!(
            trailing.map(|t| t.segments.to_vec()),
            Ok(vec![Segment::Literal("a".into()), Segment::Literal("".into())])
        );
    }
}
