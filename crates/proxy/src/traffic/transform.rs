//! Request and response transforms: headers and query parameters set from templates or removed,
//! and a JSON body template for requests. Response header values are rendered while the request
//! is at hand (they may only read the request and its context).

use http::{HeaderName, HeaderValue, Uri};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tollgate_ir::traffic as ir;
use tollgate_ir::traffic::template::Template;

use super::template::{Escape, RenderContext, render};

/// Characters escaped in a query value.
const QUERY_VALUE: &AsciiSet =
    &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'&').add(b'+').add(b'<').add(b'>').add(b'=').add(b'%');

/// A route's compiled transforms.
pub struct TransformRuntime {
    set_headers: Vec<(HeaderName, Template)>,
    remove_headers: Vec<HeaderName>,
    set_query: Vec<(String, Template)>,
    remove_query: Vec<String>,
    body: Option<Template>,
    response_set: Vec<(HeaderName, Template)>,
    response_remove: Vec<HeaderName>,
}

fn parse(text: &str) -> Option<Template> {
    Template::parse(text).inspect_err(|error| tracing::warn!(%error, "skipping an invalid template")).ok()
}

fn headers(map: &std::collections::BTreeMap<String, String>) -> Vec<(HeaderName, Template)> {
    map.iter().filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, parse(v)?))).collect()
}

fn names(list: &[String]) -> Vec<HeaderName> {
    list.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect()
}

impl TransformRuntime {
    /// Parses the templates (compile has checked them).
    pub fn build(t: &ir::Transform) -> TransformRuntime {
        TransformRuntime {
            set_headers: headers(&t.request_set_headers),
            remove_headers: names(&t.request_remove_headers),
            set_query: t.request_set_query.iter().filter_map(|(n, v)| Some((n.clone(), parse(v)?))).collect(),
            remove_query: t.request_remove_query.clone(),
            body: t.request_body.as_deref().and_then(parse),
            response_set: headers(&t.response_set_headers),
            response_remove: names(&t.response_remove_headers),
        }
    }

    /// Whether the body template needs the request body.
    pub fn needs_body(&self) -> bool {
        self.body.is_some()
    }

    /// Applies header and query changes to `parts`; returns the new body when the route has a
    /// body template.
    pub fn apply_request(&self, parts: &mut http::request::Parts, cx: &RenderContext<'_>) -> Option<String> {
        // Render everything from the request as the client sent it, then change it.
        let rendered: Vec<(HeaderName, String)> =
            self.set_headers.iter().map(|(n, t)| (n.clone(), render(t, cx, Escape::None))).collect();
        let query: Vec<(&str, String)> =
            self.set_query.iter().map(|(n, t)| (n.as_str(), render(t, cx, Escape::None))).collect();
        let body = self.body.as_ref().map(|t| render(t, cx, Escape::Json));
        for name in &self.remove_headers {
            parts.headers.remove(name);
        }
        for (name, value) in rendered {
            match HeaderValue::from_str(&value) {
                Ok(value) => {
                    parts.headers.insert(name, value);
                }
                Err(_) => {
                    parts.headers.remove(&name);
                }
            }
        }
        if !self.set_query.is_empty() || !self.remove_query.is_empty() {
            let new_query = rewrite_query(parts.uri.query(), &self.remove_query, &query);
            let mut uri_parts = parts.uri.clone().into_parts();
            let path = parts.uri.path();
            let pq = if new_query.is_empty() { path.to_string() } else { format!("{path}?{new_query}") };
            if let Ok(pq) = pq.parse() {
                uri_parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(uri_parts) {
                    parts.uri = uri;
                }
            }
        }
        body
    }

    /// Response header changes, rendered now.
    pub fn response_changes(&self, cx: &RenderContext<'_>) -> ResponseChanges {
        ResponseChanges {
            remove: self.response_remove.clone(),
            set: self
                .response_set
                .iter()
                .filter_map(|(n, t)| {
                    Some((n.clone(), HeaderValue::from_str(&render(t, cx, Escape::None)).ok()?))
                })
                .collect(),
        }
    }
}

/// Header changes to make to the response.
#[derive(Default)]
pub struct ResponseChanges {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl ResponseChanges {
    /// Applies the changes.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The query without `remove`d and re-set names, followed by the `set` pairs (values encoded).
fn rewrite_query(query: Option<&str>, remove: &[String], set: &[(&str, String)]) -> String {
    let mut out: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map(|(n, _)| n).unwrap_or(pair);
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            !remove.iter().any(|r| *r == name) && !set.iter().any(|(s, _)| *s == name)
        })
        .map(str::to_string)
        .collect();
    for (name, value) in set {
        out.push(format!(
            "{}={}",
            utf8_percent_encode(name, QUERY_VALUE),
            utf8_percent_encode(value, QUERY_VALUE)
        ));
    }
    out.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rewrite_keeps_order_and_encodes() {
        let set = vec![("user", "a b&c".to_string())];
        assert_eq!(
            rewrite_query(Some("x=1&debug=true&user=evil"), &["debug".into()], &set),
            "x=1&user=a%20b%26c"
        );
        assert_eq!(rewrite_query(None, &[], &set), "user=a%20b%26c");
        assert_eq!(rewrite_query(Some("debug"), &["debug".into()], &[]), "");
    }
}
