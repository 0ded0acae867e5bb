//! Install artefacts that must not drift apart, checked without helm (charts/test.sh checks the
//! rendered output as well).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_chart_grants_exactly_the_rbac_of_deploy_rbac_yaml() {
    let source = std::fs::read_to_string(repo("deploy/rbac.yaml")).unwrap();
    let copy = std::fs::read_to_string(repo("charts/tollgate/files/rbac.yaml")).unwrap();
    assert!(
        source == copy,
        "charts/tollgate/files/rbac.yaml differs from deploy/rbac.yaml; copy it with UPDATE=1 charts/test.sh \
         (which also regenerates deploy/install.yaml)"
    );
}

#[test]
fn install_yaml_carries_the_current_crds() {
    let install = std::fs::read_to_string(repo("deploy/install.yaml")).unwrap();
    assert!(
        install.contains(tollgate_crds::crds_yaml().trim_end()),
        "deploy/install.yaml does not carry the CRDs of crds/; regenerate it with UPDATE=1 charts/test.sh"
    );
}
