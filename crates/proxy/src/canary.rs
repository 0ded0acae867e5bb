//! Canary track assignment: which track of a stage serves a request.
//!
//! The order, first match wins:
//! 1. the force header (`x-tollgate-canary: always | never`), when the stage allows it;
//! 2. a weight of 0 or 100 % decides alone;
//! 3. sticky stages place a caller by a *bucket* in [0, 1,000,000): a keyed hash (HMAC-SHA256)
//!    of its `x-api-key` or `Authorization` header when it sends one (API clients without cookies
//!    stay put too), else of the id in its signed cookie (a new random id, and a `Set-Cookie`,
//!    when it has none or a forged one). The caller is on the canary when its bucket is below the
//!    weight — so raising the weight moves stable callers over, never canary callers back;
//! 4. otherwise, a random draw per request.
//!
//! The track is chosen before routing (it decides which route table applies), which is before
//! authentication: the identity hashed is the raw credential header, never the verified principal.
//! Credentials are only ever hashed with the stage key, never stored or logged.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tollgate_ir::canary::{CanaryTrack, Track, Weight};

type HmacSha256 = Hmac<Sha256>;

/// The API-key header.
const API_KEY_HEADER: &str = crate::traffic::apikey::HEADER;
/// How long a sticky cookie lasts (30 days).
const COOKIE_MAX_AGE_SECS: u32 = 30 * 24 * 3600;

/// How one stage assigns requests to its canary track.
pub struct CanaryRuntime {
    weight: u32,
    sticky: bool,
    force_header: Option<HeaderName>,
    key: Vec<u8>,
    revision: String,
    cookie_name: String,
    cookie_path: String,
}

/// The track a request was given, and the cookie to set when a sticky client got a new id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The track.
    pub track: Track,
    /// `Set-Cookie` value to add to the response.
    pub set_cookie: Option<HeaderValue>,
}

impl Assignment {
    fn plain(track: Track) -> Assignment {
        Assignment { track, set_cookie: None }
    }
}

impl CanaryRuntime {
    /// Builds the assignment of `stage`'s canary.
    pub fn build(stage: &tollgate_ir::Stage, canary: &CanaryTrack) -> CanaryRuntime {
        let key = match canary.key.expose() {
            "" => process_key().to_vec(),
            shared => shared.as_bytes().to_vec(),
        };
        CanaryRuntime {
            weight: canary.weight.0.min(Weight::FULL.0),
            sticky: canary.sticky,
            force_header: canary.force_header.as_deref().and_then(|h| HeaderName::try_from(h).ok()),
            key,
            revision: canary.revision.clone(),
            cookie_name: format!("tollgate-canary-{}", stage.name),
            cookie_path: stage.base_path.clone().unwrap_or_else(|| "/".to_string()),
        }
    }

    /// The weight served, in parts per million.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Chooses the track of a request (`tls`: whether the client connection is TLS, for the
    /// cookie's `Secure` attribute).
    pub fn assign(&self, headers: &HeaderMap, tls: bool) -> Assignment {
        if let Some(track) = self.forced(headers) {
            return Assignment::plain(track);
        }
        if self.weight == 0 {
            return Assignment::plain(Track::Stable);
        }
        if self.weight >= Weight::FULL.0 {
            return Assignment::plain(Track::Canary);
        }
        if !self.sticky {
            let draw = (uuid::Uuid::new_v4().as_u128() % u128::from(Weight::FULL.0)) as u32;
            return Assignment::plain(self.track_of(draw));
        }
        for name in [HeaderName::from_static(API_KEY_HEADER), AUTHORIZATION] {
            if let Some(value) = headers.get(&name).filter(|v| !v.is_empty()) {
                return Assignment::plain(self.track_of(self.bucket(name.as_str(), value.as_bytes())));
            }
        }
        if let Some(id) = self.cookie_id(headers) {
            return Assignment::plain(self.track_of(self.bucket("cookie", id.as_bytes())));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let track = self.track_of(self.bucket("cookie", id.as_bytes()));
        let cookie = format!(
            "{}={id}.{}; Path={}; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Lax{}",
            self.cookie_name,
            self.signature(&id),
            self.cookie_path,
            if tls { "; Secure" } else { "" }
        );
        Assignment { track, set_cookie: HeaderValue::from_str(&cookie).ok() }
    }

    fn track_of(&self, bucket: u32) -> Track {
        if bucket < self.weight { Track::Canary } else { Track::Stable }
    }

    fn forced(&self, headers: &HeaderMap) -> Option<Track> {
        let value = headers.get(self.force_header.as_ref()?)?.to_str().ok()?.trim();
        if value.eq_ignore_ascii_case("always") || value.eq_ignore_ascii_case("canary") {
            Some(Track::Canary)
        } else if value.eq_ignore_ascii_case("never") || value.eq_ignore_ascii_case("stable") {
            Some(Track::Stable)
        } else {
            None
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length; the error arm cannot happen.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.key) else { return [0; 32] };
        for part in parts {
            mac.update(part);
            mac.update(&[0]);
        }
        mac.finalize().into_bytes().into()
    }

    /// The caller's place in [0, 1,000,000), stable for this canary revision.
    fn bucket(&self, kind: &str, id: &[u8]) -> u32 {
        let digest = self.mac(&[b"bucket", self.revision.as_bytes(), kind.as_bytes(), id]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % u64::from(Weight::FULL.0)) as u32
    }

    fn signature(&self, id: &str) -> String {
        hex::encode(&self.mac(&[b"cookie", id.as_bytes()])[..16])
    }

    /// The id in a validly signed sticky cookie.
    fn cookie_id(&self, headers: &HeaderMap) -> Option<String> {
        for header in headers.get_all(COOKIE) {
            let Ok(text) = header.to_str() else { continue };
            for pair in text.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else { continue };
                if name != self.cookie_name {
                    continue;
                }
                let Some((id, signature)) = value.split_once('.') else { continue };
                let expected = self.signature(id);
                if id.len() == 32 && bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
                    return Some(id.to_string());
                }
            }
        }
        None
    }
}

/// The canary track as a stage of its own, for building its route table: the canary's routes
/// and variables; its own cache space unless it shares the stage's (`useStageCache`). Throttles
/// and usage plans are the stage's (limiters are keyed by policy, so both tracks share them).
pub fn track_stage(stage: &tollgate_ir::Stage, canary: &CanaryTrack) -> tollgate_ir::Stage {
    let mut traffic = stage.traffic.clone();
    if !canary.use_stage_cache
        && let Some(cache) = &mut traffic.cache
    {
        cache.id = format!("{}#canary", cache.id);
    }
    tollgate_ir::Stage {
        name: stage.name.clone(),
        hostnames: stage.hostnames.clone(),
        base_path: stage.base_path.clone(),
        variables: canary.variables.clone(),
        access_log: stage.access_log,
        routes: canary.routes.clone(),
        traffic,
        canary: None,
    }
}

/// A random key for this process, for canaries whose snapshot carries none (standalone).
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(percent: f64, sticky: bool) -> CanaryRuntime {
        let stage = tollgate_ir::Stage {
            name: "prod".into(),
            hostnames: vec![],
            base_path: None,
            variables: Default::default(),
            access_log: true,
            routes: vec![],
            traffic: Default::default(),
            canary: None,
        };
        let canary = CanaryTrack {
            weight: Weight::from_percent(percent),
            spec_weight: Weight::from_percent(percent),
            revision: "r1".into(),
            sticky,
            force_header: Some("x-tollgate-canary".into()),
            use_stage_cache: false,
            key: tollgate_ir::Redacted::new("k"),
            variables: Default::default(),
            routes: vec![],
            analysis: None,
        };
        CanaryRuntime::build(&stage, &canary)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn random_split_follows_the_weight() {
        let canary = runtime(10.0, false);
        let n = 20_000;
        let hits = (0..n).filter(|_| canary.assign(&HeaderMap::new(), false).track == Track::Canary).count();
        let share = hits as f64 * 100.0 / n as f64;
        assert!((share - 10.0).abs() < 1.0, "{share}");
        assert_eq!(runtime(0.0, false).assign(&HeaderMap::new(), false).track, Track::Stable);
        assert_eq!(runtime(100.0, true).assign(&HeaderMap::new(), false), Assignment::plain(Track::Canary));
    }

    #[test]
    fn force_header_wins_both_ways_and_ignores_other_values() {
        let canary = runtime(0.0, false);
        assert_eq!(canary.assign(&headers(&[("x-tollgate-canary", "always")]), false).track, Track::Canary);
        let full = runtime(100.0, false);
        assert_eq!(full.assign(&headers(&[("x-tollgate-canary", "Never")]), false).track, Track::Stable);
        assert_eq!(full.assign(&headers(&[("x-tollgate-canary", "maybe")]), false).track, Track::Canary);
    }

    #[test]
    fn sticky_cookie_is_signed_and_keeps_the_track() {
        let canary = runtime(50.0, true);
        let first = canary.assign(&HeaderMap::new(), true);
        let set = first.set_cookie.clone().unwrap_or_else(|| panic!("no cookie"));
        let set = set.to_str().unwrap_or_default().to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("Secure") && set.starts_with("tollgate-canary-prod=")
        );
        let pair = set.split(';').next().unwrap_or_default().to_string();
        for _ in 0..200 {
            let again = canary.assign(&headers(&[("cookie", &format!("a=b; {pair}"))]), false);
            assert_eq!(again, Assignment::plain(first.track));
        }
        // A forged signature is not trusted: a new id (and cookie) is issued.
        let (name_id, _) = pair.rsplit_once('.').unwrap_or_default();
        let forged = canary.assign(&headers(&[("cookie", &format!("{name_id}.00"))]), false);
        assert!(forged.set_cookie.is_some());
    }

    #[test]
    fn sticky_identity_needs_no_cookie_and_raising_the_weight_never_moves_canary_callers_back() {
        let low = runtime(20.0, true);
        let high = runtime(60.0, true);
        let mut canary_at_low = 0;
        for i in 0..500 {
            let key = format!("key-{i}");
            let h = headers(&[("x-api-key", &key)]);
            let a = low.assign(&h, false);
            assert_eq!(a.set_cookie, None);
            assert_eq!(low.assign(&h, false), a, "stable for one caller");
            if a.track == Track::Canary {
                canary_at_low += 1;
                assert_eq!(high.assign(&h, false).track, Track::Canary);
            }
        }
        assert!((60..=140).contains(&canary_at_low), "{canary_at_low}");
    }
}
