//! Upstream path templates: literal text with `{name}` (or `${request.path.name}`) placeholders
//! filled from the matched route's path parameters.

use crate::router::Params;

/// A parsed upstream path template. Compile has already checked that every placeholder names a
/// parameter of the route's path; a missing one renders as an empty string.
#[derive(Clone, Debug, PartialEq)]
pub struct RewriteTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Param(String),
}

impl RewriteTemplate {
    /// Parses a template. Unbalanced braces are kept as literal text.
    pub fn parse(template: &str) -> RewriteTemplate {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (before, after) = rest.split_at(open);
            let Some(close) = after.find('}') else { break };
            let inner = &after[1..close];
            let mut literal = before;
            let name = if let Some(stripped) = inner.strip_prefix("request.path.") {
                // `${request.path.id}`: drop the `$` that precedes the brace.
                literal = literal.strip_suffix('$').unwrap_or(literal);
                stripped
            } else {
                inner
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_string()));
            }
            parts.push(Part::Param(name.trim_end_matches('+').to_string()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        RewriteTemplate { parts }
    }

    /// Renders the template with the route's parameters.
    pub fn render(&self, params: &Params<'_>) -> String {
        let mut out = String::with_capacity(64);
        self.render_into(params, &mut out);
        out
    }

    /// Renders the template onto the end of `out`.
    pub fn render_into(&self, params: &Params<'_>, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Param(name) => out.push_str(params.get(name).unwrap_or_default()),
            }
        }
    }
}
