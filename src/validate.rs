//! `tollgate validate DIR`: compile offline and print every diagnostic, for CI and GitOps
//! pipelines. Exit 0 when every object is accepted, 1 when any is rejected (with `--strict`: also
//! when any diagnostic is an error, e.g. an unresolved reference that leaves a Route unserved), 2
//! when the folder cannot be read at all.

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use tollgate_controller::diagnostics::Severity;
use tollgate_controller::{compile, load};

pub fn run(dir: &Path, json: bool, strict: bool) -> ExitCode {
    let loaded = match load::load_dir(dir) {
        Ok(loaded) => loaded,
        Err(error) => {
            if json {
                crate::print_stdout(&format!("{}\n", serde_json::json!({ "loadError": error.to_string() })));
            }
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let compiled = compile::compile_loaded(&loaded);
    let rejected = compiled.reports.iter().filter(|r| r.rejected()).count();
    let errors = compiled
        .reports
        .iter()
        .flat_map(|r| &r.diagnostics)
        .filter(|d| matches!(d.severity, Severity::Error))
        .count();
    let failed = rejected > 0 || (strict && errors > 0);
    // Files are named relative to DIR everywhere, as in the diagnostics.
    let prefix = format!("{}/", dir.display().to_string().trim_end_matches('/'));
    let skipped: Vec<&str> =
        loaded.skipped.iter().map(|s| s.strip_prefix(prefix.as_str()).unwrap_or(s)).collect();
    let mut out = String::new();
    if json {
        let doc = serde_json::json!({
            "rejected": rejected,
            "errors": errors,
            "objects": compiled.reports,
            "skipped": skipped,
        });
        out = serde_json::to_string_pretty(&doc).unwrap_or_default();
        out.push('\n');
    } else {
        let mut warnings = 0;
        for report in &compiled.reports {
            let file = report
                .file
                .as_deref()
                .map(|f| f.strip_prefix(dir).unwrap_or(f).display().to_string())
                .unwrap_or_else(|| "-".into());
            for d in &report.diagnostics {
                let level = match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => {
                        warnings += 1;
                        "warning"
                    }
                };
                let _ = writeln!(
                    out,
                    "{file}: {}/{}: {}: {} ({level}, {})",
                    report.kind, report.key, d.field, d.message, d.reason
                );
            }
        }
        for skipped in &skipped {
            let _ = writeln!(out, "{skipped}: skipped (not a kind Tollgate uses)");
        }
        let _ = writeln!(
            out,
            "{} objects in {} files: {} rejected, {errors} errors, {warnings} warnings",
            compiled.reports.len(),
            loaded.files.len(),
            rejected
        );
    }
    if !crate::print_stdout(&out) {
        return ExitCode::FAILURE;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
