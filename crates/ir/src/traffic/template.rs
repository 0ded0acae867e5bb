//! Transform templates: literal text with `${...}` variables, parsed once (compile checks them;
//! the proxy parses them again when it builds its tables).
//!
//! Variables: `${request.path.NAME}`, `${request.query.NAME}`, `${request.header.NAME}`,
//! `${request.body}` and `${request.body.A.B}` (body templates only), `${stageVariables.NAME}`,
//! `${context.requestId}`, `${context.stage}`, `${context.httpMethod}`, `${context.path}`,
//! `${context.identity.sourceIp}`, `${context.identity.apiKeyId}`,
//! `${context.authorizer.principalId}`, `${context.authorizer.claims.NAME}` and
//! `${context.authorizer.NAME}` (an external authorizer's context). A `$` not followed by `{` is
//! literal text.

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Literal text and variables, in order.
    pub parts: Vec<Part>,
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is.
    Literal(String),
    /// A value looked up per request.
    Var(Variable),
}

/// A template variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variable {
    /// A path parameter of the route.
    PathParam(String),
    /// A query parameter (first value; empty when absent).
    Query(String),
    /// A request header (empty when absent).
    Header(String),
    /// The whole request body (body templates only).
    Body,
    /// A member of the JSON request body, by dotted path (body templates only).
    BodyField(Vec<String>),
    /// A stage variable.
    StageVariable(String),
    /// The request id.
    RequestId,
    /// The stage name.
    Stage,
    /// The request method.
    HttpMethod,
    /// The request path (normalized, before the stage's base path is stripped).
    Path,
    /// The client's IP address.
    SourceIp,
    /// The id of the API key used (never the key).
    ApiKeyId,
    /// The authenticated principal.
    PrincipalId,
    /// A verified JWT claim.
    Claim(String),
    /// A value of an external authorizer's context.
    AuthorizerContext(String),
}

impl Variable {
    /// Whether the variable reads the request body (allowed in body templates only).
    pub fn reads_body(&self) -> bool {
        matches!(self, Variable::Body | Variable::BodyField(_))
    }
}

/// Why a template does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` without a closing `}`.
    #[error("unclosed ${{ at offset {offset}: close it with }}")]
    Unclosed {
        /// Byte offset of the `$`.
        offset: usize,
    },
    /// A variable this version does not know.
    #[error(
        "unknown variable ${{{name}}}: use request.path.NAME, request.query.NAME, request.header.NAME, \
         stageVariables.NAME, context.requestId, context.stage, context.httpMethod, context.path, \
         context.identity.sourceIp, context.identity.apiKeyId, context.authorizer.principalId, \
         context.authorizer.claims.NAME or context.authorizer.NAME"
    )]
    Unknown {
        /// The text between the braces.
        name: String,
    },
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(at) = rest.find("${") {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let close = after.find('}').ok_or(TemplateError::Unclosed { offset: offset + at })?;
            let name = &after[..close];
            let var =
                parse_variable(name).ok_or_else(|| TemplateError::Unknown { name: name.to_string() })?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var));
            let consumed = at + 2 + close + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The variables used, in order.
    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// Whether the template is literal text only.
    pub fn is_literal(&self) -> bool {
        self.variables().next().is_none()
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn parse_variable(name: &str) -> Option<Variable> {
    let name = name.trim();
    if let Some(rest) = name.strip_prefix("request.") {
        if rest == "body" {
            return Some(Variable::Body);
        }
        if let Some(path) = rest.strip_prefix("body.") {
            let fields: Vec<String> = path.split('.').map(str::to_string).collect();
            return (!fields.iter().any(String::is_empty)).then_some(Variable::BodyField(fields));
        }
        if let Some(p) = rest.strip_prefix("path.") {
            return non_empty(p).map(Variable::PathParam);
        }
        if let Some(q) = rest.strip_prefix("query.") {
            return non_empty(q).map(Variable::Query);
        }
        if let Some(h) = rest.strip_prefix("header.") {
            return non_empty(&h.to_ascii_lowercase()).map(Variable::Header);
        }
        return None;
    }
    if let Some(v) = name.strip_prefix("stageVariables.") {
        return non_empty(v).map(Variable::StageVariable);
    }
    match name {
        "context.requestId" => return Some(Variable::RequestId),
        "context.stage" => return Some(Variable::Stage),
        "context.httpMethod" => return Some(Variable::HttpMethod),
        "context.path" => return Some(Variable::Path),
        "context.identity.sourceIp" => return Some(Variable::SourceIp),
        "context.identity.apiKeyId" => return Some(Variable::ApiKeyId),
        "context.authorizer.principalId" => return Some(Variable::PrincipalId),
        _ => {}
    }
    if let Some(claim) = name.strip_prefix("context.authorizer.claims.") {
        return non_empty(claim).map(Variable::Claim);
    }
    if let Some(key) = name.strip_prefix("context.authorizer.") {
        return non_empty(key).filter(|k| !k.contains('.')).map(Variable::AuthorizerContext);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_variables() {
        let t = Template::parse("user=${context.authorizer.claims.sub}; id=${request.path.id}$x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("user=".into()),
                Part::Var(Variable::Claim("sub".into())),
                Part::Literal("; id=".into()),
                Part::Var(Variable::PathParam("id".into())),
                Part::Literal("$x".into()),
            ]
        );
    }

    #[test]
    fn rejects_unknown_and_unclosed() {
        assert_eq!(
            Template::parse("a ${request.cookie.x}"),
            Err(TemplateError::Unknown { name: "request.cookie.x".into() })
        );
        assert_eq!(Template::parse("ab${context.requestId"), Err(TemplateError::Unclosed { offset: 2 }));
        assert!(Template::parse("${request.body..x}").is_err());
        assert!(Template::parse("${stageVariables.}").is_err());
    }

    #[test]
    fn header_names_are_lower_cased_and_body_fields_split() {
        let t =
            Template::parse("${request.header.X-User}${request.body.a.b}").unwrap_or_else(|e| panic!("{e}"));
        let vars: Vec<&Variable> = t.variables().collect();
        assert_eq!(vars[0], &Variable::Header("x-user".into()));
        assert_eq!(vars[1], &Variable::BodyField(vec!["a".into(), "b".into()]));
        assert!(vars[1].reads_body());
    }
}
