//! Cheap change detection for a manifest folder: the sorted list of files with size and
//! modification time. Compared every reload interval; a change triggers a full reload.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::load::{LoadError, manifest_files};

/// A summary of a folder's manifest files that changes whenever any of them does.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Fingerprint {
    /// Reads the fingerprint of `dir`.
    pub fn of(dir: &Path) -> Result<Fingerprint, LoadError> {
        let mut entries = Vec::new();
        for file in manifest_files(dir)? {
            let meta =
                std::fs::metadata(&file).map_err(|source| LoadError::Read { path: file.clone(), source })?;
            entries.push((file, meta.len(), meta.modified().ok()));
        }
        Ok(Fingerprint(entries))
    }
}
