//! The documented defaults of optional fields, as values, so the compiler applies what the docs say.
//!
//! Each constant names the field it belongs to; the field's doc comment states the same value.

use std::time::Duration;

/// `GatewayAPI.spec.fleet`.
pub const FLEET: &str = "default";
/// Name of the implicit stage of a `GatewayAPI` without `spec.stages`.
pub const STAGE_NAME: &str = "default";
/// `GatewayAPI.spec.routeSelectionExpression` (WebSocket APIs).
pub const ROUTE_SELECTION_EXPRESSION: &str = "$request.body.action";
/// `GatewayAPI.spec.webSocket.maxFrameBytes`: 32 KiB.
pub const WEBSOCKET_MAX_FRAME_BYTES: i64 = 32 * 1024;
/// `GatewayAPI.spec.webSocket.maxMessageBytes`: 128 KiB.
pub const WEBSOCKET_MAX_MESSAGE_BYTES: i64 = 128 * 1024;
/// `GatewayAPI.spec.webSocket.idleTimeout` and `Route.spec.integration.webSocket.idleTimeout`.
pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `GatewayAPI.spec.webSocket.maxConnectionDuration` and
/// `Route.spec.integration.webSocket.maxConnectionDuration`.
pub const WEBSOCKET_MAX_CONNECTION_DURATION: Duration = Duration::from_secs(7200);
/// `GatewayAPI.spec.limits.maxRequestBodyBytes`: 10 MiB.
pub const MAX_REQUEST_BODY_BYTES: i64 = 10 * 1024 * 1024;
/// `GatewayAPI.spec.limits.timeout`, and so every integration's timeout.
pub const INTEGRATION_TIMEOUT: Duration = Duration::from_secs(29);
/// `stages[].cache.ttl`.
pub const STAGE_CACHE_TTL: Duration = Duration::from_secs(300);
/// `stages[].cache.maxBytes`: 64 MiB per proxy replica.
pub const STAGE_CACHE_MAX_BYTES: i64 = 64 * 1024 * 1024;
/// `stages[].canary.forceHeader.name`.
pub const CANARY_FORCE_HEADER: &str = "x-tollgate-canary";
/// `stages[].canary.analysis.interval`.
pub const CANARY_ANALYSIS_INTERVAL: Duration = Duration::from_secs(60);
/// `stages[].canary.analysis.stepWeight`, in percentage points.
pub const CANARY_STEP_WEIGHT: f64 = 10.0;
/// `stages[].canary.analysis.maxWeight`, in percent.
pub const CANARY_MAX_WEIGHT: f64 = 50.0;
/// `stages[].canary.analysis.maxErrorRate`, in percent.
pub const CANARY_MAX_ERROR_RATE: f64 = 1.0;
/// `stages[].canary.analysis.minRequests`.
pub const CANARY_MIN_REQUESTS: u32 = 100;
/// `Route.spec.integration.mock.status`.
pub const MOCK_STATUS: i32 = 200;
/// `Route.spec.integration.retries.on`.
pub const RETRY_ON: &[&str] = &["connect-failure"];
/// `Authorizer.spec.jwt.leeway`.
pub const JWT_LEEWAY: Duration = Duration::from_secs(30);
/// `Authorizer.spec.jwt.scopesClaim`, tried first.
pub const JWT_SCOPES_CLAIM: &str = "scope";
/// `Authorizer.spec.jwt.scopesClaim`, tried when the first is absent.
pub const JWT_SCOPES_CLAIM_FALLBACK: &str = "scp";
/// Entry of a `jwksSecretRef` Secret holding the key set.
pub const JWKS_SECRET_KEY: &str = "jwks.json";
/// `Authorizer.spec.external.resultTtl`.
pub const EXTERNAL_RESULT_TTL: Duration = Duration::from_secs(300);
/// `Authorizer.spec.external.timeout`.
pub const EXTERNAL_TIMEOUT: Duration = Duration::from_secs(1);
/// `Authorizer.spec.sigv4.service`.
pub const SIGV4_SERVICE: &str = "execute-api";
/// `ServiceExport.spec.outlierDetection.consecutiveErrors`.
pub const OUTLIER_CONSECUTIVE_ERRORS: u32 = 5;
/// `ServiceExport.spec.outlierDetection.ejectionTime`.
pub const OUTLIER_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Entry of a CA Secret (`caCertificateRef`) holding the PEM certificates.
pub const CA_CERTIFICATE_KEY: &str = "ca.crt";
