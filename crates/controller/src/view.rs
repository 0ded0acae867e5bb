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
                "webSocket": api.web_socket.as_ref().map(web_socket_view),
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
        ir::Integration::Http(http) => {
            let backend = &http.backend;
            json!({
                "type": "http",
                "backend": backend.name,
                "scheme": backend.scheme,
                "endpoints": backend.endpoints,
                "path": http.path,
                "loadBalancing": backend.load_balancing,
                "outlierDetection": backend.outlier_detection,
                "dns": backend.dns.as_ref().map(|d| json!({"name": d.name, "port": d.port, "refreshMs": d.refresh})),
                // Whether a CA and a client certificate are set; never their contents.
                "tls": backend.tls.as_ref().map(|t| json!({
                    "serverName": backend.tls_server_name,
                    "customCa": t.ca_pem.is_some(),
                    "clientCertificate": t.client_certificate.is_some(),
                })),
            })
        }
    };
    json!({
        "route": route.key.to_string(),
        "routeKey": route.route_key,
        "methods": route.methods,
        "path": route.path,
        "headers": route.headers,
        "integration": integration,
        "timeoutMs": route.timeout,
        "retries": route.retries,
        "authorization": route.auth,
        "webSocket": route.web_socket,
    })
}

/// A managed WebSocket API: route selection and limits; of the @connections credentials only how
/// many there are.
fn web_socket_view(ws: &ir::websocket::WebSocketApi) -> Value {
    json!({
        "routeSelection": format!("$request.body.{}", ws.route_selection.join(".")),
        "limits": ws.limits,
        "connectionsKeys": ws.connections_keys.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::*;

    fn view_of(case: &str) -> String {
        let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case).join("input.yaml");
        let mut loaded = crate::load::Loaded::default();
        crate::load::load_text(&std::fs::read_to_string(&input).unwrap(), Some(&input), &mut loaded).unwrap();
        let compiled = crate::compile::compile_loaded(&loaded);
        config_view(&compiled.snapshot, &compiled.reports, None).to_string()
    }

    #[test]
    fn export_backends_show_their_policies_but_no_key_material() {
        let view = view_of("service-exports");
        assert!(view.contains(r#""policy":"consistentHash""#), "{view}");
        assert!(view.contains(r#""dns":{"name":"billing.internal""#), "{view}");
        assert!(
            view.contains(r#""customCa":true"#) && view.contains(r#""clientCertificate":true"#),
            "{view}"
        );
        assert!(!view.contains("PRIVATE KEY") && !view.contains("BEGIN CERTIFICATE"), "{view}");
    }

    #[test]
    fn websocket_routes_show_their_route_keys_and_no_access_keys() {
        let view = view_of("websocket");
        for key in ["$connect", "sendMessage", "$default"] {
            assert!(view.contains(&format!(r#""routeKey":"{key}""#)), "{key}: {view}");
        }
        assert!(view.contains(r#""routeSelection":"$request.body.action""#), "{view}");
        assert!(!view.contains("chat-secret"), "{view}");
    }
}
