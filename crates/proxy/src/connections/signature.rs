//! SigV4 verification of @connections calls: service `execute-api`, the region the caller
//! signed for, the access keys of the API (or of every WebSocket API, before forwarding).

use std::time::SystemTime;

use http::HeaderMap;
use tollgate_ir::auth as ira;

use crate::auth::sigv4::{SigV4Verifier, Signed};

/// The service name @connections signatures must use.
pub const SERVICE: &str = "execute-api";

/// Why a call is refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No SigV4 `Authorization` header.
    #[error(
        "Missing Authentication Token: sign the request with AWS Signature Version 4 (service execute-api)"
    )]
    Missing,
    /// The signature did not verify.
    #[error("Forbidden: {0}")]
    Invalid(#[source] crate::auth::AuthError),
}

/// Verifies the call against `keys`; returns the caller's access key id.
pub fn verify(
    parts: &http::request::Parts,
    body: &[u8],
    keys: Vec<ira::AccessKey>,
) -> Result<String, SignatureError> {
    let region = signed_region(&parts.headers).ok_or(SignatureError::Missing)?;
    let verifier =
        SigV4Verifier::new(&ira::SigV4Authorizer { region, service: SERVICE.to_string(), access_keys: keys });
    let signed = Signed {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
        body: Some(body),
    };
    let identity = verifier.verify(&signed, SystemTime::now()).map_err(SignatureError::Invalid)?;
    Ok(identity.principal.unwrap_or_default())
}

/// The region of the `Authorization` header's credential scope
/// (`Credential=AKID/20250101/us-east-1/execute-api/aws4_request`).
fn signed_region(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.strip_prefix("AWS4-HMAC-SHA256")?;
    let credential = rest.split(',').find_map(|p| p.trim().strip_prefix("Credential="))?;
    let mut scope = credential.split('/');
    let region = scope.nth(2)?;
    Some(region.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comes_from_the_credential_scope() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-west-1/execute-api/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc",
            ),
        );
        assert_eq!(signed_region(&h).as_deref(), Some("eu-west-1"));
        assert_eq!(signed_region(&HeaderMap::new()), None);
    }
}
