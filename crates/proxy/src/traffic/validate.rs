//! Request validation: required query parameters and headers, and the JSON body against the
//! route's JSON Schema (compiled once per configuration).

use http::{HeaderMap, HeaderName};
use tollgate_ir::traffic as ir;

/// A route's compiled validation rules.
pub struct Validator {
    required_query: Vec<String>,
    required_headers: Vec<HeaderName>,
    /// `Some(None)`: a schema that did not compile; every body is refused.
    schema: Option<Option<jsonschema::Validator>>,
}

impl Validator {
    /// Compiles `rules`. A schema that does not compile (compile already rejects those) makes
    /// every body invalid rather than unchecked.
    pub fn build(rules: &ir::Validation) -> Validator {
        let schema = rules.body_schema.as_ref().map(|s| {
            jsonschema::validator_for(s)
                .inspect_err(
                    |error| tracing::warn!(%error, "invalid body schema; every body will be refused"),
                )
                .ok()
        });
        Validator {
            required_query: rules.required_query.clone(),
            required_headers: rules
                .required_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            schema,
        }
    }

    /// Whether the body must be read to validate it.
    pub fn needs_body(&self) -> bool {
        self.schema.is_some()
    }

    /// Checks required parameters; the error names the first missing one.
    pub fn check_parameters(&self, query: Option<&str>, headers: &HeaderMap) -> Result<(), String> {
        for name in &self.required_query {
            if super::query_value(query, name).is_none() {
                return Err(format!("Missing required query parameter: {name}"));
            }
        }
        for name in &self.required_headers {
            if !headers.contains_key(name) {
                return Err(format!("Missing required header: {name}"));
            }
        }
        Ok(())
    }

    /// Checks the body against the schema; the error names the JSON pointer of the first
    /// failure.
    pub fn check_body(&self, body: &[u8]) -> Result<(), String> {
        let Some(schema) = &self.schema else { return Ok(()) };
        let Some(schema) = schema else {
            return Err("Invalid request body: the route's schema is invalid".to_string());
        };
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| "Invalid request body: not valid JSON".to_string())?;
        match schema.iter_errors(&value).next() {
            None => Ok(()),
            Some(error) => {
                let pointer = error.instance_path().to_string();
                let at = if pointer.is_empty() { "/".to_string() } else { pointer };
                Err(format!("Invalid request body at {at}: {error}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> Validator {
        Validator::build(&ir::Validation {
            required_query: vec!["page".into()],
            required_headers: vec!["x-version".into()],
            body_schema: Some(serde_json::json!({
                "type": "object",
                "required": ["qty"],
                "properties": {"qty": {"type": "integer", "minimum": 1}}
            })),
        })
    }

    #[test]
    fn names_the_missing_parameter() {
        let v = validator();
        let mut h = HeaderMap::new();
        assert_eq!(v.check_parameters(Some("x=1"), &h), Err("Missing required query parameter: page".into()));
        assert_eq!(v.check_parameters(Some("page=1"), &h), Err("Missing required header: x-version".into()));
        h.insert("x-version", http::HeaderValue::from_static("2"));
        assert_eq!(v.check_parameters(Some("a=b&page="), &h), Ok(()));
    }

    #[test]
    fn names_the_json_pointer() {
        let v = validator();
        assert_eq!(v.check_body(br#"{"qty": 2}"#), Ok(()));
        assert_eq!(
            v.check_body(br#"{"qty": "x"}"#),
            Err(r#"Invalid request body at /qty: "x" is not of type "integer""#.into())
        );
        assert_eq!(
            v.check_body(b"{}"),
            Err(r#"Invalid request body at /: "qty" is a required property"#.into())
        );
        assert_eq!(v.check_body(b"nope"), Err("Invalid request body: not valid JSON".into()));
    }
}
