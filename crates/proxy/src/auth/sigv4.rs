//! AWS Signature Version 4 verification (the IAM-authorization analogue), in both forms:
//! the `Authorization: AWS4-HMAC-SHA256 ...` header and presigned URLs (`X-Amz-Signature` in the
//! query). The canonical request is rebuilt from what the client sent (raw path, query, signed
//! headers, payload hash) exactly as AWS SDKs build it; the signature is compared in constant
//! time. `x-amz-date` may differ from the proxy's clock by at most five minutes; the credential
//! scope must name the configured region and service.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_ir::auth as ira;

use super::external::query_pairs;
use super::{AuthError, Identity};

/// Largest clock difference accepted between `x-amz-date` and now.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// Longest lifetime a presigned URL may declare (7 days, as AWS).
const MAX_EXPIRES: u64 = 604_800;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash clients send when they choose not to sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Verifies SigV4 signatures for one authorizer.
pub struct SigV4Verifier {
    region: String,
    service: String,
    keys: HashMap<String, tollgate_ir::Redacted>,
}

/// The request parts a signature covers.
pub struct Signed<'a> {
    /// Method.
    pub method: &'a str,
    /// The path exactly as the client sent it (before normalization).
    pub raw_path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// Headers (`host` falls back to `authority` for HTTP/2).
    pub headers: &'a HeaderMap,
    /// The request authority (HTTP/2 `:authority`), used when there is no Host header.
    pub authority: Option<&'a str>,
    /// The body, when it was read (`None`: not read because the client sent UNSIGNED-PAYLOAD).
    pub body: Option<&'a [u8]>,
}

/// Parsed signature parameters, from either form.
struct Params {
    access_key: String,
    scope_date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    presigned_expires: Option<u64>,
}

fn deny(reason: &'static str, detail: &'static str) -> AuthError {
    AuthError::forbidden(reason, detail)
}

impl SigV4Verifier {
    /// A verifier for `config`.
    pub fn new(config: &ira::SigV4Authorizer) -> SigV4Verifier {
        SigV4Verifier {
            region: config.region.clone(),
            service: config.service.clone(),
            keys: config
                .access_keys
                .iter()
                .map(|k| (k.access_key_id.clone(), k.secret_access_key.clone()))
                .collect(),
        }
    }

    /// Whether the request is presigned or carries an unsigned payload, i.e. whether the body
    /// must be read before [`SigV4Verifier::verify`].
    pub fn needs_body(headers: &HeaderMap) -> bool {
        headers.get("x-amz-content-sha256").is_none_or(|v| v.as_bytes() != UNSIGNED_PAYLOAD.as_bytes())
    }

    /// Verifies the request's signature.
    pub fn verify(&self, request: &Signed<'_>, now: SystemTime) -> Result<Identity, AuthError> {
        let params = parse(request)?;
        if params.region != self.region || params.service != self.service {
            return Err(deny(
                "wrong_scope",
                "the signature's credential scope names another region or service",
            ));
        }
        if !params.amz_date.starts_with(&params.scope_date) {
            return Err(deny("bad_signature", "the signature's date does not match its credential scope"));
        }
        let signed_at = parse_amz_date(&params.amz_date)
            .ok_or_else(|| deny("bad_signature", "x-amz-date is not a date (YYYYMMDDTHHMMSSZ)"))?;
        check_time(signed_at, params.presigned_expires, now)?;
        if !params.signed_headers.iter().any(|h| h == "host") {
            return Err(deny("bad_signature", "the signature must cover the host header"));
        }
        let Some(secret) = self.keys.get(&params.access_key) else {
            return Err(deny("unknown_access_key", "the access key is not known"));
        };
        let canonical_query = canonical_query(request.query, params.presigned_expires.is_some());
        let headers = canonical_headers(request, &params.signed_headers)
            .ok_or_else(|| deny("bad_signature", "a signed header is missing from the request"))?;
        let path = canonical_path(request.raw_path);
        let payload_hashes = payload_hashes(request, params.presigned_expires.is_some())?;
        let scope = format!("{}/{}/{}/aws4_request", params.scope_date, params.region, params.service);
        let key = signing_key(secret.expose(), &params.scope_date, &params.region, &params.service);
        for payload in payload_hashes {
            let canonical = format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                request.method,
                path,
                canonical_query,
                headers,
                params.signed_headers.join(";"),
                payload
            );
            let string_to_sign = format!(
                "{ALGORITHM}\n{}\n{scope}\n{}",
                params.amz_date,
                hex::encode(Sha256::digest(canonical.as_bytes()))
            );
            let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
            if expected.as_bytes().ct_eq(params.signature.as_bytes()).into() {
                return Ok(Identity { principal: Some(params.access_key), ..Identity::default() });
            }
        }
        Err(deny("bad_signature", "the request signature does not match"))
    }
}

fn parse(request: &Signed<'_>) -> Result<Params, AuthError> {
    let header = request.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(rest) = header.and_then(|h| h.strip_prefix(ALGORITHM)) {
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
            return Err(deny("bad_signature", "the Authorization header is not a complete SigV4 signature"));
        };
        let amz_date = request
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| deny("bad_signature", "x-amz-date is required"))?;
        let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
        if !signed_headers.iter().any(|h| h == "x-amz-date") {
            return Err(deny("bad_signature", "the signature must cover x-amz-date"));
        }
        return params(credential, signed_headers, signature, amz_date, None);
    }
    let pairs = query_pairs(request.query);
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    match (get("X-Amz-Algorithm"), get("X-Amz-Signature")) {
        (Some(ALGORITHM), Some(signature)) => {
            let (Some(credential), Some(signed), Some(amz_date), Some(expires)) = (
                get("X-Amz-Credential"),
                get("X-Amz-SignedHeaders"),
                get("X-Amz-Date"),
                get("X-Amz-Expires"),
            ) else {
                return Err(deny(
                    "bad_signature",
                    "the presigned URL lacks X-Amz-Credential, -SignedHeaders, -Date or -Expires",
                ));
            };
            let expires: u64 = expires.parse().ok().filter(|e| *e <= MAX_EXPIRES).ok_or_else(|| {
                deny("bad_signature", "X-Amz-Expires must be a number of seconds up to 604800")
            })?;
            let signed_headers = signed.split(';').map(str::to_string).collect();
            params(credential, signed_headers, signature, amz_date, Some(expires))
        }
        _ => Err(AuthError::unauthenticated_plain("missing_signature", "a SigV4-signed request is required")),
    }
}

fn params(
    credential: &str,
    signed_headers: Vec<String>,
    signature: &str,
    amz_date: &str,
    presigned_expires: Option<u64>,
) -> Result<Params, AuthError> {
    let parts: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = parts.as_slice() else {
        return Err(deny("bad_signature", "the credential must be KEY/DATE/REGION/SERVICE/aws4_request"));
    };
    if *terminator != "aws4_request" {
        return Err(deny("bad_signature", "the credential scope must end with aws4_request"));
    }
    let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
    if signed_headers.is_empty()
        || !sorted
        || signed_headers.iter().any(|h| h.is_empty() || h.to_ascii_lowercase() != *h)
    {
        return Err(deny("bad_signature", "SignedHeaders must be lower-case names, sorted, separated by ;"));
    }
    Ok(Params {
        access_key: access_key.to_string(),
        scope_date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        amz_date: amz_date.to_string(),
        presigned_expires,
    })
}

fn check_time(signed_at: SystemTime, expires: Option<u64>, now: SystemTime) -> Result<(), AuthError> {
    let stale = || deny("stale_signature", "the signature's date is too far from the current time");
    if signed_at > now + MAX_SKEW {
        return Err(stale());
    }
    let valid_for = match expires {
        Some(seconds) => Duration::from_secs(seconds),
        None => MAX_SKEW,
    };
    if now > signed_at + valid_for {
        return Err(match expires {
            Some(_) => deny("expired", "the presigned URL has expired"),
            None => stale(),
        });
    }
    Ok(())
}

/// `20240102T030405Z` → time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes.get(8) != Some(&b'T') || bytes.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u8> { text.get(from..to)?.parse().ok() };
    let year: i32 = text.get(0..4)?.parse().ok()?;
    let month = time::Month::try_from(num(4, 6)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(6, 8)?).ok()?;
    let at = date.with_hms(num(9, 11)?, num(11, 13)?, num(13, 15)?).ok()?.assume_utc();
    let seconds = u64::try_from(at.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The path as AWS SDKs canonicalize it for services other than S3: dot segments and empty
/// segments removed, then every byte but unreserved characters and `/` percent-encoded (so an
/// already-encoded path is encoded twice).
fn canonical_path(raw: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut path = String::from("/");
    path.push_str(&segments.join("/"));
    if raw.ends_with('/') && !segments.is_empty() {
        path.push('/');
    }
    encode(&path, true)
}

fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query parameters decoded and re-encoded the AWS way, sorted; `X-Amz-Signature` left out of
/// presigned requests.
fn canonical_query(query: Option<&str>, presigned: bool) -> String {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (encode(&decode(k), false), encode(&decode(v), false))
        })
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn canonical_headers(request: &Signed<'_>, signed: &[String]) -> Option<String> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let value = if values.is_empty() {
            if name == "host" { request.authority?.to_string() } else { return None }
        } else {
            values.join(",")
        };
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    Some(out)
}

/// The payload hashes to try: the one the client declared (checked against the body), or the
/// body's hash; presigned requests may also have been signed with UNSIGNED-PAYLOAD.
fn payload_hashes(request: &Signed<'_>, presigned: bool) -> Result<Vec<String>, AuthError> {
    let body_hash = request.body.map(|b| hex::encode(Sha256::digest(b)));
    match request.headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some(UNSIGNED_PAYLOAD) => Ok(vec![UNSIGNED_PAYLOAD.to_string()]),
        Some(declared) => match body_hash {
            Some(actual) if actual.eq_ignore_ascii_case(declared) => Ok(vec![declared.to_string()]),
            _ => Err(deny("bad_payload_hash", "x-amz-content-sha256 does not match the body")),
        },
        None => {
            let mut hashes: Vec<String> = body_hash.into_iter().collect();
            if presigned {
                hashes.push(UNSIGNED_PAYLOAD.to_string());
            }
            Ok(hashes)
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; the error case cannot occur.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_canonicalize_like_the_sdks() {
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(canonical_path("/a b/%2F"), "/a%20b/%252F");
    }

    #[test]
    fn queries_sort_and_encode() {
        assert_eq!(canonical_query(Some("b=2&a=x%20y&a=1"), false), "a=1&a=x%20y&b=2");
        assert_eq!(canonical_query(Some("X-Amz-Signature=abc&z=1"), true), "z=1");
    }

    #[test]
    fn aws_documentation_signing_key() {
        // From the AWS SigV4 documentation example (wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY).
        let key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam");
        assert_eq!(hex::encode(key), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }

    #[test]
    fn amz_dates_parse() {
        let t = parse_amz_date("20240102T030405Z").unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0), 1_704_164_645);
        assert!(parse_amz_date("2024-01-02T03:04:05Z").is_none());
    }

    #[test]
    fn skew_is_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(check_time(now - Duration::from_secs(299), None, now).is_ok());
        assert!(check_time(now - Duration::from_secs(301), None, now).is_err());
        assert!(check_time(now + Duration::from_secs(301), None, now).is_err());
        assert!(check_time(now - Duration::from_secs(3000), Some(3600), now).is_ok());
        assert!(check_time(now - Duration::from_secs(3601), Some(3600), now).is_err());
    }
}
