//! `tollgate validate` and `tollgate crds`, as a CI pipeline would run them.

use std::process::Command;

use crate::support::*;

fn tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The quickstart, the benchmark's configuration and the profile-guided build's training
/// configuration (a rejected training route would leave the image build without its profile).
#[test]
fn the_bundled_manifests_validate_cleanly() {
    for dir in ["examples/quickstart", "bench/manifests", "build/pgo"] {
        let dir = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
        let (code, stdout, stderr) = tollgate(&["validate", &dir]);
        assert_eq!(code, 0, "{dir}: {stdout}{stderr}");
        assert!(stdout.contains("0 rejected, 0 errors, 0 warnings"), "{dir}: {stdout}");
    }
}

#[test]
fn broken_manifests_are_named_with_file_object_and_field() {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write(
        "routes.yaml",
        &[
            route_yaml("shop", "two-integrations", "shop", "  match: {path: /a}\n  integration: {mock: {status: 200}, url: 'http://x'}\n"),
            route_yaml("shop", "bad-path", "shop", "  match: {path: '/a/{id'}\n  integration: {mock: {status: 200}}\n"),
            route_yaml("shop", "dangling", "nope", "  match: {path: /b}\n  integration: {mock: {status: 200}}\n"),
            "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {name: foreign, namespace: other}\nspec:\n  \
             apiRef: {name: shop, namespace: shop}\n  match: {path: /c}\n  integration: {mock: {status: 200}}\n"
                .to_string(),
            // Does not match the schema: left out and reported, not the end of the run.
            route_yaml("shop", "bad-method", "shop", "  match: {methods: [GETT], path: /d}\n  integration: {mock: {status: 200}}\n"),
        ]
        .join("---\n"),
    );
    m.write("deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n");
    let (code, stdout, _) = tollgate(&["validate", m.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    for expected in [
        "\ndeploy.yaml: apps/v1/Deployment: skipped (not a kind Tollgate uses)",
        "routes.yaml: Route/shop/two-integrations: spec.integration: set exactly one of service, serviceExport, url or mock",
        "routes.yaml: Route/shop/bad-path: spec.match.path: ",
        "routes.yaml: Route/shop/dangling: spec.apiRef: GatewayAPI shop/nope not found",
        "routes.yaml: Route/other/foreign: spec.apiRef: GatewayAPI shop/shop does not accept Routes from namespace other",
        "routes.yaml: Route/shop/bad-method: spec.match.methods[0]: unknown variant `GETT`",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }

    let (code, json, _) = tollgate(&["validate", "--json", m.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["rejected"], 4, "dangling is not rejected, only unresolved: {json}");
    assert_eq!(doc["skipped"], serde_json::json!(["deploy.yaml: apps/v1/Deployment"]), "{json}");
}

/// An unresolved reference leaves a Route unserved without rejecting it: exit 0 by default (the
/// folder may not hold the cluster's Services), exit 1 with `--strict`.
#[test]
fn strict_also_fails_on_unresolved_references() {
    let m = Manifests::new();
    m.write("api.yaml", &simple_api("shop", "shop"));
    m.write(
        "route.yaml",
        &route_yaml(
            "shop",
            "orders",
            "shop",
            "  match: {path: /orders}\n  integration: {serviceExport: {name: orders, namespace: orders-team}}\n",
        ),
    );
    let dir = m.path().to_str().unwrap();
    let (code, stdout, _) = tollgate(&["validate", dir]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("0 rejected, 1 errors"), "{stdout}");
    let (code, stdout, _) = tollgate(&["validate", "--strict", dir]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "Route/shop/orders: spec.integration.serviceExport: ServiceExport orders-team/orders not found"
        ),
        "{stdout}"
    );
    let (code, json, _) = tollgate(&["validate", "--strict", "--json", dir]);
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((doc["rejected"].as_u64(), doc["errors"].as_u64()), (Some(0), Some(1)), "{json}");
}

#[test]
fn unreadable_yaml_exits_2_naming_the_file() {
    let m = Manifests::new();
    m.write("broken.yaml", "apiVersion: v1\nkind: [\n");
    let (code, _, stderr) = tollgate(&["validate", m.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("broken.yaml"), "{stderr}");
    // With --json, stdout stays JSON for the pipeline that parses it.
    let (code, json, _) = tollgate(&["validate", "--json", m.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(doc["loadError"].as_str().is_some_and(|e| e.contains("broken.yaml")), "{json}");
}

#[test]
fn crds_subcommand_prints_the_committed_crds() {
    let (code, stdout, _) = tollgate(&["crds"]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/all.yaml")).unwrap();
    assert_eq!(stdout, committed);
}

/// `tollgate crds | head`: the reader goes away before the output is written (it is larger than
/// a pipe's buffer), which ends the command quietly, not with a panic.
#[test]
fn crds_stops_quietly_when_the_reader_goes_away() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("crds")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
