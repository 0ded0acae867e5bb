//! The `tollgate` binary under test: `TOLLGATE_BIN`, or built from this workspace.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `tollgate` binary: `$TOLLGATE_BIN` if set; else the one next to the test executable
/// (`cargo test --workspace` has just built it); else `cargo build --bin tollgate` runs once.
/// After `cargo test -p tollgate-e2e` alone, that binary may be older than the sources: build it
/// first (`cargo build --bin tollgate`) or set `TOLLGATE_BIN`.
pub fn tollgate() -> anyhow::Result<PathBuf> {
    BINARY.get_or_init(|| locate().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow::anyhow!(e))
}

fn locate() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TOLLGATE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // The test executable lives in <target>/<profile>/deps; the binary goes to <target>/<profile>.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test executable is not in <target>/<profile>/deps")?
        .to_path_buf();
    let target_dir = profile_dir.parent().context("no target directory")?;
    let built = profile_dir.join("tollgate");
    if built.exists() {
        return Ok(built);
    }
    let release = profile_dir.file_name().is_some_and(|name| name == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", "tollgate", "--bin", "tollgate", "--target-dir"])
        .arg(target_dir);
    if release {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build --bin tollgate")?;
    anyhow::ensure!(status.success(), "cargo build --bin tollgate failed");
    let binary = profile_dir.join("tollgate");
    anyhow::ensure!(binary.exists(), "{} was not built", binary.display());
    Ok(binary)
}
