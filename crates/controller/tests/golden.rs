//! Golden tests for `compile`: every folder under `tests/golden/` holds `input.yaml` (manifests)
//! and the expected `snapshot.yaml` and `status.yaml`. Run with `UPDATE_GOLDEN=1` to rewrite the
//! expected files, then review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use tollgate_controller::compile::compile_loaded;
use tollgate_controller::load::{Loaded, load_text};

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", root.display());
    cases
}

fn render(case: &Path) -> (String, String) {
    let text = std::fs::read_to_string(case.join("input.yaml")).unwrap();
    let mut loaded = Loaded::default();
    load_text(&text, Some(Path::new("input.yaml")), &mut loaded)
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
    let compiled = compile_loaded(&loaded);
    // Deterministic: the same input twice gives the same snapshot.
    assert_eq!(
        compile_loaded(&loaded).snapshot,
        compiled.snapshot,
        "{}: compile is not deterministic",
        case.display()
    );
    let snapshot = serde_yaml_ng::to_string(&compiled.snapshot).unwrap();
    let status = serde_yaml_ng::to_string(&compiled.reports).unwrap();
    (snapshot, status)
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let (snapshot, status) = render(&case);
        for (file, actual) in [("snapshot.yaml", &snapshot), ("status.yaml", &status)] {
            let path = case.join(file);
            if update {
                std::fs::write(&path, actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&path).unwrap_or_default();
            if &expected != actual {
                failures.push(format!(
                    "{}: differs from the expected file (UPDATE_GOLDEN=1 cargo test -p tollgate-controller --test golden \
                     to rewrite, then review the diff)\n--- actual ---\n{actual}",
                    path.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
