//! Rendering transform templates ([`tollgate_ir::traffic::template`]) against one request.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use tollgate_ir::traffic::template::{Part, Template, Variable};

use crate::context::RequestContext;
use crate::router::Params;

/// Everything a template may read about a request.
pub struct RenderContext<'a> {
    /// Path parameters.
    pub params: &'a Params<'a>,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// Request headers (as the client sent them).
    pub headers: &'a HeaderMap,
    /// The stage's variables.
    pub stage_variables: &'a BTreeMap<String, String>,
    /// The request id.
    pub request_id: &'a str,
    /// The stage name.
    pub stage: &'a str,
    /// The method.
    pub method: &'a str,
    /// The normalized request path.
    pub path: &'a str,
    /// The client's address.
    pub source_ip: IpAddr,
    /// Identity established by earlier phases.
    pub context: &'a RequestContext,
    /// The request body, for body templates.
    pub body: Option<&'a Bytes>,
}

/// How values are inserted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As text (headers, query values).
    None,
    /// JSON-string-escaped without quotes (body templates), so a value can never break out of
    /// the string it is placed in; body variables are inserted as JSON.
    Json,
}

/// Renders `template`.
pub fn render(template: &Template, cx: &RenderContext<'_>, escape: Escape) -> String {
    let mut out = String::with_capacity(64);
    let mut parsed_body: Option<Option<Value>> = None;
    for part in &template.parts {
        match part {
            Part::Literal(text) => out.push_str(text),
            Part::Var(Variable::Body) => {
                out.push_str(&String::from_utf8_lossy(cx.body.map(|b| b.as_ref()).unwrap_or_default()));
            }
            Part::Var(Variable::BodyField(fields)) => {
                let body = parsed_body
                    .get_or_insert_with(|| cx.body.and_then(|b| serde_json::from_slice::<Value>(b).ok()));
                let value =
                    fields.iter().try_fold(body.as_ref(), |v, f| v.map(|v| v.get(f.as_str()))).flatten();
                out.push_str(&value.map(Value::to_string).unwrap_or_else(|| "null".to_string()));
            }
            Part::Var(var) => {
                let value = text_value(var, cx);
                match escape {
                    Escape::None => out.push_str(&value),
                    Escape::Json => {
                        let quoted = Value::String(value).to_string();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    }
                }
            }
        }
    }
    out
}

fn json_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn text_value(var: &Variable, cx: &RenderContext<'_>) -> String {
    match var {
        Variable::PathParam(name) => cx.params.get(name).unwrap_or_default().to_string(),
        Variable::Query(name) => super::query_value(cx.query, name).unwrap_or_default(),
        Variable::Header(name) => {
            cx.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
        }
        Variable::StageVariable(name) => cx.stage_variables.get(name).cloned().unwrap_or_default(),
        Variable::RequestId => cx.request_id.to_string(),
        Variable::Stage => cx.stage.to_string(),
        Variable::HttpMethod => cx.method.to_string(),
        Variable::Path => cx.path.to_string(),
        Variable::SourceIp => cx.source_ip.to_string(),
        Variable::ApiKeyId => cx.context.api_key_id.clone().unwrap_or_default(),
        Variable::PrincipalId => cx.context.principal.clone().unwrap_or_default(),
        Variable::Claim(name) => json_text(cx.context.claims.get(name)),
        Variable::AuthorizerContext(name) => json_text(cx.context.authorizer_context.get(name)),
        Variable::Body | Variable::BodyField(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_values_and_escapes_json() {
        let mut headers = HeaderMap::new();
        headers.insert("x-name", http::HeaderValue::from_static("a\"b"));
        let mut context = RequestContext::default();
        std::sync::Arc::make_mut(&mut context.claims).insert("sub".into(), Value::String("user-1".into()));
        context.api_key_id = Some("ns/key".into());
        let body = Bytes::from_static(br#"{"order":{"id":7}}"#);
        let vars = BTreeMap::from([("v".to_string(), "1".to_string())]);
        let params = Params::default();
        let cx = RenderContext {
            params: &params,
            query: Some("page=2&q=a%20b"),
            headers: &headers,
            stage_variables: &vars,
            request_id: "rid",
            stage: "prod",
            method: "POST",
            path: "/x",
            source_ip: IpAddr::from([127, 0, 0, 1]),
            context: &context,
            body: Some(&body),
        };
        let t = |s: &str| Template::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            render(
                &t(
                    "${context.authorizer.claims.sub}/${request.query.q}/${stageVariables.v}/${context.identity.apiKeyId}"
                ),
                &cx,
                Escape::None
            ),
            "user-1/a b/1/ns/key"
        );
        assert_eq!(
            render(
                &t(
                    r#"{"n":"${request.header.x-name}","id":${request.body.order.id},"m":${request.body.none}}"#
                ),
                &cx,
                Escape::Json
            ),
            r#"{"n":"a\"b","id":7,"m":null}"#
        );
    }
}
