//! Reading a manifest folder again after a change without parsing every file again.
//!
//! Parsing YAML is most of the cost of a reload (a 10,000-Route file takes a few hundred
//! milliseconds); a change usually touches one small file. [`LoadCache`] keeps each file's parsed
//! objects and parses again only the files whose size or modification time changed — the same
//! test the folder [`Fingerprint`](crate::fingerprint::Fingerprint) uses to notice a change at all.
//! The result is exactly what [`load::load_dir`] returns: files in the same order, objects in file
//! order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::inputs::Inputs;
use crate::load::{self, LoadError, Loaded};

/// Parsed files of one folder.
#[derive(Default)]
pub struct LoadCache {
    files: HashMap<PathBuf, CachedFile>,
}

struct CachedFile {
    len: u64,
    modified: SystemTime,
    loaded: Loaded,
}

impl LoadCache {
    /// An empty cache.
    pub fn new() -> LoadCache {
        LoadCache::default()
    }

    /// Reads every manifest below `dir`, parsing only files that changed since the last call.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Loaded, LoadError> {
        let mut total = Loaded::default();
        let mut kept = HashMap::new();
        for file in load::manifest_files(dir)? {
            let meta =
                std::fs::metadata(&file).map_err(|source| LoadError::Read { path: file.clone(), source })?;
            let (len, modified) = (meta.len(), meta.modified().ok());
            let cached = match (self.files.remove(&file), modified) {
                (Some(cached), Some(modified)) if cached.len == len && cached.modified == modified => cached,
                // Without a modification time a file cannot be trusted unchanged: parse it each time.
                (_, modified) => {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|source| LoadError::Read { path: file.clone(), source })?;
                    let mut loaded = Loaded::default();
                    load::load_text(&text, Some(&file), &mut loaded)?;
                    CachedFile { len, modified: modified.unwrap_or(SystemTime::UNIX_EPOCH), loaded }
                }
            };
            append(&mut total, &cached.loaded);
            total.files.push(file.clone());
            if modified.is_some() {
                kept.insert(file, cached);
            }
        }
        self.files = kept;
        Ok(total)
    }
}

fn append(total: &mut Loaded, file: &Loaded) {
    // Destructured so that a new kind of input cannot be forgotten here.
    let Inputs {
        gateway_apis,
        routes,
        authorizers,
        usage_plans,
        service_exports,
        secrets,
        services,
        endpoint_slices,
        namespaces,
    } = &file.inputs;
    let into = &mut total.inputs;
    into.gateway_apis.extend(gateway_apis.iter().cloned());
    into.routes.extend(routes.iter().cloned());
    into.authorizers.extend(authorizers.iter().cloned());
    into.usage_plans.extend(usage_plans.iter().cloned());
    into.service_exports.extend(service_exports.iter().cloned());
    into.secrets.extend(secrets.iter().cloned());
    into.services.extend(services.iter().cloned());
    into.endpoint_slices.extend(endpoint_slices.iter().cloned());
    into.namespaces.extend(namespaces.iter().cloned());
    total.skipped.extend(file.skipped.iter().cloned());
    total.unknown_fields.extend(file.unknown_fields.iter().cloned());
    total.undecodable.extend(file.undecodable.iter().cloned());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(name: &str, path: &str) -> String {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  apiRef: {{name: shop}}\n  match: {{path: {path}}}\n  integration: {{mock: {{status: 200}}}}\n  \
             unknownField: 1\n"
        )
    }

    fn touch(path: &Path, seconds: u64) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)).unwrap();
    }

    fn summary(loaded: &Loaded) -> (Vec<String>, Vec<PathBuf>, usize) {
        let names = loaded.inputs.routes.iter().map(|r| r.key().to_string()).collect();
        (names, loaded.files.clone(), loaded.unknown_fields.len())
    }

    #[test]
    fn the_cache_reads_what_a_full_read_reads_after_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"), dir.path().join("sub/c.yml"));
        std::fs::write(&a, route("a", "/a") + "---\n" + &route("a2", "/a2")).unwrap();
        std::fs::write(&b, route("b", "/b")).unwrap();
        touch(&a, 1_000);
        touch(&b, 1_000);
        let mut cache = LoadCache::new();
        let check = |cache: &mut LoadCache| {
            let cached = cache.load_dir(dir.path()).unwrap();
            let full = load::load_dir(dir.path()).unwrap();
            assert_eq!(summary(&cached), summary(&full));
            summary(&cached).0
        };
        assert_eq!(check(&mut cache), ["shop/a", "shop/a2", "shop/b"]);
        // An edit (new time), a new file in a subfolder, then a removal.
        std::fs::write(&b, route("b-renamed", "/b")).unwrap();
        touch(&b, 2_000);
        assert_eq!(check(&mut cache), ["shop/a", "shop/a2", "shop/b-renamed"]);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(&c, route("c", "/c")).unwrap();
        assert_eq!(check(&mut cache), ["shop/a", "shop/a2", "shop/b-renamed", "shop/c"]);
        std::fs::remove_file(&a).unwrap();
        assert_eq!(check(&mut cache), ["shop/b-renamed", "shop/c"]);
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, route("a", "/a")).unwrap();
        touch(&a, 1_000);
        let mut cache = LoadCache::new();
        cache.load_dir(dir.path()).unwrap();
        // Same size and time, different bytes: the cache keeps what it parsed (the price of not
        // reading every file; the folder fingerprint makes the same trade).
        std::fs::write(&a, route("b", "/a")).unwrap();
        touch(&a, 1_000);
        assert_eq!(summary(&cache.load_dir(dir.path()).unwrap()).0, ["shop/a"]);
        touch(&a, 1_001);
        assert_eq!(summary(&cache.load_dir(dir.path()).unwrap()).0, ["shop/b"]);
    }

    #[test]
    fn a_broken_file_is_an_error_and_is_parsed_again_once_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, "kind: [").unwrap();
        let mut cache = LoadCache::new();
        let error = cache.load_dir(dir.path()).err().unwrap().to_string();
        assert!(error.contains("a.yaml"), "{error}");
        std::fs::write(&a, route("a", "/a")).unwrap();
        assert_eq!(summary(&cache.load_dir(dir.path()).unwrap()).0, ["shop/a"]);
    }
}
