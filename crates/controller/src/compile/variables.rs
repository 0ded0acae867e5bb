//! `${stageVariables.NAME}` substitution in backend names and URLs, done per stage at compile time.

use std::collections::BTreeMap;

/// Why a template could not be rendered.
#[derive(Debug, PartialEq)]
pub enum VariableError {
    /// `${stageVariables.NAME}` names a variable the stage does not define.
    Missing(String),
    /// `${...}` other than a stage variable, or unbalanced.
    Unsupported(String),
}

/// Replaces every `${stageVariables.NAME}` in `text` with the stage's value.
pub fn substitute(text: &str, variables: &BTreeMap<String, String>) -> Result<String, VariableError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| VariableError::Unsupported(rest[start..].to_string()))?;
        let expression = &after[..end];
        let name = expression
            .strip_prefix("stageVariables.")
            .ok_or_else(|| VariableError::Unsupported(format!("${{{expression}}}")))?;
        let value = variables.get(name).ok_or_else(|| VariableError::Missing(name.to_string()))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_reports() {
        let vars: BTreeMap<String, String> = [("svc".to_string(), "orders-v2".to_string())].into();
        assert_eq!(substitute("${stageVariables.svc}", &vars), Ok("orders-v2".to_string()));
        assert_eq!(substitute("x-${stageVariables.svc}-y", &vars), Ok("x-orders-v2-y".to_string()));
        assert_eq!(substitute("${stageVariables.nope}", &vars), Err(VariableError::Missing("nope".into())));
        assert!(matches!(substitute("${request.path.id}", &vars), Err(VariableError::Unsupported(_))));
        assert!(matches!(substitute("${stageVariables.svc", &vars), Err(VariableError::Unsupported(_))));
    }
}
