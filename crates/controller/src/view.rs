//! The `/config` document: what is served and what is wrong, with every secret left out.

use serde_json::{Value, json};
use tollgate_ir as ir;

use crate::diagnostics::ObjectReport;

/// Builds the `/config` view of a snapshot and its reports. Certificates appear by Secret name and
/// hostnames only; API keys, access keys and private keys never appear.
pub fn config_view(snapshot: &ir::Snapshot, reports: &[ObjectReport], last_error: Option<&str>) -> Value {
    let apis: Vec<Value> = snapshot
        .apis
        .iter()
        .map(|api| {
            json!({
                "name": api.key.to_string(),
                "generation": api.generation,
                "fleet": api.fleet,
                "hostnames": api.hostnames,
                "limits": api.limits,
                "auth": api.auth.view(),
                "stages": api.stages.iter().map(|stage| json!({
                    "name": stage.name,
                    "hostnames": stage.hostnames,
                    "basePath": stage.base_path,
                    "variables": stage.variables,
                    "accessLog": stage.access_log,
                    "routes": stage.routes.iter().map(route_view).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let certificates: Vec<Value> = snapshot
        .certificates
        .iter()
        .map(|c| json!({"secret": c.source.to_string(), "hostnames": c.hostnames}))
        .collect();
    json!({
        "version": snapshot.version,
        "contentHash": snapshot.content_hash,
        "lastError": last_error,
        "apis": apis,
        "certificates": certificates,
        "objects": reports,
    })
}

fn route_view(route: &ir::Route) -> Value {
    let integration = match &route.integration {
        ir::Integration::Mock(mock) => json!({"type": "mock", "status": mock.status}),
        ir::Integration::Http(http) => json!({
            "type": "http",
            "backend": http.backend.name,
            "scheme": http.backend.scheme,
            "endpoints": http.backend.endpoints,
            "path": http.path,
        }),
    };
    json!({
        "route": route.key.to_string(),
        "methods": route.methods,
        "path": route.path,
        "headers": route.headers,
        "integration": integration,
        "timeoutMs": route.timeout,
        "retries": route.retries,
        "authorization": route.auth,
    })
}
