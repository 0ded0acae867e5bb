//! CORS per the Fetch standard: preflights answered at the gateway (the route is found by the
//! method the browser asks about), and CORS headers added to real responses. With credentials,
//! `*` is never sent: the origin, method and headers are echoed instead.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tollgate_ir::traffic as ir;

use crate::body::{ProxyBody, empty};

/// A compiled CORS policy.
pub struct CorsPolicy {
    any_origin: bool,
    exact: Vec<String>,
    /// `(scheme://, .suffix)` of `scheme://*.suffix` patterns.
    wildcards: Vec<(String, String)>,
    methods: Option<HeaderValue>,
    any_method: bool,
    headers: Option<HeaderValue>,
    any_header: bool,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

impl CorsPolicy {
    /// Compiles `cors`; `route_methods` are the default allowed methods (empty: any).
    pub fn build(cors: &ir::Cors, route_methods: &[String]) -> CorsPolicy {
        let mut exact = Vec::new();
        let mut wildcards = Vec::new();
        let mut any_origin = false;
        for origin in &cors.allow_origins {
            if origin == "*" {
                any_origin = true;
            } else if let Some((scheme, host)) = origin.split_once("://")
                && let Some(suffix) = host.strip_prefix('*')
            {
                wildcards.push((format!("{scheme}://"), suffix.to_string()));
            } else {
                exact.push(origin.clone());
            }
        }
        let any_method = cors.allow_methods.iter().any(|m| m == "*");
        let methods = if cors.allow_methods.is_empty() {
            let mut m: Vec<&str> = route_methods.iter().map(String::as_str).collect();
            if m.is_empty() {
                m = vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
            }
            HeaderValue::from_str(&m.join(", ")).ok()
        } else if any_method {
            None
        } else {
            HeaderValue::from_str(&cors.allow_methods.join(", ")).ok()
        };
        let any_header = cors.allow_headers.iter().any(|h| h == "*");
        let headers = (!cors.allow_headers.is_empty() && !any_header)
            .then(|| HeaderValue::from_str(&cors.allow_headers.join(", ")).ok())
            .flatten();
        let expose = (!cors.expose_headers.is_empty())
            .then(|| HeaderValue::from_str(&cors.expose_headers.join(", ")).ok())
            .flatten();
        CorsPolicy {
            any_origin,
            exact,
            wildcards,
            methods,
            any_method,
            headers,
            any_header,
            expose,
            max_age: cors.max_age_secs.map(HeaderValue::from),
            credentials: cors.allow_credentials,
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.any_origin
            || self.exact.contains(&origin)
            || self.wildcards.iter().any(|(scheme, suffix)| {
                origin
                    .strip_prefix(scheme.as_str())
                    .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            })
    }

    /// `Access-Control-Allow-Origin` for `origin`, and whether it varies by origin.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<(HeaderValue, bool)> {
        let text = origin.to_str().ok()?;
        if !self.origin_allowed(text) {
            return None;
        }
        if self.any_origin && !self.credentials {
            Some((HeaderValue::from_static("*"), false))
        } else {
            Some((origin.clone(), true))
        }
    }

    /// Answers a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
    pub fn preflight(&self, request: &HeaderMap) -> Response<ProxyBody> {
        let mut response = Response::new(empty());
        let allowed = request.get(header::ORIGIN).and_then(|o| self.allow_origin(o));
        *response.status_mut() =
            if allowed.is_some() { StatusCode::NO_CONTENT } else { StatusCode::FORBIDDEN };
        let headers = response.headers_mut();
        headers.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        let Some((origin, _)) = allowed else {
            return response;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let requested_method = request.get(header::ACCESS_CONTROL_REQUEST_METHOD).cloned();
        match (&self.methods, self.any_method) {
            (Some(methods), _) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods.clone());
            }
            (None, true) if self.credentials => {
                if let Some(m) = requested_method {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
                }
            }
            (None, _) => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("*"));
            }
        }
        let requested_headers = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
        if let Some(allow) = &self.headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow.clone());
        } else if self.any_header {
            if self.credentials {
                if let Some(h) = requested_headers {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h);
                }
            } else {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
            }
        }
        if let Some(age) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        response
    }

    /// Adds CORS headers to a real response for a request from `origin`.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let Some((allow, varies)) = origin.and_then(|o| self.allow_origin(o)) else {
            if !self.any_origin || self.credentials {
                append_vary(headers);
            }
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if varies {
            append_vary(headers);
        }
        if self.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &self.expose {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

fn append_vary(headers: &mut HeaderMap) {
    let has_origin = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().unwrap_or("").split(',').any(|p| p.trim().eq_ignore_ascii_case("origin")));
    if !has_origin {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The method a CORS preflight asks about: `OPTIONS` with `Origin` and a valid
/// `Access-Control-Request-Method`.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(requested.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::build(
            &ir::Cors {
                allow_origins: origins.iter().map(|s| s.to_string()).collect(),
                allow_methods: vec![],
                allow_headers: vec!["authorization".into()],
                expose_headers: vec!["x-request-id".into()],
                max_age_secs: Some(600),
                allow_credentials: credentials,
            },
            &["GET".into(), "POST".into()],
        )
    }

    fn request(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap_or(HeaderValue::from_static("x")));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        h
    }

    #[test]
    fn preflight_lists_route_methods_and_echoes_allowed_origins() {
        let p = cors(&["https://shop.example", "https://*.shop.example"], true);
        let r = p.preflight(&request("https://a.shop.example"));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.shop.example");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(p.preflight(&request("https://shop.example.evil")).status(), StatusCode::FORBIDDEN);
        assert_eq!(p.preflight(&request("http://a.shop.example")).status(), StatusCode::FORBIDDEN);
        assert_eq!(p.preflight(&request("https://.shop.example")).status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn wildcard_without_credentials_sends_star() {
        let p = cors(&["*"], false);
        let mut headers = HeaderMap::new();
        p.decorate(Some(&HeaderValue::from_static("https://any.example")), &mut headers);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(!headers.contains_key(header::VARY));
    }

    #[test]
    fn preflight_detection_needs_origin_and_method() {
        let h = request("https://a.example");
        assert_eq!(preflight_method(&Method::OPTIONS, &h), Some(Method::POST));
        assert_eq!(preflight_method(&Method::GET, &h), None);
        assert_eq!(preflight_method(&Method::OPTIONS, &HeaderMap::new()), None);
    }
}
